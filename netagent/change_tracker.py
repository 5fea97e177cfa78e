"""Change tracking between the API watch and the sync loop.

Why: watch events arrive one at a time, from reflector threads, in bursts;
the sync loop runs at most once per ``minSyncPeriod`` and wants two things:
the complete current set of objects (the renderer is a pure function of it)
and which service ports changed since the last sync (so a partial sync and
the conntrack cleanup know where to look). Like kube-proxy's change trackers,
each tracker keeps, per object, the value it had at the last drain and its
current value. A change that is undone before the next sync (A -> B -> A)
cancels out: it is neither pending nor reported, so a flapping object does
not cause syncs that change nothing.

The trackers also keep the numbers kube-proxy exports: how many objects have
a pending change (``*_changes_pending``) and how many changes were seen in
total (``*_changes_total``), and, per EndpointSlice, the earliest
``last-change-trigger-time`` among its pending changes, from which the sync
loop computes ``network_programming_duration_seconds`` once the rules are in.
Trigger times from before the tracker started are ignored, as in kube-proxy:
they would measure the agent's start-up, not the network's programming.

Threading: :class:`ServiceChangeTracker` and :class:`EndpointsChangeTracker`
are plain objects, not thread-safe on their own. :class:`ChangeTracker`
owns one of each plus the Node map, serialises every call with one lock,
and is safe to use from reflector threads and the sync loop at once; its
:meth:`ChangeTracker.drain` is atomic across services, endpoints and nodes,
so a sync never sees a Service without the slice change that came with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from netagent.model import EndpointSliceInfo, NodeInfo, ServicePort, ServicePortName

log = logging.getLogger(__name__)

V = TypeVar("V")

#: What the Service reflector delivers: every port of one Service.
ServiceValue = tuple[ServicePort, ...]
#: What the endpoint reflectors deliver: one slice, or the slices of a legacy Endpoints.
EndpointsValue = EndpointSliceInfo | tuple[EndpointSliceInfo, ...]


class _PairTracker(Generic[V]):
    """(value at last drain, current value) per key; pairs that cancel out are dropped."""

    def __init__(self) -> None:
        self.current: dict[str, V] = {}
        self.pending: dict[str, tuple[V | None, V | None]] = {}
        self.total = 0

    def update(self, key: str, new: V | None) -> tuple[V | None, V | None] | None:
        """Record ``key``'s new value; the pending (before, after) pair, or None if it cancelled."""
        self.total += 1
        before = self.pending[key][0] if key in self.pending else self.current.get(key)
        if new is None:
            self.current.pop(key, None)
        else:
            self.current[key] = new
        if before == new:
            self.pending.pop(key, None)
            return None
        pair = (before, new)
        self.pending[key] = pair
        return pair

    def take(self) -> dict[str, tuple[V | None, V | None]]:
        pending, self.pending = self.pending, {}
        return pending


class ServiceChangeTracker:
    """Tracks Services (key ``namespace/name``, value: its ports). Not thread-safe."""

    def __init__(self) -> None:
        self._pairs: _PairTracker[ServiceValue] = _PairTracker()

    @property
    def pending(self) -> int:
        """Services with a change not yet drained (``service_changes_pending``)."""
        return len(self._pairs.pending)

    @property
    def total(self) -> int:
        """Every update recorded since start (``service_changes_total``)."""
        return self._pairs.total

    def update(self, key: str, new: ServiceValue | None) -> bool:
        """Record a Service's new ports (None: deleted); True when a change is now pending."""
        return self._pairs.update(key, new or None) is not None

    def drain(self) -> tuple[set[ServicePortName], list[ServicePort]]:
        """The service ports that changed since the last drain, and every current port."""
        changed: set[ServicePortName] = set()
        for before, after in self._pairs.take().values():
            old = {p.name: p for p in before or ()}
            new = {p.name: p for p in after or ()}
            changed.update(
                name for name in old.keys() | new.keys() if old.get(name) != new.get(name)
            )
        services = [port for ports in self._pairs.current.values() for port in ports]
        services.sort(key=lambda p: p.name)
        return changed, services


def _as_slices(value: EndpointsValue | None) -> tuple[EndpointSliceInfo, ...]:
    if value is None:
        return ()
    if isinstance(value, EndpointSliceInfo):
        return (value,)
    return value


def _port_names(slices: Iterable[EndpointSliceInfo]) -> set[ServicePortName]:
    return {
        ServicePortName(s.namespace, s.service_name, port.name) for s in slices for port in s.ports
    }


class EndpointsChangeTracker:
    """Tracks EndpointSlices (or legacy Endpoints), keyed ``namespace/name``. Not thread-safe.

    ``start_time`` (epoch seconds) is when tracking began; trigger times
    before it are not recorded.
    """

    def __init__(self, start_time: float | None = None) -> None:
        self._pairs: _PairTracker[tuple[EndpointSliceInfo, ...]] = _PairTracker()
        self._start_time = time.time() if start_time is None else start_time
        self._trigger_times: dict[str, float] = {}

    @property
    def pending(self) -> int:
        """Slices with a change not yet drained (``endpoint_changes_pending``)."""
        return len(self._pairs.pending)

    @property
    def total(self) -> int:
        """Every update recorded since start (``endpoint_changes_total``)."""
        return self._pairs.total

    def update(self, key: str, new: EndpointsValue | None) -> bool:
        """Record a slice's new value (None: deleted); True when a change is now pending."""
        slices = _as_slices(new)
        pair = self._pairs.update(key, slices or None)
        if pair is None:
            self._trigger_times.pop(key, None)
            return False
        trigger = min((s.trigger_time for s in slices if s.trigger_time > 0), default=0.0)
        if trigger >= self._start_time:
            earliest = self._trigger_times.get(key)
            self._trigger_times[key] = trigger if earliest is None else min(earliest, trigger)
        return True

    def drain(self) -> tuple[set[ServicePortName], list[EndpointSliceInfo], dict[str, float]]:
        """Changed service ports, every current slice, and the pending trigger times."""
        changed: set[ServicePortName] = set()
        for before, after in self._pairs.take().values():
            changed |= _port_names(before or ())
            changed |= _port_names(after or ())
        triggers, self._trigger_times = self._trigger_times, {}
        slices = [s for value in self._pairs.current.values() for s in value]
        slices.sort(key=lambda s: (s.namespace, s.name, s.address_type.value))
        return changed, slices, triggers


@dataclass(frozen=True, slots=True)
class TrackedState:
    """One drain: everything the next sync needs.

    Attributes:
        changed: Service ports whose Service or endpoints changed since the
            previous drain (empty when nothing did).
        services: Every current Service port, sorted by name.
        slices: Every current EndpointSlice, sorted by namespace/name.
        nodes: Every current Node by name.
        nodes_changed: A Node was added, changed or deleted since the last drain.
        trigger_times: Per slice key, the earliest trigger time (epoch
            seconds) of its drained changes; observe them after the apply.
        service_changes: Services whose changes this drain consumed.
        endpoint_changes: Slices whose changes this drain consumed.
    """

    changed: frozenset[ServicePortName]
    services: list[ServicePort]
    slices: list[EndpointSliceInfo]
    nodes: dict[str, NodeInfo]
    nodes_changed: bool
    trigger_times: dict[str, float]
    service_changes: int
    endpoint_changes: int

    @property
    def has_changes(self) -> bool:
        """Anything at all changed since the previous drain."""
        return bool(self.service_changes or self.endpoint_changes or self.nodes_changed)


class ChangeTracker:
    """The thread-safe front of the trackers; its :meth:`on_change` is a reflector handler.

    ``on_pending`` (optional) is called, outside the lock and from the
    caller's thread, after every event that leaves a change pending: the
    daemon uses it to wake the sync runner and tell the health server an
    update is queued.
    """

    def __init__(
        self,
        *,
        on_pending: Callable[[], None] | None = None,
        start_time: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._services = ServiceChangeTracker()
        self._endpoints = EndpointsChangeTracker(start_time)
        self._nodes: dict[str, NodeInfo] = {}
        self._nodes_changed = False
        self._on_pending = on_pending

    def on_change(self, kind: str, key: str, old: Any, new: Any) -> None:
        """Reflector handler: route by kind (Service, EndpointSlice, Endpoints, Node)."""
        del old  # the trackers compare against their own copy, the source of truth
        with self._lock:
            if kind == "Service":
                pending = self._services.update(key, new)
            elif kind in ("EndpointSlice", "Endpoints"):
                pending = self._endpoints.update(key, new)
            elif kind == "Node":
                pending = self._update_node(key, new)
            else:
                log.warning("change tracker: ignoring change of unknown kind %s (%s)", kind, key)
                return
        if pending and self._on_pending is not None:
            try:
                self._on_pending()
            except Exception:
                log.exception("change tracker: on_pending callback failed")

    def _update_node(self, key: str, new: NodeInfo | None) -> bool:
        if self._nodes.get(key) == new:
            return False
        if new is None:
            del self._nodes[key]
        else:
            self._nodes[key] = new
        self._nodes_changed = True
        return True

    @property
    def service_changes_pending(self) -> int:
        """Services with an undrained change."""
        with self._lock:
            return self._services.pending

    @property
    def endpoint_changes_pending(self) -> int:
        """Slices with an undrained change."""
        with self._lock:
            return self._endpoints.pending

    @property
    def service_changes_total(self) -> int:
        """Service updates seen since start."""
        with self._lock:
            return self._services.total

    @property
    def endpoint_changes_total(self) -> int:
        """Slice updates seen since start."""
        with self._lock:
            return self._endpoints.total

    def drain(self) -> TrackedState:
        """Take every pending change and return it with the current maps, atomically."""
        with self._lock:
            service_changes = self._services.pending
            endpoint_changes = self._endpoints.pending
            changed_services, services = self._services.drain()
            changed_endpoints, slices, triggers = self._endpoints.drain()
            nodes_changed, self._nodes_changed = self._nodes_changed, False
            nodes = dict(self._nodes)
        return TrackedState(
            changed=frozenset(changed_services | changed_endpoints),
            services=services,
            slices=slices,
            nodes=nodes,
            nodes_changed=nodes_changed,
            trigger_times=triggers,
            service_changes=service_changes,
            endpoint_changes=endpoint_changes,
        )
