"""A stateful, in-memory nft that refuses what the kernel refuses, for root-less proxier tests.

Why a fake and not a mock: the proxier's correctness lives in nft semantics
it relies on: an element re-added with a different value is refused, a
chain still named by a map element cannot be deleted, ``flush table``
removes rules but keeps set and map elements, one refused command discards
the whole transaction. A mock that records payloads would pass whatever the
proxier sends; this fake applies each payload to a model of the table and
fails where nft fails, with nft's ``/dev/stdin:LINE:...: Error:`` message,
so proxier tests prove something without root. The lab test
``tests/lab/test_nftables_runner_kernel.py`` runs the same transactions
through the real kernel and this fake and checks they agree.

The grammar is what netagent's renderer emits, one command per line:
``add|delete|flush table``, ``table F T { set|map|chain blocks }``,
``add|flush|delete chain`` (optionally with a base-chain spec),
``add|flush|delete set|map``, ``add|delete element`` and ``add rule``.
Rules are stored as written (whitespace-normalised); the fake understands
only what they reference (``@set``, ``jump``/``goto`` chain), not what they
match. Semantics modelled, as checked on nftables 1.0.6:

- ``add`` of an existing table, chain, set or map succeeds; re-declaring a
  set with another key type or other flags, a base-chain spec on a regular
  chain, or another hook/priority on a base chain is refused; the timeout,
  size and a base chain's policy are updated;
- an element re-added with the same value is fine, with another value it is
  refused (also within one command); deleting an absent element is refused;
- ``flush set`` of a map (and ``flush map`` of a set) is refused, ``delete``
  accepts either;
- a chain referenced by a rule (also in an anonymous ``vmap { }``) or a map
  element, and a set referenced by a rule, cannot be deleted;
- commands apply in order, so a command sees what earlier ones did (a jump
  to a chain created further down is refused); a ``table { }`` block is
  applied as nft expands it: its chains, then its sets and maps, then the
  chains' rules.

Elements are keyed by their whitespace-normalised text. In a set with
``flags interval``, an element whose address intervals overlap an existing
element's without being equal to it is refused as nft 1.0.6 refuses it:
``interval overlaps with an existing one`` in a plain interval set,
``File exists`` in a concatenated one (an identical element again, or an
adjacent one, is accepted). The kernel's own normalisation (interval
merging, ``0x4000`` -> ``0x00004000``, priority names, hash order of
elements) is not modelled.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import re
from dataclasses import dataclass, field

from netagent.proxy.nftables.runner import NftError, nft_error

FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
DEFAULT_TABLE = "ip netagent"

#: Named base-chain priorities (ip, ip6 and inet families).
PRIORITY_NAMES = {
    "raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100,
}  # fmt: skip

#: Key types nft prints five elements per line (every other key type: two;
#: concatenations: one).
_NARROW_TYPES = frozenset({"inet_service", "inet_proto", "mark", "integer"})
#: ``typeof`` expressions whose type is one of the narrow types, by last word.
_NARROW_TYPEOF = frozenset({"dport", "sport", "mark", "l4proto", "protocol", "nexthdr"})
#: Order nft prints set declarations in; others follow in the order given.
_DECL_ORDER = ("type", "typeof", "policy", "size", "flags", "timeout", "gc-interval")
_ELEMENT_INDENT = ",\n\t\t\t     "
#: Commands that take a ``{ }`` part: (verb, object) -> whether braces may be / must be there.
_BRACES: dict[tuple[str, str], tuple[bool, ...]] = {
    ("add", "chain"): (False, True),
    ("add", "set"): (True,),
    ("add", "map"): (True,),
    ("add", "element"): (True,),
    ("delete", "element"): (True,),
}

_SET_REF_RE = re.compile(r"@([A-Za-z0-9_./-]+)")
_CHAIN_REF_RE = re.compile(r'\b(?:jump|goto)\s+"?([A-Za-z0-9_./-]+)')
_COMMENT_RE = re.compile(r'\bcomment\s+"[^"]*"')
_KEY_VALUE_RE = re.compile(r"\s+:\s+|(?<=[^:\s]):\s+")
_SPEC_RE = re.compile(r"^type (\S+) hook (\S+)(?: device (\S+))? priority (.+)$")
_PRIORITY_RE = re.compile(r"^(?P<name>[a-z]+)?\s*(?:(?P<sign>[+-])?\s*(?P<num>\d+))?$")

ENOENT = "No such file or directory"
EEXIST = "File exists"
OVERLAP = "interval overlaps with an existing one"
EBUSY = "Device or resource busy"


def _kernel(errno_text: str) -> str:
    """A message as nft prints it for an error the kernel returned."""
    return f"Could not process rule: {errno_text}"


class _Refused(Exception):
    """A command nft would refuse; ``line`` is the 1-based payload line it starts on."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class _Set:
    kind: str  # "set" or "map"
    decl: dict[str, str]  # keyword -> value, e.g. {"type": "ipv4_addr", "flags": "interval"}
    elements: dict[str, str] = field(default_factory=dict)  # key -> value ("" in a set)


@dataclass(frozen=True)
class _Spec:
    type: str
    hook: str
    priority: str  # as written; compared by value
    device: str | None = None


@dataclass
class _Chain:
    spec: _Spec | None = None
    policy: str | None = None  # base chains only
    rules: list[str] = field(default_factory=list)


@dataclass
class _Table:
    handle: int
    sets: dict[str, _Set] = field(default_factory=dict)
    chains: dict[str, _Chain] = field(default_factory=dict)


_Item = tuple[int, str]  # (payload line, text)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _split(text: str, line: int, seps: str) -> list[_Item]:
    """Cut ``text`` at ``seps`` outside braces and quotes, dropping ``#`` comments.

    Returns each non-empty piece, stripped, with the payload line it starts on
    (``line`` is the line ``text`` starts on). Unbalanced braces are refused.
    """
    items: list[_Item] = []
    buf: list[str] = []
    start: int | None = None
    depth, quoted, comment = 0, False, False

    def flush() -> None:
        nonlocal start
        piece = "".join(buf).strip()
        if piece and start is not None:
            items.append((start, piece))
        buf.clear()
        start = None

    for ch in text:
        if comment and ch != "\n":
            continue
        comment = False
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            if ch == "#":
                comment = True
                continue
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth < 0:
                raise _Refused(line, "syntax error, unexpected '}'")
            if depth == 0 and ch in seps:
                flush()
                line += ch == "\n"
                continue
        if start is None and not ch.isspace():
            start = line
        buf.append(ch)
        line += ch == "\n"
    if depth != 0:
        raise _Refused(start or line, "syntax error, unbalanced '{'")
    flush()
    return items


def _braced(item: _Item) -> tuple[str, _Item]:
    """``head { body }`` -> (head, (line of body, body)); refused when it has no braces."""
    line, text = item
    if not text.endswith("}") or "{" not in text:
        raise _Refused(line, f"syntax error, expected '{{ ... }}' in {_norm(text)[:60]!r}")
    cut = text.index("{")
    return text[:cut].strip(), (line + text[:cut].count("\n"), text[cut + 1 : -1])


def _table_key(words: list[str], line: int) -> tuple[str, list[str]]:
    """``[FAMILY] TABLE rest...`` -> ("FAMILY TABLE", rest); the family defaults to ip."""
    family = "ip"
    if words and words[0] in FAMILIES:
        family, words = words[0], words[1:]
    if not words:
        raise _Refused(line, "syntax error, table name expected")
    return f"{family} {words[0]}", words[1:]


@functools.lru_cache(maxsize=1 << 16)
def _references(rule: str) -> tuple[frozenset[str], frozenset[str]]:
    """(sets, chains) a rule or a verdict names; comments do not count.

    Cached: deleting a chain scans every rule and map element of the table.
    """
    text = _COMMENT_RE.sub("", rule)
    return frozenset(_SET_REF_RE.findall(text)), frozenset(_CHAIN_REF_RE.findall(text))


def _priority(text: str, line: int) -> int:
    match = _PRIORITY_RE.match(text.strip())
    name = match.group("name") if match else None
    if (
        match is None
        or (name is None and match.group("num") is None)
        or (name is not None and name not in PRIORITY_NAMES)
    ):
        raise _Refused(line, f"syntax error, bad priority {text!r}")
    value = PRIORITY_NAMES[name] if name else 0
    number = int(match.group("num") or 0)
    return value - number if match.group("sign") == "-" else value + number


def _one_name(rest: list[str], line: int, what: str) -> str:
    if len(rest) != 1:
        raise _Refused(line, f"syntax error, {what} name expected")
    return rest[0].strip('"')


class _Transaction:
    """One payload applied, in order, to a private copy of the tables."""

    def __init__(self, tables: dict[str, _Table], next_handle: int) -> None:
        self.tables = copy.deepcopy(tables)
        self.next_handle = next_handle

    # --- commands ----------------------------------------------------------------------

    def apply(self, payload: str) -> None:
        for item in _split(payload, 1, "\n;"):
            line, text = item
            words = text.split()
            if words[0] == "table":
                head, body = _braced(item)
                key, rest = _table_key(head.split()[1:], line)
                if rest:
                    raise _Refused(line, "syntax error, '{' expected after the table name")
                self._add_table(key)
                self._table_block(key, body)
            elif words[0] in ("add", "delete", "flush") and len(words) > 1:
                self._command(words[0], words[1], item)
            else:
                raise _Refused(line, f"syntax error, unexpected {words[0]!r}")

    def _command(self, verb: str, what: str, item: _Item) -> None:
        line, text = item
        if (verb, what) == ("add", "rule"):
            key, rest = _table_key(text.split()[2:], line)
            if not rest:
                raise _Refused(line, "syntax error, chain name expected")
            self._add_rule(self._table(key, line), rest[0].strip('"'), " ".join(rest[1:]), line)
            return
        braced = "{" in text
        head, body = _braced(item) if braced else (text, (line, ""))
        key, rest = _table_key(head.split()[2:], line)
        if braced not in _BRACES.get((verb, what), (False,)):
            raise _Refused(line, f"syntax error, unexpected '{verb} {what}'")
        if what == "table":
            if rest:
                raise _Refused(line, "syntax error, one table name expected")
            {"add": self._add_table, "delete": self._delete_table, "flush": self._flush_table}[
                verb
            ](key, line)
            return
        table = self._table(key, line)
        name = _one_name(rest, line, what)
        if what == "chain":
            spec, policy, rules = self._chain_body(body)
            if rules:
                raise _Refused(rules[0][0], "syntax error, rules are added with 'add rule'")
            if verb == "add":
                self._add_chain(table, name, spec, policy, line)
            elif verb == "flush":
                self._chain(table, name, line).rules.clear()
            else:
                self._delete_chain(table, name, line)
        elif what in ("set", "map"):
            if verb == "add":
                self._add_set(table, what, name, body, line)
            elif verb == "flush":
                found = table.sets.get(name)
                if found is None or found.kind != what:
                    raise _Refused(line, ENOENT)
                found.elements.clear()
            else:
                self._delete_set(table, name, line)
        elif what == "element" and verb in ("add", "delete"):
            items = _split(body[1], body[0], ",")
            if verb == "add":
                self._add_elements(table, name, items, line)
            else:
                self._delete_elements(table, name, items, line)
        else:
            raise _Refused(line, f"syntax error, unexpected '{verb} {what}'")

    def _table_block(self, key: str, body: _Item) -> None:
        """A ``table F T { ... }`` block, in nft's order: chains, then sets, then rules.

        nft expands a block into commands that way, so within one block a rule
        may name a set declared below it and a map element a chain below it.
        """
        table = self.tables[key]
        sets: list[tuple[str, str, _Item, int]] = []
        rules: list[tuple[str, _Item]] = []
        for item in _split(body[1], body[0], "\n;"):
            head, inner = _braced(item)
            words = head.split()
            if len(words) != 2 or words[0] not in ("set", "map", "chain"):
                raise _Refused(item[0], f"syntax error, unexpected {head!r}")
            name = words[1].strip('"')
            if words[0] == "chain":
                spec, policy, chain_rules = self._chain_body(inner)
                self._add_chain(table, name, spec, policy, item[0])
                rules += [(name, rule) for rule in chain_rules]
            else:
                sets.append((words[0], name, inner, item[0]))
        for kind, name, inner, line in sets:
            self._add_set(table, kind, name, inner, line)
        for chain, (line, rule) in rules:
            self._add_rule(table, chain, rule, line)

    # --- tables ------------------------------------------------------------------------

    def _table(self, key: str, line: int) -> _Table:
        table = self.tables.get(key)
        if table is None:
            raise _Refused(line, ENOENT)
        return table

    def _add_table(self, key: str, line: int = 0) -> None:
        if key not in self.tables:
            self.tables[key] = _Table(handle=self.next_handle)
            self.next_handle += 1

    def _delete_table(self, key: str, line: int) -> None:
        if self.tables.pop(key, None) is None:
            raise _Refused(line, _kernel(ENOENT))

    def _flush_table(self, key: str, line: int) -> None:
        for chain in self._table(key, line).chains.values():
            chain.rules.clear()

    # --- chains and rules --------------------------------------------------------------

    def _chain(self, table: _Table, name: str, line: int) -> _Chain:
        chain = table.chains.get(name)
        if chain is None:
            raise _Refused(line, _kernel(ENOENT))
        return chain

    @staticmethod
    def _chain_body(body: _Item) -> tuple[_Spec | None, str | None, list[_Item]]:
        """(base-chain spec, policy, rules) of a chain block's body."""
        spec: _Spec | None = None
        policy: str | None = None
        rules: list[_Item] = []
        for line, text in _split(body[1], body[0], "\n;"):
            text = _norm(text)
            if text.startswith("type "):
                match = _SPEC_RE.match(text)
                if match is None:
                    raise _Refused(line, f"syntax error in base chain spec {text!r}")
                _priority(match.group(4), line)
                spec = _Spec(match.group(1), match.group(2), match.group(4), match.group(3))
            elif text.startswith("policy "):
                policy = text.split()[1]
                if policy not in ("accept", "drop"):
                    raise _Refused(line, f"syntax error, bad policy {policy!r}")
            else:
                rules.append((line, text))
        return spec, policy, rules

    def _add_chain(
        self, table: _Table, name: str, spec: _Spec | None, policy: str | None, line: int
    ) -> None:
        chain = table.chains.get(name)
        if chain is None:
            base_policy = (policy or "accept") if spec is not None else None
            table.chains[name] = _Chain(spec=spec, policy=base_policy)
            return
        if spec is None:
            return
        if chain.spec is None:
            raise _Refused(line, _kernel(EEXIST))
        old = chain.spec
        if (old.type, old.hook, old.device) != (spec.type, spec.hook, spec.device) or _priority(
            old.priority, line
        ) != _priority(spec.priority, line):
            raise _Refused(line, _kernel("Operation not supported"))
        if policy is not None:
            chain.policy = policy

    def _add_rule(self, table: _Table, chain: str, rule: str, line: int) -> None:
        target = self._chain(table, chain, line)
        sets, chains = _references(rule)
        if any(s not in table.sets for s in sets):
            raise _Refused(line, ENOENT)
        if any(c not in table.chains for c in chains):
            raise _Refused(line, _kernel(ENOENT))
        target.rules.append(_norm(rule))

    def _delete_chain(self, table: _Table, name: str, line: int) -> None:
        self._chain(table, name, line)
        jumped = any(
            name in _references(rule)[1]
            for other, chain in table.chains.items()
            if other != name
            for rule in chain.rules
        ) or any(
            name in _references(value)[1]
            for found in table.sets.values()
            for value in found.elements.values()
        )
        if jumped:
            raise _Refused(line, _kernel(EBUSY))
        del table.chains[name]

    # --- sets, maps and elements -------------------------------------------------------

    def _add_set(self, table: _Table, kind: str, name: str, body: _Item, line: int) -> None:
        decl: dict[str, str] = {}
        elements: list[_Item] = []
        for item_line, text in _split(body[1], body[0], "\n;"):
            if text.startswith("elements"):
                head, inner = _braced((item_line, text))
                if _norm(head) != "elements =":
                    raise _Refused(item_line, "syntax error, 'elements = {' expected")
                elements += _split(inner[1], inner[0], ",")
            else:
                keyword, _, value = _norm(text).partition(" ")
                decl[keyword] = value
        found = table.sets.get(name)
        if found is None:
            key_type = decl.get("type", decl.get("typeof"))
            if key_type is None:
                raise _Refused(line, f"set definition does not specify key in {kind} {name}")
            if (" : " in key_type) != (kind == "map"):
                raise _Refused(line, f"syntax error, {kind} {name} has type {key_type!r}")
            table.sets[name] = _Set(kind, decl)
        else:
            if found.kind != kind or _flags(found.decl) != _flags(decl):
                raise _Refused(line, _kernel(EEXIST))
            for keyword in ("type", "typeof"):
                old, new = found.decl.get(keyword), decl.get(keyword)
                if old is not None and new is not None and old != new:
                    raise _Refused(line, _kernel(EEXIST))
            found.decl.update(decl)
        if elements:
            self._add_elements(table, name, elements, line)

    def _add_elements(self, table: _Table, name: str, items: list[_Item], line: int) -> None:
        found = table.sets.get(name)
        if found is None:
            raise _Refused(line, ENOENT)
        for item_line, text in items:
            key, value = _key_value(text)
            if found.kind == "set" and value:
                raise _Refused(item_line, f"set {name} is not a map")
            if found.kind == "map" and not value:
                raise _Refused(item_line, _kernel("Invalid argument"))
            if any(c not in table.chains for c in _references(value)[1]):
                raise _Refused(item_line, _kernel(ENOENT))
            if found.elements.get(key, value) != value:
                raise _Refused(item_line, _kernel(EEXIST))
            if (
                key not in found.elements
                and "interval" in _flags(found.decl)
                and any(_intervals_overlap(key, other) for other in found.elements)
            ):
                # nft itself checks a plain interval set; the kernel a concatenated one.
                single = " . " not in key
                raise _Refused(item_line, OVERLAP if single else _kernel(EEXIST))
            found.elements[key] = value

    def _delete_elements(self, table: _Table, name: str, items: list[_Item], line: int) -> None:
        found = table.sets.get(name)
        if found is None:
            raise _Refused(line, ENOENT)
        for item_line, text in items:
            key, _ = _key_value(text)
            if found.elements.pop(key, None) is None:
                raise _Refused(item_line, _kernel(ENOENT))

    def _delete_set(self, table: _Table, name: str, line: int) -> None:
        if name not in table.sets:
            raise _Refused(line, _kernel(ENOENT))
        for chain in table.chains.values():
            if any(name in _references(rule)[0] for rule in chain.rules):
                raise _Refused(line, _kernel(EBUSY))
        del table.sets[name]


def _flags(decl: dict[str, str]) -> frozenset[str]:
    return frozenset(f.strip() for f in decl.get("flags", "").split(",") if f.strip())


def _key_value(text: str) -> tuple[str, str]:
    """``k : v`` -> (k, v); a set element -> (k, "")."""
    parts = _KEY_VALUE_RE.split(text, maxsplit=1)
    return _norm(parts[0]), _norm(parts[1]) if len(parts) > 1 else ""


# --- nft list table text ---------------------------------------------------------------


def _per_line(found: _Set) -> int:
    """How many elements nft prints on one line of this set's ``elements = { }``."""
    if "type" in found.decl:
        key = found.decl["type"].split(" : ")[0]
        narrow = key in _NARROW_TYPES
    else:
        key = found.decl.get("typeof", "").split(" : ")[0]
        words = key.split()
        narrow = bool(words) and (words[-1] in _NARROW_TYPEOF or words[0] == "numgen")
    if " . " in key:
        return 1
    return 5 if narrow else 2


def _render_set(kind_name: str, found: _Set, terse: bool) -> list[str]:
    lines = [f"\t{kind_name} {{"]
    order = [k for k in _DECL_ORDER if k in found.decl]
    order += [k for k in found.decl if k not in _DECL_ORDER]
    lines += [f"\t\t{k} {found.decl[k]}".rstrip() for k in order]
    if found.elements and not terse:
        shown = [k if found.kind == "set" else f"{k} : {v}" for k, v in found.elements.items()]
        n = _per_line(found)
        rows = [", ".join(shown[i : i + n]) for i in range(0, len(shown), n)]
        lines.append("\t\telements = { " + _ELEMENT_INDENT.join(rows) + " }")
    lines.append("\t}")
    return lines


def _render_chain(name: str, chain: _Chain) -> list[str]:
    lines = [f"\tchain {name} {{"]
    if chain.spec is not None:
        spec = chain.spec
        device = f" device {spec.device}" if spec.device else ""
        lines.append(
            f"\t\ttype {spec.type} hook {spec.hook}{device} priority {spec.priority}; "
            f"policy {chain.policy};"
        )
    lines += [f"\t\t{rule}" for rule in chain.rules]
    lines.append("\t}")
    return lines


def _render(key: str, table: _Table, terse: bool) -> str:
    blocks = [_render_set(f"{s.kind} {n}", s, terse) for n, s in table.sets.items()]
    blocks += [_render_chain(n, c) for n, c in table.chains.items()]
    body = "\n\n".join("\n".join(b) for b in blocks)
    return f"table {key} {{\n" + (f"{body}\n" if body else "") + "}\n"


# --- the fake --------------------------------------------------------------------------


class FakeNft:
    """An NftRunner keeping its tables in memory.

    Attributes:
        runs: Every payload passed to :meth:`run`, applied or refused.
        lists: How many times :meth:`list_table` or :meth:`table_handle` ran
            (a partial sync should do neither).
        is_available: What :meth:`available` answers.
    """

    def __init__(self) -> None:
        self._tables: dict[str, _Table] = {}
        self._next_handle = 1
        self._failures: list[str] = []
        self.runs: list[str] = []
        self.lists = 0
        self.is_available = True

    # --- NftRunner ---------------------------------------------------------------------

    def run(self, payload: str) -> None:
        """Apply ``payload`` atomically; raise NftError naming the refused line."""
        self.runs.append(payload)
        if self._failures:
            raise nft_error(f"Error: {self._failures.pop(0)}\n", payload)
        tx = _Transaction(self._tables, self._next_handle)
        try:
            tx.apply(payload)
        except _Refused as refused:
            raise self._error(payload, refused) from None
        self._tables, self._next_handle = tx.tables, tx.next_handle

    def list_table(self, family: str, table: str, *, terse: bool = False) -> str | None:
        """The table as ``nft [-t] list table`` prints it, or None when it does not exist."""
        self.lists += 1
        key = f"{family} {table}"
        found = self._tables.get(key)
        return None if found is None else _render(key, found, terse)

    def table_handle(self, family: str, table: str) -> int | None:
        """The table's handle; a table deleted and re-created gets a new one."""
        self.lists += 1
        found = self._tables.get(f"{family} {table}")
        return None if found is None else found.handle

    def available(self) -> bool:
        return self.is_available

    # --- test controls and observation -------------------------------------------------

    def fail_next(self, n: int = 1, message: str = "injected") -> None:
        """Make the next ``n`` :meth:`run` calls fail with ``message``, changing nothing."""
        self._failures += [message] * n

    def tables(self) -> list[str]:
        """Existing tables as ``"FAMILY NAME"``, in creation order."""
        return list(self._tables)

    def chains(self, table: str = DEFAULT_TABLE) -> dict[str, tuple[str, ...]]:
        """Chain name -> its rules (whitespace-normalised); {} when the table is missing."""
        found = self._tables.get(table)
        if found is None:
            return {}
        return {name: tuple(chain.rules) for name, chain in found.chains.items()}

    def set_names(self, table: str = DEFAULT_TABLE) -> list[str]:
        """Names of the table's sets and maps, in creation order."""
        found = self._tables.get(table)
        return [] if found is None else list(found.sets)

    def elements(self, name: str, table: str = DEFAULT_TABLE) -> dict[str, str]:
        """Key -> value of a set or map ("" for set elements); KeyError when it is missing."""
        return dict(self._tables[table].sets[name].elements)

    @staticmethod
    def _error(payload: str, refused: _Refused) -> NftError:
        lines = payload.splitlines()
        source = lines[refused.line - 1] if 0 < refused.line <= len(lines) else ""
        width = max(len(source), 1)
        stderr = (
            f"/dev/stdin:{refused.line}:1-{width}: Error: {refused.message}\n"
            f"{source}\n{'^' * width}\n"
        )
        return nft_error(stderr, payload)


def _interval(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An address or CIDR component of an element as a network; None for anything else."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _intervals_overlap(key: str, other: str) -> bool:
    """Whether two distinct interval-set keys cover a common point (what nft refuses).

    Components are compared position by position (``a . b . c``): addresses
    and CIDRs as intervals, everything else as text.
    """
    mine, theirs = key.split(" . "), other.split(" . ")
    if len(mine) != len(theirs) or key == other:
        return False
    for a, b in zip(mine, theirs, strict=True):
        if a == b:
            continue
        net_a, net_b = _interval(a), _interval(b)
        if net_a is None or net_b is None or net_a.version != net_b.version:
            return False
        if not net_a.overlaps(net_b):
            return False
    return True
