"""One sync of the node, whatever feeds it: snapshot -> desired state -> overlay, then proxiers.

Why one object: the manifests source and the API source differ only in how
they produce the complete current set of objects. Everything after that —
finding this node's Node, telling health whether the node is going away,
reconciling the overlay, building each family's desired state and handing
it to that family's proxier — is the same, so it is written once, here.

Order inside a sync:

1. The source yields a :class:`Snapshot` (services, slices, nodes, and the
   trigger times of changes not yet in the kernel).
2. ``on_own_node`` learns this node's Node (``/healthz`` follows it).
   Each family's desired state drops the externalIPs that
   ``externalIPAllowCIDRs`` does not allow; :class:`ExternalIPRejections`
   logs one warning per newly rejected (Service, address) pair, not one per
   sync.
3. The overlay (if any) is reconciled against the Nodes first: its
   masquerade and FORWARD needs (:class:`OverlayRules`) must be known before
   the proxier renders, because they ride in the same atomic apply.
4. Each family's :class:`~netagent.proxy.proxier.Proxier` syncs; IPv4 also
   carries the overlay's rules.
5. Only after every step succeeded does the source learn that the
   snapshot's changes are programmed (for the network-programming-latency
   metric). A step that raises fails the sync; the daemon makes the next one
   full, and the next snapshot still carries the unobserved trigger times.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from netagent.config import AgentConfig
from netagent.model import (
    EndpointSliceInfo,
    IPFamily,
    NodeInfo,
    ProxyState,
    RejectedExternalIP,
    ServicePort,
)
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.proxier import Proxier, SyncResult
from netagent.state import build_proxy_state

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The complete current objects of one source, as one value.

    Attributes:
        services: Every valid service port.
        slices: Every valid EndpointSlice.
        nodes: Every valid Node by name.
        trigger_times: Change-trigger time (epoch seconds) per changed object
            whose change is not yet programmed (API source only).
    """

    services: tuple[ServicePort, ...] = ()
    slices: tuple[EndpointSliceInfo, ...] = ()
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    trigger_times: Mapping[str, float] = field(default_factory=dict)


class SnapshotSource(Protocol):
    """Where a node sync gets its objects: the manifests directory or the API."""

    def snapshot(self) -> Snapshot:
        """The complete current objects (never a partial set)."""
        ...

    def programmed(self, snapshot: Snapshot) -> None:
        """``snapshot`` is in the kernel: its changes are no longer pending."""
        ...


class NodeNetwork(Protocol):
    """What the overlay plugs into each sync (:class:`netagent.overlay.agent.OverlayNetwork`)."""

    def sync(self, nodes: Mapping[str, NodeInfo]) -> None:
        """Reconcile the node's network against the current Nodes."""
        ...

    def rules_intent(self) -> OverlayRules | None:
        """What the overlay needs from the packet filter, rendered by the proxy mode."""
        ...


class NoOverlay:
    """A proxy-only agent's network part: nothing to reconcile, no rules to add."""

    def sync(self, nodes: Mapping[str, NodeInfo]) -> None:
        """Nothing: the pod network is someone else's."""

    def rules_intent(self) -> OverlayRules | None:
        """No overlay rules."""
        return None


def families_for(config: AgentConfig, node: NodeInfo) -> tuple[IPFamily, ...]:
    """IPv4 always; IPv6 too when the cluster CIDRs or the node's IPs include it."""
    fams = [IPFamily.IPV4]
    if any(c.version == 6 for c in config.cluster_cidrs) or any(
        a.version == 6 for a in node.addresses
    ):
        fams.append(IPFamily.IPV6)
    return tuple(fams)


def own_node(config: AgentConfig, nodes: Mapping[str, NodeInfo]) -> NodeInfo:
    """This node's Node object, or a bare one (NodePorts then use every local IP)."""
    node = nodes.get(config.node_name)
    if node is None:
        log.warning("Node %s is unknown: node IPs and pod CIDR unknown", config.node_name)
        return NodeInfo(name=config.node_name)
    return node


def build_states(config: AgentConfig, snapshot: Snapshot) -> list[ProxyState]:
    """Each family's desired state for ``snapshot`` (pure; ``netagent debug`` uses it too)."""
    node = own_node(config, snapshot.nodes)
    return [
        build_proxy_state(
            services=snapshot.services,
            slices=snapshot.slices,
            node=node,
            config=config.proxy_config(),
            family=family,
        )
        for family in families_for(config, node)
    ]


def rejected_external_ips(states: Sequence[ProxyState]) -> frozenset[RejectedExternalIP]:
    """Every (Service, externalIP) pair the allow-list removed, over all families."""
    return frozenset(r for state in states for r in state.rejected_external_ips)


class ExternalIPRejections:
    """Logs the externalIPs ``externalIPAllowCIDRs`` rejects, once per change.

    Every sync rebuilds the desired state and so finds the same rejections
    again; warning on each would repeat the same lines every ``syncPeriod``.
    Only pairs that were not rejected at the previous sync are logged (a
    warning), and pairs that stop being rejected (the Service changed or went
    away) get one info line.
    """

    def __init__(self, config: AgentConfig) -> None:
        self._allowed = ", ".join(str(n) for n in config.external_ip_allow_cidrs)
        self.current: frozenset[RejectedExternalIP] = frozenset()

    def update(self, states: Sequence[ProxyState]) -> frozenset[RejectedExternalIP]:
        """Log what changed since the last call; returns the current rejections."""
        now = rejected_external_ips(states)
        for r in sorted(now - self.current, key=RejectedExternalIP.sort_key):
            log.warning(
                "service %s/%s: externalIP %s not programmed: outside externalIPAllowCIDRs "
                "(%s), so the Service cannot capture its traffic (CVE-2020-8554)",
                r.namespace,
                r.service,
                r.ip,
                self._allowed,
            )
        for r in sorted(self.current - now, key=RejectedExternalIP.sort_key):
            log.info(
                "service %s/%s: externalIP %s is no longer claimed outside externalIPAllowCIDRs",
                r.namespace,
                r.service,
                r.ip,
            )
        self.current = now
        return now


def log_sync(state: ProxyState, result: SyncResult) -> None:
    """One line per applied family: what was written and how long it took."""
    log.info(
        "synced %s (%s): %d services, %s, render %.3fs apply %.3fs (%s mode)",
        result.family.value,
        "full" if result.full else "partial",
        len(state.services),
        result.summary,
        result.render_seconds,
        result.apply_seconds,
        result.mode,
    )


class NodeSync:
    """Builds the desired state from a source's snapshot and drives the overlay and proxiers."""

    def __init__(
        self,
        config: AgentConfig,
        source: SnapshotSource,
        *,
        proxier_factory: Callable[[IPFamily], Proxier],
        network: NodeNetwork | None = None,
        on_own_node: Callable[[NodeInfo | None], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.network: NodeNetwork = network or NoOverlay()
        self.proxiers: dict[IPFamily, Proxier] = {}
        self.last_states: list[ProxyState] = []
        self.last_results: list[SyncResult] = []
        self.last_snapshot: Snapshot | None = None
        self._factory = proxier_factory
        self.on_own_node = on_own_node
        self.external_ip_rejections = ExternalIPRejections(config)
        self._lock = threading.Lock()

    def proxier(self, family: IPFamily) -> Proxier:
        """This family's proxier, created on first use."""
        proxier = self.proxiers.get(family)
        if proxier is None:
            proxier = self.proxiers[family] = self._factory(family)
        return proxier

    def sync(self, *, full: bool) -> list[SyncResult]:
        """One sync of every part of the node; raises if any part failed."""
        with self._lock:  # one sync at a time, even if called from tests directly
            snapshot = self.source.snapshot()
            if self.on_own_node is not None:
                self.on_own_node(snapshot.nodes.get(self.config.node_name))
            self.network.sync(snapshot.nodes)
            overlay = self.network.rules_intent()
            results: list[SyncResult] = []
            states = build_states(self.config, snapshot)
            self.external_ip_rejections.update(states)
            for state in states:
                intent = overlay if state.family is IPFamily.IPV4 else None
                result = self.proxier(state.family).sync(state, full=full, overlay=intent)
                log_sync(state, result)
                results.append(result)
            self.last_states = states
            self.last_results = results
            self.last_snapshot = snapshot
            self.source.programmed(snapshot)
            return results

    def last_outcome(self) -> tuple[Sequence[ProxyState], Sequence[SyncResult]]:
        """The states and results of the last successful sync."""
        return self.last_states, self.last_results
