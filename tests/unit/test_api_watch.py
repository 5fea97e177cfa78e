"""netagent.sources.api_watch: reflectors against a scripted fake of the kubernetes client.

The fake stands in for CoreV1Api/DiscoveryV1Api at the method level (the
same keyword arguments, ``_preload_content=False`` responses with ``data`` and
``read1``, ``ApiException`` for HTTP errors). Covers: no handler call before
the first complete list (even a paged one); watch events, no-op updates and
bookmarks; resuming a closed watch from the last resourceVersion without a
relist; 410 (ERROR event and HTTP) -> relist emitting only real differences;
failed and partial lists never touching the cache; continue-token expiry;
backoff growth within its jitter bounds, Retry-After, reset; invalid objects
logged once and kept at their last valid version; legacy Endpoints ->
EndpointSliceInfo; stop() unblocking a hanging watch; call_in_loop; and the
kubeconfig loader's error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes.client import ApiException

from netagent.model import EndpointSliceInfo, IPFamily, ServicePort
from netagent.sources.api_watch import (
    ENDPOINT_SLICES,
    LEGACY_ENDPOINTS,
    NODES,
    SERVICES,
    Backoff,
    Reflector,
    Resource,
    WatchSettings,
    call_in_loop,
    endpoints_to_slices,
)
from netagent.sources.kubeconfig import KubeconfigError, api_client_from_environment
from netagent.translate import InvalidObject

WAIT = 5.0  # every wait in this file is bounded by this

FAST = WatchSettings(
    watch_timeout=(5, 10),
    read_margin=1,
    backoff_initial=0.01,
    backoff_max=0.08,
    backoff_jitter=0.5,
    backoff_reset_after=60,
    page_size=2,
)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f}s")
        time.sleep(0.005)


# --------------------------------------------------------------------------- objects


def service(
    name: str, rv: str = "1", port: int = 80, ip: str = "10.96.0.10", ns: str = "default"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        },
    }


def gone_status() -> dict[str, Any]:
    return {
        "kind": "Status",
        "code": 410,
        "reason": "Expired",
        "message": "too old resource version",
    }


def api_error(status: int, headers: dict[str, str] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="scripted")
    exc.headers = headers or {}
    return exc


# --------------------------------------------------------------------------- fake client


class FakeListResponse:
    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class FakeWatch:
    """A watch stream: scripted events, then either the end or a hang until shutdown.

    Events are served one JSON line per read, each split in two reads, so the
    reflector's line reassembly is exercised.
    """

    _END = object()

    def __init__(self, events: list[Any] | None = None, *, hang: bool = True) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending = b""
        self._shut = threading.Event()
        for event in events or []:
            self.push(event)
        if not hang:
            self.end()

    def push(self, event: Any) -> None:
        line = event if isinstance(event, bytes) else json.dumps(event).encode()
        self._queue.put(line + b"\n")

    def end(self) -> None:
        self._queue.put(self._END)

    def read1(self, amt: int) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        while not self._shut.is_set():
            try:
                item = self._queue.get(timeout=0.01)
            except queue.Empty:
                continue
            if item is self._END:
                return b""
            half = len(item) // 2
            self._pending = item[half:]
            return bytes(item[:half])
        return b""

    def shutdown(self) -> None:
        self._shut.set()

    def close(self) -> None:
        self._shut.set()

    def release_conn(self) -> None:
        pass


class FakeApi:
    """One list method with scripted outcomes for list calls and watch calls."""

    def __init__(self, method: str = "list_service_for_all_namespaces") -> None:
        self.lists: list[Any] = []
        self.watches: list[Any] = []
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        setattr(self, method, self._call)

    def list_calls(self) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if not c.get("watch")]

    def watch_calls(self) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c.get("watch")]

    def _call(self, **kwargs: Any) -> Any:
        with self.lock:
            self.calls.append(kwargs)
            script = self.watches if kwargs.get("watch") else self.lists
            step = script.pop(0) if script else None
        if kwargs.get("watch"):
            step = FakeWatch() if step is None else step
            if isinstance(step, BaseException):
                raise step
            return step
        if step is None:
            raise api_error(500)
        if callable(step):
            step = step()
        if isinstance(step, BaseException):
            raise step
        return FakeListResponse(step)


def page(items: list[dict[str, Any]], rv: str = "10", cont: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    return {"kind": "ServiceList", "metadata": meta, "items": items}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, kind: str, key: str, old: Any, new: Any) -> None:
        with self.lock:
            self.calls.append((kind, key, old, new))

    def take(self) -> list[tuple[str, str, Any, Any]]:
        with self.lock:
            calls, self.calls = self.calls, []
        return calls

    def summary(self) -> list[tuple[str, str]]:
        """(key, added|updated|deleted) per call."""
        out = []
        for _, key, old, new in self.take():
            what = "added" if old is None else "deleted" if new is None else "updated"
            out.append((key, what))
        return out


def make(
    api: FakeApi,
    handler: Callable[[str, str, Any, Any], None],
    resource: Resource[Any] = SERVICES,
    settings: WatchSettings = FAST,
) -> Reflector[Any]:
    return Reflector(resource, api, handler, settings=settings, rng=random.Random(7))


@pytest.fixture
def running() -> Any:
    started: list[Reflector[Any]] = []

    def start(reflector: Reflector[Any]) -> Reflector[Any]:
        started.append(reflector)
        reflector.start()
        return reflector

    yield start
    for reflector in started:
        reflector.stop(timeout=WAIT)
        assert reflector._thread is not None and not reflector._thread.is_alive()


# --------------------------------------------------------------------------- list / watch


def test_no_handler_call_before_the_complete_paged_list(running: Any) -> None:
    rec = Recorder()
    seen_during_second_page: list[int] = []
    api = FakeApi()

    def second_page() -> dict[str, Any]:
        seen_during_second_page.append(len(rec.calls))
        return page([service("c")], rv="12")

    api.lists = [page([service("a"), service("b")], rv="12", cont="tok"), second_page]
    reflector = running(make(api, rec))
    assert reflector.wait_for_sync(WAIT)
    assert seen_during_second_page == [0]  # page 1's objects were not emitted yet
    calls = rec.take()
    assert [(k, key, old) for k, key, old, _ in calls] == [
        ("Service", "default/a", None),
        ("Service", "default/b", None),
        ("Service", "default/c", None),
    ]
    new = calls[0][3]
    assert isinstance(new, tuple) and isinstance(new[0], ServicePort)
    assert new[0].cluster_ips == (IPv4Address("10.96.0.10"),)
    first, second = api.list_calls()
    assert first["limit"] == 2 and first["_continue"] is None
    assert second["_continue"] == "tok"
    assert first["_preload_content"] is False
    wait_until(lambda: len(api.watch_calls()) == 1)
    assert api.watch_calls()[0]["resource_version"] == "12"


def test_watch_request_asks_for_bookmarks_and_a_bounded_timeout(running: Any) -> None:
    api = FakeApi()
    api.lists = [page([], rv="5")]
    running(make(api, Recorder()))
    wait_until(lambda: len(api.watch_calls()) == 1)
    call = api.watch_calls()[0]
    assert call["allow_watch_bookmarks"] is True
    assert call["_preload_content"] is False
    assert 5 <= call["timeout_seconds"] <= 10
    connect, read = call["_request_timeout"]
    assert read == call["timeout_seconds"] + FAST.read_margin
    assert connect == FAST.connect_timeout


def test_watch_events_flow_and_no_op_updates_are_suppressed(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10")]
    stream = FakeWatch()
    api.watches = [stream]
    reflector = running(make(api, rec))
    assert reflector.wait_for_sync(WAIT)
    assert rec.summary() == [("default/a", "added")]

    stream.push({"type": "ADDED", "object": service("b", rv="11")})
    stream.push({"type": "MODIFIED", "object": service("a", rv="12")})  # same content
    stream.push({"type": "MODIFIED", "object": service("a", rv="13", port=81)})
    stream.push({"type": "DELETED", "object": service("b", rv="14")})
    stream.push({"type": "DELETED", "object": service("never-seen", rv="15")})
    wait_until(lambda: reflector.resource_version == "15")
    assert rec.summary() == [
        ("default/b", "added"),
        ("default/a", "updated"),
        ("default/b", "deleted"),
    ]
    assert set(reflector.snapshot()) == {"default/a"}
    assert reflector.snapshot()["default/a"][0].port == 81


def test_bookmark_only_advances_the_resource_version(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10")]
    api.watches = [
        FakeWatch(
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "99"}}}], hang=False
        )
    ]
    reflector = running(make(api, rec))
    wait_until(lambda: len(api.watch_calls()) == 2)
    assert api.watch_calls()[1]["resource_version"] == "99"
    assert reflector.stats.bookmarks == 1
    assert rec.summary() == [("default/a", "added")]


def test_closed_watch_resumes_from_last_version_without_relist_or_reemit(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10")]
    api.watches = [FakeWatch([{"type": "ADDED", "object": service("b", rv="11")}], hang=False)]
    reflector = running(make(api, rec))
    wait_until(lambda: len(api.watch_calls()) == 2)
    assert api.watch_calls()[1]["resource_version"] == "11"
    assert len(api.list_calls()) == 1
    assert rec.summary() == [("default/a", "added"), ("default/b", "added")]
    assert reflector.stats.backoff_delays == []  # a watch with events is no failure


def test_watch_that_ends_at_once_empty_is_backed_off() -> None:
    api = FakeApi()
    api.lists = [page([], rv="10")]
    api.watches = [FakeWatch(hang=False), FakeWatch(hang=False)]
    reflector = make(api, Recorder())
    reflector.start()
    try:
        wait_until(lambda: len(api.watch_calls()) == 3)
    finally:
        reflector.stop(WAIT)
    assert len(reflector.stats.backoff_delays) == 2
    assert all(d > 0 for d in reflector.stats.backoff_delays)


# --------------------------------------------------------------------------- 410 and relists


def test_gone_error_event_relists_and_emits_only_real_differences(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [
        page([service("a"), service("b"), service("c")], rv="10"),
        page([service("a", rv="20"), service("b", port=8080), service("d")], rv="30"),
    ]
    api.watches = [FakeWatch([{"type": "ERROR", "object": gone_status()}])]
    reflector = running(make(api, rec, settings=WatchSettings(page_size=0, watch_timeout=(5, 5))))
    wait_until(lambda: len(api.watch_calls()) == 2)
    assert sorted(rec.summary()) == [
        ("default/a", "added"),
        ("default/b", "added"),
        ("default/b", "updated"),
        ("default/c", "added"),
        ("default/c", "deleted"),
        ("default/d", "added"),
    ]
    # "a" changed only its resourceVersion: not emitted again.
    assert api.watch_calls()[1]["resource_version"] == "30"
    assert reflector.stats.relists_after_gone == 1
    assert api.list_calls()[1]["limit"] is None  # page_size 0: one request
    assert set(reflector.snapshot()) == {"default/a", "default/b", "default/d"}


def test_http_410_on_watch_start_relists(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10"), page([service("a")], rv="40")]
    api.watches = [api_error(410)]
    reflector = running(make(api, rec))
    wait_until(lambda: len(api.watch_calls()) == 2)
    assert len(api.list_calls()) == 2
    assert api.watch_calls()[1]["resource_version"] == "40"
    assert rec.summary() == [("default/a", "added")]
    assert reflector.stats.relists_after_gone == 1


def too_large_status(with_cause: bool = True) -> dict[str, Any]:
    """What the watch cache answers a watch from a version it has not reached."""
    status: dict[str, Any] = {
        "kind": "Status",
        "code": 504,
        "reason": "Timeout",
        "message": "Timeout: Too large resource version: 90, current: 12",
        "details": {"retryAfterSeconds": 1},
    }
    if with_cause:
        status["details"]["causes"] = [
            {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
        ]
    return status


def test_too_large_resource_version_event_relists(running: Any) -> None:
    # An etcd restore: the server's versions went back from 90 to 12, so a watch
    # from 90 can never resume; the relist brings the restored state.
    rec = Recorder()
    api = FakeApi()
    api.lists = [
        page([service("a", rv="80"), service("late", rv="90")], rv="90"),
        page([service("a", rv="11")], rv="12"),
    ]
    api.watches = [FakeWatch([{"type": "ERROR", "object": too_large_status()}])]
    reflector = running(make(api, rec))
    wait_until(lambda: len(api.watch_calls()) == 2)
    assert api.watch_calls()[0]["resource_version"] == "90"
    assert api.watch_calls()[1]["resource_version"] == "12"
    assert rec.summary() == [
        ("default/a", "added"),
        ("default/late", "added"),
        ("default/late", "deleted"),
    ]
    assert reflector.stats.relists_after_too_large == 1
    assert reflector.stats.relists_after_gone == 0


def test_too_large_resource_version_http_error_relists(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="90"), page([service("a")], rv="12")]
    exc = api_error(504)
    exc.body = json.dumps(too_large_status(with_cause=False)).encode()
    api.watches = [exc]
    reflector = running(make(api, rec))
    wait_until(lambda: len(api.watch_calls()) == 2)
    assert len(api.list_calls()) == 2
    assert api.watch_calls()[1]["resource_version"] == "12"
    assert reflector.stats.relists_after_too_large == 1


def test_other_504_resumes_without_a_relist(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10")]
    status = too_large_status()
    status["message"] = "Timeout: request did not complete within the allotted timeout"
    del status["details"]["causes"]
    api.watches = [FakeWatch([{"type": "ERROR", "object": status}])]
    reflector = running(make(api, rec))
    wait_until(lambda: len(api.watch_calls()) == 2)
    assert len(api.list_calls()) == 1
    assert api.watch_calls()[1]["resource_version"] == "10"
    assert reflector.stats.relists_after_too_large == 0
    assert reflector.stats.watch_failures == 1


class SilentWatch(FakeWatch):
    """Events, then silence until the client-side read timeout fires (a dead connection)."""

    def read1(self, amt: int) -> bytes:
        chunk = super().read1(amt) if self._pending or not self._queue.empty() else b""
        if chunk:
            return chunk
        raise urllib3.exceptions.ReadTimeoutError(None, "/api/v1/services", "Read timed out.")


def test_silent_watch_read_timeout_resumes_from_its_last_version(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10")]
    api.watches = [
        SilentWatch([{"type": "ADDED", "object": service("b", rv="11")}]),
        FakeWatch([{"type": "ADDED", "object": service("c", rv="12")}]),
    ]
    reflector = running(make(api, rec))
    wait_until(lambda: len(rec.calls) == 3)
    assert rec.summary() == [("default/a", "added"), ("default/b", "added"), ("default/c", "added")]
    assert len(api.list_calls()) == 1  # no relist: the missed events come with the new watch
    assert api.watch_calls()[1]["resource_version"] == "11"
    assert reflector.stats.watch_failures == 1


def test_min_watch_timeout_sets_the_watch_and_read_timeouts() -> None:
    default = WatchSettings.for_min_timeout(300)
    assert default.watch_timeout == (300, 600)
    assert default.read_margin == 30
    short = WatchSettings.for_min_timeout(4)
    assert short.watch_timeout == (4, 8)
    assert short.read_margin == 2


def test_failed_or_partial_relist_never_touches_the_cache(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [
        page([service("a"), service("b")], rv="10"),
        api_error(500),  # relist fails outright
        page([service("a")], rv="50", cont="more"),  # then fails on its second page
        api_error(503),
        page([service("a"), service("b", port=9090)], rv="60"),
    ]
    api.watches = [FakeWatch([{"type": "ERROR", "object": gone_status()}])]
    reflector = running(make(api, rec, settings=FAST))
    assert reflector.wait_for_sync(WAIT)
    assert rec.summary() == [("default/a", "added"), ("default/b", "added")]
    wait_until(lambda: len(api.watch_calls()) == 2)
    # Only the complete relist counted: b updated, nothing was ever deleted.
    assert rec.summary() == [("default/b", "updated")]
    assert reflector.stats.list_failures == 2
    assert api.watch_calls()[1]["resource_version"] == "60"


def test_expired_continue_token_restarts_the_list_unpaged(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [
        page([service("a"), service("b")], rv="10", cont="tok"),
        api_error(410),
        page([service("a"), service("b"), service("c")], rv="11"),
    ]
    reflector = running(make(api, rec))
    assert reflector.wait_for_sync(WAIT)
    calls = api.list_calls()
    assert [c["_continue"] for c in calls] == [None, "tok", None]
    assert calls[2]["limit"] is None
    assert sorted(k for k, _ in rec.summary()) == ["default/a", "default/b", "default/c"]


# --------------------------------------------------------------------------- backoff


def test_backoff_doubles_to_the_cap_within_jitter_bounds() -> None:
    backoff = Backoff(initial=0.8, maximum=30, factor=2, jitter=0.5, rng=random.Random(1))
    steps = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]
    for _ in range(50):  # many draws: every one stays inside [step/2, step]
        backoff.reset()
        for step in steps:
            delay = backoff.next_delay()
            assert step * 0.5 <= delay <= step
    backoff.reset()
    assert backoff.next_delay() <= 0.8
    delays = {
        round(Backoff(initial=1, maximum=1, rng=random.Random(s)).next_delay(), 6) for s in range(5)
    }
    assert len(delays) > 1  # jitter actually varies


def test_backoff_honours_retry_after_as_a_minimum() -> None:
    backoff = Backoff(initial=0.8, maximum=30, rng=random.Random(1))
    assert backoff.next_delay(retry_after=5) == 5
    assert backoff.next_delay(retry_after=0) >= 0.8  # the step still applies
    assert backoff.next_delay(retry_after=10_000) == 300  # absurd values are capped


def test_watch_errors_back_off_with_growing_delays_then_recover(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10")]
    stream = FakeWatch()
    api.watches = [api_error(500), api_error(500), api_error(503), ConnectionResetError(), stream]
    reflector = running(make(api, rec))
    wait_until(lambda: len(api.watch_calls()) == 5)
    delays = reflector.stats.backoff_delays
    steps = [0.01, 0.02, 0.04, 0.08]
    assert len(delays) == 4
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    assert all(c["resource_version"] == "10" for c in api.watch_calls())
    assert len(api.list_calls()) == 1  # errors resume the watch; only 410 relists
    stream.push({"type": "ADDED", "object": service("b", rv="11")})
    wait_until(lambda: reflector.resource_version == "11")
    assert rec.summary() == [("default/a", "added"), ("default/b", "added")]


def test_429_retry_after_is_honoured(running: Any) -> None:
    api = FakeApi()
    api.lists = [api_error(429, {"Retry-After": "0.3"}), page([], rv="1")]
    reflector = running(make(api, Recorder()))
    started = time.monotonic()
    assert reflector.wait_for_sync(WAIT)
    assert time.monotonic() - started >= 0.25
    assert reflector.stats.backoff_delays == [0.3]


def test_error_event_other_than_410_rewatches_from_the_same_version(running: Any) -> None:
    api = FakeApi()
    api.lists = [page([], rv="10")]
    status = {"kind": "Status", "code": 500, "message": "etcd hiccup"}
    api.watches = [FakeWatch([{"type": "ERROR", "object": status}]), FakeWatch([b"{not json"])]
    reflector = running(make(api, Recorder()))
    wait_until(lambda: len(api.watch_calls()) == 3)
    assert [c["resource_version"] for c in api.watch_calls()] == ["10", "10", "10"]
    assert len(api.list_calls()) == 1
    assert reflector.stats.watch_failures == 2


def test_backoff_resets_after_a_long_healthy_watch() -> None:
    now = [0.0]
    api = FakeApi()
    api.lists = [page([], rv="10")]

    class TimedWatch(FakeWatch):
        def read1(self, amt: int) -> bytes:
            now[0] += 100  # the watch "lasted" 100 s
            return b""

    api.watches = [api_error(500), api_error(500), TimedWatch(), api_error(500)]
    settings = WatchSettings(backoff_initial=0.01, backoff_max=1, backoff_reset_after=60)
    reflector = Reflector(SERVICES, api, Recorder(), settings=settings, clock=lambda: now[0])
    reflector.start()
    try:
        wait_until(lambda: len(api.watch_calls()) == 5)
    finally:
        reflector.stop(WAIT)
    first, second, after_reset = reflector.stats.backoff_delays[:3]
    assert 0.005 <= first <= 0.01 and 0.01 <= second <= 0.02
    assert after_reset <= 0.01  # back to the initial step


# --------------------------------------------------------------------------- invalid objects


def test_invalid_update_keeps_last_valid_version_and_logs_once(
    running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10")]
    stream = FakeWatch()
    api.watches = [stream]
    reflector = running(make(api, rec))
    assert reflector.wait_for_sync(WAIT)
    rec.take()
    caplog.set_level(logging.WARNING, logger="netagent.sources.api_watch")
    stream.push({"type": "MODIFIED", "object": service("a", rv="11", port=70000)})
    stream.push({"type": "MODIFIED", "object": service("a", rv="12", port=70000)})
    stream.push({"type": "ADDED", "object": service("Bad_Name", rv="13")})
    wait_until(lambda: reflector.resource_version == "13")
    assert rec.take() == []
    assert reflector.snapshot()["default/a"][0].port == 80
    assert "default/Bad_Name" not in reflector.snapshot()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # once per object, not once per event
    assert "Service default/a: spec.ports[0].port 70000 is out of range" in lines[0]
    assert "keeping its last valid version" in lines[0]
    assert "ignoring it" in lines[1]
    assert all("\n" not in line for line in lines)

    stream.push({"type": "MODIFIED", "object": service("a", rv="14", port=81)})
    stream.push({"type": "DELETED", "object": service("Bad_Name", rv="15")})
    wait_until(lambda: reflector.resource_version == "15")
    assert rec.summary() == [("default/a", "updated")]
    assert reflector.snapshot()["default/a"][0].port == 81


def test_relist_keeps_last_valid_version_of_an_object_that_became_invalid(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [
        page([service("a"), service("b")], rv="10"),
        page([service("a", port=0), service("b", port=0)], rv="20"),
    ]
    api.watches = [FakeWatch([{"type": "ERROR", "object": gone_status()}])]
    reflector = running(make(api, rec))
    wait_until(lambda: len(api.watch_calls()) == 2)
    assert rec.summary() == [("default/a", "added"), ("default/b", "added")]
    assert {k: v[0].port for k, v in reflector.snapshot().items()} == {
        "default/a": 80,
        "default/b": 80,
    }


def test_service_that_stops_being_proxied_is_deleted(running: Any) -> None:
    rec = Recorder()
    api = FakeApi()
    api.lists = [page([service("a")], rv="10")]
    headless = service("a", rv="11")
    headless["spec"]["clusterIP"] = "None"
    api.watches = [FakeWatch([{"type": "MODIFIED", "object": headless}])]
    reflector = running(make(api, rec))
    wait_until(lambda: reflector.resource_version == "11")
    assert rec.summary() == [("default/a", "added"), ("default/a", "deleted")]


def test_handler_exception_is_logged_and_the_reflector_goes_on(
    running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def handler(kind: str, key: str, old: Any, new: Any) -> None:
        seen.append(key)
        raise RuntimeError("boom")

    api = FakeApi()
    api.lists = [page([service("a"), service("b")], rv="10")]
    reflector = running(make(api, handler))
    assert reflector.wait_for_sync(WAIT)
    assert seen == ["default/a", "default/b"]
    assert "change handler failed" in caplog.text


# --------------------------------------------------------------------------- other kinds


def test_endpoint_slices_and_nodes_are_keyed_and_translated(running: Any) -> None:
    rec = Recorder()
    slices = FakeApi("list_endpoint_slice_for_all_namespaces")
    slices.lists = [
        page(
            [
                {
                    "metadata": {
                        "name": "web-abc",
                        "namespace": "prod",
                        "labels": {"kubernetes.io/service-name": "web"},
                    },
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [{"addresses": ["10.0.0.5"], "nodeName": "n1"}],
                }
            ]
        )
    ]
    nodes = FakeApi("list_node")
    nodes.lists = [page([{"metadata": {"name": "n1", "resourceVersion": "3"}}])]
    r1 = running(make(slices, rec, ENDPOINT_SLICES))
    r2 = running(make(nodes, rec, NODES))
    assert r1.wait_for_sync(WAIT) and r2.wait_for_sync(WAIT)
    by_kind = {kind: (key, new) for kind, key, _, new in rec.take()}
    key, value = by_kind["EndpointSlice"]
    assert key == "prod/web-abc" and isinstance(value, EndpointSliceInfo)
    assert value.service_name == "web"
    assert by_kind["Node"][0] == "n1" and by_kind["Node"][1].name == "n1"


def endpoints(subsets: list[dict[str, Any]], name: str = "web") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "prod",
            "annotations": {
                "endpoints.kubernetes.io/last-change-trigger-time": "2024-05-01T10:00:00Z"
            },
        },
        "subsets": subsets,
    }


def test_legacy_endpoints_become_slices_per_port_set_and_family() -> None:
    obj = endpoints(
        [
            {
                "addresses": [{"ip": "10.0.0.1", "nodeName": "n1"}, {"ip": "fd00::1"}],
                "notReadyAddresses": [{"ip": "10.0.0.2"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            },
            {
                "addresses": [{"ip": "10.0.0.3"}],
                "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}],
            },
        ]
    )
    slices = endpoints_to_slices(obj)
    assert slices is not None and len(slices) == 3
    by_port = {(s.address_type, s.ports[0].port): s for s in slices}
    v4 = by_port[IPFamily.IPV4, 8080]
    assert v4.service_name == "web" and v4.namespace == "prod"
    assert [(e.addresses[0], e.ready, e.serving, e.node_name) for e in v4.endpoints] == [
        (IPv4Address("10.0.0.1"), True, True, "n1"),
        (IPv4Address("10.0.0.2"), False, False, ""),
    ]
    assert by_port[IPFamily.IPV6, 8080].endpoints[0].addresses == (IPv6Address("fd00::1"),)
    assert by_port[IPFamily.IPV4, 9090].endpoints[0].addresses == (IPv4Address("10.0.0.3"),)
    assert v4.trigger_time == 1714557600.0
    assert endpoints_to_slices(endpoints([])) is None


def test_legacy_endpoints_errors_name_the_endpoints_object() -> None:
    bad_ip = endpoints([{"addresses": [{"ip": "10.0.0.300"}], "ports": [{"port": 80}]}])
    with pytest.raises(InvalidObject) as info:
        endpoints_to_slices(bad_ip)
    assert str(info.value) == (
        'Endpoints prod/web: subsets[0].addresses[0].ip "10.0.0.300" is not an IP address'
    )
    bad_port = endpoints([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 0}]}])
    with pytest.raises(InvalidObject) as info:
        endpoints_to_slices(bad_port)
    assert str(info.value).startswith("Endpoints prod/web: as an EndpointSlice: ports[0].port 0")


def test_legacy_endpoints_reflector(running: Any) -> None:
    rec = Recorder()
    api = FakeApi("list_endpoints_for_all_namespaces")
    api.lists = [page([endpoints([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}])])]
    reflector = running(make(api, rec, LEGACY_ENDPOINTS))
    assert reflector.wait_for_sync(WAIT)
    ((kind, key, old, new),) = rec.take()
    assert (kind, key, old) == ("Endpoints", "prod/web", None)
    assert isinstance(new, tuple) and new[0].endpoints[0].addresses == (IPv4Address("10.0.0.1"),)


# --------------------------------------------------------------------------- lifecycle


def test_stop_unblocks_a_hanging_watch_quickly() -> None:
    api = FakeApi()
    api.lists = [page([], rv="1")]
    reflector = make(api, Recorder())
    reflector.start()
    wait_until(lambda: len(api.watch_calls()) == 1)
    started = time.monotonic()
    reflector.stop(WAIT)
    assert time.monotonic() - started < 1.0
    assert reflector._thread is not None and not reflector._thread.is_alive()


def test_stop_interrupts_a_backoff_wait() -> None:
    api = FakeApi()
    api.lists = [api_error(500)]
    reflector = make(api, Recorder(), settings=WatchSettings(backoff_initial=30, backoff_max=30))
    reflector.start()
    wait_until(lambda: len(reflector.stats.backoff_delays) == 1)
    started = time.monotonic()
    reflector.stop(WAIT)
    assert time.monotonic() - started < 1.0
    assert not reflector.has_synced


def test_call_in_loop_runs_the_handler_on_the_loop_thread() -> None:
    async def main() -> tuple[list[Any], int, int]:
        loop = asyncio.get_running_loop()
        got: list[Any] = []
        done = asyncio.Event()

        def handler(kind: str, key: str, old: Any, new: Any) -> None:
            got.append((kind, key, old, new, threading.get_ident()))
            done.set()

        wrapped = call_in_loop(loop, handler)
        thread = threading.Thread(target=wrapped, args=("Service", "a/b", None, 1))
        thread.start()
        await asyncio.wait_for(done.wait(), WAIT)
        thread.join(WAIT)
        return got, threading.get_ident(), thread.ident or 0

    got, loop_thread, worker = asyncio.run(main())
    assert got == [("Service", "a/b", None, 1, loop_thread)]
    assert loop_thread != worker


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        WatchSettings(watch_timeout=(10, 5))
    with pytest.raises(ValueError):
        WatchSettings(backoff_jitter=2)


# --------------------------------------------------------------------------- kubeconfig


def test_kubeconfig_error_says_what_was_tried(tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(tmp_path / "missing")}
    with pytest.raises(KubeconfigError) as info:
        api_client_from_environment(environ=env)
    message = str(info.value)
    assert "\n" not in message
    assert "KUBERNETES_SERVICE_HOST is not set" in message
    assert str(tmp_path / "missing") in message


def test_explicit_bad_kubeconfig_does_not_fall_back(tmp_path: Path) -> None:
    bad = tmp_path / "config"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    with pytest.raises(KubeconfigError) as info:
        api_client_from_environment(bad, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert str(info.value).startswith(f"cannot use kubeconfig {bad}")


def test_kubeconfig_and_in_cluster_config_build_clients(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:6443"}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""
    )
    client = api_client_from_environment(config, environ={})
    assert client.configuration.host == "http://127.0.0.1:6443"

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("secret")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    client = api_client_from_environment(environ=env, token_file=str(token), cert_file=str(ca))
    assert client.configuration.host == "https://10.96.0.1:443"
    env_missing_token = dict(env)
    with pytest.raises(KubeconfigError) as info:
        api_client_from_environment(
            environ={**env_missing_token, "KUBECONFIG": str(tmp_path / "nope")},
            token_file=str(tmp_path / "no-token"),
            cert_file=str(ca),
        )
    assert "in-cluster config (KUBERNETES_SERVICE_HOST is set)" in str(info.value)
