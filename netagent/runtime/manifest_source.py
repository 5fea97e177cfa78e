"""The agent's main loop for the static-manifests source.

Why this shape: the data flows one way — the source yields a snapshot of
objects, :func:`netagent.state.build_proxy_state` turns it into the desired
state, and each family's proxier renders and applies it. The loop itself only
decides *when* to sync (a change on disk, the periodic full resync, a retry
after a failure) through :class:`netagent.runtime.sync_runner.BoundedFrequencyRunner`.

Failure policy: a sync that raises leaves the kernel as it was (the apply is
one atomic iptables-restore), logs why, and the next sync is a full one. A bad
object in the manifests never stops the others: it is logged once per change
and skipped. The previous rules stay in place on exit, as kube-proxy's do;
``netagent cleanup`` removes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from netagent.config import AgentConfig
from netagent.model import IPFamily, NodeInfo, ProxyState
from netagent.observe.observability import Observability
from netagent.proxy.conntrack import ConntrackTool
from netagent.proxy.iptables.proxier import IptablesProxier, SyncResult
from netagent.proxy.iptables.rules import RenderedIptables
from netagent.proxy.iptables.runner import SubprocessIptables, resolve_backend
from netagent.proxy.sysctl import ProcSysctl, ensure_proxy_sysctls
from netagent.runtime.daemon import SourceTask, install_signal_handlers, run_daemon
from netagent.sources.manifests import ManifestSnapshot, ManifestWatcher, load_manifests
from netagent.state import build_proxy_state
from netagent.translate import InvalidObject

log = logging.getLogger(__name__)


def families_for(config: AgentConfig, node: NodeInfo) -> tuple[IPFamily, ...]:
    """IPv4 always; IPv6 too when the cluster CIDRs or the node's IPs include it."""
    fams = [IPFamily.IPV4]
    if any(c.version == 6 for c in config.cluster_cidrs) or any(
        a.version == 6 for a in node.addresses
    ):
        fams.append(IPFamily.IPV6)
    return tuple(fams)


def make_proxier(config: AgentConfig, family: IPFamily) -> IptablesProxier:
    """The real iptables proxier of one family, on the configured backend."""
    backend = resolve_backend(config.iptables_backend)
    log.info("iptables backend for %s: %s", family.value, backend)
    return IptablesProxier(
        runner=SubprocessIptables(family=family, backend=backend),
        conntrack=ConntrackTool(family=family),
        family=family,
    )


def log_sync(family: IPFamily, state: ProxyState, result: SyncResult) -> None:
    """One line per applied family: what was written and how long it took."""
    log.info(
        "synced %s (%s): %d services, %d chains written, %d deleted, %d bytes, "
        "render %.3fs apply %.3fs",
        family.value,
        "full" if result.full else "partial",
        len(state.services),
        result.apply.chains_written,
        result.apply.chains_deleted,
        result.apply.bytes_written,
        result.render_seconds,
        result.apply_seconds,
    )


@dataclass
class ManifestAgent:
    """Syncs the node from a directory of Service/EndpointSlice/Node manifests."""

    config: AgentConfig
    proxiers: dict[IPFamily, IptablesProxier] = field(default_factory=dict)
    last_errors: tuple[str, ...] = ()
    last_states: list[ProxyState] = field(default_factory=list)
    _last_good: ManifestSnapshot | None = None

    def __post_init__(self) -> None:
        if self.config.manifests_dir is None:
            raise ValueError("ManifestAgent needs config.manifests_dir")

    def _proxier(self, family: IPFamily) -> IptablesProxier:
        proxier = self.proxiers.get(family)
        if proxier is None:
            proxier = self.proxiers[family] = make_proxier(self.config, family)
        return proxier

    def load(self) -> ManifestSnapshot:
        """Read the directory; new errors are logged as warnings, known ones at debug.

        An object that was valid on the previous load and is invalid now keeps
        its last valid version: a bad edit must not remove rules that are
        serving traffic. A deleted object (no longer in any file) does go.
        """
        assert self.config.manifests_dir is not None
        # Errors seen on the previous load are logged at debug level, so a bad
        # object is reported once per change, not on every periodic resync.
        snapshot = load_manifests(self.config.manifests_dir, known_errors=self.last_errors)
        self.last_errors = tuple(str(e) for e in snapshot.errors)
        if self._last_good is not None:
            snapshot = keep_last_valid(snapshot, self._last_good)
        self._last_good = snapshot
        return snapshot

    def own_node(self, snapshot: ManifestSnapshot) -> NodeInfo:
        """This node's Node object, or a bare one (NodePorts then use every local IP)."""
        for node in snapshot.nodes:
            if node.name == self.config.node_name:
                return node
        log.warning(
            "Node %s not found in %s: node IPs and pod CIDR unknown",
            self.config.node_name,
            self.config.manifests_dir,
        )
        return NodeInfo(name=self.config.node_name)

    def last_outcome(self) -> tuple[list[ProxyState], list[RenderedIptables]]:
        """The states and rendered rules of the last successful sync."""
        rendered = [p.last_rendered for p in self.proxiers.values() if p.last_rendered]
        return self.last_states, rendered

    def after_success(self, now: float) -> None:
        """Nothing to record for manifests (they carry no trigger times)."""

    def sync(self, *, full: bool) -> list[SyncResult]:
        """Load, build, render and apply every family once. Raises on apply failure."""
        snapshot = self.load()
        node = self.own_node(snapshot)
        results = []
        states = []
        for family in families_for(self.config, node):
            state = build_proxy_state(
                services=snapshot.services,
                slices=snapshot.slices,
                node=node,
                config=self.config.proxy_config(),
                family=family,
            )
            result = self._proxier(family).sync(state, full=full)
            log_sync(family, state, result)
            results.append(result)
            states.append(state)
        self.last_states = states
        return results


def keep_last_valid(snapshot: ManifestSnapshot, previous: ManifestSnapshot) -> ManifestSnapshot:
    """``snapshot`` plus the previous version of every object that has turned invalid."""
    bad = {
        (e.kind, e.namespace, e.name) for e in snapshot.errors if isinstance(e, InvalidObject)
    }
    if not bad:
        return snapshot
    present = {p.name.service for p in snapshot.services}
    services = list(snapshot.services)
    for port in previous.services:
        ref = ("Service", port.name.namespace, port.name.name)
        if ref in bad and port.name.service not in present:
            services.append(port)
    slice_keys = {s.key for s in snapshot.slices}
    slices = list(snapshot.slices)
    for sl in previous.slices:
        if ("EndpointSlice", sl.namespace, sl.name) in bad and sl.key not in slice_keys:
            slices.append(sl)
    node_names = {n.name for n in snapshot.nodes}
    nodes = list(snapshot.nodes)
    for node in previous.nodes:
        if ("Node", "", node.name) in bad and node.name not in node_names:
            nodes.append(node)
    kept = (len(services) - len(snapshot.services), len(slices) - len(snapshot.slices))
    if kept != (0, 0) or len(nodes) != len(snapshot.nodes):
        log.warning(
            "keeping the last valid version of %d service ports, %d EndpointSlices and %d Nodes "
            "that are invalid now (see the errors above)",
            kept[0],
            kept[1],
            len(nodes) - len(snapshot.nodes),
        )
    return replace(snapshot, services=tuple(services), slices=tuple(slices), nodes=tuple(nodes))


def prepare_host(config: AgentConfig) -> None:
    """Kernel settings the proxy relies on, in the agent's own network namespace."""
    # ip_forward: DNATed packets to pods on other hosts/bridges are forwarded;
    # route_localnet: NodePorts on 127.0.0.1 are DNATed to pod IPs, which the
    # kernel otherwise refuses for loopback sources; bridge-nf-call-iptables:
    # pod -> service -> pod on the same bridge must pass through nat.
    ensure_proxy_sysctls(
        ProcSysctl(),
        localhost_nodeports=config.localhost_nodeports,
        ipv6=any(c.version == 6 for c in config.cluster_cidrs),
    )


def run_once(config: AgentConfig) -> int:
    """`netagent run --once`: one full sync, exit 0 on success, 1 on failure."""
    prepare_host(config)
    agent = ManifestAgent(config)
    try:
        agent.sync(full=True)
    except Exception as exc:
        log.error("sync failed: %s", exc)
        return 1
    return 0


async def run_forever(config: AgentConfig, stop: asyncio.Event | None = None) -> int:
    """`netagent run --manifests DIR`: sync on change and periodically until SIGTERM/SIGINT."""
    prepare_host(config)
    stop = stop or asyncio.Event()
    install_signal_handlers(stop)
    agent = ManifestAgent(config)
    assert config.manifests_dir is not None
    watcher = ManifestWatcher(config.manifests_dir)

    async def watch(wake: Callable[[], None], stop: asyncio.Event) -> None:
        while not stop.is_set():
            await watcher.wait_for_change(stop)
            if not stop.is_set():
                log.info("manifests changed in %s", config.manifests_dir)
                wake()

    observe = Observability(config)
    observe.start()
    return await run_daemon(
        config,
        agent,
        [SourceTask("manifest-watch", watch)],
        stop=stop,
        observe=observe,
    )
