"""The iptables ruleset as data: what the renderer produces and the applier consumes.

Why a separate type: the renderer must stay pure (it returns this value and
does no I/O), and the applier must be able to compare two rulesets chain by
chain to write only what changed (a partial sync). Keeping the ruleset as
``table -> chain -> rule lines`` instead of one big string makes both cheap.

Rule lines are complete iptables-restore lines, starting with ``-A <chain>``.
Chains are owned by netagent when their name starts with :data:`CHAIN_PREFIX`;
built-in chains (PREROUTING, OUTPUT, ...) are never flushed or declared. They
only receive *jump rules* (:class:`JumpRule`), which the applier inserts when
missing and removes on cleanup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from netagent.model import IPFamily

#: Every chain netagent creates starts with this; nothing else is ever touched.
CHAIN_PREFIX = "NETAGENT-"

#: iptables rejects chain names longer than this.
MAX_CHAIN_NAME = 28

BUILTIN_CHAINS: Mapping[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}

#: The order in which tables appear in payloads (iptables-save's order).
TABLE_ORDER = ("raw", "mangle", "filter", "nat")


def is_owned_chain(name: str) -> bool:
    """True for chains netagent created (and may flush or delete)."""
    return name.startswith(CHAIN_PREFIX)


@dataclass(frozen=True, slots=True, order=True)
class JumpRule:
    """A rule netagent places at the top of a built-in chain.

    ``spec`` is the rule without ``-A <chain>``, e.g.
    ``-m comment --comment "netagent service portals" -j NETAGENT-SERVICES``.
    """

    table: str
    chain: str
    spec: str


@dataclass(frozen=True, slots=True)
class RenderedIptables:
    """One family's complete desired iptables state.

    Attributes:
        family: Which restore tool applies it (iptables or ip6tables).
        tables: ``table -> chain -> rule lines``. Every owned chain that must
            exist is a key, even when it has no rules. Insertion order is the
            output order and is deterministic.
        jumps: Jump rules from built-in chains, in the order they must appear
            at the top of each built-in chain.
    """

    family: IPFamily
    tables: dict[str, dict[str, tuple[str, ...]]]
    jumps: tuple[JumpRule, ...] = field(default=())

    def chains(self, table: str) -> Mapping[str, tuple[str, ...]]:
        """The owned chains of one table (empty when the table is unused)."""
        return self.tables.get(table, {})

    def restore_text(self) -> str:
        """A full iptables-restore ``--noflush`` payload for every owned chain.

        Declaring a chain with ``:NAME - [0:0]`` under ``--noflush`` creates
        it or flushes it, so this payload replaces netagent's chains whole and
        leaves every other chain alone. Jump rules are not included: they
        live in built-in chains and are managed by the applier.
        """
        return render_restore_payload(
            {t: dict(c) for t, c in self.tables.items()}, deleted={}
        )

    def save_text(self) -> str:
        """The ruleset as ``iptables-save`` would print it after applying.

        Built-in chains appear with their jump rules, so the packet tracer
        can start from PREROUTING/OUTPUT/INPUT/FORWARD/POSTROUTING exactly as
        the kernel does.
        """
        lines: list[str] = []
        for table in TABLE_ORDER:
            owned = self.tables.get(table)
            table_jumps = [j for j in self.jumps if j.table == table]
            if not owned and not table_jumps:
                continue
            lines.append(f"*{table}")
            for builtin in BUILTIN_CHAINS[table]:
                lines.append(f":{builtin} ACCEPT [0:0]")
            for chain in owned or {}:
                lines.append(f":{chain} - [0:0]")
            for jump in table_jumps:
                lines.append(f"-A {jump.chain} {jump.spec}")
            for rules in (owned or {}).values():
                lines.extend(rules)
            lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def render_restore_payload(
    write: Mapping[str, Mapping[str, Iterable[str]]],
    deleted: Mapping[str, Iterable[str]],
) -> str:
    """Build an iptables-restore ``--noflush`` payload.

    ``write`` maps table -> chain -> rule lines for chains to (re)write;
    ``deleted`` maps table -> chains to delete. Deletions come after all
    rules, because a chain can only be deleted once nothing jumps to it and
    the rewritten chains above have dropped their references.
    """
    out: list[str] = []
    for table in TABLE_ORDER:
        chains = write.get(table, {})
        gone = sorted(deleted.get(table, ()))
        if not chains and not gone:
            continue
        out.append(f"*{table}")
        out.extend(f":{chain} - [0:0]" for chain in chains)
        # Chains being deleted are flushed first so that rules inside them
        # that jump to other deleted chains do not block the -X.
        out.extend(f":{chain} - [0:0]" for chain in gone)
        for rules in chains.values():
            out.extend(rules)
        out.extend(f"-X {chain}" for chain in gone)
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""
