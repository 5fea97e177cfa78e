"""labapi through the official kubernetes Python client: CRUD, allocation and errors.

Covers: discovery documents; Service create/get/list/replace/patch (merge,
strategic, JSON patch)/delete; ClusterIP and NodePort allocation and their
collisions (422), freeing on delete and keeping on update; 409 on a stale
replace; 404; 409 AlreadyExists; 422 for bad ports; 404 for a missing
namespace; label and field selectors; list paging with limit/continue; the
status subresource; generateName; and finalizers keeping an object until
they are removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from labapi import LabApiServer, write_kubeconfig


@pytest.fixture
def api(lab: LabApiServer, tmp_path: Path) -> Iterator[client.ApiClient]:
    kc = write_kubeconfig(tmp_path / "kubeconfig", lab.url)
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kc), client_configuration=cfg)
    with client.ApiClient(cfg) as c:
        yield c


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def svc(name: str, *, ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"selector": {"app": name},
                 "ports": ports if ports is not None else [{"port": 80}], **spec},
    }


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def test_discovery(api: client.ApiClient) -> None:
    version = client.VersionApi(api).get_code()
    assert version.git_version.startswith("v1.32") and version.major == "1"
    core_res = client.CoreV1Api(api).get_api_resources()
    by_name = {r.name: r for r in core_res.resources}
    assert by_name["services"].short_names == ["svc"] and by_name["services"].namespaced
    assert not by_name["nodes"].namespaced and by_name["nodes"].kind == "Node"
    assert {"nodes/status", "pods/status", "services/status"} <= set(by_name)
    groups = client.ApisApi(api).get_api_versions()
    assert "discovery.k8s.io" in [g.name for g in groups.groups]
    disc = client.DiscoveryV1Api(api).get_api_resources()
    assert [r.name for r in disc.resources] == ["endpointslices"]


def test_service_crud_and_defaults(core: client.CoreV1Api, lab: LabApiServer) -> None:
    created = core.create_namespaced_service("default", svc("web"))
    spec = created.spec
    assert spec.type == "ClusterIP" and spec.cluster_ip.startswith("10.")
    assert spec.cluster_ips == [spec.cluster_ip]
    assert spec.ports[0].protocol == "TCP" and spec.ports[0].target_port == 80
    assert spec.ip_families == ["IPv4"] and spec.ip_family_policy == "SingleStack"
    assert spec.session_affinity == "None" and spec.internal_traffic_policy == "Cluster"
    assert spec.external_traffic_policy is None
    assert created.metadata.uid and created.metadata.creation_timestamp
    rv = int(created.metadata.resource_version)

    got = core.read_namespaced_service("web", "default")
    assert got.metadata.resource_version == str(rv)
    listed = core.list_namespaced_service("default")
    assert listed.kind == "ServiceList" and int(listed.metadata.resource_version) >= rv
    assert [s.metadata.name for s in listed.items] == ["web"]

    got.metadata.labels["tier"] = "front"
    replaced = core.replace_namespaced_service("web", "default", got)
    assert replaced.metadata.labels["tier"] == "front"
    assert int(replaced.metadata.resource_version) > rv
    assert replaced.spec.cluster_ip == spec.cluster_ip

    patched = core.patch_namespaced_service(
        "web", "default", {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}})
    assert patched.spec.ports[0].target_port == 8080
    assert patched.spec.cluster_ip == spec.cluster_ip
    jp = core.patch_namespaced_service(
        "web", "default", [{"op": "replace", "path": "/metadata/labels/tier", "value": "b"}])
    assert jp.metadata.labels["tier"] == "b"

    deleted = core.delete_namespaced_service("web", "default")
    assert deleted is not None
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_service("web", "default")
    assert exc.value.status == 404
    body = status_of(exc.value)
    assert body["kind"] == "Status" and body["reason"] == "NotFound"
    assert body["details"]["name"] == "web"
    assert lab.store.peek("services", "default", "web") is None


def test_cluster_ip_allocation_and_collisions(core: client.CoreV1Api,
                                              lab: LabApiServer) -> None:
    a = core.create_namespaced_service("default", svc("a"))
    ip = a.spec.cluster_ip
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", svc("b", clusterIP=ip))
    assert exc.value.status == 422 and status_of(exc.value)["reason"] == "Invalid"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", svc("b", clusterIP="192.168.1.1"))
    assert exc.value.status == 422
    fixed = core.create_namespaced_service("default", svc("c", clusterIP="10.96.100.100"))
    assert fixed.spec.cluster_ip == "10.96.100.100"
    headless = core.create_namespaced_service("default", svc("h", clusterIP="None"))
    assert headless.spec.cluster_ip == "None"
    ext = core.create_namespaced_service("default", {
        "metadata": {"name": "ext"}, "spec": {"type": "ExternalName",
                                              "externalName": "example.com"}})
    assert ext.spec.cluster_ip is None

    # Changing an allocated clusterIP is refused; leaving it out keeps it.
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_service("a", "default", {"spec": {"clusterIP": "10.96.7.7"}})
    assert exc.value.status == 422
    body = core.read_namespaced_service("a", "default").to_dict()
    raw = client.ApiClient().sanitize_for_serialization(core.read_namespaced_service(
        "a", "default"))
    raw["spec"].pop("clusterIP")
    raw["spec"].pop("clusterIPs")
    kept = core.replace_namespaced_service("a", "default", raw)
    assert kept.spec.cluster_ip == ip == body["spec"]["cluster_ip"]

    # Freed on delete: the same IP can be requested again.
    core.delete_namespaced_service("a", "default")
    again = core.create_namespaced_service("default", svc("d", clusterIP=ip))
    assert again.spec.cluster_ip == ip
    assert not lab.store.services.ips.in_use("10.96.7.7")


def test_node_port_allocation(core: client.CoreV1Api, lab: LabApiServer) -> None:
    np = core.create_namespaced_service("default", svc("np", type="NodePort"))
    port = np.spec.ports[0].node_port
    assert 30000 <= port <= 32767 and np.spec.external_traffic_policy == "Cluster"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service(
            "default", svc("np2", type="NodePort", ports=[{"port": 80, "nodePort": port}]))
    assert exc.value.status == 422 and "nodePort" in status_of(exc.value)["message"]
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service(
            "default", svc("np3", type="NodePort", ports=[{"port": 80, "nodePort": 80}]))
    assert exc.value.status == 422
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", svc("np4", ports=[{"port": 70000}]))
    assert exc.value.status == 422
    # A failed create leaves nothing allocated.
    assert lab.store.services.ports.in_use(port)
    lb = core.create_namespaced_service(
        "default", svc("lb", type="LoadBalancer", externalTrafficPolicy="Local"))
    assert lb.spec.ports[0].node_port and lb.spec.health_check_node_port
    # Type back to ClusterIP frees the node port.
    core.patch_namespaced_service("np", "default", {"spec": {"type": "ClusterIP"}})
    back = core.read_namespaced_service("np", "default")
    assert back.spec.ports[0].node_port is None and back.spec.external_traffic_policy is None
    assert not lab.store.services.ports.in_use(port)
    again = core.create_namespaced_service(
        "default", svc("np5", type="NodePort", ports=[{"port": 80, "nodePort": port}]))
    assert again.spec.ports[0].node_port == port


def test_conflicts_and_missing(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_service("default", svc("web"))
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", svc("web"))
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "AlreadyExists"
    core.patch_namespaced_service("web", "default", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_service("web", "default", first)
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "Conflict"
    with pytest.raises(ApiException) as exc:
        core.delete_namespaced_service("nope", "default")
    assert exc.value.status == 404
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("no-such-ns", svc("web"))
    assert exc.value.status == 404 and "namespaces" in status_of(exc.value)["message"]
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_service("default", {"metadata": {"name": "Bad_Name"},
                                                   "spec": {"ports": [{"port": 1}]}})
    assert exc.value.status == 422


def test_malformed_json_is_400(lab: LabApiServer) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{lab.url}/api/v1/namespaces/default/services",
                                 data=b"{not json", method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 400
    assert json.loads(exc.value.read())["reason"] == "BadRequest"


def test_selectors(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    for ns, name, labels, node in (("default", "p1", {"app": "a", "tier": "x"}, "n1"),
                                   ("default", "p2", {"app": "b"}, "n2"),
                                   ("other", "p3", {"app": "a"}, "n1")):
        core.create_namespaced_pod(ns, {"metadata": {"name": name, "labels": labels},
                                        "spec": {"nodeName": node, "containers": [
                                            {"name": "c", "image": "i"}]}})

    def names(**kw: Any) -> list[str]:
        return sorted(p.metadata.name for p in core.list_pod_for_all_namespaces(**kw).items)

    assert names() == ["p1", "p2", "p3"]
    assert names(label_selector="app=a") == ["p1", "p3"]
    assert names(label_selector="app==a,tier") == ["p1"]
    assert names(label_selector="app!=a") == ["p2"]
    assert names(label_selector="app in (a, b),!tier") == ["p2", "p3"]
    assert names(label_selector="app notin (a)") == ["p2"]
    assert names(field_selector="spec.nodeName=n1") == ["p1", "p3"]
    assert names(field_selector="metadata.namespace=other") == ["p3"]
    assert names(field_selector="metadata.name!=p1,spec.nodeName=n1") == ["p3"]
    assert [p.metadata.name for p in core.list_namespaced_pod(
        "default", field_selector="metadata.name=p2").items] == ["p2"]
    with pytest.raises(ApiException) as exc:
        names(field_selector="spec.bogus=1")
    assert exc.value.status == 400
    with pytest.raises(ApiException) as exc:
        names(label_selector="a in (")
    assert exc.value.status == 400


def test_paging(core: client.CoreV1Api) -> None:
    for i in range(7):
        core.create_namespaced_service("default", svc(f"s{i}"))
    seen: list[str] = []
    token = None
    rvs = set()
    pages = 0
    while True:
        page = core.list_namespaced_service("default", limit=3, _continue=token)
        pages += 1
        seen += [s.metadata.name for s in page.items]
        rvs.add(page.metadata.resource_version)
        token = page.metadata.var_continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 7 - len(seen)
    assert pages == 3 and seen == [f"s{i}" for i in range(7)] and len(rvs) == 1


def test_status_subresource_and_generate_name(core: client.CoreV1Api) -> None:
    node = core.create_node({"metadata": {"name": "n1", "labels": {"a": "b"}},
                             "status": {"addresses": [{"type": "InternalIP",
                                                       "address": "10.0.0.1"}]}})
    assert node.status.addresses[0].address == "10.0.0.1"
    # The main resource ignores status; the status subresource changes only status.
    node.status.addresses[0].address = "10.0.0.9"
    node.metadata.labels["c"] = "d"
    upd = core.replace_node("n1", node)
    assert upd.status.addresses[0].address == "10.0.0.1" and upd.metadata.labels["c"] == "d"
    st = core.patch_node_status("n1", {"status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.2"}, {"type": "Hostname", "address": "n1"}]},
        "metadata": {"labels": {"ignored": "yes"}}})
    assert [a.address for a in st.status.addresses] == ["10.0.0.2", "n1"]
    assert "ignored" not in st.metadata.labels
    pod = core.create_namespaced_pod("default", {
        "metadata": {"generateName": "web-"},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"podIP": "10.244.0.5", "phase": "Running"}})
    assert pod.metadata.name.startswith("web-") and len(pod.metadata.name) == 9
    assert pod.status.pod_ip == "10.244.0.5"
    st2 = core.patch_namespaced_pod_status(pod.metadata.name, "default", {
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert st2.status.conditions[0].status == "True" and st2.status.pod_ip == "10.244.0.5"


def test_finalizers_keep_object_until_removed(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", {"metadata": {"name": "f", "finalizers": ["x/y"]},
                                           "spec": {"containers": [{"name": "c",
                                                                    "image": "i"}]}})
    core.delete_namespaced_pod("f", "default")
    marked = core.read_namespaced_pod("f", "default")
    assert marked.metadata.deletion_timestamp is not None
    core.patch_namespaced_pod("f", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod("f", "default")
    assert exc.value.status == 404


def test_namespace_delete_removes_contents(core: client.CoreV1Api, lab: LabApiServer) -> None:
    core.create_namespace({"metadata": {"name": "gone"}})
    core.create_namespaced_service("gone", svc("web"))
    ip = core.read_namespaced_service("web", "gone").spec.cluster_ip
    core.delete_namespace("gone")
    assert lab.store.objects("services", "gone") == []
    assert not lab.store.services.ips.in_use(ip)
    names = [n.metadata.name for n in core.list_namespace().items]
    assert "default" in names and "kube-system" in names and "gone" not in names
