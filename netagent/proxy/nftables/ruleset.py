"""The nftables mode's vocabulary: what a render produces and what a sync commits.

Why a model of its own and not nft text: a sync must compare what it
committed with what is wanted *without reading the kernel* (listing a table
of 100,000 elements takes seconds, and kube-proxy's nftables users pay that
on every sync). So the renderer emits structured pieces that the transaction
builder can diff cheaply:

* the **skeleton**: base chains, the dispatch chains and every set and map
  declaration. It depends only on the family, the proxy config, the node and
  the overlay, never on Services; when it changes the sync is full.
* **shared chains**: the few balancing chains (``cluster-3``, ...) whose only
  parameter is an endpoint count. Services reference them by name, and a
  chain exists while some service references it.
* one **fragment per service port**: its map and set elements, grouped by
  frontend, plus the chains and sets of its own that only ClientIP affinity
  needs. Fragments are memoised per service port, so a sync touches only the
  service ports that changed.

Every text here is in the form ``nft list table`` prints it back, so the
kernel's listing can be compared line by line with a render.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from netagent.model import IPFamily, ServicePortName

#: netagent's table name in both families.
TABLE_NAME = "netagent"


def table_family(family: IPFamily) -> str:
    """The nft family keyword of ``family``'s table (``ip`` or ``ip6``)."""
    return "ip" if family is IPFamily.IPV4 else "ip6"


def table_spec(family: IPFamily) -> str:
    """``ip netagent`` or ``ip6 netagent``, as nft commands name the table."""
    return f"{table_family(family)} {TABLE_NAME}"


@dataclass(frozen=True, slots=True)
class NftSet:
    """A set or map declaration.

    Attributes:
        name: The set's name in netagent's table.
        declaration: Its lines as ``nft list`` prints them (``type ...``,
            ``flags ...``, ``timeout ...``).
        is_map: True for a map (elements carry a value).
        dynamic: Its elements belong to the kernel (ClientIP affinity records
            clients as they arrive): a sync never flushes, diffs or lists them.
    """

    name: str
    declaration: tuple[str, ...]
    is_map: bool = False
    dynamic: bool = False

    @property
    def keyword(self) -> str:
        """``set`` or ``map``."""
        return "map" if self.is_map else "set"


@dataclass(frozen=True, slots=True)
class NftChain:
    """A chain: its base-chain spec (empty for a regular chain) and its rules, in order."""

    name: str
    rules: tuple[str, ...] = ()
    hook: str = ""


#: One element: (set name, key, value); the value is "" for a set.
Element = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Frontend:
    """One address (or node port) of a service port, and every element it owns.

    Attributes:
        claim: What it takes for itself, unique in the table: ``10.96.0.10 .
            tcp . 80`` for an address, ``node port tcp . 30080`` for a node
            port. Two service ports claiming the same frontend (an external IP
            given to two Services) cannot both be programmed; the first in
            name order keeps it.
        kind: ``cluster IP``, ``external IP``, ``load balancer IP`` or ``node port``.
        verdict: What the dispatch does with new connections (``goto
            cluster-3``, ``goto reject-chain``, ``drop``), for people.
        elements: The map and set elements this frontend owns.
        endpoints: The endpoints its traffic may reach, for people.
    """

    claim: str
    kind: str
    verdict: str
    elements: tuple[Element, ...]
    endpoints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceFragment:
    """One service port's share of the table.

    Attributes:
        owner: The service port.
        frontends: Its frontends, each with the elements it owns.
        shared_elements: Set elements other service ports may hold too (a
            cluster IP shared by the ports of one Service, a hairpin pair):
            counted, and removed when no fragment holds them any more.
        shared_chains: Names of the shared balancing chains it jumps to.
        chains: Chains of its own (ClientIP affinity only).
        sets: Sets of its own (ClientIP affinity only, dynamic).
        slots: For each endpoint list it balances over (``cluster``, ``any``,
            ``local``), the endpoints in slot order. The next render keeps
            each remaining endpoint in its slot, so one endpoint change
            rewrites a few elements, not the whole list.
    """

    owner: ServicePortName
    frontends: tuple[Frontend, ...] = ()
    shared_elements: tuple[tuple[str, str], ...] = ()
    shared_chains: tuple[str, ...] = ()
    chains: tuple[NftChain, ...] = ()
    sets: tuple[NftSet, ...] = ()
    slots: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def slot_list(self, name: str) -> tuple[str, ...]:
        """The endpoints of list ``name`` in slot order (empty when it has none)."""
        for list_name, endpoints in self.slots:
            if list_name == name:
                return endpoints
        return ()


@dataclass(frozen=True, slots=True)
class Skeleton:
    """Everything in the table that does not depend on Services."""

    sets: tuple[NftSet, ...]
    chains: tuple[NftChain, ...]


@dataclass(frozen=True, slots=True)
class RenderedNft:
    """A complete render of one family's table.

    ``shared_chains`` holds exactly the shared chains some fragment
    references; ``fragments`` is keyed and ordered by service port name.
    """

    family: IPFamily
    skeleton: Skeleton
    shared_chains: Mapping[str, NftChain]
    fragments: Mapping[ServicePortName, ServiceFragment]
    conflicts: tuple[str, ...] = field(default=())

    @property
    def table(self) -> str:
        """``ip netagent`` or ``ip6 netagent``."""
        return table_spec(self.family)

    def in_name_order(self) -> list[ServiceFragment]:
        """The fragments sorted by service port name (renders keep the input's order)."""
        return [self.fragments[name] for name in sorted(self.fragments)]

    def all_sets(self) -> dict[str, NftSet]:
        """Every set and map, skeleton first."""
        sets = {s.name: s for s in self.skeleton.sets}
        for fragment in self.in_name_order():
            for s in fragment.sets:
                sets[s.name] = s
        return sets

    def all_chains(self) -> dict[str, NftChain]:
        """Every chain: skeleton, shared, then the fragments' own."""
        chains = {c.name: c for c in self.skeleton.chains}
        chains.update(self.shared_chains)
        for fragment in self.in_name_order():
            for c in fragment.chains:
                chains[c.name] = c
        return chains

    def iter_elements(self) -> Iterator[Element]:
        """Every element once (shared set elements deduplicated), in render order."""
        seen: set[tuple[str, str]] = set()
        for fragment in self.in_name_order():
            for frontend in fragment.frontends:
                yield from frontend.elements
            for set_name, key in fragment.shared_elements:
                if (set_name, key) not in seen:
                    seen.add((set_name, key))
                    yield (set_name, key, "")

    def elements(self) -> dict[str, dict[str, str]]:
        """Set name -> key -> value, for every set with elements."""
        out: dict[str, dict[str, str]] = {}
        for set_name, key, value in self.iter_elements():
            out.setdefault(set_name, {})[key] = value
        return out

    def counts(self) -> dict[str, int]:
        """Chains, rules and elements, for ``sync_proxy_rules_nftables_total``."""
        chains = self.all_chains()
        return {
            "chains": len(chains),
            "rules": sum(len(c.rules) for c in chains.values()),
            "elements": sum(1 for _ in self.iter_elements()),
        }
