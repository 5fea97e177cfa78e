"""labapi's server-side Table output: the printers, the HTTP answers, and real kubectl.

Covers: AGE formatting; the cells of the node, service, endpointslice and pod
printers on representative objects (ClusterIP, NodePort, LoadBalancer pending
and with ingress, externalIPs, headless, ExternalName, a NotReady and
unschedulable node, an EndpointSlice with five endpoints); Accept-header
negotiation and ``includeObject``; Table answers to list, get and watch over
HTTP; and ``kubectl get`` of nodes, services (plain, ``-o wide``, one name),
endpointslices and pods against a LabApiServer, checking header and row
cells. kubectl is required when CI=true; elsewhere those tests skip without it.
"""

from __future__ import annotations

import calendar
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import run_kubectl
from labapi import LabApiServer
from labapi import table_printers as tp

KUBECTL_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,"
                  "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")

CREATED = "2026-01-01T00:00:00Z"
T0 = float(calendar.timegm(time.strptime("2026-01-01T00:00:00", "%Y-%m-%dT%H:%M:%S")))
NOW = T0 + 5


def meta(name: str, namespace: str | None = "default", **extra: Any) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "creationTimestamp": CREATED, "resourceVersion": "7",
                          **extra}
    if namespace:
        md["namespace"] = namespace
    return md


def svc(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": meta(name),
                           "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def cells(resource_key: str, obj: dict[str, Any], now: float = NOW) -> list[Any]:
    return tp.printer_for(resource_key).cells(obj, now)


# -- AGE ---------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (5, "5s"), (119, "119s"), (120, "2m"),
    (125, "2m5s"), (599, "9m59s"), (600, "10m"), (179 * 60 + 59, "179m"), (3 * 3600, "3h"),
    (3 * 3600 + 5 * 60, "3h5m"), (8 * 3600 + 59, "8h"), (47 * 3600, "47h"),
    (48 * 3600, "2d"), (53 * 3600, "2d5h"), (8 * 86400, "8d"), (729 * 86400, "729d"),
    (730 * 86400, "2y"), (731 * 86400, "2y1d"), (8 * 365 * 86400, "8y"),
])
def test_human_duration(seconds: int, text: str) -> None:
    assert tp.human_duration(seconds) == text


def test_age_unknown_without_creation_timestamp() -> None:
    obj = {"metadata": {"name": "x"}, "spec": {"type": "ClusterIP"}}
    assert cells("services", obj)[5] == "<unknown>"
    assert tp.since("not a time", NOW) == "<unknown>"
    assert tp.since("2026-01-01T00:03:00.123456Z", T0 + 600) == "7m"


# -- services ----------------------------------------------------------------------


def test_cluster_ip_service() -> None:
    obj = svc("web", {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                      "selector": {"app": "web", "tier": "fe"},
                      "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]})
    assert cells("services", obj) == ["web", "ClusterIP", "10.96.0.10", "<none>", "80/TCP", "5s",
                                      "app=web,tier=fe"]


def test_node_port_service() -> None:
    obj = svc("np", {"type": "NodePort", "clusterIPs": ["10.96.0.11"],
                     "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30505},
                               {"port": 53, "protocol": "UDP", "nodePort": 30053}]})
    assert cells("services", obj) == ["np", "NodePort", "10.96.0.11", "<none>",
                                      "80:30505/TCP,53:30053/UDP", "5s", "<none>"]


def test_load_balancer_pending_and_with_ingress() -> None:
    spec = {"type": "LoadBalancer", "clusterIPs": ["10.96.0.12"],
            "ports": [{"port": 443, "protocol": "TCP", "nodePort": 31443}]}
    pending = svc("lb", spec, {"loadBalancer": {}})
    assert cells("services", pending)[2:5] == ["10.96.0.12", "<pending>", "443:31443/TCP"]
    ready = svc("lb", spec, {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"},
                                                          {"hostname": "lb.example.com"},
                                                          {"ip": "203.0.113.5"}]}})
    # Ingress entries sorted (an IP wins over a hostname in one entry), never clipped.
    assert cells("services", ready)[3] == "203.0.113.5,203.0.113.9,lb.example.com"
    both = svc("lb", {**spec, "externalIPs": ["198.51.100.7"]},
               {"loadBalancer": {"ingress": [{"ip": "203.0.113.5", "hostname": "x"}]}})
    assert cells("services", both)[3] == "203.0.113.5,198.51.100.7"


def test_external_ips_headless_and_external_name() -> None:
    ext = svc("ext", {"type": "ClusterIP", "clusterIPs": ["10.96.0.13"],
                      "externalIPs": ["198.51.100.7", "198.51.100.8"],
                      "ports": [{"port": 8080, "protocol": "TCP"}]})
    assert cells("services", ext)[3] == "198.51.100.7,198.51.100.8"
    headless = svc("hl", {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
                          "selector": {"app": "db"}, "ports": [{"port": 5432, "protocol": "TCP"}]})
    assert cells("services", headless) == ["hl", "ClusterIP", "None", "<none>", "5432/TCP", "5s",
                                           "app=db"]
    name = svc("db", {"type": "ExternalName", "externalName": "db.example.com"})
    assert cells("services", name) == ["db", "ExternalName", "<none>", "db.example.com",
                                       "<none>", "5s", "<none>"]
    # Only clusterIP set (no clusterIPs): the API server derives one from the other.
    assert tp.service_cluster_ip(svc("old", {"clusterIP": "10.96.0.14"})) == "10.96.0.14"


# -- nodes -------------------------------------------------------------------------


def test_ready_node_wide_cells() -> None:
    node = {"metadata": meta("node-1", None, labels={
                "node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "",
                "kubernetes.io/hostname": "node-1"}),
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "Hostname", "address": "node-1"},
                                     {"type": "InternalIP", "address": "192.0.2.11"},
                                     {"type": "InternalIP", "address": "192.0.2.99"},
                                     {"type": "ExternalIP", "address": "198.51.100.11"}],
                       "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian GNU/Linux 12",
                                    "kernelVersion": "6.1.0-18-amd64",
                                    "containerRuntimeVersion": "containerd://1.7.13"}}}
    assert cells("nodes", node) == [
        "node-1", "Ready", "control-plane,worker", "5s", "v1.32.0", "192.0.2.11",
        "198.51.100.11", "Debian GNU/Linux 12", "6.1.0-18-amd64", "containerd://1.7.13"]


def test_not_ready_unschedulable_and_unknown_nodes() -> None:
    node = {"metadata": meta("node-2", None, labels={"kubernetes.io/role": "edge"}),
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    assert cells("nodes", node) == ["node-2", "NotReady,SchedulingDisabled", "edge", "5s", "",
                                    "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>"]
    bare = {"metadata": meta("node-3", None)}
    assert cells("nodes", bare)[:3] == ["node-3", "Unknown", "<none>"]
    unknown = {"metadata": meta("node-4", None), "spec": {"unschedulable": True},
               "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    assert tp.node_status(unknown) == "NotReady,SchedulingDisabled"


# -- endpointslices ----------------------------------------------------------------


def test_endpointslice_with_five_endpoints() -> None:
    eps = {"metadata": meta("web-abc12"), "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                     {"name": "dns", "port": 5353, "protocol": "UDP"}],
           "endpoints": [{"addresses": [f"10.244.0.{i}"], "conditions": {"ready": True}}
                         for i in range(11, 16)]}
    assert cells("endpointslices.discovery.k8s.io", eps) == [
        "web-abc12", "IPv4", "8080,5353", "10.244.0.11,10.244.0.12,10.244.0.13 + 2 more...", "5s"]


def test_endpointslice_edge_cases() -> None:
    empty = {"metadata": meta("empty"), "addressType": "IPv6", "ports": None, "endpoints": []}
    assert cells("endpointslices.discovery.k8s.io", empty) == ["empty", "IPv6", "<unset>",
                                                               "<unset>", "5s"]
    many = {"metadata": meta("many"), "addressType": "IPv4",
            "ports": [{"port": 1}, {"name": "named"}, {}, {"port": 4}, {"port": 5}],
            "endpoints": [{"addresses": ["10.0.0.1", "10.0.0.2"]}, {"addresses": ["10.0.0.3"]}]}
    assert cells("endpointslices.discovery.k8s.io", many)[2:4] == [
        "1,named,* + 2 more...", "10.0.0.1,10.0.0.2,10.0.0.3"]


# -- pods --------------------------------------------------------------------------


def pod(name: str, spec: dict[str, Any], status: dict[str, Any], **md: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta(name, **md),
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
            "status": status}


def test_pod_rows() -> None:
    running = pod("web-1", {"nodeName": "node-1", "readinessGates": [
                      {"conditionType": "example.com/lb"}, {"conditionType": "example.com/x"}]},
                  {"phase": "Running", "podIP": "10.244.0.11", "podIPs": [{"ip": "10.244.0.11"}],
                   "conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "example.com/lb", "status": "True"}],
                   "containerStatuses": [{"name": "c", "ready": True, "restartCount": 2,
                                          "state": {"running": {}},
                                          "lastState": {"terminated": {
                                              "exitCode": 1,
                                              "finishedAt": "2025-12-31T23:57:00Z"}}}]})
    assert cells("pods", running) == ["web-1", "1/1", "Running", "2 (3m5s ago)", "5s",
                                      "10.244.0.11", "node-1", "<none>", "1/2"]
    lab_pod = pod("web-2", {"nodeName": "node-1"},
                  {"phase": "Running", "podIP": "10.244.0.12",
                   "conditions": [{"type": "Ready", "status": "True"}]})
    assert cells("pods", lab_pod) == ["web-2", "0/1", "Running", "0", "5s", "10.244.0.12",
                                      "node-1", "<none>", "<none>"]
    pending = pod("web-3", {}, {"phase": "Pending", "nominatedNodeName": "node-2"})
    assert cells("pods", pending) == ["web-3", "0/1", "Pending", "0", "5s", "<none>", "<none>",
                                      "node-2", "<none>"]


def test_pod_status_reasons() -> None:
    crash = pod("crash", {}, {"phase": "Running", "containerStatuses": [
        {"name": "c", "ready": False, "restartCount": 4,
         "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]})
    assert tp.pod_summary(crash)[:3] == ("0/1", "CrashLoopBackOff", 4)
    init = pod("init", {"initContainers": [{"name": "i"}]}, {"phase": "Pending",
               "initContainerStatuses": [{"name": "i", "state": {"running": {}}}]})
    assert tp.pod_summary(init)[1] == "Init:0/1"
    killed = pod("killed", {}, {"phase": "Failed", "containerStatuses": [
        {"name": "c", "state": {"terminated": {"exitCode": 137, "signal": 9}}}]})
    assert tp.pod_summary(killed)[1] == "Signal:9"
    gone = pod("gone", {}, {"phase": "Running"}, deletionTimestamp=CREATED)
    assert tp.pod_summary(gone)[1] == "Terminating"
    done = pod("done", {}, {"phase": "Succeeded", "containerStatuses": [
        {"name": "c", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]})
    table = tp.build_table("pods", [done], now=NOW)
    assert table["rows"][0]["cells"][2] == "Completed"
    assert table["rows"][0]["conditions"][0]["type"] == "Completed"


# -- assembly and negotiation ------------------------------------------------------


def test_build_table_shape_and_include_object() -> None:
    obj = svc("web", {"type": "ClusterIP", "clusterIPs": ["10.96.0.10"],
                      "ports": [{"port": 80, "protocol": "TCP"}]})
    table = tp.build_table("services", [obj], now=NOW,
                           list_metadata={"resourceVersion": "42", "continue": "abc",
                                          "remainingItemCount": 3, "selfLink": "x"})
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42", "continue": "abc",
                                 "remainingItemCount": 3}
    names = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert names == [("Name", 0), ("Type", 0), ("Cluster-IP", 0), ("External-IP", 0),
                     ("Port(s)", 0), ("Age", 0), ("Selector", 1)]
    assert all(set(c) == {"name", "type", "format", "description", "priority"}
               for c in table["columnDefinitions"])
    assert table["columnDefinitions"][0]["format"] == "name"
    row_obj = table["rows"][0]["object"]
    assert row_obj == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                       "metadata": obj["metadata"]}
    assert tp.build_table("services", [obj], include_object="Metadata", now=NOW,
                          version="v1beta1")["rows"][0]["object"]["apiVersion"] \
        == "meta.k8s.io/v1beta1"
    assert tp.build_table("services", [obj], include_object="Object",
                          now=NOW)["rows"][0]["object"] == obj
    assert tp.build_table("services", [obj], include_object="None",
                          now=NOW)["rows"][0]["object"] is None
    assert tp.build_table("services", [obj], headers=False, now=NOW)["columnDefinitions"] == []
    with pytest.raises(ValueError):
        tp.build_table("services", [obj], include_object="Everything")
    single = tp.object_table("services", obj, now=NOW)
    assert single["metadata"] == {"resourceVersion": "7"} and len(single["rows"]) == 1


def test_default_table_for_other_resources() -> None:
    ns = {"metadata": {"name": "default", "creationTimestamp": CREATED}}
    table = tp.build_table("namespaces", [ns], now=T0 + 3 * 86400)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]
    assert table["rows"][0]["cells"] == ["default", "3d"]


@pytest.mark.parametrize(("accept", "version"), [
    (KUBECTL_ACCEPT, "v1"),
    ("application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json", "v1beta1"),
    ("application/json; as=Table; v=v1; g=meta.k8s.io", "v1"),
    ("application/json", None),
    ("application/json, */*", None),
    ("application/json,application/json;as=Table;v=v1;g=meta.k8s.io", None),
    ("application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io,application/json", None),
    ("application/json;as=Table;v=v2;g=meta.k8s.io,application/json", None),
    ("application/yaml;as=Table;v=v1;g=meta.k8s.io", None),
    ("", None),
    (None, None),
])
def test_table_version_negotiation(accept: str | None, version: str | None) -> None:
    assert tp.table_version(accept) == version


# -- over HTTP ---------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[LabApiServer]:
    srv = LabApiServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def fetch(srv: LabApiServer, path: str, accept: str = KUBECTL_ACCEPT) -> tuple[str, Any]:
    req = urllib.request.Request(srv.url + path, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(resp.headers["Content-Type"]), json.loads(resp.read())


def test_http_list_get_and_plain_json(server: LabApiServer) -> None:
    server.store.create("services", "default", {"metadata": {"name": "web"}, "spec": {
        "clusterIP": "10.96.0.50", "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80}]}})
    ctype, table = fetch(server, "/api/v1/namespaces/default/services?limit=500")
    assert ctype == "application/json;as=Table;v=v1;g=meta.k8s.io"
    assert table["kind"] == "Table" and table["metadata"]["resourceVersion"]
    assert table["rows"][0]["cells"][:5] == ["web", "ClusterIP", "10.96.0.50", "<none>",
                                             "80/TCP"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    _, one = fetch(server, "/api/v1/namespaces/default/services/web?includeObject=Object")
    assert one["rows"][0]["object"]["spec"]["clusterIP"] == "10.96.0.50"
    assert one["metadata"]["resourceVersion"] == one["rows"][0]["object"]["metadata"][
        "resourceVersion"]
    ctype, plain = fetch(server, "/api/v1/namespaces/default/services/web", "application/json")
    assert ctype == "application/json" and plain["kind"] == "Service"
    with pytest.raises(urllib.error.HTTPError) as err:
        fetch(server, "/api/v1/services?includeObject=Everything")
    assert err.value.code == 400
    assert json.loads(err.value.read())["reason"] == "BadRequest"


def test_http_watch_sends_column_definitions_once(server: LabApiServer) -> None:
    store = server.store
    for name in ("a", "b"):
        store.create("services", "default", {"metadata": {"name": name}, "spec": {
            "ports": [{"name": "http", "port": 80}]}})
    req = urllib.request.Request(
        server.url + "/api/v1/namespaces/default/services?watch=true&resourceVersion=0"
        "&timeoutSeconds=1&allowWatchBookmarks=true", headers={"Accept": KUBECTL_ACCEPT})
    with urllib.request.urlopen(req, timeout=10) as resp:
        events = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    added = [e for e in events if e["type"] == "ADDED"]
    assert [e["object"]["rows"][0]["cells"][0] for e in added] == ["a", "b"]
    assert all(e["object"]["kind"] == "Table" for e in events)
    assert len(added[0]["object"]["columnDefinitions"]) == 7
    assert added[1]["object"]["columnDefinitions"] == []
    bookmarks = [e["object"] for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks and bookmarks[-1]["rows"] == [] \
        and bookmarks[-1]["metadata"]["resourceVersion"]


# -- real kubectl ------------------------------------------------------------------


@pytest.fixture
def kubectl(kubectl_lab: tuple[LabApiServer, list[str]]) -> Iterator[tuple[LabApiServer, list[str]]]:
    srv, base = kubectl_lab
    store = srv.store
    store.create("nodes", None, {
        "metadata": {"name": "node-1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "192.0.2.11"}],
                   "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian",
                                "kernelVersion": "6.1.0", "containerRuntimeVersion": "none"}}})
    store.create("nodes", None, {"metadata": {"name": "node-2"}, "spec": {"unschedulable": True},
                                 "status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    store.create("services", "default", {"metadata": {"name": "web"}, "spec": {
        "type": "NodePort", "clusterIP": "10.96.0.80", "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30505}]}})
    store.create("services", "default", {"metadata": {"name": "lb"}, "spec": {
        "type": "LoadBalancer", "clusterIP": "10.96.0.81", "externalIPs": ["198.51.100.7"],
        "ports": [{"name": "https", "port": 443, "nodePort": 30443}]}})
    for i in range(5):
        store.create("pods", "default", {
            "metadata": {"name": f"web-{i}", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [
                {"name": "c", "image": "busybox", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": f"10.244.0.{11 + i}",
                       "conditions": [{"type": "Ready", "status": "True"}]}})
    yield srv, base


def run(base: list[str], *args: str) -> str:
    return run_kubectl(base, *args).stdout


def parse(output: str) -> tuple[list[str], list[dict[str, str]]]:
    """kubectl's aligned table: header names and one dict per row, cut at header offsets."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?:(?<=\s{2})|^)\S", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    rows = []
    for line in lines[1:]:
        values = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, values, strict=True)))
    return names, rows


def by_name(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["NAME"]: r for r in rows}


AGE = re.compile(r"^\d+s$")


def test_kubectl_get_nodes(kubectl: tuple[LabApiServer, list[str]]) -> None:
    _, base = kubectl
    names, rows = parse(run(base, "get", "nodes"))
    assert names == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    nodes = by_name(rows)
    assert nodes["node-1"]["STATUS"] == "Ready"
    assert nodes["node-1"]["ROLES"] == "control-plane"
    assert nodes["node-1"]["VERSION"] == "v1.32.0"
    assert AGE.match(nodes["node-1"]["AGE"])
    assert nodes["node-2"]["STATUS"] == "NotReady,SchedulingDisabled"
    names, rows = parse(run(base, "get", "nodes", "-o", "wide"))
    assert names == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP",
                     "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert by_name(rows)["node-1"]["INTERNAL-IP"] == "192.0.2.11"
    assert by_name(rows)["node-2"]["OS-IMAGE"] == "<unknown>"


def test_kubectl_get_services(kubectl: tuple[LabApiServer, list[str]]) -> None:
    _, base = kubectl
    names, rows = parse(run(base, "get", "svc"))
    assert names == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    svcs = by_name(rows)
    assert {k: v for k, v in svcs["web"].items() if k != "AGE"} == {
        "NAME": "web", "TYPE": "NodePort", "CLUSTER-IP": "10.96.0.80", "EXTERNAL-IP": "<none>",
        "PORT(S)": "80:30505/TCP"}
    assert svcs["lb"]["EXTERNAL-IP"] == "198.51.100.7"
    assert svcs["lb"]["PORT(S)"] == "443:30443/TCP"


def test_kubectl_get_services_wide(kubectl: tuple[LabApiServer, list[str]]) -> None:
    _, base = kubectl
    names, rows = parse(run(base, "get", "svc", "-o", "wide"))
    assert names == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    assert by_name(rows)["web"]["SELECTOR"] == "app=web"
    assert by_name(rows)["lb"]["SELECTOR"] == "<none>"


def test_kubectl_get_one_service(kubectl: tuple[LabApiServer, list[str]]) -> None:
    _, base = kubectl
    names, rows = parse(run(base, "get", "svc", "web"))
    assert names == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert len(rows) == 1 and rows[0]["PORT(S)"] == "80:30505/TCP"
    # With -A kubectl adds NAMESPACE itself, from the row's PartialObjectMetadata.
    names, rows = parse(run(base, "get", "svc", "-A", "--show-labels"))
    assert names[0] == "NAMESPACE" and names[-1] == "LABELS"
    assert by_name(rows)["web"]["NAMESPACE"] == "default"


def test_kubectl_get_endpointslices(kubectl: tuple[LabApiServer, list[str]]) -> None:
    _, base = kubectl
    names, rows = parse(run(base, "get", "endpointslices", "-l",
                            "kubernetes.io/service-name=web"))
    assert names == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert len(rows) == 1
    assert rows[0]["NAME"].startswith("web-")
    assert rows[0]["ADDRESSTYPE"] == "IPv4"
    assert rows[0]["PORTS"] == "8080"
    assert rows[0]["ENDPOINTS"] == "10.244.0.11,10.244.0.12,10.244.0.13 + 2 more..."


def test_kubectl_get_pods_wide(kubectl: tuple[LabApiServer, list[str]]) -> None:
    _, base = kubectl
    names, rows = parse(run(base, "get", "pods", "-o", "wide"))
    assert names == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE",
                     "NOMINATED NODE", "READINESS GATES"]
    pod0 = by_name(rows)["web-0"]
    assert (pod0["READY"], pod0["STATUS"], pod0["RESTARTS"], pod0["IP"], pod0["NODE"]) == (
        "0/1", "Running", "0", "10.244.0.11", "node-1")
    names, _ = parse(run(base, "get", "pods"))
    assert names == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
