"""Read ``nft list table`` text back into chains, sets and elements; compare it with a render.

Why text and not ``nft -j``: the renderer writes every rule in the form nft
prints it back, so the kernel's text can be compared with a render line by
line, and the text listing is also what an operator reads. Only netagent's
own table is ever listed, and never during an incremental sync: by
``netagent debug``, by the rate-limited drift check, and (names only, with
``-t``) by a full sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netagent.proxy.nftables.ruleset import NftSet, RenderedNft


@dataclass(slots=True)
class ListedSet:
    """A set or map as listed: declaration lines and elements (key -> value, "" for a set)."""

    kind: str
    declaration: list[str] = field(default_factory=list)
    elements: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ListedChain:
    """A chain as listed: its base-chain spec ("" for a regular chain) and its rules."""

    hook: str = ""
    rules: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ListedTable:
    """netagent's table as ``nft list table`` printed it."""

    chains: dict[str, ListedChain] = field(default_factory=dict)
    sets: dict[str, ListedSet] = field(default_factory=dict)


def _split_elements(text: str, is_map: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if is_map:
            key, _, value = item.partition(" : ")
            out[key.strip()] = value.strip()
        else:
            out[item] = ""
    return out


def parse_listing(text: str) -> ListedTable:
    """Parse one table's ``nft list table`` output (with or without ``-t``)."""
    table = ListedTable()
    current_chain: ListedChain | None = None
    current_set: ListedSet | None = None
    collecting: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if collecting is not None and current_set is not None:
            collecting.append(line)
            if line.endswith("}"):
                joined = " ".join(collecting)
                body = joined[joined.index("{") + 1 : joined.rindex("}")]
                current_set.elements = _split_elements(body, current_set.kind == "map")
                collecting = None
            continue
        if not line or line.startswith("table ") or line == "}":
            if line == "}":
                current_chain = current_set = None
            continue
        head = line.split(" ", 2)
        if len(head) == 3 and head[0] in ("chain", "set", "map") and head[2] == "{":
            if head[0] == "chain":
                current_chain = table.chains.setdefault(head[1], ListedChain())
                current_set = None
            else:
                current_set = table.sets.setdefault(head[1], ListedSet(kind=head[0]))
                current_chain = None
            continue
        if current_chain is not None:
            if line.startswith("type ") and " hook " in line and not current_chain.rules:
                current_chain.hook = line
            else:
                current_chain.rules.append(line)
        elif current_set is not None:
            if line.startswith("elements = {"):
                collecting = [line]
                if line.endswith("}"):
                    body = line[line.index("{") + 1 : line.rindex("}")]
                    current_set.elements = _split_elements(body, current_set.kind == "map")
                    collecting = None
            else:
                current_set.declaration.append(line)
    return table


def drift(listed: ListedTable | None, committed: RenderedNft) -> str:
    """Why the kernel's table differs from the committed render, or "" when it does not.

    Compares chain names and rules, set names, and the elements of every set
    that is not dynamic (the affinity sets' clients belong to the kernel).
    """
    if listed is None:
        return "netagent's table is gone"
    chains = committed.all_chains()
    missing = sorted(set(chains) - set(listed.chains))
    if missing:
        return f"chain {missing[0]} is missing"
    for name, chain in chains.items():
        if list(chain.rules) != listed.chains[name].rules:
            return f"chain {name} has other rules"
    sets: dict[str, NftSet] = committed.all_sets()
    gone = sorted(set(sets) - set(listed.sets))
    if gone:
        return f"set {gone[0]} is missing"
    wanted = committed.elements()
    for name, s in sets.items():
        if s.dynamic:
            continue
        have = listed.sets[name].elements
        want = wanted.get(name, {})
        if have != want:
            lost = len(want.keys() - have.keys())
            extra = len(have.keys() - want.keys())
            return f"set {name}: {lost} elements missing, {extra} unexpected or changed"
    return ""
