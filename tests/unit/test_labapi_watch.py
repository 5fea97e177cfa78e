"""labapi watch streams through the kubernetes client, read raw and through ``Watch``.

Covers: replay of history after a given resourceVersion (ADDED, MODIFIED,
DELETED with a newer resourceVersion); live events; synthetic ADDED events
for resourceVersion 0; 410 Expired as an ERROR event on an HTTP 200 stream
after ``compact()`` and when the bounded history has moved on; bookmarks;
``timeoutSeconds`` ending the stream cleanly; label selectors turning an
object that leaves the selection into DELETED; cluster-wide and per-namespace
watches; and the client's ``kubernetes.watch.Watch`` helper.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from labapi import LabApiServer, write_kubeconfig


def start(**kw: Any) -> LabApiServer:
    return LabApiServer(bookmark_interval=0.3, **kw).start()


@pytest.fixture
def lab() -> Iterator[LabApiServer]:
    srv = start()
    try:
        yield srv
    finally:
        srv.stop()


def core_for(srv: LabApiServer, tmp_path: Path) -> client.CoreV1Api:
    kc = write_kubeconfig(tmp_path / f"kubeconfig-{srv.port}", srv.url)
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kc), client_configuration=cfg)
    return client.CoreV1Api(client.ApiClient(cfg))


@pytest.fixture
def core(lab: LabApiServer, tmp_path: Path) -> client.CoreV1Api:
    return core_for(lab, tmp_path)


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}


def read_events(resp: Any, want: int | None = None) -> list[dict[str, Any]]:
    """Events from a raw watch response, until ``want`` events or the stream ends."""
    out: list[dict[str, Any]] = []
    for line in resp:
        if line.strip():
            out.append(json.loads(line))
        if want is not None and len(out) >= want:
            resp.close()
            break
    return out


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"].get("metadata", {}).get("name", "")) for e in events]


def test_replay_after_resource_version(core: client.CoreV1Api) -> None:
    a = core.create_namespaced_pod("default", pod("a"))
    rv = a.metadata.resource_version
    core.create_namespaced_pod("default", pod("b"))
    core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_pod("b", "default")
    resp = core.list_namespaced_pod("default", watch=True, resource_version=rv,
                                    timeout_seconds=1, _preload_content=False)
    events = read_events(resp)
    assert brief(events) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    assert events[1]["object"]["metadata"]["labels"] == {"x": "1"}


def test_live_events_and_rv0(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("old"))
    resp = core.list_namespaced_pod("default", watch=True, resource_version="0",
                                    timeout_seconds=2, _preload_content=False)
    core.create_namespaced_pod("default", pod("new"))
    core.delete_namespaced_pod("old", "default")
    events = read_events(resp, want=3)
    assert brief(events) == [("ADDED", "old"), ("ADDED", "new"), ("DELETED", "old")]


def test_cluster_wide_and_namespaced_watch(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    rv = core.list_pod_for_all_namespaces().metadata.resource_version
    core.create_namespaced_pod("default", pod("d"))
    core.create_namespaced_pod("other", pod("o"))
    every = read_events(core.list_pod_for_all_namespaces(
        watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False))
    assert brief(every) == [("ADDED", "d"), ("ADDED", "o")]
    one = read_events(core.list_namespaced_pod(
        "other", watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False))
    assert brief(one) == [("ADDED", "o")]


def test_label_selector_transitions(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("p", app="web"))
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "db"}}})
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "web"}}})
    events = read_events(core.list_namespaced_pod(
        "default", watch=True, resource_version=rv, label_selector="app=web",
        timeout_seconds=1, _preload_content=False))
    assert brief(events) == [("ADDED", "p"), ("DELETED", "p"), ("ADDED", "p")]


def test_compact_gives_410_error_event(core: client.CoreV1Api, lab: LabApiServer) -> None:
    a = core.create_namespaced_pod("default", pod("a"))
    core.create_namespaced_pod("default", pod("b"))
    lab.compact()
    resp = core.list_namespaced_pod("default", watch=True,
                                    resource_version=a.metadata.resource_version,
                                    timeout_seconds=5, _preload_content=False)
    assert resp.status == 200
    started = time.monotonic()
    events = read_events(resp)
    assert time.monotonic() - started < 2  # the stream ends right after the error
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status" and status["code"] == 410
    assert status["reason"] == "Expired"
    # Watching from the current resourceVersion still works.
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("c"))
    assert brief(read_events(core.list_namespaced_pod(
        "default", watch=True, resource_version=rv, timeout_seconds=1,
        _preload_content=False))) == [("ADDED", "c")]


def test_bounded_history_expires(tmp_path: Path) -> None:
    srv = start(history=3)
    try:
        core = core_for(srv, tmp_path)
        first = core.create_namespaced_pod("default", pod("p0"))
        for i in range(1, 5):
            core.create_namespaced_pod("default", pod(f"p{i}"))
        events = read_events(core.list_namespaced_pod(
            "default", watch=True, resource_version=first.metadata.resource_version,
            timeout_seconds=1, _preload_content=False))
        assert [e["type"] for e in events] == ["ERROR"]
        assert events[0]["object"]["code"] == 410
        recent = int(first.metadata.resource_version) + 2
        events = read_events(core.list_namespaced_pod(
            "default", watch=True, resource_version=str(recent), timeout_seconds=1,
            _preload_content=False))
        assert brief(events) == [("ADDED", "p3"), ("ADDED", "p4")]
    finally:
        srv.stop()


def test_bookmarks_and_timeout(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    started = time.monotonic()
    resp = core.list_namespaced_pod("default", watch=True, resource_version=rv,
                                    allow_watch_bookmarks=True, timeout_seconds=1,
                                    _preload_content=False)
    core.create_namespaced_pod("default", pod("a"))
    events = read_events(resp)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5
    assert events[0]["type"] == "ADDED"
    marks = [e for e in events if e["type"] == "BOOKMARK"]
    assert len(marks) >= 2  # periodic ones plus the one at the timeout
    last = marks[-1]["object"]
    assert last["kind"] == "Pod" and last["apiVersion"] == "v1"
    assert int(last["metadata"]["resourceVersion"]) >= int(
        events[0]["object"]["metadata"]["resourceVersion"])
    # Without allowWatchBookmarks there are none.
    plain = read_events(core.list_namespaced_pod("default", watch=True, resource_version=rv,
                                                 timeout_seconds=1, _preload_content=False))
    assert [e["type"] for e in plain] == ["ADDED"]


def test_watch_helper(core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_service("default").metadata.resource_version
    core.create_namespaced_service("default", {"metadata": {"name": "s"},
                                               "spec": {"ports": [{"port": 80}]}})
    w = watch.Watch()
    seen = [(e["type"], e["object"].metadata.name) for e in w.stream(
        core.list_namespaced_service, "default", resource_version=rv, timeout_seconds=1)]
    assert seen == [("ADDED", "s")]
