"""labapi's EndpointSlice and Endpoints controller, observed through the kubernetes client.

Covers: a Service with three Ready Pods → one slice with three ready
endpoints, resolved ports (int and named targetPort), nodeName, zone from the
Node, targetRef, labels, ownerReference and the trigger-time annotation; a
Pod turning NotReady (ready/serving false) and terminating (finalizer keeps it);
Pod deletion; terminal and IP-less Pods excluded; no slice write when an
unrelated Pod changes; the legacy Endpoints object; Service deletion and
selector removal deleting the slice; headless label; and an edited slice being
put back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from labapi import LabApiServer, write_kubeconfig

SERVICE_LABEL = "kubernetes.io/service-name"
TRIGGER = "endpoints.kubernetes.io/last-change-trigger-time"


@pytest.fixture
def apis(lab: LabApiServer, tmp_path: Path) -> tuple[client.CoreV1Api, client.DiscoveryV1Api]:
    kc = write_kubeconfig(tmp_path / "kubeconfig", lab.url)
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kc), client_configuration=cfg)
    api = client.ApiClient(cfg)
    return client.CoreV1Api(api), client.DiscoveryV1Api(api)


def pod(name: str, ip: str | None, *, node: str = "node-a", ready: bool = True,
        app: str = "web", phase: str = "Running", **meta: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase,
                              "conditions": [{"type": "Ready",
                                              "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {"metadata": {"name": name, "labels": {"app": app}, **meta},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i", "ports": [
                {"name": "http", "containerPort": 8080}]}]},
            "status": status}


def web_service(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "metrics", "port": 9100, "targetPort": 9100}], **spec}}


def slices(disc: client.DiscoveryV1Api, svc: str = "web") -> list[Any]:
    return list(disc.list_namespaced_endpoint_slice(
        "default", label_selector=f"{SERVICE_LABEL}={svc}").items)


def by_ip(sl: Any) -> dict[str, Any]:
    return {e.addresses[0]: e for e in sl.endpoints or []}


def test_slice_for_ready_pods(apis: tuple[client.CoreV1Api, client.DiscoveryV1Api]) -> None:
    core, disc = apis
    core.create_node({"metadata": {"name": "node-a",
                                   "labels": {"topology.kubernetes.io/zone": "z1"}}})
    svc = core.create_namespaced_service("default", web_service())
    for i in range(3):
        core.create_namespaced_pod("default", pod(f"web-{i}", f"10.244.0.{10 + i}"))
    core.create_namespaced_pod("default", pod("other", "10.244.0.99", app="db"))
    (sl,) = slices(disc)
    assert re.fullmatch(r"web-[a-z0-9]{5}", sl.metadata.name)
    assert sl.address_type == "IPv4"
    assert sl.metadata.labels["endpointslice.kubernetes.io/managed-by"] == \
        "endpointslice-controller.k8s.io"
    assert sl.metadata.labels["team"] == "a"
    owner = sl.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid) == ("Service", "web", svc.metadata.uid)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",
                        sl.metadata.annotations[TRIGGER])
    assert sorted((p.name, p.port, p.protocol) for p in sl.ports) == [
        ("http", 8080, "TCP"), ("metrics", 9100, "TCP")]
    eps = by_ip(sl)
    assert sorted(eps) == ["10.244.0.10", "10.244.0.11", "10.244.0.12"]
    for i, ip in enumerate(sorted(eps)):
        ep = eps[ip]
        assert ep.conditions.ready and ep.conditions.serving and not ep.conditions.terminating
        assert ep.node_name == "node-a" and ep.zone == "z1"
        assert ep.target_ref.kind == "Pod" and ep.target_ref.name == f"web-{i}"
        assert ep.target_ref.uid

    legacy = core.read_namespaced_endpoints("web", "default")
    (subset,) = legacy.subsets
    assert sorted(a.ip for a in subset.addresses) == sorted(eps)
    assert subset.not_ready_addresses is None
    assert sorted((p.name, p.port) for p in subset.ports) == [("http", 8080), ("metrics", 9100)]


def test_readiness_termination_and_deletion(
        apis: tuple[client.CoreV1Api, client.DiscoveryV1Api]) -> None:
    core, disc = apis
    core.create_namespaced_service("default", web_service())
    core.create_namespaced_pod("default", pod("a", "10.244.0.1"))
    core.create_namespaced_pod("default", pod("b", "10.244.0.2", finalizers=["lab/hold"]))
    core.create_namespaced_pod("default", pod("c", "10.244.0.3"))
    core.create_namespaced_pod("default", pod("done", "10.244.0.4", phase="Succeeded"))
    core.create_namespaced_pod("default", pod("noip", None))
    (sl,) = slices(disc)
    assert sorted(by_ip(sl)) == ["10.244.0.1", "10.244.0.2", "10.244.0.3"]
    first_trigger = sl.metadata.annotations[TRIGGER]

    core.patch_namespaced_pod_status("a", "default", {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}})
    (sl,) = slices(disc)
    a = by_ip(sl)["10.244.0.1"]
    assert not a.conditions.ready and not a.conditions.serving
    assert sl.metadata.annotations[TRIGGER] >= first_trigger
    legacy = core.read_namespaced_endpoints("web", "default").subsets[0]
    assert [x.ip for x in legacy.not_ready_addresses] == ["10.244.0.1"]

    core.delete_namespaced_pod("b", "default")  # held by its finalizer: terminating
    (sl,) = slices(disc)
    b = by_ip(sl)["10.244.0.2"]
    assert b.conditions.terminating and b.conditions.serving and not b.conditions.ready
    legacy = core.read_namespaced_endpoints("web", "default").subsets[0]
    assert "10.244.0.2" not in [x.ip for x in legacy.addresses or []]

    core.delete_namespaced_pod("c", "default")
    (sl,) = slices(disc)
    assert sorted(by_ip(sl)) == ["10.244.0.1", "10.244.0.2"]


def test_no_write_for_unrelated_change(lab: LabApiServer,
                                       apis: tuple[client.CoreV1Api,
                                                   client.DiscoveryV1Api]) -> None:
    core, disc = apis
    core.create_namespaced_service("default", web_service())
    core.create_namespaced_pod("default", pod("a", "10.244.0.1"))
    core.create_namespaced_pod("default", pod("db", "10.244.0.9", app="db"))
    rv = disc.list_namespaced_endpoint_slice("default").metadata.resource_version
    core.patch_namespaced_pod("db", "default", {"metadata": {"labels": {"x": "y"}}})
    core.patch_namespaced_pod("a", "default", {"metadata": {"annotations": {"note": "1"}}})
    core.create_namespaced_service("default", {"metadata": {"name": "db"}, "spec": {
        "selector": {"app": "db"}, "ports": [{"port": 5432}]}})
    resp = disc.list_namespaced_endpoint_slice(
        "default", watch=True, resource_version=rv, timeout_seconds=1,
        label_selector=f"{SERVICE_LABEL}=web", _preload_content=False)
    events = [json.loads(line) for line in resp if line.strip()]
    assert events == []
    assert lab.store.rv > int(rv)


def test_service_delete_and_selector_removal(
        apis: tuple[client.CoreV1Api, client.DiscoveryV1Api]) -> None:
    core, disc = apis
    core.create_namespaced_service("default", web_service())
    core.create_namespaced_pod("default", pod("a", "10.244.0.1"))
    assert len(slices(disc)) == 1
    core.patch_namespaced_service("web", "default", {"spec": {"selector": None}})
    assert slices(disc) == []
    core.patch_namespaced_service("web", "default", {"spec": {"selector": {"app": "web"}}})
    assert len(slices(disc)) == 1
    core.delete_namespaced_service("web", "default")
    assert slices(disc) == []
    assert core.list_namespaced_endpoints("default").items == []


def test_empty_headless_and_repair(lab: LabApiServer,
                                   apis: tuple[client.CoreV1Api, client.DiscoveryV1Api]) -> None:
    core, disc = apis
    core.create_namespaced_service("default", web_service(clusterIP="None"))
    (sl,) = slices(disc)
    assert sl.endpoints in (None, []) and sl.ports in (None, [])
    assert sl.metadata.labels["service.kubernetes.io/headless"] == ""
    core.create_namespaced_pod("default", pod("a", "10.244.0.1"))
    (again,) = slices(disc)
    assert again.metadata.name == sl.metadata.name and len(again.endpoints) == 1
    # Someone else edits the slice: the controller puts its content back.
    disc.patch_namespaced_endpoint_slice(sl.metadata.name, "default", {"endpoints": []})
    (fixed,) = slices(disc)
    assert len(fixed.endpoints) == 1
    disc.delete_namespaced_endpoint_slice(sl.metadata.name, "default")
    (recreated,) = slices(disc)
    assert recreated.metadata.name != sl.metadata.name and len(recreated.endpoints) == 1
    assert len(lab.store.objects("endpointslices", "default")) == 1


def test_pods_without_named_port(apis: tuple[client.CoreV1Api, client.DiscoveryV1Api]) -> None:
    core, disc = apis
    core.create_namespaced_service("default", web_service())
    core.create_namespaced_pod("default", pod("a", "10.244.0.1"))
    bare = pod("b", "10.244.0.2")
    bare["spec"]["containers"][0]["ports"] = []
    core.create_namespaced_pod("default", bare)
    groups = {tuple(sorted(p.name for p in s.ports or [])): sorted(by_ip(s))
              for s in slices(disc)}
    assert groups == {("http", "metrics"): ["10.244.0.1"], ("metrics",): ["10.244.0.2"]}
