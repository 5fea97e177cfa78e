"""Walk a new connection's first packet through an iptables ruleset, the way netfilter does.

Why: the proxy's semantics (which endpoints a packet can reach, whether it is
masqueraded, dropped or rejected) are properties of the rendered rules. This
tracer checks them in unit tests without root, and `netagent debug trace`
runs it on a node's live ruleset. Real traffic in network namespaces proves
the same cases end to end; the tracer makes the table of cases cheap.

Model (first packet of a connection, conntrack state NEW):

* Arriving packets (from a pod or from outside) pass raw, mangle and nat
  PREROUTING; the (possibly DNATed) destination then decides between local
  delivery (mangle INPUT, filter INPUT, nat INPUT) and forwarding (mangle
  FORWARD, filter FORWARD, mangle POSTROUTING, nat POSTROUTING).
* Locally generated packets pass raw, mangle and nat OUTPUT, filter OUTPUT,
  mangle and nat POSTROUTING, then local delivery if the destination is ours.
* ``-m statistic`` and ``-m recent --rcheck`` can match or not: both branches
  are explored and each distinct path is one :class:`Outcome`.
* Each outcome carries its **probability**: the product, over the
  ``-m statistic --mode random --probability p`` matches on its path, of
  ``p`` where the match was taken and ``1 - p`` where it was not. Paths that
  end identically are merged and their probabilities added, so for a new
  client the probabilities of all paths add up to 1. A ``recent --rcheck``
  match is not random: the path where it matches assumes the client already
  has affinity to that endpoint, and names the ``recent`` list in
  :attr:`Outcome.affinity`; the paths with an empty ``affinity`` are the
  ones a new client takes.
* DNAT and MASQUERADE/SNAT end their nat chain traversal (they are terminal
  targets in the kernel). MARK changes the mark later rules see.
* A jump to a missing chain, a target in a table where the kernel refuses
  it, an output-interface match (routing is not modelled) or a loop raises
  :class:`TraceError`: an unknown situation is never silently passed.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, replace
from typing import cast

from netagent.model import IPAddress
from netagent.proxy.iptables.parse import Match, Rule, Ruleset, parse_ruleset

MAX_DEPTH = 64
_LOOPBACK4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK6 = ipaddress.ip_network("::1/128")


class TraceError(RuntimeError):
    """The ruleset cannot be traced (missing chain, loop, unmodelled rule)."""


class Origin(str, enum.Enum):
    """Where the packet comes from."""

    POD = "pod"
    HOST = "host"
    EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the tracer needs to know about the node."""

    local_ips: frozenset[IPAddress]
    pod_interface: str = "cbr0"
    external_interface: str = "eth0"


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a new connection."""

    src: str
    dst: str
    protocol: str
    dport: int
    origin: Origin
    sport: int = 40000


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one path through the rules ends.

    ``probability`` is the share of new connections that take this path
    (the product of its ``statistic`` branch probabilities, summed over the
    paths that end identically). ``affinity`` names the ``recent`` lists the
    path assumes the client is in (session affinity already recorded);
    empty for the paths of a client without affinity.
    """

    verdict: str
    endpoint: str | None
    masquerade: bool
    chains: tuple[str, ...]
    probability: float = 1.0
    affinity: tuple[str, ...] = ()

    def _identity(self) -> Outcome:
        return replace(self, probability=0.0)


@dataclass(frozen=True, slots=True)
class TraceResult:
    """All distinct paths of one packet."""

    outcomes: tuple[Outcome, ...]

    @property
    def endpoints(self) -> frozenset[str]:
        """Every DNAT destination some path reaches."""
        return frozenset(o.endpoint for o in self.outcomes if o.endpoint is not None)

    def endpoint_probabilities(self) -> dict[str | None, float]:
        """Share of new clients (no affinity yet) per DNAT destination (None: not DNATed)."""
        shares: dict[str | None, float] = {}
        for o in self.outcomes:
            if not o.affinity:
                shares[o.endpoint] = shares.get(o.endpoint, 0.0) + o.probability
        return shares

    @property
    def verdict(self) -> str:
        """The verdict all paths agree on."""
        verdicts = {o.verdict for o in self.outcomes}
        if len(verdicts) != 1:
            raise TraceError(f"paths disagree on the verdict: {sorted(verdicts)}")
        return verdicts.pop()

    @property
    def masquerade(self) -> bool:
        """Whether all paths are masqueraded (raises if they disagree)."""
        values = {o.masquerade for o in self.outcomes}
        if len(values) != 1:
            raise TraceError("paths disagree on masquerade")
        return values.pop()

    @property
    def chains(self) -> tuple[str, ...]:
        """Visited chains over all paths, in first-visit order."""
        seen: dict[str, None] = {}
        for o in self.outcomes:
            for c in o.chains:
                seen.setdefault(c, None)
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class _State:
    src: IPAddress
    dst: IPAddress
    proto: str
    dport: int
    sport: int
    in_iface: str
    mark: int = 0
    endpoint: str | None = None
    masquerade: bool = False
    ctstates: frozenset[str] = frozenset({"NEW"})
    chains: tuple[str, ...] = field(default=())
    probability: float = 1.0
    affinity: tuple[str, ...] = ()

    def visit(self, table: str, chain: str) -> _State:
        return replace(self, chains=(*self.chains, f"{table}/{chain}"))

    def weighted(self, factor: float) -> _State:
        return replace(self, probability=self.probability * factor)

    def outcome(self, verdict: str) -> Outcome:
        return Outcome(
            verdict, self.endpoint, self.masquerade, self.chains, self.probability, self.affinity
        )


# (kind, state): kind is RETURN (fell off / RETURN), ACCEPT, DROP or REJECT.
_Branch = tuple[str, _State]


class _Tracer:
    def __init__(self, ruleset: Ruleset, node: NodeView) -> None:
        self.rules = ruleset
        self.node = node

    def is_local(self, addr: IPAddress) -> bool:
        if addr in self.node.local_ips:
            return True
        loop = _LOOPBACK4 if addr.version == 4 else _LOOPBACK6
        return addr in loop

    # ---- matches -------------------------------------------------------------
    def _match(self, m: Match, st: _State, rule: Rule) -> list[tuple[bool, _State]]:
        """Whether ``m`` matches; a list because some matches can go both ways."""
        kind = m.kind
        if kind == "comment":
            return [(True, st)]
        if kind == "statistic":
            p = float(m.value)  # type: ignore[arg-type]
            if p >= 1.0:
                return [(not m.negated, st)]
            if p <= 0.0:
                return [(m.negated, st)]
            taken = 1.0 - p if m.negated else p
            return [(True, st.weighted(taken)), (False, st.weighted(1.0 - taken))]
        if kind == "recent_check":
            name = str(cast(tuple[str, int], m.value)[0])
            remembered = replace(st, affinity=(*st.affinity, name))
            if m.negated:
                return [(True, st), (False, remembered)]
            return [(True, remembered), (False, st)]
        if kind == "recent_set":
            return [(True, st)]
        result: bool
        if kind in ("src", "dst"):
            addr = st.src if kind == "src" else st.dst
            net = m.value
            result = addr.version == net.version and addr in net  # type: ignore[attr-defined,operator]
        elif kind == "proto":
            result = m.value in (st.proto, "all")
        elif kind in ("dport", "sport"):
            lo, hi = cast(tuple[int, int], m.value)
            port = st.dport if kind == "dport" else st.sport
            result = lo <= port <= hi
        elif kind == "dports":
            result = any(lo <= st.dport <= hi for lo, hi in m.value)  # type: ignore[attr-defined]
        elif kind == "addrtype_dst":
            result = self.is_local(st.dst)
        elif kind == "addrtype_src":
            result = self.is_local(st.src)
        elif kind == "mark":
            value, mask = cast(tuple[int, int], m.value)
            result = (st.mark & mask) == value
        elif kind == "ctstate":
            result = bool(st.ctstates & m.value)  # type: ignore[operator]
        elif kind == "in_iface":
            name = str(m.value)
            result = (
                st.in_iface.startswith(name[:-1]) if name.endswith("+") else st.in_iface == name
            )
        elif kind == "out_iface":
            raise TraceError(
                f"line {rule.line_no}: output-interface matches are not modelled: {rule.text}"
            )
        else:
            raise TraceError(f"line {rule.line_no}: unsupported match {kind}: {rule.text}")
        return [(result != m.negated, st)]

    def _matches(self, rule: Rule, st: _State) -> list[tuple[bool, _State]]:
        branches: list[tuple[bool, _State]] = [(True, st)]
        for m in rule.matches:
            nxt: list[tuple[bool, _State]] = []
            for ok, s in branches:
                if not ok:
                    nxt.append((False, s))
                    continue
                nxt.extend(self._match(m, s, rule))
            branches = nxt
        # Identical branches collapse into one; their probabilities add up
        # (they are exclusive outcomes of the same random choices).
        merged: dict[tuple[bool, _State], float] = {}
        for ok, s in branches:
            key = (ok, replace(s, probability=0.0))
            merged[key] = merged.get(key, 0.0) + s.probability
        return [(ok, replace(s, probability=p)) for (ok, s), p in merged.items()]

    # ---- targets -------------------------------------------------------------
    def _target(self, table: str, hook: str, rule: Rule, st: _State, depth: int) -> list[_Branch]:
        """Apply a matched rule's target; RETURN branches continue the calling chain."""
        t = rule.target
        args = rule.target_args
        if t in ("ACCEPT", "DROP", "REJECT"):
            return [(t, st)]
        if t == "RETURN":
            return [("RETURN-EXPLICIT", st)]
        if t == "MARK":
            mark = st.mark
            if "--set-xmark" in args or "--set-mark" in args:
                raw = args.get("--set-xmark") or args.get("--set-mark", "0")
                value, _, mask = raw.partition("/")
                v, msk = int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF
                mark = (mark & ~msk) ^ v if "--set-xmark" in args else (mark & ~msk) | v
            if "--or-mark" in args:
                mark |= int(args["--or-mark"], 0)
            if "--and-mark" in args:
                mark &= int(args["--and-mark"], 0)
            if "--xor-mark" in args:
                mark ^= int(args["--xor-mark"], 0)
            return [("CONTINUE", replace(st, mark=mark & 0xFFFFFFFF))]
        if t == "DNAT":
            if table != "nat" or hook not in ("PREROUTING", "OUTPUT"):
                raise TraceError(f"line {rule.line_no}: DNAT outside nat PREROUTING/OUTPUT")
            dest = args.get("--to-destination")
            if not dest:
                raise TraceError(f"line {rule.line_no}: DNAT without --to-destination")
            ip_text, port = _split_hostport(dest, st.dport)
            new = replace(
                st,
                dst=ipaddress.ip_address(ip_text),
                dport=port,
                endpoint=dest if ":" in dest.lstrip("[").split("]")[-1] or "]" in dest
                else f"{dest}:{st.dport}",
                ctstates=st.ctstates | {"DNAT"},
            )
            return [("ACCEPT", new)]
        if t in ("MASQUERADE", "SNAT"):
            if table != "nat" or hook != "POSTROUTING":
                raise TraceError(f"line {rule.line_no}: {t} outside nat POSTROUTING")
            return [("ACCEPT", replace(st, masquerade=True))]
        # A user-defined chain.
        sub = self._walk(table, hook, t, st, depth + 1)
        out: list[_Branch] = []
        for kind, s in sub:
            if kind in ("RETURN", "RETURN-EXPLICIT"):
                out.append(("RETURN-EXPLICIT" if rule.goto else "CONTINUE", s))
            else:
                out.append((kind, s))
        return out

    def _walk(self, table: str, hook: str, chain: str, st: _State, depth: int) -> list[_Branch]:
        if depth > MAX_DEPTH:
            raise TraceError(f"chain nesting deeper than {MAX_DEPTH} at {table}/{chain}")
        rules = self.rules.chain(table, chain)
        if rules is None:
            raise TraceError(f"jump to missing chain {table}/{chain}")
        return self._walk_from(table, hook, rules, 0, st.visit(table, chain), depth)

    def _walk_from(
        self, table: str, hook: str, rules: tuple[Rule, ...], start: int, st: _State, depth: int
    ) -> list[_Branch]:
        for idx in range(start, len(rules)):
            rule = rules[idx]
            branches = self._matches(rule, st)
            if len(branches) == 1:
                ok, s = branches[0]
                if not ok:
                    st = s
                    continue
                results = self._target(table, hook, rule, s, depth)
                if len(results) == 1 and results[0][0] == "CONTINUE":
                    st = results[0][1]
                    continue
                return self._finish(table, hook, rules, idx, results, depth)
            out: list[_Branch] = []
            for ok, s in branches:
                if not ok:
                    out.extend(self._walk_from(table, hook, rules, idx + 1, s, depth))
                else:
                    results = self._target(table, hook, rule, s, depth)
                    out.extend(self._finish(table, hook, rules, idx, results, depth))
            return out
        return [("RETURN", st)]

    def _finish(
        self,
        table: str,
        hook: str,
        rules: tuple[Rule, ...],
        idx: int,
        results: list[_Branch],
        depth: int,
    ) -> list[_Branch]:
        out: list[_Branch] = []
        for kind, s in results:
            if kind == "CONTINUE":
                out.extend(self._walk_from(table, hook, rules, idx + 1, s, depth))
            elif kind == "RETURN-EXPLICIT":
                out.append(("RETURN", s))
            else:
                out.append((kind, s))
        return out

    # ---- hooks ---------------------------------------------------------------
    def _hook(self, table: str, chain: str, st: _State) -> list[_Branch]:
        """Run one built-in chain; returns ACCEPT/DROP/REJECT branches."""
        if self.rules.chain(table, chain) is None:
            return [("ACCEPT", st)]
        policy = self.rules.policies.get((table, chain), "ACCEPT")
        out: list[_Branch] = []
        for kind, s in self._walk(table, chain, chain, st, 0):
            out.append((policy if kind == "RETURN" else kind, s))
        return out

    def _stages(
        self, stages: list[tuple[str, str]], st: _State, then: str
    ) -> list[Outcome]:
        if not stages:
            return self._after(then, st)
        table, chain = stages[0]
        outcomes: list[Outcome] = []
        for kind, s in self._hook(table, chain, st):
            if kind in ("DROP", "REJECT"):
                outcomes.append(s.outcome(kind))
            else:
                outcomes.extend(self._stages(stages[1:], s, then))
        return outcomes

    def _after(self, then: str, st: _State) -> list[Outcome]:
        if then == "route":
            if self.is_local(st.dst):
                return self._stages(
                    [("mangle", "INPUT"), ("filter", "INPUT"), ("nat", "INPUT")], st, "done"
                )
            return self._stages(
                [("mangle", "FORWARD"), ("filter", "FORWARD"), ("mangle", "POSTROUTING"),
                 ("nat", "POSTROUTING")],
                st,
                "done",
            )
        if then == "local-out":
            if self.is_local(st.dst):
                return self._stages([("mangle", "INPUT"), ("filter", "INPUT")], st, "done")
            return self._after("done", st)
        return [st.outcome("ACCEPT")]

    def trace(self, packet: Packet) -> TraceResult:
        try:
            src = ipaddress.ip_address(packet.src)
            dst = ipaddress.ip_address(packet.dst)
        except ValueError as exc:
            raise TraceError(str(exc)) from None
        iface = {
            Origin.POD: self.node.pod_interface,
            Origin.EXTERNAL: self.node.external_interface,
            Origin.HOST: "",
        }[packet.origin]
        st = _State(
            src=src,
            dst=dst,
            proto=packet.protocol.lower(),
            dport=packet.dport,
            sport=packet.sport,
            in_iface=iface,
        )
        if packet.origin is Origin.HOST:
            outcomes = self._stages(
                [("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT"), ("filter", "OUTPUT"),
                 ("mangle", "POSTROUTING"), ("nat", "POSTROUTING")],
                st,
                "local-out",
            )
        else:
            outcomes = self._stages(
                [("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING")],
                st,
                "route",
            )
        merged: dict[Outcome, float] = {}
        for o in outcomes:
            key = o._identity()
            merged[key] = merged.get(key, 0.0) + o.probability
        return TraceResult(tuple(replace(o, probability=p) for o, p in merged.items()))


def _split_hostport(dest: str, default_port: int) -> tuple[str, int]:
    if dest.startswith("["):
        host, _, rest = dest[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if dest.count(":") == 1:
        host, _, port = dest.partition(":")
        return host, int(port)
    return dest, default_port


def trace_packet(ruleset: Ruleset | str, packet: Packet, node: NodeView) -> TraceResult:
    """Trace ``packet`` through ``ruleset`` (parsed, or text to parse)."""
    parsed = parse_ruleset(ruleset) if isinstance(ruleset, str) else ruleset
    return _Tracer(parsed, node).trace(packet)
