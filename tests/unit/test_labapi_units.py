"""labapi's pure pieces without HTTP: selectors, the three patch flavours, allocators, store.

Covers: label selector grammar and matching (including keys absent for != and
notin) and parse errors; field selectors; merge patch (null deletes), JSON
patch (add/remove/replace/move/copy/test), strategic merge (merge keys,
``$patch: delete``, directives ignored, scalar-list replace, finalizer union);
sequential ClusterIP/NodePort allocation with reservation, exhaustion and
release; and store semantics a client cannot see directly: no-op updates keep
the resourceVersion and emit no event, generation bumps only on spec changes,
and continue tokens expire after compaction.
"""

from __future__ import annotations

import pytest
from labapi.allocators import AllocationError, ClusterIPAllocator, NodePortAllocator
from labapi.errors import ApiError
from labapi.patching import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    apply_patch,
    json_patch,
    merge_patch,
    strategic_merge,
)
from labapi.selectors import (
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from labapi.store import Store


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("", {}, True),
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "c"}, False),
    ("a!=b", {}, True),
    ("a!=b", {"a": "b"}, False),
    ("a in (x, y)", {"a": "y"}, True),
    ("a in (x,y)", {}, False),
    ("a notin (x)", {}, True),
    ("a notin (x)", {"a": "x"}, False),
    ("a", {"a": ""}, True),
    ("!a", {"a": ""}, False),
    ("!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name",
     {"app": "x"}, True),
    ("app=web,tier in (front,back),!canary", {"app": "web", "tier": "back"}, True),
])
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert labels_match(parse_label_selector(selector), labels) is expected


@pytest.mark.parametrize("bad", ["a in ()", "a in (", "=b", "a=b,", "a b c", "a=b=c"])
def test_label_selector_errors(bad: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_label_selector(bad)
    assert exc.value.code == 400


def test_field_selectors() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}}
    reqs = parse_field_selector("spec.nodeName=n1,metadata.name!=q", ("spec.nodeName",), "Pod")
    assert fields_match(reqs, pod)
    assert not fields_match(parse_field_selector("spec.nodeName==n2", ("spec.nodeName",),
                                                 "Pod"), pod)
    assert fields_match(parse_field_selector("spec.nodeName=", ("spec.nodeName",), "Pod"),
                        {"metadata": {"name": "x"}})
    with pytest.raises(ApiError):
        parse_field_selector("spec.nodeName=n1", (), "Service")


def test_merge_and_json_patch() -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert merge_patch(doc, {"a": {"b": None, "d": 3}, "l": [3]}) == {
        "a": {"c": 2, "d": 3}, "l": [3]}
    assert doc == {"a": {"b": 1, "c": 2}, "l": [1, 2]}  # inputs untouched
    out = json_patch(doc, [
        {"op": "add", "path": "/l/-", "value": 9},
        {"op": "replace", "path": "/a/b", "value": 5},
        {"op": "remove", "path": "/a/c"},
        {"op": "copy", "from": "/a/b", "path": "/x"},
        {"op": "move", "from": "/x", "path": "/y"},
        {"op": "test", "path": "/y", "value": 5},
        {"op": "add", "path": "/k~1e", "value": True},
    ])
    assert out == {"a": {"b": 5}, "l": [1, 2, 9], "y": 5, "k/e": True}
    with pytest.raises(ApiError) as exc:
        json_patch(doc, [{"op": "test", "path": "/a/b", "value": 7}])
    assert exc.value.code == 422
    with pytest.raises(ApiError):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])
    with pytest.raises(ApiError) as exc:
        apply_patch("application/bogus", doc, {})
    assert exc.value.code == 415
    assert apply_patch(MERGE_PATCH + "; charset=utf-8", doc, {"z": 1})["z"] == 1
    assert apply_patch(JSON_PATCH, doc, [])["a"] == {"b": 1, "c": 2}


def test_strategic_merge() -> None:
    svc = {"spec": {"ports": [{"name": "a", "port": 80, "targetPort": 80},
                              {"name": "b", "port": 81}],
                    "selector": {"app": "x", "tier": "y"}, "externalIPs": ["1.1.1.1"]},
           "metadata": {"finalizers": ["f1"]}}
    out = strategic_merge(svc, {
        "$setElementOrder/ports": [{"port": 80}],
        "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 82, "name": "c"},
                           {"port": 81, "$patch": "delete"}],
                 "selector": {"tier": None}, "externalIPs": ["2.2.2.2"],
                 "$retainKeys": ["ports"]},
        "metadata": {"finalizers": ["f2"]}})
    assert out["spec"]["ports"] == [{"name": "a", "port": 80, "targetPort": 8080},
                                    {"port": 82, "name": "c"}]
    assert out["spec"]["selector"] == {"app": "x"}
    assert out["spec"]["externalIPs"] == ["2.2.2.2"]
    assert out["metadata"]["finalizers"] == ["f1", "f2"]
    node = {"status": {"conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "DiskPressure", "status": "False"}]}}
    out = apply_patch(STRATEGIC_PATCH, node, {"status": {"conditions": [
        {"type": "Ready", "status": "False"}]}})
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "False"},
                                           {"type": "DiskPressure", "status": "False"}]
    replaced = strategic_merge({"spec": {"a": 1, "b": 2}},
                               {"spec": {"$patch": "replace", "c": 3}})
    assert replaced == {"spec": {"c": 3}}


def test_allocators() -> None:
    ips = ClusterIPAllocator("10.96.0.0/29")  # .0 network, .1 kept back, .7 broadcast
    got = [ips.allocate() for _ in range(5)]
    assert got == [f"10.96.0.{i}" for i in range(2, 7)]
    with pytest.raises(AllocationError):
        ips.allocate()
    ips.release("10.96.0.4")
    assert ips.allocate() == "10.96.0.4"
    for bad in ("10.96.0.7", "10.96.0.0", "10.97.0.1", "not-an-ip", "10.96.0.3"):
        with pytest.raises(AllocationError):
            ips.reserve(bad)
    ports = NodePortAllocator(30000, 30002)
    ports.reserve(30001)
    assert [ports.allocate(), ports.allocate()] == [30000, 30002]
    with pytest.raises(AllocationError):
        ports.allocate()
    with pytest.raises(AllocationError):
        ports.reserve(29999)


def test_store_noop_update_and_generation() -> None:
    store = Store()
    created = store.create("services", "default", {"metadata": {"name": "s"},
                                                   "spec": {"ports": [{"port": 80}]}})
    w = store.watch("services", "default", resource_version=created["metadata"][
        "resourceVersion"])
    same = store.update("services", "default", "s", created)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert w.items.empty()
    labelled = store.patch("services", "default", "s", MERGE_PATCH,
                           {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    specced = store.patch("services", "default", "s", MERGE_PATCH,
                          {"spec": {"sessionAffinity": "ClientIP"}})
    assert specced["metadata"]["generation"] == 2
    assert specced["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800
    assert [w.items.get_nowait()[1] for _ in range(2)] == ["MODIFIED", "MODIFIED"]
    store.stop_watch(w)


def test_continue_token_expires_after_compaction() -> None:
    store = Store()
    for i in range(3):
        store.create("pods", "default", {"metadata": {"name": f"p{i}"}, "spec": {}})
    page = store.list("pods", "default", limit=1)
    token = page["metadata"]["continue"]
    assert [p["metadata"]["name"] for p in store.list(
        "pods", "default", limit=1, continue_token=token)["items"]] == ["p1"]
    store.create("pods", "default", {"metadata": {"name": "p9"}, "spec": {}})
    store.compact()
    with pytest.raises(ApiError) as exc:
        store.list("pods", "default", limit=1, continue_token=token)
    assert exc.value.code == 410
    with pytest.raises(ApiError) as exc:
        store.list("pods", "default", continue_token="garbage!")
    assert exc.value.code == 400
