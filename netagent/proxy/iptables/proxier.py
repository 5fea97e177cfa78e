"""The iptables proxier: one sync = render (pure) -> one atomic apply -> conntrack cleanup.

Why a separate object from the renderer and the applier: it owns the little
state that must survive between syncs and belongs to neither of them — the
previous desired state (to find UDP flows whose endpoint went away) and the
decision that the next sync must be full. The renderer stays pure, the
applier stays a thin kernel adapter, and the daemon just calls ``sync``.

Order matters after an apply: stale UDP conntrack entries are deleted only
once the new rules are in the kernel, otherwise a new packet could recreate
the flow towards the removed endpoint before the rule that replaces it lands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from netagent.model import IPFamily, ProxyState
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.conntrack import Conntrack, delete_stale_udp
from netagent.proxy.iptables.apply import ApplyResult, IptablesApplier
from netagent.proxy.iptables.overlay_render import render_overlay_rules
from netagent.proxy.iptables.render import IptablesRenderer, render_iptables
from netagent.proxy.iptables.rules import RenderedIptables
from netagent.proxy.iptables.runner import IptablesRunner
from netagent.proxy.proxier import CleanupResult, OwnedObject, SyncResult

log = logging.getLogger(__name__)

MODE = "iptables"


def merge_rendered(rendered: RenderedIptables, extra: RenderedIptables) -> RenderedIptables:
    """``rendered`` plus ``extra``'s chains and jumps (a chain name may not appear in both)."""
    tables = {table: dict(chains) for table, chains in rendered.tables.items()}
    for table, chains in extra.tables.items():
        target = tables.setdefault(table, {})
        for chain, rules in chains.items():
            if chain in target:
                raise ValueError(f"chain {chain} in table {table} is rendered twice")
            target[chain] = tuple(rules)
    return RenderedIptables(
        family=rendered.family, tables=tables, jumps=rendered.jumps + tuple(extra.jumps)
    )


def rule_counts(rendered: RenderedIptables) -> dict[str, int]:
    """Rules per table (jump rules included), for ``sync_proxy_rules_iptables_total``."""
    counts: dict[str, int] = {}
    for table, chains in rendered.tables.items():
        counts[table] = counts.get(table, 0) + sum(len(rules) for rules in chains.values())
    for jump in rendered.jumps:
        counts[jump.table] = counts.get(jump.table, 0) + 1
    return counts


def render_with_overlay(
    rendered: RenderedIptables, overlay: OverlayRules | None, masquerade_bit: int
) -> RenderedIptables:
    """The Service ruleset plus the overlay's chains, for one payload (IPv4 only)."""
    if overlay is None:
        return rendered
    if rendered.family is not IPFamily.IPV4:
        raise ValueError("the overlay's rules are IPv4 only")
    extra = render_overlay_rules(overlay, masquerade_mark=1 << masquerade_bit)
    return merge_rendered(rendered, extra)


def sync_result(
    mode: str,
    family: IPFamily,
    result: ApplyResult,
    render_seconds: float,
    apply_seconds: float,
    rendered: RenderedIptables,
    *,
    conntrack_deletes: int = 0,
) -> SyncResult:
    """An iptables apply in the backend-neutral terms of :class:`SyncResult`."""
    return SyncResult(
        mode=mode,
        family=family,
        full=result.full,
        render_seconds=render_seconds,
        apply_seconds=apply_seconds,
        bytes_written=result.bytes_written,
        objects_written=result.chains_written,
        objects_deleted=result.chains_deleted,
        conntrack_deletes=conntrack_deletes,
        rule_counts=rule_counts(rendered),
        summary=(
            f"{result.chains_written} chains written, {result.chains_deleted} deleted, "
            f"{result.bytes_written} bytes"
        ),
    )


class IptablesProxier:
    """Programs one address family's Services into iptables: the ``iptables`` mode's Proxier."""

    mode = MODE

    def __init__(
        self,
        *,
        runner: IptablesRunner,
        conntrack: Conntrack | None,
        family: IPFamily = IPFamily.IPV4,
        drift_check_period: float | None = None,
    ) -> None:
        self.family = family
        self._runner = runner
        self._applier = IptablesApplier(runner, drift_check_period=drift_check_period)
        self._renderer = IptablesRenderer()
        self._conntrack = conntrack
        self._previous: ProxyState | None = None
        self.last_rendered: RenderedIptables | None = None
        self.last_apply: ApplyResult | None = None

    @property
    def needs_full_sync(self) -> bool:
        """True after a failure, before the first sync, or when the canary is gone."""
        return self._previous is None or self._applier.needs_full_sync

    def sync(
        self,
        state: ProxyState,
        *,
        full: bool = False,
        overlay: OverlayRules | None = None,
    ) -> SyncResult:
        """Render ``state`` and apply it; raise on failure (the next sync is then full).

        ``overlay`` adds the overlay's masquerade and forward chains to the
        same payload, so a sync is still one atomic iptables-restore whatever
        it carries.
        """
        if state.family is not self.family:
            raise ValueError(f"proxier for {self.family.value} got a {state.family.value} state")
        full = full or self.needs_full_sync
        t0 = time.perf_counter()
        rendered = render_with_overlay(
            self._renderer.render(state), overlay, state.config.masquerade_bit
        )
        t1 = time.perf_counter()
        result = self._applier.apply(rendered, full=full)
        t2 = time.perf_counter()
        deletes = 0
        if self._conntrack is not None:
            deletes = delete_stale_udp(self._conntrack, self._previous, state)
        self._previous = state
        self.last_rendered = rendered
        self.last_apply = result
        return sync_result(
            MODE, self.family, result, t1 - t0, t2 - t1, rendered, conntrack_deletes=deletes
        )

    def render_objects(
        self, state: ProxyState, overlay: OverlayRules | None = None
    ) -> Sequence[OwnedObject]:
        """Pure: the chains and jump rules a sync of ``state`` leaves in the kernel."""
        from netagent.proxy.iptables import inspect

        rendered = render_with_overlay(render_iptables(state), overlay, state.config.masquerade_bit)
        return inspect.owned_objects(rendered, inspect.chain_owners(state))

    def kernel_objects(self) -> Sequence[OwnedObject]:
        """netagent's chains and jump rules as ``iptables-save`` shows them now."""
        from netagent.proxy.iptables import inspect

        return inspect.kernel_owned_objects(self._runner.save())

    def describe(self) -> Sequence[OwnedObject]:
        """What the last successful sync wrote (empty before the first)."""
        from netagent.proxy.iptables import inspect

        if self.last_rendered is None or self._previous is None:
            return ()
        return inspect.owned_objects(self.last_rendered, inspect.chain_owners(self._previous))

    def cleanup(self) -> CleanupResult:
        """Delete netagent's chains and jump rules in this family's tables."""
        report = IptablesApplier.cleanup(self._runner)
        removed = len(report.chains_deleted) + len(report.jumps_deleted)
        return CleanupResult(removed=removed, summary=str(report))
