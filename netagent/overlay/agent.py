"""The overlay's place in the agent: one object the sync loop calls with the current Nodes.

Why one object: the overlay has a start-up phase that must happen once and in
order (find the underlay, claim a pod CIDR on our Node, publish our VTEP and
public IP, create cbr0 and the VXLAN device, write subnet.env and the CNI
conflist) and a steady state that is a pure function of the Node objects
(every peer's subnet, public IP and VTEP MAC -> FDB, neighbour and route
entries). The API agent calls :meth:`OverlayNetwork.sync` at the start of
every sync with the Nodes the reflector holds, in the sync worker thread;
the start-up phase runs inside the first call, so it happens only after the
initial lists are complete, and a failure (API down, claim conflict) fails
that sync and is retried by the next one like any other.

The masquerade and FORWARD needs are not applied here either: they are
backend-neutral intent (:class:`netagent.overlay.rules_intent.OverlayRules`)
that :meth:`OverlayNetwork.rules_intent` hands to the node sync, and the
active proxy mode renders them into its own ruleset, so they go into the
kernel in the same atomic apply as the Service rules. The overlay imports
nothing of the proxy or the runtime.

The kernel side is reconciled per object (:mod:`netagent.overlay.reconcile`):
each sync plans the desired devices and entries from the Nodes, dumps what
netagent owns, and adds, repairs and prunes only that. A hand-deleted route
or FDB entry, a departed node, or a deleted VXLAN device is therefore fixed
by the next sync (at least every syncPeriod).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api

from netagent.config import AgentConfig
from netagent.model import NodeInfo
from netagent.overlay import annotations as ann
from netagent.overlay.checksum import tx_checksum_wanted
from netagent.overlay.cni_files import write_cni_conflist, write_subnet_env
from netagent.overlay.host_sysctl import ensure_overlay_sysctls
from netagent.overlay.kernel import OverlayKernel, PyrouteOverlayKernel
from netagent.overlay.model import (
    VXLAN_OVERHEAD,
    BackendType,
    LocalNode,
    OverlayConfig,
    RemoteNode,
    VxlanSettings,
)
from netagent.overlay.plan import plan_overlay
from netagent.overlay.reconcile import OverlayReconciler
from netagent.overlay.rules_intent import OverlayRules
from netagent.overlay.subnet_alloc import KubernetesNodeApi, NodeApi, NodeClaimer
from netagent.overlay.underlay import Underlay, find_underlay

log = logging.getLogger(__name__)


class NodePatcher:
    """Merge-patches our Node's annotations (the one write besides the pod CIDR claim)."""

    def __init__(self, client: ApiClient) -> None:
        self._core = CoreV1Api(client)

    def patch_annotations(self, name: str, patch: Mapping[str, Any]) -> None:
        """Send ``patch`` (a merge patch body) to Node ``name``."""
        self._core.patch_node(
            name,
            dict(patch),
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )


def overlay_config_for(config: AgentConfig, kernel_release: str) -> OverlayConfig:
    """The overlay's settings from the agent's config (``netagent debug`` builds the same)."""
    network = next((c for c in config.cluster_cidrs if c.version == 4), None)
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError("the overlay needs an IPv4 cluster CIDR (--cluster-cidr)")
    return OverlayConfig(
        network=network,
        backend=BackendType(config.overlay_backend),
        subnet_len=config.overlay_subnet_len,
        direct_routing=config.overlay_direct_routing,
        ip_masq=config.overlay_ip_masq,
        vxlan=VxlanSettings(
            tx_checksum=tx_checksum_wanted(config.overlay_vxlan_tx_checksum, kernel_release)
        ),
        annotation_prefix=config.overlay_annotation_prefix,
    )


@dataclass
class _Started:
    local: LocalNode
    underlay: Underlay


class OverlayNetwork:
    """The flannel-style half of the agent (``--overlay vxlan|host-gw``)."""

    def __init__(
        self,
        config: AgentConfig,
        overlay: OverlayConfig,
        *,
        node_api: NodeApi,
        patcher: NodePatcher,
        kernel: OverlayKernel,
    ) -> None:
        self.config = config
        self.overlay = overlay
        self._node_api = node_api
        self._patcher = patcher
        self._kernel = kernel
        self._reconciler = OverlayReconciler(kernel)
        self._started: _Started | None = None
        self._bad_peers: dict[str, str] = {}
        self._last_remotes: dict[str, RemoteNode] = {}
        self._last_failures: set[str] = set()
        self._rules: OverlayRules | None = None

    @staticmethod
    def from_config(config: AgentConfig, client: ApiClient) -> OverlayNetwork:
        """The real overlay: the API through ``client``, the kernel through pyroute2."""
        overlay = overlay_config_for(config, platform.release())
        if config.overlay_backend == "vxlan" and not overlay.vxlan.tx_checksum:
            log.info(
                "VXLAN tx checksum offload will be off (overlay.vxlanTxChecksum %s, kernel %s)",
                config.overlay_vxlan_tx_checksum,
                platform.release(),
            )
        return OverlayNetwork(
            config,
            overlay,
            node_api=KubernetesNodeApi(client),
            patcher=NodePatcher(client),
            kernel=PyrouteOverlayKernel(),
        )

    # ---- start-up ---------------------------------------------------------------------

    def _start(self, own: NodeInfo | None) -> _Started:
        cfg = self.overlay
        underlay = find_underlay(
            iface=self.config.overlay_iface, public_ip=self.config.overlay_public_ip
        )
        log.info(
            "overlay underlay: %s, public IP %s, MTU %d",
            underlay.device,
            underlay.address,
            underlay.mtu,
        )
        ensure_overlay_sysctls(cfg)
        subnet = NodeClaimer(self._node_api).claim(
            self.config.node_name, cfg.network, cfg.subnet_len
        )
        log.info("pod CIDR of %s: %s", self.config.node_name, subnet)
        vtep_mac = None
        if cfg.backend is BackendType.VXLAN:
            vtep_mac = self._published_mac(own) or ann.vtep_mac_for(self.config.node_name)
        local = LocalNode(
            name=self.config.node_name,
            subnet=subnet,
            public_ip=underlay.address,
            underlay_device=underlay.device,
            underlay_mtu=underlay.mtu,
            vtep_mac=vtep_mac,
        )
        self._rules = OverlayRules(
            cluster_network=cfg.network, local_subnet=local.subnet, ip_masq=cfg.ip_masq
        )
        return _Started(local=local, underlay=underlay)

    def _published_mac(self, own: NodeInfo | None) -> str | None:
        """The VTEP MAC our Node already publishes (kept across restarts)."""
        if own is None:
            return None
        raw = own.annotation(ann.key(self.overlay.annotation_prefix, ann.BACKEND_DATA))
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        mac = data.get("VtepMAC") if isinstance(data, dict) else None
        return ann.normalize_mac(mac) if isinstance(mac, str) else None

    def pod_mtu(self, local: LocalNode) -> int:
        """The MTU pods get: the underlay's, less the VXLAN header with that backend."""
        if self.overlay.backend is BackendType.VXLAN:
            return local.underlay_mtu - VXLAN_OVERHEAD
        return local.underlay_mtu

    # ---- every sync -------------------------------------------------------------------

    def sync(self, nodes: Mapping[str, NodeInfo]) -> None:
        """Start up once, publish our annotations, reconcile the kernel against ``nodes``."""
        own = nodes.get(self.config.node_name)
        if self._started is None:
            self._started = self._start(own)
        local = self._started.local
        patch = ann.publish_patch(
            self.overlay.annotation_prefix,
            self.overlay.backend,
            local.public_ip,
            local.vtep_mac,
            self.overlay.vxlan.vni,
            current=dict(own.annotations) if own is not None else None,
        )
        if patch is not None:
            self._patcher.patch_annotations(local.name, patch)
            log.info("published overlay annotations on Node %s", local.name)
        remotes, errors = ann.remote_nodes(
            nodes.values(), self.overlay.annotation_prefix, local.name
        )
        bad = {e.node: str(e) for e in errors}
        for node, message in bad.items():
            if self._bad_peers.get(node) != message:
                log.warning("%s; keeping its last valid entries", message)
        self._bad_peers = bad
        # A peer whose annotations turned invalid keeps its last valid version:
        # a typo on one Node must not cut every pod off from that node's pods.
        kept = [self._last_remotes[n] for n in bad if n in self._last_remotes and n in nodes]
        remotes = sorted([*remotes, *kept])
        self._last_remotes = {r.name: r for r in remotes}
        desired = plan_overlay(self.overlay, local, remotes, self._started.underlay.subnets)
        for reason in desired.skipped:
            log.debug("overlay: %s", reason)
        report = self._reconciler.reconcile(desired)
        failures = set(report.failures)
        if report.changed or failures != self._last_failures:
            log.info("overlay reconciled: %s", report.summary())
        # A failure that persists (a foreign route in the way) is logged once at
        # warning level, then at debug level while it lasts; every sync retries it.
        for failure in report.failures:
            level = logging.DEBUG if failure in self._last_failures else logging.WARNING
            log.log(level, "overlay: %s", failure)
        for gone in sorted(self._last_failures - failures):
            log.info("overlay: resolved: %s", gone)
        self._last_failures = failures
        if report.bridge_ok:
            self._write_files(local)

    def _write_files(self, local: LocalNode) -> None:
        """subnet.env and the CNI conflist: written once cbr0 exists (the CNI's ready signal)."""
        cfg = self.overlay
        mtu = self.pod_mtu(local)
        if write_subnet_env(self.config.subnet_file, cfg.network, local.subnet, mtu, cfg.ip_masq):
            log.info("wrote %s", self.config.subnet_file)
        if self.config.cni_conf_file is not None and write_cni_conflist(
            self.config.cni_conf_file, local.subnet, mtu, name="cbr0", bridge=cfg.bridge
        ):
            log.info("wrote %s", self.config.cni_conf_file)

    def rules_intent(self) -> OverlayRules | None:
        """The masquerade and FORWARD needs, for the proxy mode to render (None before start)."""
        return self._rules
