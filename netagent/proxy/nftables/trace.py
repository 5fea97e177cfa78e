"""Follow a new connection's first packet through a :class:`RenderedNft`, as netfilter would.

Why a tracer over the render and not the kernel's own ``nftrace``: the
kernel can trace a packet through nftables, but only with root, only for a
live packet, and only after a ``meta nftrace set 1`` rule has been added to
the ruleset; what it prints is rule handles, not Services. This tracer runs
without root on the model netagent renders (a fresh render of the desired
state, or what a sync committed), and explains each decision in terms of
the Service port that owns the element that decided it. So unit tests check
the renderer's semantics with it (which endpoints a packet can reach, with
which probability, masqueraded or not, dropped or rejected), and ``netagent
debug trace`` answers "what happens to this packet?" on any machine that can
read the cluster's objects.

It interprets the render's own rules (the strings a sync writes), not a
re-statement of the table's design, so a wrong rule in the render shows up
as a wrong trace. Model (the first packet of a connection, ``ct state new``):

* The base chains run in hook order, and within a hook by priority, as
  their ``type ... hook ... priority ...`` specs say: arriving packets (from
  a pod or from outside) pass ``prerouting`` (``firewall-check`` at dstnat
  - 10, then the ``services`` dispatch at dstnat); the (possibly DNATed)
  destination then selects ``input`` for one of the node's addresses, else
  ``forward`` and ``postrouting``. Packets of the host itself pass
  ``output`` and ``postrouting``, then ``input`` when the destination is
  local. Only netagent's table is modelled; other tables (a firewall) are not.
* The node's addresses (``fib daddr type local``, ``fib saddr type local``)
  are the ones given, usually the Node's addresses of the state; loopback
  addresses are always local.
* ``numgen random mod N`` takes each value with probability 1/N; every
  value is explored and is one path. A lookup in a *dynamic* set (ClientIP
  affinity) can match or not: the path where it matches assumes the client
  already has affinity to that endpoint and names the set in
  :attr:`NftPath.affinity`; the paths with an empty ``affinity`` are the
  ones a new client takes, and their probabilities add up to 1.
* A verdict-map or DNAT-map lookup that finds no element makes the rule not
  match, as in the kernel; ``dnat`` and ``masquerade`` end their base
  chain (they accept), ``drop`` and ``reject`` end the packet.
* Anything the tracer does not model (an unknown expression, a jump to a
  missing chain, a loop) raises :class:`TraceError`: an unknown situation
  is never passed silently.

:class:`Packet`, :class:`Origin` and :class:`TraceError` are the iptables
tracer's own types, so ``netagent debug`` builds the packet the same way in
both modes.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from netagent.model import IPAddress, IPFamily, NodeInfo
from netagent.proxy.iptables.trace import Origin, Packet, TraceError
from netagent.proxy.nftables.ruleset import RenderedNft

if TYPE_CHECKING:
    from netagent.model import ProxyState
    from netagent.overlay.rules_intent import OverlayRules

__all__ = [
    "NftPath",
    "NftTrace",
    "NftTracer",
    "Origin",
    "Packet",
    "Step",
    "TraceError",
    "local_addresses",
    "trace_packet",
    "trace_state",
]

MAX_DEPTH = 32
_LOOPBACK4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK6 = ipaddress.ip_network("::1/128")

#: Named base-chain priorities (ip and ip6 families).
_PRIORITY_NAMES = {
    "raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100,
}  # fmt: skip
_HOOK_RE = re.compile(
    r"^type (?P<type>\S+) hook (?P<hook>\S+)(?: device \S+)? priority (?P<prio>[^;]+);"
    r"(?:\s*policy (?P<policy>\S+);)?"
)
_PRIO_RE = re.compile(r"^(?P<name>[a-z]+)?\s*(?:(?P<sign>[+-])?\s*(?P<num>\d+))?$")

#: What a rule's first words select, by the words; tcp/udp/sctp ports imply that protocol.
_SELECTORS: dict[tuple[str, ...], str] = {
    ("ip", "saddr"): "saddr",
    ("ip", "daddr"): "daddr",
    ("ip6", "saddr"): "saddr",
    ("ip6", "daddr"): "daddr",
    ("meta", "l4proto"): "l4proto",
    ("meta", "mark"): "mark",
    ("th", "dport"): "dport",
    ("th", "sport"): "sport",
    ("ct", "state"): "ctstate",
    ("ct", "status"): "ctstatus",
    ("fib", "saddr", "type"): "fib-saddr",
    ("fib", "daddr", "type"): "fib-daddr",
}
for _proto in ("tcp", "udp", "sctp"):
    _SELECTORS[(_proto, "dport")] = "dport"
    _SELECTORS[(_proto, "sport")] = "sport"
_FIRST_WORDS = frozenset(words[0] for words in _SELECTORS) | {"numgen"}
_VERDICTS = frozenset({"accept", "drop", "reject", "return", "jump", "goto"})
_MASQ_FLAGS = frozenset({"fully-random", "random", "persistent"})


# ---- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One rule the packet was evaluated against.

    Attributes:
        chain: The chain the rule is in.
        rule: The rule as the render (and ``nft list``) writes it.
        matched: Whether the rule matched (its statements ran).
        detail: What matched, or the first thing that did not, with the values
            the packet had (``10.96.0.10 . tcp . 80 in @service-ips``).
        verdict: What the rule did: ``goto cluster-tcp-3``, ``dnat to
            10.244.0.3:8080``, ``masquerade``, ``drop``, ``continue`` (a
            statement without a verdict), or ``no match``.
        owner: The service port owning the element that decided it, else "".
    """

    chain: str
    rule: str
    matched: bool
    detail: str
    verdict: str
    owner: str = ""


@dataclass(frozen=True, slots=True)
class NftPath:
    """Where one path through the table ends.

    ``verdict`` is ``ACCEPT``, ``DROP`` or ``REJECT``; ``endpoint`` the DNAT
    destination (None: not translated). ``probability`` is the share of new
    connections that take this path; ``affinity`` names the dynamic sets the
    path assumes the client is in (empty for a client without affinity).
    ``service`` is the service port whose frontend dispatched it ("" for none).
    """

    verdict: str
    endpoint: str | None
    masquerade: bool
    steps: tuple[Step, ...]
    chains: tuple[str, ...]
    probability: float = 1.0
    affinity: tuple[str, ...] = ()
    service: str = ""

    @property
    def outcome(self) -> str:
        """``DNAT``, ``REJECT``, ``DROP`` or ``ACCEPT`` (not translated, passed untouched)."""
        if self.verdict != "ACCEPT":
            return self.verdict
        return "DNAT" if self.endpoint is not None else "ACCEPT"


@dataclass(frozen=True, slots=True)
class NftTrace:
    """Every distinct path of one packet through one family's table."""

    packet: Packet
    paths: tuple[NftPath, ...]
    local_ips: frozenset[IPAddress] = frozenset()

    @property
    def new_client_paths(self) -> tuple[NftPath, ...]:
        """The paths of a client without ClientIP affinity (their probabilities sum to 1)."""
        return tuple(p for p in self.paths if not p.affinity)

    @property
    def endpoints(self) -> frozenset[str]:
        """Every DNAT destination some path reaches."""
        return frozenset(p.endpoint for p in self.paths if p.endpoint is not None)

    def endpoint_probabilities(self) -> dict[str | None, float]:
        """Share of new clients per DNAT destination (None: not translated)."""
        shares: dict[str | None, float] = {}
        for p in self.new_client_paths:
            shares[p.endpoint] = shares.get(p.endpoint, 0.0) + p.probability
        return shares

    @property
    def outcome(self) -> str:
        """What happens to a new client's packet: DNAT, REJECT, DROP, ACCEPT, or ``mixed``."""
        kinds = {p.outcome for p in self.new_client_paths or self.paths}
        return kinds.pop() if len(kinds) == 1 else "mixed: " + ", ".join(sorted(kinds))

    @property
    def masquerade(self) -> bool | None:
        """Whether every path is masqueraded (None when only some are, e.g. hairpin)."""
        values = {p.masquerade for p in self.paths}
        return values.pop() if len(values) == 1 else None

    @property
    def service(self) -> str:
        """The service port that dispatched the packet ("" for none)."""
        return next((p.service for p in self.paths if p.service), "")

    def summary(self) -> str:
        """One line: the outcome, its endpoints with their shares, and masquerade."""
        outcome = self.outcome
        if outcome == "DNAT":
            shares = self.endpoint_probabilities()
            parts = [f"{ep} p={p:.4g}" for ep, p in sorted(shares.items(), key=_share_key)]
            text = "DNAT to " + ", ".join(parts)
        elif outcome == "ACCEPT":
            text = "ACCEPT untouched (not a service frontend)"
        else:
            text = outcome
        if self.service:
            text += f" [{self.service}]"
        masq = self.masquerade
        text += ", masquerade " + ("yes" if masq else "no" if masq is False else "on some paths")
        if any(p.affinity for p in self.paths):
            text += "; ClientIP affinity first, then random"
        return text


def _share_key(item: tuple[str | None, float]) -> tuple[str, float]:
    return (item[0] or "", item[1])


# ---- parsed rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Group:
    """A ``{ ... }`` part of a rule: its comma-separated items."""

    items: tuple[str, ...]


_Token = str | _Group


@dataclass(frozen=True, slots=True)
class _Sel:
    kind: str
    text: str
    proto: str = ""  # tcp dport: only tcp packets have it
    mod: int = 0  # numgen random mod N


@dataclass(frozen=True, slots=True)
class _Cmp:
    sels: tuple[_Sel, ...]
    negate: bool
    mask: int | None = None
    literal: str = ""
    anon: tuple[str, ...] = ()
    named: str = ""


@dataclass(frozen=True, slots=True)
class _VMap:
    sels: tuple[_Sel, ...]
    named: str = ""
    anon: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class _Mark:
    op: str  # "|", "^", "&" or "=" (set)
    value: int


@dataclass(frozen=True, slots=True)
class _Dnat:
    sels: tuple[_Sel, ...] = ()
    named: str = ""
    literal: str = ""


@dataclass(frozen=True, slots=True)
class _Masq:
    pass


@dataclass(frozen=True, slots=True)
class _Update:
    named: str


@dataclass(frozen=True, slots=True)
class _Verdict:
    kind: str
    chain: str = ""


_Term = _Cmp | _VMap | _Mark | _Dnat | _Masq | _Update | _Verdict


@dataclass(frozen=True, slots=True)
class _Rule:
    text: str
    terms: tuple[_Term, ...]


def _tokens(rule: str) -> list[_Token]:
    """Words, with each ``{ ... }`` one :class:`_Group` of its comma-separated items."""
    out: list[_Token] = []
    rest = rule
    while rest:
        rest = rest.lstrip()
        if not rest:
            break
        if rest[0] == "{":
            end = rest.find("}")
            if end < 0:
                raise TraceError(f"unbalanced braces in rule: {rule}")
            items = tuple(i.strip() for i in rest[1:end].split(",") if i.strip())
            out.append(_Group(items))
            rest = rest[end + 1 :]
            continue
        word, _, rest = rest.partition(" ")
        out.append(word)
    return out


class _Parser:
    """One rule's tokens into terms (only the expressions netagent's renderer writes)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.pos = 0

    def fail(self, why: str) -> TraceError:
        return TraceError(f"{why} in rule {self.text!r}")

    def peek(self, ahead: int = 0) -> _Token | None:
        i = self.pos + ahead
        return self.toks[i] if i < len(self.toks) else None

    def word(self) -> str:
        tok = self.peek()
        if not isinstance(tok, str):
            raise self.fail("expected a word")
        self.pos += 1
        return tok

    def parse(self) -> _Rule:
        terms: list[_Term] = []
        while self.peek() is not None:
            terms.append(self.term())
        return _Rule(self.text, tuple(terms))

    def term(self) -> _Term:
        tok = self.peek()
        if tok in _VERDICTS:
            kind = self.word()
            return _Verdict(kind, self.word() if kind in ("jump", "goto") else "")
        if tok == "meta" and self.peek(1) == "mark" and self.peek(2) == "set":
            self.pos += 3
            if self.peek() == "meta" and self.peek(1) == "mark":
                self.pos += 2
                op = self.word()
                if op not in ("|", "^", "&"):
                    raise self.fail(f"unknown mark operation {op!r}")
                return _Mark(op, int(self.word(), 0))
            return _Mark("=", int(self.word(), 0))
        if tok == "dnat":
            self.pos += 1
            if self.peek() in ("ip", "ip6") and self.peek(1) == "to":
                self.pos += 1
            if self.word() != "to":
                raise self.fail("expected 'dnat [ip|ip6] to'")
            if self.peek() in _FIRST_WORDS:
                sels = self.selectors()
                if self.word() != "map":
                    raise self.fail("expected 'map @name' after a DNAT key")
                return _Dnat(sels=sels, named=self.set_name())
            return _Dnat(literal=self.word())
        if tok == "masquerade":
            self.pos += 1
            while self.peek() in _MASQ_FLAGS:
                self.pos += 1
            return _Masq()
        if tok == "update":
            self.pos += 1
            name = self.set_name()
            if not isinstance(self.peek(), _Group):
                raise self.fail("expected '{ ... }' after update @set")
            self.pos += 1
            return _Update(name)
        sels = self.selectors()
        mask = None
        if self.peek() == "&":
            self.pos += 1
            mask = int(self.word(), 0)
        if self.peek() == "vmap":
            self.pos += 1
            rhs = self.peek()
            if isinstance(rhs, _Group):
                self.pos += 1
                pairs = []
                for item in rhs.items:
                    key, sep, value = item.partition(" : ")
                    if not sep:
                        raise self.fail(f"bad verdict map item {item!r}")
                    pairs.append((key.strip(), value.strip()))
                return _VMap(sels, anon=tuple(pairs))
            return _VMap(sels, named=self.set_name())
        negate = False
        if self.peek() in ("!=", "=="):
            negate = self.word() == "!="
        rhs = self.peek()
        if rhs is None:
            raise self.fail("expected a value")
        self.pos += 1
        if isinstance(rhs, _Group):
            return _Cmp(sels, negate, mask, anon=rhs.items)
        if rhs.startswith("@"):
            return _Cmp(sels, negate, mask, named=rhs[1:])
        return _Cmp(sels, negate, mask, literal=rhs)

    def set_name(self) -> str:
        name = self.word()
        if not name.startswith("@"):
            raise self.fail(f"expected @set, got {name!r}")
        return name[1:]

    def selectors(self) -> tuple[_Sel, ...]:
        sels = [self.selector()]
        while self.peek() == ".":
            self.pos += 1
            sels.append(self.selector())
        return tuple(sels)

    def selector(self) -> _Sel:
        first = self.peek()
        if first == "numgen":
            if self.peek(1) != "random" or self.peek(2) != "mod":
                raise self.fail("only 'numgen random mod N' is modelled")
            self.pos += 3
            return _Sel("numgen", f"numgen random mod {self.peek()}", mod=int(self.word()))
        for size in (3, 2):
            words = tuple(self.peek(i) for i in range(size))
            if all(isinstance(w, str) for w in words):
                kind = _SELECTORS.get(words)  # type: ignore[arg-type]
                if kind is not None:
                    self.pos += size
                    proto = str(words[0]) if words[0] in ("tcp", "udp", "sctp") else ""
                    return _Sel(kind, " ".join(str(w) for w in words), proto=proto)
        raise self.fail(f"unmodelled expression at {first!r}")


# ---- tracing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _St:
    src: IPAddress
    dst: IPAddress
    proto: str
    dport: int
    sport: int
    mark: int = 0
    endpoint: str | None = None
    dnat: bool = False
    masquerade: bool = False
    steps: tuple[Step, ...] = ()
    chains: tuple[str, ...] = ()
    probability: float = 1.0
    affinity: tuple[str, ...] = ()
    service: str = ""

    def path(self, verdict: str) -> NftPath:
        return NftPath(
            verdict=verdict,
            endpoint=self.endpoint,
            masquerade=self.masquerade,
            steps=self.steps,
            chains=self.chains,
            probability=self.probability,
            affinity=self.affinity,
            service=self.service,
        )


@dataclass(slots=True)
class _Eval:
    """One branch of a rule under evaluation: the state, what was seen, who owns it."""

    st: _St
    notes: list[str] = field(default_factory=list)
    owner: str = ""

    def fork(self, st: _St | None = None, note: str = "", owner: str = "") -> _Eval:
        notes = [*self.notes, note] if note else list(self.notes)
        return _Eval(st if st is not None else self.st, notes, owner or self.owner)


#: A finished rule or chain: (kind, state); kind is next/return/accept/drop/reject.
_Done = tuple[str, _St]


def _priority(text: str) -> int:
    match = _PRIO_RE.match(text.strip())
    if match is None or not (match.group("name") or match.group("num")):
        raise TraceError(f"unknown base-chain priority {text!r}")
    value = _PRIORITY_NAMES.get(match.group("name") or "", 0)
    if match.group("name") and match.group("name") not in _PRIORITY_NAMES:
        raise TraceError(f"unknown base-chain priority {text!r}")
    if match.group("num"):
        number = int(match.group("num"))
        value += -number if match.group("sign") == "-" else number
    return value


def _split_hostport(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:])
    host, _, port = text.rpartition(":")
    return host, int(port)


def _host_port(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def local_addresses(node: NodeInfo, extra: Iterable[IPAddress] = ()) -> frozenset[IPAddress]:
    """The addresses ``fib ... type local`` matches: the Node's, plus ``extra``."""
    return frozenset((*node.addresses, *extra))


class NftTracer:
    """Traces packets through one render; build once, trace many (the indexes are kept)."""

    def __init__(self, rendered: RenderedNft, local_ips: Iterable[IPAddress] = ()) -> None:
        self.rendered = rendered
        self.version = 4 if rendered.family is IPFamily.IPV4 else 6
        self.local_ips = frozenset(local_ips)
        self._chains = rendered.all_chains()
        self._sets = rendered.all_sets()
        self._elements = rendered.elements()
        self._parsed: dict[str, tuple[_Rule, ...]] = {}
        #: Chains and sets of a service port's own (ClientIP affinity) -> its name.
        self._owned: dict[str, str] = {}
        self._element_owner: dict[tuple[str, str], str] = {}
        for name, fragment in rendered.fragments.items():
            for chain in fragment.chains:
                self._owned[chain.name] = str(name)
            for nft_set in fragment.sets:
                self._owned[nft_set.name] = str(name)
            for frontend in fragment.frontends:
                for set_name, key, _ in frontend.elements:
                    self._element_owner[(set_name, key)] = str(name)
        self._hooks: dict[str, list[tuple[int, str, str]]] = {}
        for chain in rendered.skeleton.chains:
            if not chain.hook:
                continue
            spec = _HOOK_RE.match(chain.hook)
            if spec is None:
                raise TraceError(f"unknown base-chain spec of {chain.name}: {chain.hook!r}")
            entry = (_priority(spec.group("prio")), chain.name, spec.group("policy") or "accept")
            self._hooks.setdefault(spec.group("hook"), []).append(entry)
        for entries in self._hooks.values():
            entries.sort()

    def chain_owner(self, chain: str) -> str:
        """The service port owning ``chain`` (ClientIP affinity chains), else ``node``."""
        return self._owned.get(chain, "node")

    # ---- entry ------------------------------------------------------------------------------

    def trace(self, packet: Packet) -> NftTrace:
        """Every path of ``packet``'s first packet; raises TraceError."""
        try:
            src = ipaddress.ip_address(packet.src)
            dst = ipaddress.ip_address(packet.dst)
        except ValueError as exc:
            raise TraceError(str(exc)) from None
        if src.version != self.version or dst.version != self.version:
            raise TraceError(
                f"an IPv{dst.version} packet does not pass the {self.rendered.table} table"
            )
        st = _St(
            src=src, dst=dst, proto=packet.protocol.lower(), dport=packet.dport, sport=packet.sport
        )
        if packet.origin is Origin.HOST:
            paths = self._stages(["output", "postrouting"], st, "local-out")
        else:
            paths = self._stages(["prerouting"], st, "route")
        merged: dict[NftPath, float] = {}
        for p in paths:
            key = replace(p, probability=0.0)
            merged[key] = merged.get(key, 0.0) + p.probability
        out = tuple(replace(p, probability=prob) for p, prob in merged.items())
        return NftTrace(packet=packet, paths=out, local_ips=self.local_ips)

    def is_local(self, addr: IPAddress) -> bool:
        if addr in self.local_ips:
            return True
        return addr in (_LOOPBACK4 if addr.version == 4 else _LOOPBACK6)

    def _stages(self, hooks: Sequence[str], st: _St, then: str) -> list[NftPath]:
        if not hooks:
            return self._after(then, st)
        out: list[NftPath] = []
        for kind, s in self._hook(hooks[0], st):
            if kind in ("drop", "reject"):
                out.append(s.path(kind.upper()))
            else:
                out.extend(self._stages(hooks[1:], s, then))
        return out

    def _after(self, then: str, st: _St) -> list[NftPath]:
        if then == "route":
            if self.is_local(st.dst):
                return self._stages(["input"], st, "done")
            return self._stages(["forward", "postrouting"], st, "done")
        if then == "local-out" and self.is_local(st.dst):
            return self._stages(["input"], st, "done")
        return [st.path("ACCEPT")]

    def _hook(self, hook: str, st: _St) -> list[_Done]:
        """Every base chain of ``hook`` in priority order; accept/drop/reject branches."""
        branches: list[_Done] = [("accept", st)]
        for _prio, chain, policy in self._hooks.get(hook, []):
            nxt: list[_Done] = []
            for kind, s in branches:
                if kind != "accept":
                    nxt.append((kind, s))
                    continue
                for done, s2 in self._chain(chain, s, 0):
                    nxt.append((policy if done == "return" else done, s2))
            branches = nxt
        return branches

    # ---- chains and rules -------------------------------------------------------------------

    def _rules(self, chain: str) -> tuple[_Rule, ...]:
        parsed = self._parsed.get(chain)
        if parsed is None:
            found = self._chains.get(chain)
            if found is None:
                raise TraceError(f"jump to missing chain {chain}")
            parsed = tuple(_Parser(rule).parse() for rule in found.rules)
            self._parsed[chain] = parsed
        return parsed

    def _chain(self, chain: str, st: _St, depth: int) -> list[_Done]:
        if depth > MAX_DEPTH:
            raise TraceError(f"chain nesting deeper than {MAX_DEPTH} at {chain}")
        rules = self._rules(chain)
        return self._from(chain, rules, 0, replace(st, chains=(*st.chains, chain)), depth)

    def _from(
        self, chain: str, rules: tuple[_Rule, ...], start: int, st: _St, depth: int
    ) -> list[_Done]:
        for idx in range(start, len(rules)):
            results = self._rule(chain, rules[idx], st, depth)
            if len(results) == 1 and results[0][0] == "next":
                st = results[0][1]
                continue
            out: list[_Done] = []
            for kind, s in results:
                if kind == "next":
                    out.extend(self._from(chain, rules, idx + 1, s, depth))
                else:
                    out.append((kind, s))
            return out
        return [("return", st)]

    def _rule(self, chain: str, rule: _Rule, st: _St, depth: int) -> list[_Done]:
        live = [_Eval(st)]
        done: list[_Done] = []
        for term in rule.terms:
            nxt: list[_Eval] = []
            for ev in live:
                for ok, branch, verdict in self._term(term, ev):
                    if not ok:
                        step = self._step(chain, rule, branch, False, "no match")
                        done.append(("next", step))
                    elif verdict is None:
                        nxt.append(branch)
                    else:
                        done.extend(self._verdict(chain, rule, branch, verdict, depth))
            live = nxt
        for ev in live:  # matched, statements only
            done.append(("next", self._step(chain, rule, ev, True, "continue")))
        return done

    def _step(self, chain: str, rule: _Rule, ev: _Eval, matched: bool, verdict: str) -> _St:
        detail = "; ".join(ev.notes) or ("always" if matched else "")
        owner = ev.owner or self._owned.get(chain, "")
        step = Step(chain, rule.text, matched, detail, verdict, owner)
        return replace(ev.st, steps=(*ev.st.steps, step))

    def _verdict(self, chain: str, rule: _Rule, ev: _Eval, verdict: str, depth: int) -> list[_Done]:
        """Record the matched rule with ``verdict``, then follow it."""
        word, _, target = verdict.partition(" ")
        st = self._step(chain, rule, ev, True, target if word == "nat" else verdict)
        if word in ("accept", "drop", "reject", "return"):
            return [(word, st)]
        if word == "nat":  # dnat / masquerade: the base chain accepts
            return [("accept", st)]
        if word not in ("jump", "goto") or not target:
            raise TraceError(f"unknown verdict {verdict!r} in rule {rule.text!r}")
        out: list[_Done] = []
        for kind, s in self._chain(target, st, depth + 1):
            if kind == "return" and word == "jump":
                out.append(("next", s))
            else:
                out.append((kind, s))
        return out

    # ---- terms ------------------------------------------------------------------------------

    def _term(self, term: _Term, ev: _Eval) -> Iterator[tuple[bool, _Eval, str | None]]:
        """(matched, branch, verdict or None to go on) for each way ``term`` can evaluate."""
        st = ev.st
        if isinstance(term, _Verdict):
            yield True, ev, f"{term.kind} {term.chain}".strip()
        elif isinstance(term, _Mark):
            value = {
                "|": st.mark | term.value,
                "^": st.mark ^ term.value,
                "&": st.mark & term.value,
                "=": term.value,
            }[term.op]
            note = f"mark set 0x{value:08x}"
            yield True, ev.fork(replace(st, mark=value & 0xFFFFFFFF), note), None
        elif isinstance(term, _Masq):
            yield True, ev.fork(replace(st, masquerade=True)), "nat masquerade"
        elif isinstance(term, _Update):
            yield True, ev.fork(note=f"records {st.src} in @{term.named}"), None
        elif isinstance(term, _Dnat):
            yield from self._dnat(term, ev)
        elif isinstance(term, _VMap):
            yield from self._vmap(term, ev)
        else:
            yield from self._cmp(term, ev)

    def _values(self, sels: Sequence[_Sel], st: _St) -> Iterator[tuple[tuple[str, ...], float]]:
        """The key ``sels`` form for ``st``, once per numgen value (with its probability).

        A selector the packet lacks (``tcp dport`` of a UDP packet) yields nothing.
        """
        choices: list[list[tuple[str, float]]] = []
        for sel in sels:
            if sel.kind == "numgen":
                choices.append([(str(i), 1.0 / sel.mod) for i in range(sel.mod)])
                continue
            value = self._value(sel, st)
            if value is None:
                return
            choices.append([(value, 1.0)])
        for combo in itertools.product(*choices):
            prob = 1.0
            for _, p in combo:
                prob *= p
            yield tuple(v for v, _ in combo), prob

    def _value(self, sel: _Sel, st: _St) -> str | None:
        if sel.proto and sel.proto != st.proto:
            return None
        kind = sel.kind
        if kind == "saddr":
            return str(st.src)
        if kind == "daddr":
            return str(st.dst)
        if kind == "l4proto":
            return st.proto
        if kind == "dport":
            return str(st.dport)
        if kind == "sport":
            return str(st.sport)
        if kind == "mark":
            return str(st.mark)
        if kind == "ctstate":
            return "new"
        if kind == "ctstatus":
            return "dnat" if st.dnat else ""
        if kind in ("fib-saddr", "fib-daddr"):
            addr = st.src if kind == "fib-saddr" else st.dst
            return "local" if self.is_local(addr) else "unicast"
        raise TraceError(f"unmodelled selector {sel.text}")

    def _cmp(self, term: _Cmp, ev: _Eval) -> Iterator[tuple[bool, _Eval, str | None]]:
        keys = list(self._values(term.sels, ev.st))
        if not keys:  # a selector the packet lacks: the rule does not match
            names = " . ".join(s.text for s in term.sels)
            yield False, ev.fork(note=f"no {names} in a {ev.st.proto} packet"), None
        for parts, prob in keys:
            st = replace(ev.st, probability=ev.st.probability * prob) if prob != 1.0 else ev.st
            if term.named:
                yield from self._set_match(term, ev.fork(st), parts)
                continue
            if len(term.sels) != 1:
                raise TraceError("a concatenation compared with a single value")
            sel = term.sels[0]
            value, label, shown = parts[0], sel.text, parts[0]
            if term.mask is not None:
                value = str(int(value) & term.mask)
                label += f" & 0x{term.mask:08x} ="
                shown = f"0x{int(value):08x}"
            candidates = term.anon or (term.literal,)
            hit = any(self._equal(sel, value, c) for c in candidates)
            rhs = "{ " + ", ".join(term.anon) + " }" if term.anon else term.literal
            ranged = sel.kind in ("saddr", "daddr") and (bool(term.anon) or "/" in rhs)
            relation = ("in" if hit else "not in") if ranged else ("is" if hit else "is not")
            yield hit != term.negate, ev.fork(st, f"{label} {shown} {relation} {rhs}"), None

    def _equal(self, sel: _Sel, value: str, rhs: str) -> bool:
        if sel.kind in ("saddr", "daddr"):
            addr = ipaddress.ip_address(value)
            if "/" in rhs:
                return addr in ipaddress.ip_network(rhs, strict=False)
            return addr == ipaddress.ip_address(rhs)
        if sel.kind in ("dport", "sport", "mark", "numgen"):
            if sel.kind != "mark" and "-" in rhs:
                lo, _, hi = rhs.partition("-")
                return int(lo) <= int(value) <= int(hi)
            return int(value) == int(rhs, 0)
        if sel.kind in ("ctstate", "ctstatus"):
            return value in rhs.split(",")
        return value == rhs

    def _lookup(self, name: str, parts: Sequence[str]) -> tuple[str, str] | None:
        """The element of set or map ``name`` that ``parts`` hits: (key, value), or None."""
        if name not in self._sets:
            raise TraceError(f"lookup in a missing set @{name}")
        elements = self._elements.get(name, {})
        key = " . ".join(parts)
        if key in elements:
            return key, elements[key]
        if "interval" not in " ".join(self._sets[name].declaration):
            return None
        for element, value in elements.items():
            pieces = element.split(" . ")
            if len(pieces) == len(parts) and all(
                _part_matches(p, v) for p, v in zip(pieces, parts, strict=True)
            ):
                return element, value
        return None

    def _set_match(
        self, term: _Cmp, ev: _Eval, parts: Sequence[str]
    ) -> Iterator[tuple[bool, _Eval, str | None]]:
        shown = " . ".join(parts)
        name = term.named
        nft_set = self._sets.get(name)
        if nft_set is not None and nft_set.dynamic:
            # ClientIP affinity: the client may already be recorded (or not).
            remembered = replace(ev.st, affinity=(*ev.st.affinity, name))
            owner = self._owned.get(name, "")
            known = ev.fork(remembered, f"{shown} recorded in @{name} (client has affinity)", owner)
            new = ev.fork(note=f"{shown} not yet in @{name} (new client)", owner=owner)
            if term.negate:
                yield True, new, None
                yield False, known, None
            else:
                yield True, known, None
                yield False, new, None
            return
        found = self._lookup(name, parts)
        owner = self._element_owner.get((name, found[0]), "") if found else ""
        where = f"{shown} {'in' if found else 'not in'} @{name}"
        if found and found[0] != shown:
            where += f" (element {found[0]})"
        st = replace(ev.st, service=owner) if owner and not ev.st.service else ev.st
        yield (found is not None) != term.negate, ev.fork(st, where, owner), None

    def _vmap(self, term: _VMap, ev: _Eval) -> Iterator[tuple[bool, _Eval, str | None]]:
        anon = dict(term.anon)
        any_value = False
        for parts, prob in self._values(term.sels, ev.st):
            any_value = True
            st = replace(ev.st, probability=ev.st.probability * prob) if prob != 1.0 else ev.st
            shown = " . ".join(parts)
            if term.named:
                found = self._lookup(term.named, parts)
                if found is None:
                    yield False, ev.fork(st, f"{shown} not in @{term.named}"), None
                    continue
                owner = self._element_owner.get((term.named, found[0]), "")
                if owner and not st.service:
                    st = replace(st, service=owner)
                note = f"{shown} in @{term.named}"
                yield True, ev.fork(st, note, owner), found[1]
            else:
                verdict = anon.get(shown)
                if verdict is None:
                    yield False, ev.fork(st, f"{shown} not in the verdict map"), None
                    continue
                note = f"{' . '.join(s.text for s in term.sels)} = {shown}"
                if prob != 1.0:
                    note += f" (p={prob:.4g})"
                yield True, ev.fork(st, note), verdict
        if not any_value:
            yield False, ev.fork(note=f"no key for a {ev.st.proto} packet"), None

    def _dnat(self, term: _Dnat, ev: _Eval) -> Iterator[tuple[bool, _Eval, str | None]]:
        if term.literal:
            host, port = _split_hostport(term.literal)
            yield True, self._translated(ev, ev.st, host, port, ""), f"nat dnat to {term.literal}"
            return
        for parts, prob in self._values(term.sels, ev.st):
            st = replace(ev.st, probability=ev.st.probability * prob) if prob != 1.0 else ev.st
            shown = " . ".join(parts)
            found = self._lookup(term.named, parts)
            if found is None:
                yield False, ev.fork(st, f"{shown} not in @{term.named}: not translated"), None
                continue
            host, _, port_text = found[1].partition(" . ")
            slot = parts[-1] if term.sels[-1].kind == "numgen" else ""
            n = term.sels[-1].mod
            owner = self._element_owner.get((term.named, found[0]), "")
            note = f"{shown} in @{term.named}"
            if slot:
                note += f" (slot {slot} of {n}, p={prob:.4g})"
            target = _host_port(ipaddress.ip_address(host), int(port_text))
            yield (
                True,
                self._translated(ev.fork(owner=owner), st, host, int(port_text), note),
                f"nat dnat to {target}",
            )

    def _translated(self, ev: _Eval, st: _St, host: str, port: int, note: str) -> _Eval:
        addr = ipaddress.ip_address(host)
        new = replace(st, dst=addr, dport=port, endpoint=_host_port(addr, port), dnat=True)
        return ev.fork(new, note)


def _part_matches(element: str, value: str) -> bool:
    """One part of an interval-set element against the packet's value."""
    if "/" in element:
        try:
            return ipaddress.ip_address(value) in ipaddress.ip_network(element, strict=False)
        except ValueError:
            return False
    return element == value


def trace_packet(
    rendered: RenderedNft, packet: Packet, local_ips: Iterable[IPAddress] = ()
) -> NftTrace:
    """Trace ``packet`` through ``rendered``; ``local_ips`` are the node's own addresses."""
    return NftTracer(rendered, local_ips).trace(packet)


def trace_state(
    state: ProxyState,
    packet: Packet,
    *,
    overlay: OverlayRules | None = None,
    local_ips: Iterable[IPAddress] = (),
) -> NftTrace:
    """Render ``state`` and trace ``packet``; the Node's addresses (and ``local_ips``) are local."""
    from netagent.proxy.nftables.render import render_nftables

    rendered = render_nftables(state, overlay)
    return trace_packet(rendered, packet, local_addresses(state.node, local_ips))
