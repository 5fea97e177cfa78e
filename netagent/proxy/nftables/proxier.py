"""The nftables proxier: render, then one ``nft -f`` transaction of only what changed.

Why it holds state: an incremental sync is computed against what the last
successful transaction committed (:class:`~.transaction.Committed`), never
against a listing of the kernel. This object owns that memory, the decision
that the next sync must be full (first sync, a refused transaction, drift),
and the previous state for stale UDP conntrack cleanup.

Failures: nft applies a transaction atomically, so a refused one leaves the
previous ruleset serving. The proxier then retries at once as a full sync
(the table may have been deleted by someone, which makes element changes
fail); if that fails too, the sync raises and the next one is full.

Drift: at most once per ``drift_check_period`` (and never more often than
ten times the last check's duration), a sync lists netagent's table and
compares it with the committed render; a difference makes that sync full.
Between checks a partial sync runs no ``nft list`` at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from netagent.model import IPFamily, ProxyState
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.conntrack import Conntrack, delete_stale_udp
from netagent.proxy.nftables.listing import drift, parse_listing
from netagent.proxy.nftables.render import (
    CLUSTER_IPS,
    HAIRPIN,
    LOCAL_ENDPOINTS,
    NODEPORT_ENDPOINTS,
    NODEPORT_LOCAL_ENDPOINTS,
    PROTOCOLS,
    SERVICE_ENDPOINTS,
    NftablesRenderer,
    endpoint_map,
    render_nftables,
)
from netagent.proxy.nftables.ruleset import TABLE_NAME, RenderedNft, table_family
from netagent.proxy.nftables.runner import NftError, NftRunner
from netagent.proxy.nftables.transaction import (
    Committed,
    Transaction,
    existing_names,
    full_transaction,
    incremental_transaction,
)
from netagent.proxy.proxier import CleanupResult, OwnedObject, SyncResult

log = logging.getLogger(__name__)

MODE = "nftables"


#: Maps keyed by ``frontend . slot``: compared per frontend, as a sorted list of endpoints,
#: because which slot an endpoint holds depends on the order changes arrived in.
SLOT_MAPS = frozenset(
    endpoint_map(base, proto)
    for base in (SERVICE_ENDPOINTS, LOCAL_ENDPOINTS, NODEPORT_ENDPOINTS, NODEPORT_LOCAL_ENDPOINTS)
    for proto in PROTOCOLS
)


def _slotless(objects: list[OwnedObject]) -> list[OwnedObject]:
    """Merge each frontend's slot elements into one object whose content is sorted."""
    merged: dict[str, tuple[list[str], str]] = {}
    out: list[OwnedObject] = []
    for o in objects:
        set_name, _, key = o.key.partition(" ")
        if o.kind == "element" and set_name in SLOT_MAPS:
            frontend = key.rpartition(" . ")[0]
            values, _owner = merged.setdefault(f"{set_name} {frontend}", ([], o.owner))
            values.extend(o.content)
        else:
            out.append(o)
    out += [
        OwnedObject("endpoints", ident, tuple(sorted(values)), owner)
        for ident, (values, owner) in merged.items()
    ]
    return sorted(out)


def owned_objects(rendered: RenderedNft) -> list[OwnedObject]:
    """``rendered`` as comparable objects: chains, and elements by frontend owner."""
    owners: dict[str, str] = {}
    objects: list[OwnedObject] = []
    for name, fragment in rendered.fragments.items():
        for chain in fragment.chains:
            owners[chain.name] = str(name)
    for chain in rendered.all_chains().values():
        objects.append(
            OwnedObject("chain", chain.name, chain.rules, owners.get(chain.name, "node"))
        )
    for name, fragment in rendered.fragments.items():
        for frontend in fragment.frontends:
            for set_name, key, value in frontend.elements:
                objects.append(OwnedObject("element", f"{set_name} {key}", (value,), str(name)))
    for set_name, key, _ in rendered.iter_elements():
        if set_name in (CLUSTER_IPS, HAIRPIN):
            objects.append(OwnedObject("element", f"{set_name} {key}", ("",), "node"))
    return _slotless(objects)


def listed_objects(text: str | None, rendered: RenderedNft | None) -> list[OwnedObject]:
    """The kernel's table in the shape of :func:`owned_objects` (owners from ``rendered``)."""
    if text is None:
        return []
    listed = parse_listing(text)
    owners: dict[tuple[str, str], str] = {}
    dynamic: set[str] = set()
    if rendered is not None:
        owners = {(o.kind, o.key): o.owner for o in owned_objects(rendered)}
        dynamic = {n for n, s in rendered.all_sets().items() if s.dynamic}
    objects = [OwnedObject("chain", name, tuple(c.rules)) for name, c in listed.chains.items()]
    for set_name, listed_set in listed.sets.items():
        if set_name in dynamic or "dynamic" in " ".join(listed_set.declaration):
            continue
        for key, value in listed_set.elements.items():
            objects.append(OwnedObject("element", f"{set_name} {key}", (value,)))
    return sorted(
        OwnedObject(o.kind, o.key, o.content, owners.get((o.kind, o.key), "node"))
        for o in _slotless(objects)
    )


class NftablesProxier:
    """Programs one address family's Services into ``ip netagent`` / ``ip6 netagent``."""

    mode = MODE

    def __init__(
        self,
        *,
        runner: NftRunner,
        conntrack: Conntrack | None,
        family: IPFamily = IPFamily.IPV4,
        drift_check_period: float | None = None,
    ) -> None:
        self.family = family
        self._runner = runner
        self._conntrack = conntrack
        self._renderer = NftablesRenderer()
        self._committed: Committed | None = None
        self._previous: ProxyState | None = None
        self._force_full = True
        self._drift_period = drift_check_period
        self._next_drift_check = 0.0
        self.last_payload = ""
        self.last_transaction: Transaction | None = None
        self.last_full_reason = "first sync"

    @property
    def needs_full_sync(self) -> bool:
        """Before the first sync, after a failure, or after drift was found."""
        return self._force_full or self._committed is None

    def _family_word(self) -> str:
        return table_family(self.family)

    def _full(self, rendered: RenderedNft) -> Transaction:
        """Commit ``rendered`` as a full sync: keep the table if possible, else re-create it."""
        listing = self._runner.list_table(self._family_word(), TABLE_NAME, terse=True)
        existing = existing_names(listing) if listing is not None else None
        keep = {n for n, s in rendered.all_sets().items() if s.dynamic}
        if existing is not None and not keep & existing.keys():
            # No affinity memory to keep: re-creating the table is the same single
            # transaction and loads faster than flushing and refilling every map.
            existing = None
        txn = full_transaction(rendered, existing)
        try:
            self._runner.run(txn.payload)
        except NftError as exc:
            if existing is None:
                raise
            log.warning(
                "nftables full sync (%s) keeping the table was refused (%s); re-creating it",
                self.family.value,
                exc,
            )
            txn = full_transaction(rendered, None)
            self._runner.run(txn.payload)
        return txn

    def _drift_reason(self) -> str:
        if self._drift_period is None or self._committed is None:
            return ""
        now = time.monotonic()
        if now < self._next_drift_check:
            return ""
        t0 = time.perf_counter()
        text = self._runner.list_table(self._family_word(), TABLE_NAME)
        found = drift(parse_listing(text) if text is not None else None, self._committed.rendered)
        took = time.perf_counter() - t0
        self._next_drift_check = time.monotonic() + max(self._drift_period, 10 * took)
        return f"drift: {found}" if found else ""

    def sync(
        self, state: ProxyState, *, full: bool = False, overlay: OverlayRules | None = None
    ) -> SyncResult:
        """Render ``state`` and commit it; raise on failure (the next sync is then full)."""
        if state.family is not self.family:
            raise ValueError(f"proxier for {self.family.value} got a {state.family.value} state")
        t0 = time.perf_counter()
        rendered = self._renderer.render(state, overlay)
        t1 = time.perf_counter()
        reason = (
            "requested" if full else ("" if not self.needs_full_sync else self.last_full_reason)
        )
        if not reason:
            reason = self._drift_reason()
            if reason:
                log.warning("nftables %s: %s; this sync is full", self.family.value, reason)
        txn: Transaction | None = None
        try:
            if not reason and self._committed is not None:
                txn = incremental_transaction(self._committed, rendered)
                if txn is None:
                    reason = "the table's skeleton or a frontend conflict changed"
                elif not txn.empty:
                    try:
                        self._runner.run(txn.payload)
                    except NftError as exc:
                        log.warning(
                            "nftables incremental sync (%s) refused, trying a full sync: %s",
                            self.family.value,
                            exc,
                        )
                        reason = "an incremental transaction was refused"
                        txn = None
            if txn is None:
                txn = self._full(rendered)
        except Exception:
            self._force_full = True
            self.last_full_reason = "the previous sync failed"
            raise
        t2 = time.perf_counter()
        self._committed = Committed(rendered, txn.refs, txn.counts)
        self._force_full = False
        if txn.full and self._drift_period is not None:
            # A full sync has just written everything: the next check is a period away.
            self._next_drift_check = time.monotonic() + self._drift_period
        self.last_transaction = txn
        self.last_payload = txn.payload
        deletes = self._cleanup_conntrack(state)
        self._previous = state
        counts = dict(txn.counts)
        return SyncResult(
            mode=MODE,
            family=self.family,
            full=txn.full,
            render_seconds=t1 - t0,
            apply_seconds=t2 - t1,
            bytes_written=len(txn.payload.encode()),
            objects_written=txn.objects_written,
            objects_deleted=txn.objects_deleted,
            conntrack_deletes=deletes,
            rule_counts=counts,
            summary=(
                f"{'full' if txn.full else 'incremental'} transaction"
                f"{f' ({reason})' if txn.full and reason else ''}: {txn.objects_written} written,"
                f" {txn.objects_deleted} deleted, {len(txn.payload)} bytes;"
                f" {counts['chains']} chains, {counts['elements']} elements"
            ),
        )

    def _cleanup_conntrack(self, state: ProxyState) -> int:
        if self._conntrack is None:
            return 0
        return delete_stale_udp(self._conntrack, self._previous, state)

    def render_objects(
        self, state: ProxyState, overlay: OverlayRules | None = None
    ) -> Sequence[OwnedObject]:
        """Pure: the chains and elements a sync of ``state`` leaves in the table."""
        return owned_objects(render_nftables(state, overlay))

    def kernel_objects(self) -> Sequence[OwnedObject]:
        """netagent's table as ``nft list table`` shows it now."""
        text = self._runner.list_table(self._family_word(), TABLE_NAME)
        return listed_objects(text, self._committed.rendered if self._committed else None)

    def describe(self) -> Sequence[OwnedObject]:
        """What the last successful sync committed (empty before the first)."""
        if self._committed is None:
            return ()
        return owned_objects(self._committed.rendered)

    @property
    def committed(self) -> RenderedNft | None:
        """The render the kernel holds since the last successful sync."""
        return self._committed.rendered if self._committed is not None else None

    def cleanup(self) -> CleanupResult:
        """Delete netagent's table of this family (and nothing else)."""
        return cleanup_table(self._runner, self.family)


def cleanup_table(runner: NftRunner, family: IPFamily) -> CleanupResult:
    """Delete ``ip netagent`` or ``ip6 netagent`` if it exists; nothing else is touched."""
    word = table_family(family)
    if runner.table_handle(word, TABLE_NAME) is None:
        return CleanupResult(removed=0, summary=f"no {word} {TABLE_NAME} table")
    runner.run(f"delete table {word} {TABLE_NAME}\n")
    return CleanupResult(removed=1, summary=f"deleted table {word} {TABLE_NAME}")
