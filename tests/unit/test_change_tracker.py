"""netagent.change_tracker: pending changes, cancel-out, drains, trigger times, threading.

Covers: a change that is undone before the next drain disappears (pending
count, touched names and trigger time); service changes touch only the
ports that really changed; slice changes touch the service ports of the old
and the new slice; drain returns full, sorted current maps and resets the
pending state; totals keep counting; legacy Endpoints tuples; nodes;
trigger times (earliest kept, older than the tracker ignored); on_pending;
and concurrent updates from several threads against one drain.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from ipaddress import IPv4Address

from netagent.change_tracker import ChangeTracker, EndpointsChangeTracker, ServiceChangeTracker
from netagent.model import (
    EndpointSliceInfo,
    IPFamily,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    SliceEndpoint,
    SlicePort,
)

START = 1_000_000.0


def ports(name: str, *specs: tuple[str, int], ns: str = "default") -> tuple[ServicePort, ...]:
    return tuple(
        ServicePort(
            name=ServicePortName(ns, name, port_name),
            protocol=Protocol.TCP,
            port=port,
            cluster_ips=(IPv4Address("10.96.0.1"),),
        )
        for port_name, port in specs
    )


def slice_(
    name: str, service: str, *ips: str, port_names: tuple[str, ...] = ("http",), trigger: float = 0
) -> EndpointSliceInfo:
    return EndpointSliceInfo(
        namespace="default",
        name=name,
        service_name=service,
        address_type=IPFamily.IPV4,
        ports=tuple(SlicePort(p, 8080, Protocol.TCP) for p in port_names),
        endpoints=tuple(
            SliceEndpoint(addresses=(IPv4Address(ip),), ready=True, serving=True, terminating=False)
            for ip in ips
        ),
        trigger_time=trigger,
    )


def spn(service: str, port: str = "http") -> ServicePortName:
    return ServicePortName("default", service, port)


def test_service_change_that_cancels_out_is_dropped() -> None:
    tracker = ServiceChangeTracker()
    web = ports("web", ("http", 80))
    assert tracker.update("default/web", web)
    tracker.drain()
    assert tracker.update("default/web", ports("web", ("http", 81)))
    assert tracker.pending == 1
    assert not tracker.update("default/web", web)  # back to what the last drain saw
    assert tracker.pending == 0
    changed, current = tracker.drain()
    assert changed == set()
    assert current == list(web)
    assert tracker.total == 3


def test_add_then_delete_before_a_drain_leaves_nothing() -> None:
    tracker = ServiceChangeTracker()
    tracker.update("default/tmp", ports("tmp", ("http", 80)))
    assert not tracker.update("default/tmp", None)
    assert tracker.drain() == (set(), [])


def test_only_the_service_ports_that_changed_are_reported() -> None:
    tracker = ServiceChangeTracker()
    tracker.update("default/web", ports("web", ("http", 80), ("https", 443)))
    changed, _ = tracker.drain()
    assert changed == {spn("web"), spn("web", "https")}
    tracker.update("default/web", ports("web", ("http", 80), ("https", 8443)))
    changed, current = tracker.drain()
    assert changed == {spn("web", "https")}
    assert [p.port for p in current] == [80, 8443]
    tracker.update("default/web", None)
    changed, current = tracker.drain()
    assert changed == {spn("web"), spn("web", "https")} and current == []


def test_slice_changes_touch_old_and_new_service_ports() -> None:
    tracker = EndpointsChangeTracker(start_time=START)
    tracker.update("default/web-1", slice_("web-1", "web", "10.0.0.1"))
    changed, slices, _ = tracker.drain()
    assert changed == {spn("web")}
    assert [s.name for s in slices] == ["web-1"]
    moved = slice_("web-1", "api", "10.0.0.1", port_names=("grpc",))
    tracker.update("default/web-1", moved)
    changed, slices, _ = tracker.drain()
    assert changed == {spn("web"), spn("api", "grpc")}
    assert slices == [moved]


def test_endpoint_change_cancel_out_also_drops_its_trigger_time() -> None:
    tracker = EndpointsChangeTracker(start_time=START)
    original = slice_("web-1", "web", "10.0.0.1")
    tracker.update("default/web-1", original)
    tracker.drain()
    tracker.update("default/web-1", slice_("web-1", "web", "10.0.0.2", trigger=START + 5))
    assert tracker.pending == 1
    tracker.update("default/web-1", original)
    assert tracker.pending == 0
    assert tracker.drain() == (set(), [original], {})


def test_earliest_trigger_time_per_slice_and_old_ones_ignored() -> None:
    tracker = EndpointsChangeTracker(start_time=START)
    tracker.update("default/a", slice_("a", "web", "10.0.0.1", trigger=START + 10))
    tracker.update("default/a", slice_("a", "web", "10.0.0.2", trigger=START + 20))
    tracker.update("default/b", slice_("b", "web", "10.0.0.3", trigger=START - 100))
    tracker.update("default/c", slice_("c", "web", "10.0.0.4"))  # no annotation
    _, _, triggers = tracker.drain()
    assert triggers == {"default/a": START + 10}
    _, _, triggers = tracker.drain()
    assert triggers == {}


def test_change_tracker_routes_kinds_and_drains_atomically() -> None:
    wakes: list[int] = []
    tracker = ChangeTracker(on_pending=lambda: wakes.append(1), start_time=START)
    web = ports("web", ("http", 80))
    tracker.on_change("Service", "default/web", None, web)
    tracker.on_change("EndpointSlice", "default/web-1", None, slice_("web-1", "web", "10.0.0.1"))
    node = NodeInfo(name="n1")
    tracker.on_change("Node", "n1", None, node)
    tracker.on_change("Node", "n1", node, node)  # no change: no wake
    tracker.on_change("Widget", "x", None, 1)  # unknown kinds are ignored
    assert len(wakes) == 3
    assert (tracker.service_changes_pending, tracker.endpoint_changes_pending) == (1, 1)

    state = tracker.drain()
    assert state.changed == {spn("web")}
    assert state.services == list(web)
    assert [s.key for s in state.slices] == ["default/web-1"]
    assert state.nodes == {"n1": node} and state.nodes_changed
    assert (state.service_changes, state.endpoint_changes) == (1, 1)
    assert state.has_changes

    again = tracker.drain()
    assert not again.has_changes and again.changed == frozenset()
    assert again.services == list(web) and again.nodes == {"n1": node}
    assert (tracker.service_changes_pending, tracker.endpoint_changes_pending) == (0, 0)
    assert (tracker.service_changes_total, tracker.endpoint_changes_total) == (1, 1)

    tracker.on_change("Node", "n1", node, None)
    assert tracker.drain().nodes == {}


def test_legacy_endpoints_tuples_are_flattened() -> None:
    tracker = ChangeTracker(start_time=START)
    v4 = slice_("web", "web", "10.0.0.1")
    v6 = replace(v4, address_type=IPFamily.IPV6, endpoints=())
    tracker.on_change("Endpoints", "default/web", None, (v4, v6))
    state = tracker.drain()
    assert state.slices == [v4, v6]
    assert state.changed == {spn("web")}
    tracker.on_change("Endpoints", "default/web", (v4, v6), None)
    assert tracker.drain().slices == []


def test_on_pending_failure_does_not_lose_the_change() -> None:
    def boom() -> None:
        raise RuntimeError("wake failed")

    tracker = ChangeTracker(on_pending=boom)
    tracker.on_change("Service", "default/web", None, ports("web", ("http", 80)))
    assert tracker.drain().changed == {spn("web")}


def test_concurrent_updates_and_drains_lose_nothing() -> None:
    tracker = ChangeTracker(start_time=START)
    per_thread = 200
    drained: set[ServicePortName] = set()
    stop = threading.Event()

    def writer(t: int) -> None:
        for i in range(per_thread):
            name = f"svc-{t}-{i}"
            tracker.on_change("Service", f"default/{name}", None, ports(name, ("http", 80)))

    def drainer() -> None:
        while not stop.wait(0.001):
            drained.update(tracker.drain().changed)

    reader = threading.Thread(target=drainer)
    reader.start()
    writers = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(10)
    stop.set()
    reader.join(10)
    final = tracker.drain()
    drained |= final.changed
    assert len(drained) == 4 * per_thread
    assert len(final.services) == 4 * per_thread
    assert tracker.service_changes_total == 4 * per_thread
