"""A stateful, in-memory iptables that speaks ``iptables-restore --noflush`` and ``iptables-save``.

Why a fake and not a mock: the applier's correctness lives in the exact
restore semantics it relies on (a ``:CHAIN - [0:0]`` line creates *or
flushes*, ``-X`` refuses a chain that is referenced or not empty, a jump to
a missing chain fails, a failure discards the table being parsed). A mock
that records calls would pass whatever the applier sends; this fake rejects
what the kernel rejects, so applier tests prove something without root.

The semantics modelled here were checked against iptables 1.8.9 (both the
nft and the legacy backend) in a network namespace:

- each ``COMMIT`` installs its table; an error discards the table being
  parsed and every later one, while tables committed earlier stay;
- declaring a built-in chain sets its policy and does not flush it;
- ``-X`` fails on a built-in chain, a referenced chain and a non-empty chain;
- ``-I CHAIN n`` fails when ``n`` is past the end plus one;
- ``-D CHAIN spec`` fails when no rule matches; it removes the first match;
- DROP/REJECT are refused in ``nat``, NAT targets outside it;
- ``-S`` inside a payload only reads (its listing goes to stdout);
- nft backend only: a built-in chain exists in the kernel from its first
  rule (or policy) on, and after a ``-S`` in the same transaction a rule
  cannot go into one that does not exist yet ("RULE_INSERT failed (No such
  file or directory)"), while ``iptables-save`` prints every built-in chain
  either way. The legacy backend has every built-in chain from the start.

Rule text is stored as written (the kernel normalises ``-d 10.0.0.1`` to
``10.0.0.1/32`` and adds ``-m udp``; the fake does not), and ``-D`` compares
shell tokens, so quoting differences do not matter.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass, field

from netagent.model import IPFamily
from netagent.proxy.iptables.rules import BUILTIN_CHAINS, TABLE_ORDER
from netagent.proxy.iptables.runner import Backend, IptablesError, rule_target

log = logging.getLogger(__name__)

VERDICTS = frozenset({"ACCEPT", "DROP", "RETURN", "QUEUE"})
NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"})
OTHER_TARGETS = frozenset(
    {
        "REJECT", "MARK", "CONNMARK", "LOG", "NFLOG", "NOTRACK", "CT", "TPROXY", "TRACE",
        "CHECKSUM", "TCPMSS", "SET", "AUDIT", "CLASSIFY", "DSCP", "TOS", "TTL", "HL",
        "NFQUEUE", "TEE", "SECMARK", "CONNSECMARK", "SYNPROXY",
    }
)  # fmt: skip
#: Targets the nat table refuses ("not intended for filtering").
NAT_REFUSED = frozenset({"DROP", "REJECT"})

_APPEND_RE = re.compile(r"^(?:-A|--append)\s+(\S+)\s*(.*)$")
_INSERT_RE = re.compile(r"^(?:-I|--insert)\s+(\S+)(?:\s+(\d+))?\s*(.*)$")
_DELETE_RE = re.compile(r"^(?:-D|--delete)\s+(\S+)\s*(.*)$")


@dataclass
class _Chain:
    policy: str  # "-" for user chains
    rules: list[str] = field(default_factory=list)  # rule specs, without "-A CHAIN "

    def copy(self) -> _Chain:
        return _Chain(self.policy, list(self.rules))


_Table = dict[str, _Chain]


class _RestoreError(Exception):
    """A restore line was refused; message as the tool would give it."""


def _tokens(spec: str) -> list[str]:
    try:
        return shlex.split(spec)
    except ValueError as exc:
        raise _RestoreError(f"bad quoting: {exc}") from exc


def _empty_table(name: str) -> _Table:
    return {chain: _Chain("ACCEPT") for chain in BUILTIN_CHAINS[name]}


class FakeIptables:
    """An IptablesRunner that keeps the ruleset in memory.

    Attributes:
        payloads: Every payload passed to :meth:`restore`, successful or not.
        save_calls: How many times :meth:`save` ran (a partial sync must not read).
        check_calls: How many times :meth:`chain_exists` ran.
    """

    def __init__(self, family: IPFamily = IPFamily.IPV4, backend: Backend = "nft") -> None:
        self._family = family
        self.backend = backend
        self._tables: dict[str, _Table] = {name: _empty_table(name) for name in TABLE_ORDER}
        # Built-in chains that exist in the kernel (nft creates them with their first rule).
        self._hooked: dict[str, set[str]] = {
            name: set(BUILTIN_CHAINS[name]) if backend == "legacy" else set()
            for name in TABLE_ORDER
        }
        self.payloads: list[str] = []
        self.save_calls = 0
        self.check_calls = 0

    @property
    def family(self) -> IPFamily:
        """The family this fake stands in for."""
        return self._family

    @property
    def lists_tables_first(self) -> bool:
        """As the real runner: only the nft backend gains from ``-S``."""
        return self.backend == "nft"

    # --- IptablesRunner -------------------------------------------------------------------

    def restore(self, payload: str) -> None:
        """Apply ``payload`` with ``--noflush`` semantics, one table per COMMIT."""
        self.payloads.append(payload)
        lines = payload.splitlines()
        name: str | None = None
        working: _Table = {}
        self._listed = False
        self._working_hooked: set[str] = set()
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            try:
                if not line or line.startswith("#"):
                    continue
                if line.startswith("*"):
                    if name is not None:
                        raise _RestoreError(f"COMMIT expected before {line}")
                    name = line[1:]
                    if name not in self._tables:
                        raise _RestoreError(f"table '{name}' does not exist")
                    working = {c: ch.copy() for c, ch in self._tables[name].items()}
                    self._listed = False
                    self._working_hooked = set(self._hooked[name])
                elif name is None:
                    raise _RestoreError("no table given (missing *table line)")
                elif line == "COMMIT":
                    self._tables[name] = working
                    self._hooked[name] = self._working_hooked
                    name = None
                elif line.startswith(":"):
                    self._declare(name, working, line)
                else:
                    self._command(name, working, line)
            except _RestoreError as exc:
                raise IptablesError(
                    f"fake iptables-restore: {exc}",
                    stderr=f"line {number} failed: {exc}\n",
                    line=number,
                    line_text=raw,
                ) from None
        if name is not None:
            raise IptablesError(
                f"fake iptables-restore: COMMIT expected at line {len(lines) + 1}",
                stderr=f"COMMIT expected at line {len(lines) + 1}\n",
                line=len(lines) + 1,
            )

    def save(self, table: str | None = None) -> str:
        """iptables-save-like text: built-in chains, then user chains by name, then rules."""
        self.save_calls += 1
        if table is not None and table not in self._tables:
            raise IptablesError(f"fake iptables-save: table '{table}' does not exist")
        names = [table] if table is not None else list(TABLE_ORDER)
        out = ["# Generated by netagent FakeIptables"]
        for name in names:
            chains = self._tables[name]
            order = [c for c in BUILTIN_CHAINS[name]] + sorted(
                c for c in chains if c not in BUILTIN_CHAINS[name]
            )
            out.append(f"*{name}")
            out.extend(f":{c} {chains[c].policy} [0:0]" for c in order)
            for c in order:
                out.extend(f"-A {c} {spec}".rstrip() for spec in chains[c].rules)
            out.append("COMMIT")
        out.append("# Completed")
        return "\n".join(out) + "\n"

    def chain_exists(self, table: str, chain: str) -> bool:
        """True when ``chain`` exists in ``table``."""
        self.check_calls += 1
        return chain in self._tables.get(table, {})

    # --- inspection helpers for tests ----------------------------------------------------

    @property
    def restore_count(self) -> int:
        """How many restores were attempted."""
        return len(self.payloads)

    @property
    def bytes_written(self) -> int:
        """Total payload bytes passed to :meth:`restore`."""
        return sum(len(p.encode()) for p in self.payloads)

    def chains(self, table: str) -> list[str]:
        """Every chain of ``table``: built-ins first, then user chains by name."""
        chains = self._tables[table]
        builtin = list(BUILTIN_CHAINS[table])
        return builtin + sorted(c for c in chains if c not in builtin)

    def hooked(self, table: str) -> set[str]:
        """Built-in chains of ``table`` that exist in the (modelled) kernel."""
        return set(self._hooked[table])

    def rules(self, table: str, chain: str) -> list[str]:
        """The rules of one chain as ``-A CHAIN spec`` lines."""
        return [f"-A {chain} {spec}".rstrip() for spec in self._tables[table][chain].rules]

    # --- restore line handling ------------------------------------------------------------

    def _declare(self, table: str, working: _Table, line: str) -> None:
        parts = line[1:].split()
        if not parts:
            raise _RestoreError("empty chain declaration")
        chain, policy = parts[0], (parts[1] if len(parts) > 1 else "-")
        if chain in BUILTIN_CHAINS[table]:
            if policy in ("ACCEPT", "DROP"):
                working[chain].policy = policy
                self._working_hooked.add(chain)
            elif policy != "-":
                raise _RestoreError(f"bad policy {policy!r} for built-in chain {chain}")
            return
        if policy != "-":
            raise _RestoreError(f"user chain {chain} cannot have a policy")
        if chain in working:
            working[chain].rules.clear()
        else:
            working[chain] = _Chain("-")

    def _command(self, table: str, working: _Table, line: str) -> None:
        if m := _APPEND_RE.match(line):
            chain, spec = m.group(1), m.group(2).strip()
            self._check_rule(table, working, chain, spec)
            self._hook(table, chain, "RULE_APPEND")
            working[chain].rules.append(spec)
        elif m := _INSERT_RE.match(line):
            chain, index, spec = m.group(1), int(m.group(2) or 1), m.group(3).strip()
            self._check_rule(table, working, chain, spec)
            self._hook(table, chain, "RULE_INSERT")
            if not 1 <= index <= len(working[chain].rules) + 1:
                raise _RestoreError("Index of insertion too big.")
            working[chain].rules.insert(index - 1, spec)
        elif m := _DELETE_RE.match(line):
            self._delete_rule(working, m.group(1), m.group(2).strip())
        else:
            argv = _tokens(line)
            op, args = argv[0], argv[1:]
            if op in ("-S", "--list-rules"):
                if len(args) > 1 or (args and args[0] not in working):
                    raise _RestoreError(f"bad listing {line!r}")
                self._listed = True
            elif op in ("-F", "--flush"):
                for chain in self._chain_args(working, args):
                    working[chain].rules.clear()
            elif op in ("-X", "--delete-chain"):
                self._delete_chains(table, working, args)
            elif op in ("-N", "--new-chain") and len(args) == 1:
                if args[0] in working:
                    raise _RestoreError("Chain already exists.")
                working[args[0]] = _Chain("-")
            elif op in ("-P", "--policy") and len(args) == 2:
                if args[0] not in BUILTIN_CHAINS[table] or args[1] not in ("ACCEPT", "DROP"):
                    raise _RestoreError(f"bad policy command {line!r}")
                working[args[0]].policy = args[1]
            elif op in ("-Z", "--zero"):
                pass
            else:
                raise _RestoreError(f"unknown command {line!r}")

    def _hook(self, table: str, chain: str, op: str) -> None:
        """A rule into a built-in chain creates it, unless the transaction listed the table."""
        if chain not in BUILTIN_CHAINS[table] or chain in self._working_hooked:
            return
        if self._listed:
            raise _RestoreError(f"{op} failed (No such file or directory): rule in chain {chain}")
        self._working_hooked.add(chain)

    @staticmethod
    def _chain_args(working: _Table, args: list[str]) -> list[str]:
        if not args:
            return list(working)
        if args[0] not in working:
            raise _RestoreError("No chain/target/match by that name.")
        return [args[0]]

    @staticmethod
    def _check_rule(table: str, working: _Table, chain: str, spec: str) -> None:
        if chain not in working:
            raise _RestoreError("No chain/target/match by that name.")
        _tokens(spec)
        target = rule_target(spec)
        if target is None:
            return
        if table == "nat" and target in NAT_REFUSED:
            raise _RestoreError(f'The "nat" table is not intended for filtering ({target})')
        if target in NAT_TARGETS and table != "nat":
            raise _RestoreError(f"target {target} is only valid in the nat table")
        if target in VERDICTS or target in NAT_TARGETS or target in OTHER_TARGETS:
            return
        if target in BUILTIN_CHAINS[table]:
            raise _RestoreError(f"cannot jump to built-in chain {target}")
        if target not in working:
            raise _RestoreError(f"Chain '{target}' does not exist")

    @staticmethod
    def _delete_rule(working: _Table, chain: str, spec: str) -> None:
        if chain not in working:
            raise _RestoreError("No chain/target/match by that name.")
        rules = working[chain].rules
        if spec.isdigit():
            index = int(spec)
            if not 1 <= index <= len(rules):
                raise _RestoreError("Index of deletion too big.")
            del rules[index - 1]
            return
        wanted = _tokens(spec)
        for i, existing in enumerate(rules):
            if _tokens(existing) == wanted:
                del rules[i]
                return
        raise _RestoreError("Bad rule (does a matching rule exist in that chain?).")

    @staticmethod
    def _delete_chains(table: str, working: _Table, args: list[str]) -> None:
        builtin = BUILTIN_CHAINS[table]
        if args and args[0] in builtin:
            raise _RestoreError(f"cannot delete built-in chain {args[0]}")
        targets = [args[0]] if args else [c for c in working if c not in builtin]
        for chain in targets:
            if chain not in working:
                raise _RestoreError("No chain/target/match by that name.")
            if working[chain].rules:
                raise _RestoreError(f"Directory not empty: chain {chain} has rules")
        doomed = set(targets)
        for name, other in working.items():
            if name in doomed:
                continue
            for spec in other.rules:
                # The substring test first: tokenising every rule for every -X is slow.
                if any(d in spec for d in doomed) and rule_target(spec) in doomed:
                    raise _RestoreError(
                        f"Device or resource busy: chain {rule_target(spec)} is referenced"
                    )
        for chain in targets:
            del working[chain]
