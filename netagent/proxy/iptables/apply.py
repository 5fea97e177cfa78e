"""Applies a rendered ruleset to the kernel: one restore per sync, partial when it can be.

Why partial syncs: at 10,000 services a full payload is tens of megabytes and
iptables-restore takes seconds (ANCHORS: complaint 1). Between two syncs
usually one service changed, so only the chains whose rule tuples differ
from the last *successfully applied* ruleset are written; chains that
disappeared are flushed and deleted in the same payload. A partial sync
never reads the kernel: it trusts that the kernel still holds what we last
wrote, and three things keep that trust honest:

- any restore failure forgets that trust (the next sync is full), because
  iptables-restore commits table by table and a failure can leave some
  tables new and some old;
- a canary chain (:data:`CANARY_CHAIN`, empty, in mangle, nat and filter)
  is checked with one cheap call before each partial sync; if someone
  flushed the tables (firewalld reload, an admin's ``iptables -F -X``), it is
  gone and the sync becomes full;
- the agent's periodic resync is full.

A full sync reads ``iptables-save`` once, writes every desired chain,
deletes owned chains the kernel has that are no longer desired, and fixes
the jump rules in built-in chains (missing, stale, duplicated, or below a
foreign rule) inside the same payload, so they land with the chains they
point to. Only chains whose names start with
:data:`~netagent.proxy.iptables.rules.CHAIN_PREFIX`, and rules in built-in
chains that jump to such chains, are ever written or deleted; foreign chains
and rules are never declared, flushed or deleted, so they keep their exact
text and counters.

Large payloads on the nft backend (iptables 1.8.9): a ``--noflush``
transaction costs the square of the number of chains it names unless the
table is listed first, so a full sync (and a partial one that touches
enough chains, :func:`list_first_threshold`) starts each table with a
chainless ``-S`` (see ``SubprocessIptables.lists_tables_first``).
It stays **one transaction per table**, with one exception the tool forces:
after ``-S``, a rule cannot go into a built-in chain that does not exist in
the kernel yet (nft creates a base chain lazily, with its first rule, and
the listed cache has no entry to create it from: "RULE_INSERT failed (No
such file or directory)"). ``iptables-save`` cannot tell an absent base
chain from an empty one, so jumps into a built-in chain that holds *no rule
at all* go into a second, small transaction after every table's first one
(see :func:`_payload` for why that is still consistent); jumps into a
built-in chain that holds any rule, ours or foreign, stay in the first.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from netagent.proxy.iptables.rules import (
    BUILTIN_CHAINS,
    MAX_CHAIN_NAME,
    TABLE_ORDER,
    JumpRule,
    RenderedIptables,
    is_owned_chain,
)
from netagent.proxy.iptables.runner import (
    IptablesError,
    IptablesRunner,
    SavedTable,
    parse_save,
    rule_target,
)

log = logging.getLogger(__name__)

#: Empty chain whose absence means someone flushed netagent's rules.
CANARY_CHAIN = "NETAGENT-PROXY-CANARY"
CANARY_TABLES = ("mangle", "nat", "filter")
#: The table checked before a partial sync (one process, a tiny table).
CANARY_CHECK_TABLE = "mangle"
#: A partial sync lists the tables first, as a full sync always does (on a
#: backend that gains from it), when it writes or deletes at least
#: :func:`list_first_threshold` chains. Measured at 10,000 services
#: (110,000 chains; docs/performance.md, bench/iptables_full_sync.py): the
#: listing costs about 2.6e-5 s per chain in the tables (3.3 s there), the
#: unlisted transaction about 3.9e-8 s times the square of the chains it
#: touches (0.7 s for 3,150), so they cross near sqrt(670 x table chains).
LIST_FIRST_FACTOR = 600
#: Never list for fewer chains than this, however small the tables.
LIST_FIRST_MIN_CHAINS = 1000


def list_first_threshold(table_chains: int) -> int:
    """Chains a partial sync must touch before listing the tables pays off."""
    return max(LIST_FIRST_MIN_CHAINS, math.isqrt(LIST_FIRST_FACTOR * table_chains))

Tables = dict[str, dict[str, tuple[str, ...]]]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one apply wrote.

    Attributes:
        full: A full sync (kernel read, every chain written, jumps checked).
        bytes_written: Size of the restore payload (0: nothing to do, no restore ran).
        chains_written: Chains declared and (re)filled.
        chains_deleted: Owned chains flushed and deleted.
        jumps_inserted: Jump rules inserted into built-in chains.
        jumps_deleted: Stale or duplicate jump rules removed from built-in chains.
        reason: Why the sync was full or partial (for logs).
        listed_first: The payload listed each table first (``-S``).
        transactions: ``COMMIT``s in the payload (one per table touched,
            plus one per table whose empty built-in chains got jumps).
        payload: The restore payload, for debugging.
    """

    full: bool
    bytes_written: int
    chains_written: int
    chains_deleted: int
    jumps_inserted: int = 0
    jumps_deleted: int = 0
    reason: str = ""
    listed_first: bool = False
    transactions: int = 0
    payload: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What :meth:`IptablesApplier.cleanup` removed.

    Attributes:
        chains_deleted: ``table/chain`` of every owned chain flushed and deleted.
        jumps_deleted: ``table: -A CHAIN ...`` of every jump rule removed.
        bytes_written: Size of the restore payload (0 when there was nothing to do).
    """

    chains_deleted: tuple[str, ...] = ()
    jumps_deleted: tuple[str, ...] = ()
    bytes_written: int = 0

    def __str__(self) -> str:
        return f"removed {len(self.chains_deleted)} chains and {len(self.jumps_deleted)} jump rules"


@dataclass
class _TablePlan:
    """The changes to one table, in the order the payload must make them.

    ``late_jump_inserts`` go into built-in chains that hold no rule in the
    kernel (perhaps not even existing yet); ``jump_inserts`` into the others.
    """

    write: dict[str, tuple[str, ...]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    jump_deletes: list[str] = field(default_factory=list)
    jump_inserts: list[str] = field(default_factory=list)
    late_jump_inserts: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.write
            or self.delete
            or self.jump_deletes
            or self.jump_inserts
            or self.late_jump_inserts
        )

    def chains_touched(self) -> int:
        return len(self.write) + len(self.delete)


def _payload(plans: Mapping[str, _TablePlan], *, list_first: bool = False) -> tuple[str, int]:
    """The restore text for ``plans``, tables in iptables-save order, and its COMMIT count.

    Within a table's transaction: ``-S`` when ``list_first`` (it only reads),
    then declarations (``:C - [0:0]`` creates or flushes; chains about to be
    deleted are flushed too, so rules inside them that jump to other deleted
    chains do not block ``-X``), then stale jump deletions, then the rules,
    then jump insertions (their targets exist by now), then the deletions,
    which are last because nothing references the deleted chains any more.

    With ``list_first``, the late jump insertions follow in one more
    transaction per table, after every table's first one. Why the kernel is
    consistent between the two: the first transaction is the whole sync
    except those jumps, so it is correct on its own; the late jumps go into
    built-in chains that held no rule before the sync, so until they land
    those hooks do exactly what they did before it (nothing of netagent's),
    and every chain they will point to already exists. If the second
    transaction fails, the first stays committed and the next sync is full,
    as after any failure. Without ``list_first`` everything is one
    transaction per table, as before.
    """
    out: list[str] = []
    commits = 0
    for table in TABLE_ORDER:
        plan = plans.get(table)
        if plan is None or plan.empty():
            continue
        if list_first and not (plan.write or plan.delete or plan.jump_deletes or plan.jump_inserts):
            continue  # only late jumps: they go in the second pass
        out.append(f"*{table}")
        if list_first:
            out.append("-S")
        out.extend(f":{chain} - [0:0]" for chain in plan.write)
        out.extend(f":{chain} - [0:0]" for chain in plan.delete)
        out.extend(plan.jump_deletes)
        for rules in plan.write.values():
            out.extend(rules)
        out.extend(plan.jump_inserts)
        if not list_first:
            out.extend(plan.late_jump_inserts)
        out.extend(f"-X {chain}" for chain in plan.delete)
        out.append("COMMIT")
        commits += 1
    if list_first:
        for table in TABLE_ORDER:
            plan = plans.get(table)
            if plan is None or not plan.late_jump_inserts:
                continue
            out.append(f"*{table}")
            out.extend(plan.late_jump_inserts)
            out.append("COMMIT")
            commits += 1
    return ("\n".join(out) + "\n" if out else ""), commits


def _tokens(rule: str) -> list[str]:
    try:
        return shlex.split(rule)
    except ValueError:
        return rule.split()


def _read_kernel(runner: IptablesRunner) -> dict[str, SavedTable]:
    """Every table as iptables-save shows it; unparseable output is an IptablesError."""
    try:
        return parse_save(runner.save())
    except ValueError as exc:
        raise IptablesError(f"cannot read iptables-save output: {exc}") from exc


def _our_jumps(saved: SavedTable, chain: str) -> list[str]:
    """Rules of a built-in chain that jump into an owned chain (kernel text)."""
    return [r for r in saved.rules.get(chain, []) if is_owned_chain(rule_target(r) or "")]


def _with_canaries(tables: Mapping[str, Mapping[str, tuple[str, ...]]]) -> Tables:
    desired: Tables = {}
    for table in TABLE_ORDER:
        chains: dict[str, tuple[str, ...]] = {}
        if table in CANARY_TABLES:
            chains[CANARY_CHAIN] = ()
        chains.update(tables.get(table, {}))
        if chains:
            desired[table] = chains
    return desired


def _validate_jumps(rendered: RenderedIptables) -> None:
    """Refuse tables and jump rules that would touch anything netagent does not own."""
    for table in rendered.tables:
        if table not in BUILTIN_CHAINS:
            raise ValueError(f"unknown iptables table {table!r}")
    for jump in rendered.jumps:
        if jump.chain not in BUILTIN_CHAINS.get(jump.table, ()):
            raise ValueError(f"jump rule in non-built-in chain {jump.table}/{jump.chain}")
        target = rule_target(jump.spec)
        if target is None or target not in rendered.tables.get(jump.table, {}):
            raise ValueError(f"jump rule {jump} targets no rendered chain of {jump.table}")


def _validate_writes(plans: Mapping[str, _TablePlan]) -> None:
    """Refuse chains about to be written that are not ours or hold rules of other chains.

    Only written chains are checked: the others were checked when they were
    written, and a partial sync must not cost time proportional to the
    whole ruleset.
    """
    for table, plan in plans.items():
        for chain, rules in plan.write.items():
            if not is_owned_chain(chain) or len(chain) > MAX_CHAIN_NAME:
                raise ValueError(f"{table}/{chain}: not a valid netagent chain name")
            prefix = f"-A {chain} "
            for rule in rules:
                if not rule.startswith(prefix):
                    raise ValueError(f"{table}/{chain}: rule does not append to it: {rule!r}")


def drift(kernel: Mapping[str, SavedTable], applied: Tables, jumps: Iterable[JumpRule]) -> str:
    """How the kernel differs from what was applied, by rule counts; "" when it does not.

    Counts, not rule text: ``iptables-save`` rewrites rules (option order,
    quoting, probabilities), while a hand flush, delete or insert always
    changes how many rules a chain holds or whether it exists. Jump rules
    are counted per built-in chain, so a deleted jump is found too.
    """
    for table, chains in applied.items():
        saved = kernel.get(table)
        for chain, rules in chains.items():
            if saved is None or chain not in saved.chains:
                return f"chain {table}/{chain} is missing"
            have = saved.rules.get(chain, [])
            if len(have) != len(rules):
                return f"chain {table}/{chain} holds {len(have)} rules, not {len(rules)}"
    wanted: dict[tuple[str, str], int] = {}
    for jump in jumps:
        wanted[(jump.table, jump.chain)] = wanted.get((jump.table, jump.chain), 0) + 1
    for (table, chain), count in sorted(wanted.items()):
        saved_table = kernel.get(table)
        found = len(_our_jumps(saved_table, chain)) if saved_table is not None else 0
        if found != count:
            return f"{table}/{chain} holds {found} netagent jump rules, not {count}"
    return ""


class IptablesApplier:
    """Writes RenderedIptables through an :class:`IptablesRunner`, remembering what it wrote.

    With ``drift_check_period`` set, a partial apply at most that often
    (and at most every ten times as long as the last check took, so the
    check never costs more than a tenth of the time) reads the kernel and
    upgrades itself to a full apply when netagent's chains or jumps were
    changed by hand (see :func:`drift`). The canary only catches a flush
    of whole tables; this catches one flushed chain or one deleted jump.
    """

    def __init__(self, runner: IptablesRunner, *, drift_check_period: float | None = None) -> None:
        self._runner = runner
        self._applied: Tables | None = None
        self._jumps: tuple[JumpRule, ...] = ()
        self._failed = False
        self._drift_period = drift_check_period
        self._next_drift_check = 0.0

    @property
    def needs_full_sync(self) -> bool:
        """True before the first successful apply and after any failure."""
        return self._applied is None or self._failed

    def adopt(self, rendered: RenderedIptables) -> None:
        """Record ``rendered`` (plus the canary chains) as what the kernel already holds.

        For callers that loaded the ruleset by other means: the benchmark
        preloads 10,000 services with a flushing iptables-restore, because
        ``iptables-nft-restore --noflush`` is quadratic at that size (see
        docs/performance.md). The next :meth:`apply` diffs against it, and
        the canary check still forces a full sync if the kernel disagrees.
        """
        self._applied = _with_canaries(rendered.tables)
        self._jumps = tuple(rendered.jumps)
        self._failed = False

    def apply(self, rendered: RenderedIptables, *, full: bool) -> ApplyResult:
        """Apply ``rendered``; raise IptablesError on failure (the next apply is then full).

        A partial apply (``full=False``) is upgraded to a full one when
        :attr:`needs_full_sync` is set or the canary chain is missing.
        """
        if rendered.family is not self._runner.family:
            raise ValueError(
                f"{rendered.family.value} ruleset given to a {self._runner.family.value} runner"
            )
        _validate_jumps(rendered)
        desired = _with_canaries(rendered.tables)
        try:
            reason = "requested" if full else self._full_sync_reason()
            if reason:
                plans = self._full_plan(desired, rendered.jumps)
            else:
                assert self._applied is not None
                plans = self._partial_plan(desired, self._applied)
            _validate_writes(plans)
            list_first = self._runner.lists_tables_first and (
                bool(reason)
                or sum(p.chains_touched() for p in plans.values())
                >= list_first_threshold(sum(len(c) for c in desired.values()))
            )
            payload, commits = _payload(plans, list_first=list_first)
            if payload:
                self._runner.restore(payload)
        except IptablesError as exc:
            self._failed = True
            if exc.line is not None:
                log.error("iptables-restore refused line %d: %s", exc.line, exc.line_text)
            log.error("iptables apply failed, next sync will be full: %s", exc)
            raise
        self._applied = desired
        self._jumps = tuple(rendered.jumps)
        self._failed = False
        return ApplyResult(
            full=bool(reason),
            bytes_written=len(payload.encode()),
            chains_written=sum(len(p.write) for p in plans.values()),
            chains_deleted=sum(len(p.delete) for p in plans.values()),
            jumps_inserted=sum(
                len(p.jump_inserts) + len(p.late_jump_inserts) for p in plans.values()
            ),
            jumps_deleted=sum(len(p.jump_deletes) for p in plans.values()),
            reason=reason or "partial",
            listed_first=list_first,
            transactions=commits,
            payload=payload,
        )

    def _full_sync_reason(self) -> str:
        """Why this sync must be full, or "" when a partial sync is safe."""
        if self._applied is None:
            return "first sync"
        if self._failed:
            return "previous sync failed"
        if not self._runner.chain_exists(CANARY_CHECK_TABLE, CANARY_CHAIN):
            log.warning(
                "canary chain %s/%s is gone (tables flushed by someone else?): full resync",
                CANARY_CHECK_TABLE,
                CANARY_CHAIN,
            )
            return "canary missing"
        return self._drift_reason()

    def _drift_reason(self) -> str:
        """A full sync's reason when a due drift check finds hand changes, else ""."""
        if self._drift_period is None or self._applied is None:
            return ""
        now = time.monotonic()
        if now < self._next_drift_check:
            return ""
        found = drift(_read_kernel(self._runner), self._applied, self._jumps)
        took = time.monotonic() - now
        self._next_drift_check = now + max(self._drift_period, 10 * took)
        if found:
            log.warning("netagent's rules were changed by hand (%s): full resync", found)
            return "drift: " + found
        return ""

    @staticmethod
    def _partial_plan(desired: Tables, applied: Tables) -> dict[str, _TablePlan]:
        plans: dict[str, _TablePlan] = {}
        for table in TABLE_ORDER:
            want = desired.get(table, {})
            had = applied.get(table, {})
            plan = _TablePlan(
                write={c: rules for c, rules in want.items() if had.get(c) != rules},
                delete=sorted(c for c in had if c not in want),
            )
            if not plan.empty():
                plans[table] = plan
        return plans

    def _full_plan(self, desired: Tables, jumps: Iterable[JumpRule]) -> dict[str, _TablePlan]:
        kernel = _read_kernel(self._runner)
        jumps = tuple(jumps)
        plans: dict[str, _TablePlan] = {}
        for table in TABLE_ORDER:
            saved = kernel.get(table, SavedTable())
            want = desired.get(table, {})
            plan = _TablePlan(
                write=dict(want),
                delete=sorted(c for c in saved.chains if is_owned_chain(c) and c not in want),
            )
            for chain in BUILTIN_CHAINS[table]:
                wanted = [
                    f"-A {chain} {j.spec}" for j in jumps if (j.table, j.chain) == (table, chain)
                ]
                present = _our_jumps(saved, chain)
                top = saved.rules.get(chain, [])[: len(wanted)]
                in_place = len(present) == len(wanted) and [_tokens(r) for r in top] == [
                    _tokens(r) for r in wanted
                ]
                if in_place:
                    continue
                # Rewrite this chain's jumps as a block: delete ours by their kernel
                # text (never by index, which a concurrent writer could shift onto a
                # foreign rule), then insert the wanted ones at the top, in order.
                plan.jump_deletes.extend("-D" + rule[2:] for rule in present)
                inserts = plan.jump_inserts if saved.rules.get(chain) else plan.late_jump_inserts
                inserts.extend(
                    f"-I {chain} {i} {rule.split(' ', 2)[2]}"
                    for i, rule in enumerate(wanted, start=1)
                )
            if not plan.empty():
                plans[table] = plan
        return plans

    @staticmethod
    def cleanup(
        runner: IptablesRunner, *, keep: Callable[[str], bool] = lambda chain: False
    ) -> CleanupReport:
        """Remove netagent's jump rules and every owned chain, in every table; nothing else.

        ``keep`` names owned chains to leave in place with their jumps (the
        overlay's, when the mode that starts next writes them too). Safe to run
        when netagent never ran (nothing to do, no restore) and idempotent.
        Raises IptablesError when the kernel refuses, e.g. when a foreign rule
        still jumps into one of our chains.
        """
        kernel = _read_kernel(runner)
        plans: dict[str, _TablePlan] = {}
        chains: list[str] = []
        jumps: list[str] = []
        for table in TABLE_ORDER:
            saved = kernel.get(table)
            if saved is None:
                continue
            plan = _TablePlan(
                delete=sorted(c for c in saved.chains if is_owned_chain(c) and not keep(c))
            )
            for chain in BUILTIN_CHAINS[table]:
                for rule in _our_jumps(saved, chain):
                    if keep(rule_target(rule) or ""):
                        continue
                    plan.jump_deletes.append("-D" + rule[2:])
                    jumps.append(f"{table}: {rule}")
            chains.extend(f"{table}/{c}" for c in plan.delete)
            if not plan.empty():
                plans[table] = plan
        payload, _ = _payload(plans, list_first=runner.lists_tables_first)
        if payload:
            runner.restore(payload)
        return CleanupReport(tuple(chains), tuple(jumps), len(payload.encode()))
