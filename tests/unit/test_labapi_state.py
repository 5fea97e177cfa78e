"""The lab API server's state file: objects and allocations survive a restart.

The control-plane lab test stops the API server for 30 s and starts it again;
like a real API server backed by etcd, it must come back with every object,
a resourceVersion that keeps rising, and its ClusterIPs and NodePorts still
reserved. Watches from before the restart get 410 Gone (no history kept).
"""

from __future__ import annotations

import json

import pytest
from labapi.errors import ApiError
from labapi.store import Store, dump_state, load_state


def svc(name: str, **spec: object) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"port": 80}], **spec},
    }


def test_objects_versions_and_allocations_survive() -> None:
    first = Store()
    created = first.create("services", "default", svc("web", type="NodePort"))
    ip = created["spec"]["clusterIP"]
    node_port = created["spec"]["ports"][0]["nodePort"]
    data = json.loads(json.dumps(dump_state(first)))

    second = Store()
    load_state(second, data)
    assert second.get("services", "default", "web")["spec"]["clusterIP"] == ip
    assert second.rv >= first.rv
    with pytest.raises(ApiError) as taken:
        second.create("services", "default", svc("copy", clusterIP=ip))
    assert taken.value.code == 422
    with pytest.raises(ApiError):
        second.create(
            "services", "default", svc("np", type="NodePort", ports=[{"port": 80, "nodePort": node_port}])
        )
    other = second.create("services", "default", svc("other"))
    assert other["spec"]["clusterIP"] != ip
    assert int(other["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
