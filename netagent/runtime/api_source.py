"""The Kubernetes API as a snapshot source: reflectors -> change tracker -> one snapshot per sync.

Why this shape: the reflectors (:mod:`netagent.sources.api_watch`) run in
their own threads and only record changes in a
:class:`netagent.change_tracker.ChangeTracker`, which wakes the sync runner.
The node sync (:mod:`netagent.runtime.node_sync`, in a worker thread, never
on the event loop) asks this source for a snapshot; the source drains the
tracker atomically and answers with the *complete* current object set.
Because every snapshot is complete, a failed sync loses nothing: the next one
(full, as the daemon forces after any failure) simply applies the newer state.

Safety rules this module enforces:

* **No write before the first lists.** Until Services, EndpointSlices and
  Nodes have each completed a full list, no sync runs: an agent that
  restarts while the API server is unreachable keeps the node's existing
  rules instead of replacing them with an empty ruleset. A failed or
  partial list never completes a reflector's sync (see api_watch).
* **An unreachable API server changes nothing.** Reflectors back off and
  retry on their own; the rules in the kernel stay as they are, and the
  periodic sync keeps re-applying the last known state (which also repairs
  drift) for as long as the outage lasts.
* **Network programming latency** is observed per EndpointSlice from its
  ``endpoints.kubernetes.io/last-change-trigger-time`` to the moment the
  rules that include the change are in the kernel. Trigger times drained by
  a sync that then failed stay pending and are observed after the next success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from kubernetes.client import ApiClient

from netagent.change_tracker import ChangeTracker
from netagent.config import AgentConfig
from netagent.model import EndpointSliceInfo, NodeInfo, ServicePort
from netagent.runtime.daemon import SourceTask, install_signal_handlers, run_daemon
from netagent.runtime.node_sync import NodeNetwork, NodeSync, Snapshot
from netagent.runtime.startup import (
    attach_debug,
    observability_for,
    prepare_node,
    proxier_factory,
)
from netagent.sources.api_watch import ApiWatch, WatchSettings
from netagent.sources.kubeconfig import api_client_for_url, api_client_from_environment, describe

log = logging.getLogger(__name__)


class ApiSource:
    """The tracked API objects as snapshots, and which trigger times are programmed."""

    def __init__(self, tracker: ChangeTracker) -> None:
        self.tracker = tracker
        self._services: list[ServicePort] = []
        self._slices: list[EndpointSliceInfo] = []
        self._nodes: dict[str, NodeInfo] = {}
        self._pending: dict[str, float] = {}
        self._applied: dict[str, float] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        """Drain the tracker; the complete current objects plus every pending trigger time."""
        with self._lock:
            tracked = self.tracker.drain()
            self._services = tracked.services
            self._slices = tracked.slices
            self._nodes = tracked.nodes
            for key, when in tracked.trigger_times.items():
                earlier = self._pending.get(key)
                self._pending[key] = when if earlier is None else min(earlier, when)
            return Snapshot(
                services=tuple(self._services),
                slices=tuple(self._slices),
                nodes=dict(self._nodes),
                trigger_times=dict(self._pending),
            )

    def programmed(self, snapshot: Snapshot) -> None:
        """The snapshot's trigger times are in the kernel: move them to the applied set."""
        with self._lock:
            for key, when in snapshot.trigger_times.items():
                if self._pending.get(key) == when:
                    del self._pending[key]
                self._applied[key] = when

    def take_applied_triggers(self) -> list[float]:
        """Trigger times whose changes a successful sync put in the kernel (each once)."""
        with self._lock:
            applied, self._applied = list(self._applied.values()), {}
        return applied


def api_client(config: AgentConfig) -> ApiClient:
    """The API client from ``--master`` / ``--kubeconfig`` / in-cluster config."""
    if config.master and config.kubeconfig is None:
        return api_client_for_url(config.master)
    client = api_client_from_environment(config.kubeconfig)
    if config.master:
        client.configuration.host = config.master.rstrip("/")
    return client


async def run_api(
    config: AgentConfig,
    stop: asyncio.Event | None = None,
    *,
    client: ApiClient | None = None,
    watch_settings: WatchSettings | None = None,
    network: NodeNetwork | None = None,
) -> int:
    """`netagent run` against the Kubernetes API, until SIGTERM/SIGINT."""
    await asyncio.to_thread(prepare_node, config)  # pyroute2 needs a thread without a loop
    stop = stop or asyncio.Event()
    install_signal_handlers(stop)
    client = client or api_client(config)
    log.info("watching the API at %s as node %s", describe(client), config.node_name)
    loop = asyncio.get_running_loop()
    wake_box: list[Callable[[], None]] = []

    def on_pending() -> None:
        if wake_box:
            with contextlib.suppress(RuntimeError):  # loop closed: shutting down
                loop.call_soon_threadsafe(wake_box[0])

    tracker = ChangeTracker(on_pending=on_pending, start_time=time.time())
    watch = ApiWatch(
        client,
        tracker.on_change,
        legacy_endpoints=config.legacy_endpoints,
        watch_nodes=True,
        settings=watch_settings or WatchSettings.for_min_timeout(config.min_watch_timeout),
    )
    observe = observability_for(config)
    source = ApiSource(tracker)
    node_sync = NodeSync(
        config,
        source,
        proxier_factory=proxier_factory(config),
        network=network,
        on_own_node=observe.health.sync_node,
    )
    attach_debug(observe, node_sync)
    observe.metrics.track_changes(tracker)
    observe.start()

    def after_success(now: float) -> None:
        observe.metrics.observe_network_programming(source.take_applied_triggers(), now)

    async def run_watch(wake: Callable[[], None], stop: asyncio.Event) -> None:
        wake_box.append(wake)
        watch.start()
        try:
            while not watch.all_synced and not stop.is_set():
                await asyncio.sleep(0.05)
            if stop.is_set():
                return
            log.info("initial lists complete: Services, %s, Nodes", watch.endpoints_kind)
            wake()
            await stop.wait()
        finally:
            await asyncio.to_thread(watch.stop)

    def waiting_for() -> str:
        return "the first list of " + ", ".join(watch.not_synced())

    return await run_daemon(
        config,
        node_sync,
        [SourceTask("api-watch", run_watch)],
        stop=stop,
        observe=observe,
        after_success=after_success,
        ready=lambda: watch.all_synced,
        waiting_for=waiting_for,
    )
