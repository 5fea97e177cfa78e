"""Parse iptables-restore / iptables-save text into typed rules for the packet tracer.

Why a parser of our own: the tracer must understand every rule it walks, so
the parser refuses anything it cannot model (an unknown match module, option
or target raises :class:`RuleParseError` with the line number) instead of
silently skipping it — a skipped rule would make a trace test pass for the
wrong reason. It accepts both what the renderer writes (restore input) and
what ``iptables-save`` prints back (which normalises probabilities, marks,
``recent`` options and comment quoting), so ``netagent debug trace`` can run
on a live node's ruleset.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from netagent.model import IPNetwork


class RuleParseError(ValueError):
    """A line the parser does not understand; names the line number and the reason."""

    def __init__(self, line_no: int, line: str, reason: str) -> None:
        super().__init__(f"line {line_no}: {reason}: {line}")
        self.line_no = line_no
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Match:
    """One condition of a rule; ``negated`` inverts it.

    ``kind`` is one of: src, dst, proto, in_iface, out_iface, dport, sport,
    dports (multiport), addrtype_dst, addrtype_src, mark, statistic,
    recent_set, recent_check, ctstate, comment. ``value`` holds the parsed
    argument (a network, a port range, a (value, mask) pair, a frozenset ...).
    """

    kind: str
    value: object
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``-A`` rule, parsed."""

    table: str
    chain: str
    matches: tuple[Match, ...]
    target: str
    target_args: Mapping[str, str] = field(default_factory=dict)
    goto: bool = False
    line_no: int = 0
    text: str = ""


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Parsed tables: ``tables[table][chain]`` is that chain's rules in order."""

    tables: Mapping[str, Mapping[str, tuple[Rule, ...]]]
    policies: Mapping[tuple[str, str], str]

    def chain(self, table: str, chain: str) -> tuple[Rule, ...] | None:
        """The rules of a chain, or None when the chain does not exist."""
        return self.tables.get(table, {}).get(chain)


BUILTIN_TARGETS = frozenset(
    {"ACCEPT", "DROP", "RETURN", "REJECT", "MARK", "DNAT", "SNAT", "MASQUERADE"}
)
# Targets whose options we parse; values are the options each accepts (with arity 1 or 0).
_TARGET_OPTIONS: dict[str, dict[str, int]] = {
    "ACCEPT": {},
    "DROP": {},
    "RETURN": {},
    "REJECT": {"--reject-with": 1},
    "MARK": {"--set-xmark": 1, "--set-mark": 1, "--or-mark": 1, "--and-mark": 1, "--xor-mark": 1},
    "DNAT": {"--to-destination": 1, "--random": 0, "--persistent": 0},
    "SNAT": {"--to-source": 1, "--random": 0, "--random-fully": 0, "--persistent": 0},
    "MASQUERADE": {"--random": 0, "--random-fully": 0, "--to-ports": 1},
}


def _net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


def _ports(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    return (int(lo), int(hi or lo))


def _mark(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return (int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF)


class _Tokens:
    def __init__(self, tokens: list[str], line_no: int, line: str) -> None:
        self.tokens = tokens
        self.i = 0
        self.line_no = line_no
        self.line = line

    def error(self, reason: str) -> RuleParseError:
        return RuleParseError(self.line_no, self.line, reason)

    def more(self) -> bool:
        return self.i < len(self.tokens)

    def peek(self) -> str:
        return self.tokens[self.i]

    def take(self, what: str = "a value") -> str:
        if self.i >= len(self.tokens):
            raise self.error(f"missing {what}")
        tok = self.tokens[self.i]
        self.i += 1
        return tok


# Options valid after `-m <module>`, with their match kind (None = accepted, no effect).
_MODULE_OPTIONS: dict[str, dict[str, str | None]] = {
    "tcp": {"--dport": "dport", "--destination-port": "dport", "--sport": "sport",
            "--source-port": "sport"},
    "udp": {"--dport": "dport", "--destination-port": "dport", "--sport": "sport",
            "--source-port": "sport"},
    "sctp": {"--dport": "dport", "--destination-port": "dport", "--sport": "sport",
             "--source-port": "sport"},
    "multiport": {"--dports": "dports", "--destination-ports": "dports"},
    "comment": {"--comment": "comment"},
    "addrtype": {"--dst-type": "addrtype_dst", "--src-type": "addrtype_src",
                 "--limit-iface-in": None, "--limit-iface-out": None},
    "mark": {"--mark": "mark"},
    "statistic": {"--mode": "statistic_mode", "--probability": "statistic"},
    "conntrack": {"--ctstate": "ctstate"},
    "recent": {"--set": "recent_set", "--rcheck": "recent_check", "--update": "recent_check",
               "--name": "recent_name", "--seconds": "recent_seconds", "--reap": "recent_reap",
               "--mask": "recent_mask", "--rsource": "recent_rsource"},
}
_FLAG_OPTIONS = frozenset({"--set", "--rcheck", "--update", "--reap", "--rsource",
                           "--limit-iface-in", "--limit-iface-out"})


def _parse_rule(table: str, line: str, line_no: int) -> Rule:
    try:
        toks = _Tokens(shlex.split(line), line_no, line)
    except ValueError as exc:
        raise RuleParseError(line_no, line, f"unbalanced quotes ({exc})") from None
    op = toks.take()
    if op not in ("-A", "-I"):
        raise toks.error(f"unsupported command {op}")
    chain = toks.take("chain name")
    if op == "-I" and toks.more() and toks.peek().isdigit():
        toks.take()
    matches: list[Match] = []
    modules: list[str] = []
    target = ""
    goto = False
    target_args: dict[str, str] = {}
    recent: dict[str, str] = {}
    negate = False
    while toks.more():
        tok = toks.take()
        if tok == "!":
            negate = True
            continue
        if tok in ("-s", "--source", "-d", "--destination"):
            kind = "src" if tok in ("-s", "--source") else "dst"
            try:
                matches.append(Match(kind, _net(toks.take("address")), negate))
            except ValueError as exc:
                raise toks.error(str(exc)) from None
        elif tok in ("-p", "--protocol"):
            matches.append(Match("proto", toks.take("protocol").lower(), negate))
        elif tok in ("-i", "--in-interface", "-o", "--out-interface"):
            kind = "in_iface" if tok in ("-i", "--in-interface") else "out_iface"
            matches.append(Match(kind, toks.take("interface"), negate))
        elif tok in ("-m", "--match"):
            module = toks.take("match module")
            if module not in _MODULE_OPTIONS:
                raise toks.error(f"unknown match module {module!r}")
            modules.append(module)
        elif tok in ("-j", "--jump", "-g", "--goto"):
            goto = tok in ("-g", "--goto")
            target = toks.take("target")
            opts = _TARGET_OPTIONS.get(target)
            while toks.more() and toks.peek().startswith("--"):
                opt = toks.take()
                if opts is None or opt not in opts:
                    raise toks.error(f"unknown option {opt} for target {target}")
                target_args[opt] = toks.take(f"value of {opt}") if opts[opt] else ""
            if toks.more():
                raise toks.error(f"unexpected {toks.peek()!r} after the target")
        elif tok.startswith("--"):
            kind_for: str | None = None
            found = False
            for module in reversed(modules):
                if tok in _MODULE_OPTIONS[module]:
                    kind_for, found = _MODULE_OPTIONS[module][tok], True
                    break
            if not found:
                raise toks.error(f"unknown option {tok}")
            value = "" if tok in _FLAG_OPTIONS else toks.take(f"value of {tok}")
            if kind_for is None:
                pass
            elif kind_for.startswith("recent_"):
                recent[kind_for] = value
                if kind_for in ("recent_set", "recent_check"):
                    recent["negated"] = "1" if negate else ""
            elif kind_for == "statistic_mode":
                if value != "random":
                    raise toks.error(f"statistic mode {value!r} is not supported")
            else:
                matches.append(_typed_match(kind_for, value, negate, toks))
        else:
            raise toks.error(f"unexpected {tok!r}")
        negate = False
    if recent:
        if "recent_set" in recent:
            matches.append(Match("recent_set", recent.get("recent_name", "DEFAULT")))
        elif "recent_check" in recent:
            seconds = int(recent.get("recent_seconds", "0") or 0)
            matches.append(
                Match(
                    "recent_check",
                    (recent.get("recent_name", "DEFAULT"), seconds),
                    bool(recent.get("negated")),
                )
            )
        else:
            raise toks.error("recent match needs --set, --rcheck or --update")
    if not target:
        raise toks.error("rule has no target (-j)")
    return Rule(table, chain, tuple(matches), target, target_args, goto, line_no, line)


def _typed_match(kind: str, value: str, negated: bool, toks: _Tokens) -> Match:
    try:
        if kind in ("dport", "sport"):
            return Match(kind, _ports(value), negated)
        if kind == "dports":
            return Match(kind, tuple(_ports(p) for p in value.split(",")), negated)
        if kind in ("addrtype_dst", "addrtype_src"):
            if value != "LOCAL":
                raise toks.error(f"addrtype {value!r} is not supported (only LOCAL)")
            return Match(kind, value, negated)
        if kind == "mark":
            return Match(kind, _mark(value), negated)
        if kind == "statistic":
            return Match(kind, float(value), negated)
        if kind == "ctstate":
            return Match(kind, frozenset(value.split(",")), negated)
        if kind == "comment":
            return Match(kind, value, negated)
    except ValueError as exc:
        raise toks.error(f"bad value {value!r}: {exc}") from None
    raise toks.error(f"unsupported match {kind}")


def parse_ruleset(text: str) -> Ruleset:
    """Parse a whole iptables-save / iptables-restore text."""
    tables: dict[str, dict[str, list[Rule]]] = {}
    policies: dict[tuple[str, str], str] = {}
    table: str | None = None
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            tables.setdefault(table, {})
            continue
        if table is None:
            raise RuleParseError(line_no, raw, "line outside of a *table section")
        if line == "COMMIT":
            table = None
            continue
        if line.startswith(":"):
            parts = line[1:].split()
            if not parts:
                raise RuleParseError(line_no, raw, "empty chain declaration")
            tables[table].setdefault(parts[0], [])
            if len(parts) > 1 and parts[1] != "-":
                policies[(table, parts[0])] = parts[1]
            continue
        if line.startswith(("-X", "-F", "-D", "-N")):
            raise RuleParseError(line_no, raw, "only -A/-I rules can be traced")
        rule = _parse_rule(table, line, line_no)
        chain = tables[table].setdefault(rule.chain, [])
        if line.startswith("-I"):
            chain.insert(0, rule)
        else:
            chain.append(rule)
    if table is not None:
        raise RuleParseError(len(text.splitlines()), "", f"table {table} has no COMMIT")
    return Ruleset(
        tables={t: {c: tuple(r) for c, r in chains.items()} for t, chains in tables.items()},
        policies=policies,
    )
