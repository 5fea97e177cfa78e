"""``--proxy-mode none``: no Service rules at all, only the overlay's masquerade and FORWARD.

Why a mode: a cluster that keeps its kube-proxy and wants netagent only for
the pod network (flannel's job) must get no Service rules from netagent, or
two proxies would DNAT the same ClusterIPs. The overlay still needs its
masquerade and FORWARD rules, and they still go in one atomic
``iptables-restore`` per sync through the same applier the iptables mode
uses (partial syncs, canary, full sync after a failure), so nothing about
their safety changes. Services, EndpointSlices and the rest of the desired
state are ignored; IPv6 gets no rules (the overlay is IPv4 only).

It owns the same ``NETAGENT-OVERLAY-…`` chains as the iptables mode, so a
switch between the two keeps those chains and removes only the other mode's
(see :data:`OVERLAY_CHAINS` and :mod:`netagent.proxy.registry`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from netagent.model import IPFamily, ProxyState
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.iptables.apply import IptablesApplier
from netagent.proxy.iptables.overlay_render import (
    FORWARD_CHAIN,
    POSTROUTING_CHAIN,
    render_overlay_rules,
)
from netagent.proxy.iptables.proxier import sync_result
from netagent.proxy.iptables.rules import RenderedIptables
from netagent.proxy.iptables.runner import IptablesRunner
from netagent.proxy.proxier import CleanupResult, OwnedObject, SyncResult

MODE = "none"

#: The chains this mode writes; the iptables mode writes them too.
OVERLAY_CHAINS = frozenset({POSTROUTING_CHAIN, FORWARD_CHAIN})


def render_overlay_only(
    family: IPFamily, overlay: OverlayRules | None, masquerade_bit: int
) -> RenderedIptables:
    """The overlay's chains (IPv4 with an overlay), else an empty ruleset."""
    if overlay is None or family is not IPFamily.IPV4:
        return RenderedIptables(family=family, tables={})
    return render_overlay_rules(overlay, masquerade_mark=1 << masquerade_bit)


class OverlayOnlyProxier:
    """The ``none`` mode's Proxier: writes the overlay's intent, never a Service rule."""

    mode = MODE

    def __init__(
        self,
        *,
        runner: IptablesRunner,
        family: IPFamily = IPFamily.IPV4,
        drift_check_period: float | None = None,
    ) -> None:
        self.family = family
        self._runner = runner
        self._applier = IptablesApplier(runner, drift_check_period=drift_check_period)
        self._synced = False
        self.last_rendered: RenderedIptables | None = None

    @property
    def needs_full_sync(self) -> bool:
        """Before the first sync, after a failure, or when the canary is gone."""
        return not self._synced or self._applier.needs_full_sync

    def sync(
        self, state: ProxyState, *, full: bool = False, overlay: OverlayRules | None = None
    ) -> SyncResult:
        """Apply the overlay's chains (and nothing of ``state``'s Services)."""
        full = full or self.needs_full_sync
        t0 = time.perf_counter()
        rendered = render_overlay_only(self.family, overlay, state.config.masquerade_bit)
        t1 = time.perf_counter()
        result = self._applier.apply(rendered, full=full)
        t2 = time.perf_counter()
        self._synced = True
        self.last_rendered = rendered
        return sync_result(MODE, self.family, result, t1 - t0, t2 - t1, rendered)

    def render_objects(
        self, state: ProxyState, overlay: OverlayRules | None = None
    ) -> Sequence[OwnedObject]:
        """Pure: the overlay's chains and jumps, all owned by ``overlay``."""
        from netagent.proxy.iptables import inspect

        rendered = render_overlay_only(self.family, overlay, state.config.masquerade_bit)
        return inspect.owned_objects(rendered, {})

    def kernel_objects(self) -> Sequence[OwnedObject]:
        """netagent's chains and jumps as iptables-save shows them."""
        from netagent.proxy.iptables import inspect

        return inspect.kernel_owned_objects(self._runner.save())

    def describe(self) -> Sequence[OwnedObject]:
        """What the last sync wrote."""
        from netagent.proxy.iptables import inspect

        if self.last_rendered is None:
            return ()
        return inspect.owned_objects(self.last_rendered, {})

    def cleanup(self) -> CleanupResult:
        """Delete netagent's chains and jumps in this family's tables."""
        report = IptablesApplier.cleanup(self._runner)
        return CleanupResult(
            removed=len(report.chains_deleted) + len(report.jumps_deleted), summary=str(report)
        )
