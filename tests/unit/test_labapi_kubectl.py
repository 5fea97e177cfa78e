"""labapi driven by the real kubectl binary; results are checked in the server's store.

Covers: discovery fallback from aggregated discovery, ``get -A -o json`` for
nodes, services and pods, ``create -f`` of a YAML file with a Service and a Pod
(with kubectl's default strict validation: no ``--validate=false``), ``label
--overwrite``, ``patch --type=merge`` and the default strategic patch,
``delete``, ``get`` of a missing object failing with NotFound, and ``apply``
(client-side, and server-side as approximated by the lab). kubectl is
required when CI=true; elsewhere the tests skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_kubectl
from labapi import LabApiServer

MANIFEST = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels:
    app: web
spec:
  nodeName: node-a
  containers:
  - name: c
    image: busybox
    ports:
    - name: http
      containerPort: 8080
"""


@pytest.fixture
def kubectl(kubectl_lab: tuple[LabApiServer, list[str]]) -> tuple[LabApiServer, list[str]]:
    return kubectl_lab


run = run_kubectl


def test_kubectl_round_trip(kubectl: tuple[LabApiServer, list[str]], tmp_path: Path) -> None:
    srv, base = kubectl
    srv.store.create("nodes", None, {"metadata": {"name": "node-a"}, "status": {
        "addresses": [{"type": "InternalIP", "address": "192.168.50.2"}]}})

    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST)
    out = run(base, "create", "-f", str(manifest))
    assert "service/web created" in out.stdout and "pod/web-1 created" in out.stdout
    svc = srv.store.get("services", "default", "web")
    assert svc["spec"]["clusterIP"].startswith("10.96.")
    assert 30000 <= svc["spec"]["ports"][0]["nodePort"] <= 32767
    assert srv.store.get("pods", "default", "web-1")["spec"]["nodeName"] == "node-a"

    for kind in ("nodes", "svc", "pods"):
        listed = json.loads(run(base, "get", kind, "-A", "-o", "json").stdout)
        assert listed["items"], kind
    nodes = json.loads(run(base, "get", "nodes", "-o", "json").stdout)
    assert [n["metadata"]["name"] for n in nodes["items"]] == ["node-a"]
    pods = json.loads(run(base, "get", "pods", "-A", "-o", "json").stdout)
    assert [p["metadata"]["name"] for p in pods["items"]] == ["web-1"]

    run(base, "label", "pod", "web-1", "app=other", "--overwrite")
    assert srv.store.get("pods", "default", "web-1")["metadata"]["labels"] == {"app": "other"}

    run(base, "patch", "svc", "web", "--type=merge", "-p",
        '{"spec":{"ports":[{"name":"http","port":8080,"targetPort":9090}]}}')
    ports = srv.store.get("services", "default", "web")["spec"]["ports"]
    assert [(p["port"], p["targetPort"], p["protocol"]) for p in ports] == [(8080, 9090, "TCP")]

    # Default (strategic) patch: ports merge by port, so this adds a second one.
    run(base, "patch", "svc", "web", "-p",
        '{"spec":{"ports":[{"name":"dns","port":53,"protocol":"UDP"}]}}')
    ports = srv.store.get("services", "default", "web")["spec"]["ports"]
    assert sorted((p["name"], p["port"]) for p in ports) == [("dns", 53), ("http", 8080)]
    assert all(p.get("nodePort") for p in ports)

    run(base, "delete", "svc", "web")
    assert srv.store.peek("services", "default", "web") is None
    missing = run(base, "get", "svc", "web", check=False)
    assert missing.returncode != 0
    assert 'services "web" not found' in missing.stderr and "NotFound" in missing.stderr


def test_kubectl_apply(kubectl: tuple[LabApiServer, list[str]], tmp_path: Path) -> None:
    srv, base = kubectl
    manifest = tmp_path / "web.yaml"
    manifest.write_text(MANIFEST)
    run(base, "apply", "-f", str(manifest))
    manifest.write_text(MANIFEST.replace("port: 80\n", "port: 81\n"))
    out = run(base, "apply", "-f", str(manifest))
    assert "service/web configured" in out.stdout
    assert [p["port"] for p in srv.store.get("services", "default", "web")["spec"]["ports"]] \
        == [81]
    run(base, "delete", "-f", str(manifest))
    assert srv.store.objects("services", "default") == []
    out = run(base, "apply", "--server-side", "-f", str(manifest))
    assert "serverside-applied" in out.stdout
    assert srv.store.get("pods", "default", "web-1")["metadata"]["labels"] == {"app": "web"}
