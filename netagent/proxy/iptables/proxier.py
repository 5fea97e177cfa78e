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
from collections.abc import Mapping
from dataclasses import dataclass

from netagent.model import IPFamily, ProxyState
from netagent.proxy.conntrack import Conntrack, stale_udp_flows
from netagent.proxy.iptables.apply import ApplyResult, IptablesApplier
from netagent.proxy.iptables.render import render_iptables
from netagent.proxy.iptables.rules import JumpRule, RenderedIptables
from netagent.proxy.iptables.runner import IptablesRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExtraRules:
    """Owned chains (table -> chain -> rule lines) and their jumps, added to a sync."""

    tables: Mapping[str, Mapping[str, tuple[str, ...]]]
    jumps: tuple[JumpRule, ...] = ()


def merge_rendered(rendered: RenderedIptables, extra: ExtraRules) -> RenderedIptables:
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


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync did, for logs, metrics and tests."""

    full: bool
    render_seconds: float
    apply_seconds: float
    apply: ApplyResult
    conntrack_deletes: int


class IptablesProxier:
    """Programs one address family's Services into iptables."""

    def __init__(
        self,
        *,
        runner: IptablesRunner,
        conntrack: Conntrack | None,
        family: IPFamily = IPFamily.IPV4,
    ) -> None:
        self.family = family
        self._applier = IptablesApplier(runner)
        self._conntrack = conntrack
        self._previous: ProxyState | None = None
        self.last_rendered: RenderedIptables | None = None

    @property
    def needs_full_sync(self) -> bool:
        """True after a failure, before the first sync, or when the canary is gone."""
        return self._previous is None or self._applier.needs_full_sync

    def sync(
        self,
        state: ProxyState,
        *,
        full: bool = False,
        extra: ExtraRules | None = None,
    ) -> SyncResult:
        """Render ``state`` and apply it; raise on failure (the next sync is then full).

        ``extra`` adds other owned chains (the overlay's masquerade and
        forward rules) to the same payload, so a sync is still one atomic
        iptables-restore whatever it carries.
        """
        if state.family is not self.family:
            raise ValueError(f"proxier for {self.family.value} got a {state.family.value} state")
        full = full or self.needs_full_sync
        t0 = time.perf_counter()
        rendered = render_iptables(state)
        if extra is not None and (extra.tables or extra.jumps):
            rendered = merge_rendered(rendered, extra)
        t1 = time.perf_counter()
        result = self._applier.apply(rendered, full=full)
        t2 = time.perf_counter()
        deletes = 0
        if self._conntrack is not None:
            for flow in stale_udp_flows(self._previous, state):
                try:
                    self._conntrack.delete(flow)
                    deletes += 1
                except Exception as exc:  # a leftover flow must not fail the sync
                    log.warning("conntrack cleanup of %s failed: %s", flow, exc)
        self._previous = state
        self.last_rendered = rendered
        return SyncResult(
            full=result.full,
            render_seconds=t1 - t0,
            apply_seconds=t2 - t1,
            apply=result,
            conntrack_deletes=deletes,
        )
