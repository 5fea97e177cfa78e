"""The agent driven by the Kubernetes API: reflectors -> change tracker -> sync.

Why this shape: the reflectors (:mod:`netagent.sources.api_watch`) run in
their own threads and only record changes in a
:class:`netagent.change_tracker.ChangeTracker`, which wakes the sync runner.
The sync (in a worker thread, never on the event loop) drains the tracker
atomically, builds each family's desired state from the *complete* current
object set, and applies it with one iptables-restore. Because every drain
carries the complete set, a failed sync loses nothing: the next one (full,
as the daemon forces after any failure, in the overlay step as much as in
iptables-restore) simply applies the newer state.

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
  a sync that then failed are kept and observed after the next success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubernetes.client import ApiClient

from netagent.change_tracker import ChangeTracker, TrackedState
from netagent.config import AgentConfig
from netagent.model import EndpointSliceInfo, IPFamily, NodeInfo, ProxyState, ServicePort
from netagent.observe.observability import Observability
from netagent.proxy.iptables.proxier import ExtraRules, IptablesProxier, SyncResult
from netagent.proxy.iptables.rules import RenderedIptables
from netagent.runtime.daemon import SourceTask, install_signal_handlers, run_daemon
from netagent.runtime.manifest_agent import families_for, log_sync, make_proxier, prepare_host
from netagent.sources.api_watch import ApiWatch, WatchSettings
from netagent.sources.kubeconfig import api_client_for_url, api_client_from_environment, describe
from netagent.state import build_proxy_state

log = logging.getLogger(__name__)


class NodeNetwork:
    """What the overlay plugs into each sync (see :mod:`netagent.overlay.agent`).

    The base class does nothing: a proxy-only agent has no overlay.
    """

    def sync(self, nodes: Mapping[str, NodeInfo]) -> None:
        """Reconcile the node's network against the current Nodes."""

    def extra_rules(self) -> ExtraRules | None:
        """Extra owned chains and jumps for the one IPv4 iptables apply."""
        return None


@dataclass
class ApiAgent:
    """Syncs the node from the tracked API objects."""

    config: AgentConfig
    tracker: ChangeTracker
    network: NodeNetwork = field(default_factory=NodeNetwork)
    proxier_factory: Callable[[IPFamily], IptablesProxier] | None = None
    proxiers: dict[IPFamily, IptablesProxier] = field(default_factory=dict)
    last_states: list[ProxyState] = field(default_factory=list)
    _services: list[ServicePort] = field(default_factory=list)
    _slices: list[EndpointSliceInfo] = field(default_factory=list)
    _nodes: dict[str, NodeInfo] = field(default_factory=dict)
    _unobserved: dict[str, float] = field(default_factory=dict)
    _applied: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Told this node's Node (None once it has left the API) at every sync, before
    #: anything is applied: /healthz follows whether the node is going away.
    on_own_node: Callable[[NodeInfo | None], None] | None = None

    def _proxier(self, family: IPFamily) -> IptablesProxier:
        proxier = self.proxiers.get(family)
        if proxier is None:
            factory = self.proxier_factory or (lambda fam: make_proxier(self.config, fam))
            proxier = self.proxiers[family] = factory(family)
        return proxier

    def _take(self, tracked: TrackedState) -> None:
        self._services = tracked.services
        self._slices = tracked.slices
        self._nodes = tracked.nodes
        for key, when in tracked.trigger_times.items():
            earlier = self._unobserved.get(key)
            self._unobserved[key] = when if earlier is None else min(earlier, when)

    def own_node(self) -> NodeInfo:
        """This node's Node object, or a bare one (NodePorts then use every local IP)."""
        node = self._nodes.get(self.config.node_name)
        if node is None:
            log.warning(
                "Node %s is not in the API: node IPs and pod CIDR unknown", self.config.node_name
            )
            return NodeInfo(name=self.config.node_name)
        return node

    def sync(self, *, full: bool) -> list[SyncResult]:
        """Drain, build and apply every family once. Raises on apply failure."""
        with self._lock:  # one sync at a time, even if called from tests directly
            self._take(self.tracker.drain())
            if self.on_own_node is not None:
                self.on_own_node(self._nodes.get(self.config.node_name))
            node = self.own_node()
            self.network.sync(self._nodes)
            results = []
            states = []
            for family in families_for(self.config, node):
                state = build_proxy_state(
                    services=self._services,
                    slices=self._slices,
                    node=node,
                    config=self.config.proxy_config(),
                    family=family,
                )
                extra = self.network.extra_rules() if family is IPFamily.IPV4 else None
                result = self._proxier(family).sync(state, full=full, extra=extra)
                log_sync(family, state, result)
                results.append(result)
                states.append(state)
            self.last_states = states
            self._applied, self._unobserved = self._unobserved, {}
            return results

    def last_outcome(self) -> tuple[list[ProxyState], list[RenderedIptables]]:
        """The states and rendered rules of the last successful sync."""
        rendered = [p.last_rendered for p in self.proxiers.values() if p.last_rendered]
        return self.last_states, rendered

    def take_applied_triggers(self) -> list[float]:
        """Trigger times whose changes the last successful sync put in the kernel."""
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
    prepare_host(config)
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
        settings=watch_settings,
    )
    observe = Observability(config)
    agent = ApiAgent(
        config, tracker, network=network or NodeNetwork(), on_own_node=observe.health.sync_node
    )
    observe.metrics.track_changes(tracker)
    observe.start()

    class _Syncer:
        def sync(self, *, full: bool) -> list[SyncResult]:
            return agent.sync(full=full)

        def last_outcome(self) -> tuple[list[ProxyState], list[RenderedIptables]]:
            return agent.last_outcome()

        def after_success(self, now: float) -> None:
            observe.metrics.observe_network_programming(agent.take_applied_triggers(), now)

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
        _Syncer(),
        [SourceTask("api-watch", run_watch)],
        stop=stop,
        observe=observe,
        ready=lambda: watch.all_synced,
        waiting_for=waiting_for,
    )
