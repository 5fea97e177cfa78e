"""nft transactions: replace netagent's whole table, or send only what changed since the last sync.

Why two kinds, and why neither lists the table's elements:

* An **incremental** transaction is computed from what netagent committed
  (kept in memory as :class:`Committed`) and the new render. Fragments are
  memoised per service port, so unchanged service ports are the *same
  object* in both renders and are skipped by identity; a one-endpoint change
  at 10,000 services therefore costs a few dictionary lookups and a
  transaction of a few element lines. The kernel is never read (kube-proxy's
  nftables mode lists the whole table on every sync, which takes minutes at
  tens of thousands of services).
* A **full** transaction rewrites everything netagent owns in one atomic
  ``nft -f``: the table is flushed (rules) and every set and map of ours is
  flushed and refilled, and chains or sets that are no longer wanted are
  deleted. It needs the *names* of what exists (``nft -t list table``, which
  prints no elements, so it costs the same at 10 or 100,000 services). The
  dynamic ClientIP-affinity sets are declared again but not flushed, so a
  full sync does not forget which client goes where. If that transaction is
  refused (a set of ours with another type, left by an older version), the
  fallback deletes and re-creates the whole table in one transaction.

Order inside an incremental transaction, so that every reference resolves:
declare new sets and chains; flush chains that change or go; delete
elements; add rules; add elements; delete chains and sets that go.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from netagent.model import ServicePortName
from netagent.proxy.nftables.ruleset import (
    NftChain,
    NftSet,
    RenderedNft,
    ServiceFragment,
)

#: Elements per ``add element`` command: nft parses one huge line as well,
#: but its error messages then point into a line of megabytes.
CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Transaction:
    """One nft transaction and what it does, in counts."""

    payload: str
    full: bool
    objects_written: int
    objects_deleted: int
    #: Shared set elements' reference counts after this transaction (see :class:`Committed`).
    refs: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: Chains, rules and elements in the table after this transaction.
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing to send: the kernel already holds the render."""
        return not self.payload


@dataclass(frozen=True, slots=True)
class Committed:
    """What the last successful transaction left in the kernel.

    ``refs`` counts, for each shared set element (a cluster IP, a hairpin
    pair), how many fragments hold it, so an incremental sync removes it
    only when the last one lets go.
    """

    rendered: RenderedNft
    refs: Mapping[tuple[str, str], int]
    counts: Mapping[str, int] = field(default_factory=dict)


def _elements_text(table: str, command: str, set_name: str, items: list[str]) -> Iterator[str]:
    for i in range(0, len(items), CHUNK):
        yield f"{command} element {table} {set_name} {{ {', '.join(items[i : i + CHUNK])} }}"


def _element_item(key: str, value: str) -> str:
    return f"{key} : {value}" if value else key


def _set_decl(table: str, s: NftSet) -> str:
    return f"add {s.keyword} {table} {s.name} {{ {'; '.join(s.declaration)}; }}"


def _chain_decl(table: str, c: NftChain) -> str:
    return f"add chain {table} {c.name} {{ {c.hook} }}" if c.hook else f"add chain {table} {c.name}"


def _rules(table: str, c: NftChain) -> Iterator[str]:
    for rule in c.rules:
        yield f"add rule {table} {c.name} {rule}"


def shared_refs(rendered: RenderedNft) -> dict[tuple[str, str], int]:
    """Reference counts of every shared set element of ``rendered``."""
    refs: dict[tuple[str, str], int] = {}
    for fragment in rendered.fragments.values():
        for item in fragment.shared_elements:
            refs[item] = refs.get(item, 0) + 1
    return refs


_NAMED = re.compile(r"^\t(chain|set|map) (\S+) \{")


def existing_names(listing: str) -> dict[str, str]:
    """Name -> ``chain``/``set``/``map`` of the objects in a ``nft -t list table`` text."""
    names: dict[str, str] = {}
    for line in listing.splitlines():
        match = _NAMED.match(line)
        if match:
            names[match.group(2)] = match.group(1)
    return names


def full_transaction(
    rendered: RenderedNft, existing: Mapping[str, str] | None = None
) -> Transaction:
    """Replace netagent's table with ``rendered`` in one transaction.

    ``existing`` names what the table holds now (:func:`existing_names`);
    None means "re-create the table from nothing", which is also the
    fallback when keeping it is refused.
    """
    table = rendered.table
    sets = rendered.all_sets()
    chains = rendered.all_chains()
    lines = [f"add table {table}"]
    deleted = 0
    if existing is None:
        lines += [f"delete table {table}", f"add table {table}"]
    else:
        lines.append(f"flush table {table}")
        for name, kind in sorted(existing.items()):
            if kind == "chain":
                continue
            wanted = sets.get(name)
            if wanted is None or not wanted.dynamic:
                lines.append(f"flush {kind} {table} {name}")
        for name, kind in sorted(existing.items()):
            if kind == "chain" and name not in chains:
                lines.append(f"delete chain {table} {name}")
                deleted += 1
        for name, kind in sorted(existing.items()):
            if kind != "chain" and name not in sets:
                lines.append(f"delete {kind} {table} {name}")
                deleted += 1
    lines += [_set_decl(table, s) for s in sets.values()]
    lines += [_chain_decl(table, c) for c in chains.values()]
    for c in chains.values():
        lines.extend(_rules(table, c))
    grouped: dict[str, list[str]] = {}
    count = 0
    for set_name, key, value in rendered.iter_elements():
        grouped.setdefault(set_name, []).append(_element_item(key, value))
        count += 1
    for set_name in sorted(grouped):
        lines.extend(_elements_text(table, "add", set_name, grouped[set_name]))
    return Transaction(
        payload="\n".join(lines) + "\n",
        full=True,
        objects_written=len(sets) + len(chains) + count,
        objects_deleted=deleted,
        refs=shared_refs(rendered),
        counts={
            "chains": len(chains),
            "rules": sum(len(c.rules) for c in chains.values()),
            "elements": count,
        },
    )


def _frontend_elements(fragment: ServiceFragment | None) -> dict[tuple[str, str], str]:
    if fragment is None:
        return {}
    return {(s, k): v for f in fragment.frontends for s, k, v in f.elements}


def _changed(
    old: Mapping[ServicePortName, ServiceFragment], new: Mapping[ServicePortName, ServiceFragment]
) -> Iterator[tuple[ServiceFragment | None, ServiceFragment | None]]:
    found = 0
    for name, fragment in new.items():
        before = old.get(name)
        if before is not fragment:
            if before is not None:
                found += 1
            yield before, fragment
        else:
            found += 1
    if found < len(old):
        for name in old.keys() - new.keys():
            yield old[name], None


def incremental_transaction(committed: Committed, new: RenderedNft) -> Transaction | None:
    """Only the changes from ``committed`` to ``new``; None when they need a full sync.

    A full sync is needed when the skeleton changed (config, node or
    overlay), or when the set of conflicting frontends changed (a frontend
    released by one service port may now belong to another, which only a
    render in name order decides).
    """
    old = committed.rendered
    if old.family is not new.family:
        raise ValueError("a transaction cannot change the address family")
    if old.skeleton is not new.skeleton and old.skeleton != new.skeleton:
        return None
    if old.conflicts != new.conflicts:
        return None
    table = new.table

    delete_elements: dict[str, list[str]] = {}
    add_elements: dict[str, list[str]] = {}
    ref_delta: dict[tuple[str, str], int] = {}
    old_chains: dict[str, NftChain] = {}
    new_chains: dict[str, NftChain] = {}
    old_sets: dict[str, NftSet] = {}
    new_sets: dict[str, NftSet] = {}

    for before, after in _changed(old.fragments, new.fragments):
        was = _frontend_elements(before)
        now = _frontend_elements(after)
        for (set_name, key), value in was.items():
            if now.get((set_name, key)) != value:
                delete_elements.setdefault(set_name, []).append(key)
        for (set_name, key), value in now.items():
            if was.get((set_name, key)) != value:
                add_elements.setdefault(set_name, []).append(_element_item(key, value))
        for item in before.shared_elements if before else ():
            ref_delta[item] = ref_delta.get(item, 0) - 1
        for item in after.shared_elements if after else ():
            ref_delta[item] = ref_delta.get(item, 0) + 1
        for c in before.chains if before else ():
            old_chains[c.name] = c
        for c in after.chains if after else ():
            new_chains[c.name] = c
        for s in before.sets if before else ():
            old_sets[s.name] = s
        for s in after.sets if after else ():
            new_sets[s.name] = s

    refs = dict(committed.refs)
    for item, delta in sorted(ref_delta.items()):
        if not delta:
            continue
        before_count = refs.get(item, 0)
        after_count = before_count + delta
        set_name, key = item
        if before_count == 0 and after_count > 0:
            add_elements.setdefault(set_name, []).append(key)
        elif before_count > 0 and after_count <= 0:
            delete_elements.setdefault(set_name, []).append(key)
        if after_count > 0:
            refs[item] = after_count
        else:
            refs.pop(item, None)

    # Shared chains come and go with the fragments that reference them.
    for name, chain in old.shared_chains.items():
        old_chains.setdefault(name, chain)
    for name, chain in new.shared_chains.items():
        new_chains.setdefault(name, chain)
    # A sticky chain moved between two changed fragments is still wanted.
    gone_chains = [n for n in old_chains if n not in new_chains and n not in new.shared_chains]
    added_chains = [c for n, c in new_chains.items() if n not in old_chains]
    changed_chains = [c for n, c in new_chains.items() if n in old_chains and old_chains[n] != c]
    gone_sets = [n for n in old_sets if n not in new_sets]
    declared_sets = [s for n, s in new_sets.items() if old_sets.get(n) != s]

    lines: list[str] = []
    lines += [_set_decl(table, s) for s in declared_sets]
    lines += [_chain_decl(table, c) for c in added_chains]
    lines += [f"flush chain {table} {c.name}" for c in changed_chains]
    lines += [f"flush chain {table} {n}" for n in gone_chains]
    for set_name in sorted(delete_elements):
        lines.extend(_elements_text(table, "delete", set_name, delete_elements[set_name]))
    for c in (*added_chains, *changed_chains):
        lines.extend(_rules(table, c))
    for set_name in sorted(add_elements):
        lines.extend(_elements_text(table, "add", set_name, add_elements[set_name]))
    lines += [f"delete chain {table} {n}" for n in gone_chains]
    lines += [f"delete set {table} {n}" for n in gone_sets]
    written = (
        sum(len(v) for v in add_elements.values())
        + len(added_chains)
        + len(changed_chains)
        + len(declared_sets)
    )
    deleted = sum(len(v) for v in delete_elements.values()) + len(gone_chains) + len(gone_sets)
    previous_counts = committed.counts
    rules = (
        sum(len(c.rules) for c in added_chains)
        + sum(len(c.rules) - len(old_chains[c.name].rules) for c in changed_chains)
        - sum(len(old_chains[n].rules) for n in gone_chains)
    )
    counts = {
        "chains": previous_counts.get("chains", 0) + len(added_chains) - len(gone_chains),
        "rules": previous_counts.get("rules", 0) + rules,
        "elements": previous_counts.get("elements", 0)
        + sum(len(v) for v in add_elements.values())
        - sum(len(v) for v in delete_elements.values()),
    }
    return Transaction(
        payload="\n".join(lines) + "\n" if lines else "",
        full=False,
        objects_written=written,
        objects_deleted=deleted,
        refs=refs,
        counts=counts,
    )
