"""Label and field selectors, parsed from the query string and applied to list and watch.

Why it exists: agents narrow what they list and watch (``spec.nodeName=`` for
pods, ``service.kubernetes.io/headless`` exclusions, ...). A server that ignored
selectors would hand them objects they never asked for and hide their bugs.
Malformed selectors are refused with 400, like the real server does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labapi.errors import ApiError

_KEY = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Requirement:
    """One clause: ``key op values`` where op is =, !=, in, notin, exists, !exists."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # != and notin also match objects that lack the key.
        return not present or labels[self.key] not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _bad(selector: str, why: str) -> ApiError:
    return ApiError(400, f'unable to parse requirement: {why} (selector "{selector}")',
                    "BadRequest")


def _check_key(key: str, selector: str) -> str:
    if not _KEY.match(key):
        raise _bad(selector, f"invalid label key {key!r}")
    return key


def _check_value(value: str, selector: str) -> str:
    if not _VALUE.match(value) or len(value) > 63:
        raise _bad(selector, f"invalid label value {value!r}")
    return value


_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h``; empty → matches everything."""
    if text is None or not text.strip():
        return []
    reqs: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise _bad(text, "empty requirement")
        m = _SET_RE.match(part)
        if m:
            key = _check_key(m.group(1), text)
            vals = [v.strip() for v in m.group(3).split(",")]
            vals = [_check_value(v, text) for v in vals if v != ""]
            if not vals:
                raise _bad(text, "for 'in', 'notin' operators, values set can't be empty")
            reqs.append(Requirement(key, "in" if m.group(2) == "in" else "notin",
                                    frozenset(vals)))
            continue
        for op, norm in (("!=", "!="), ("==", "="), ("=", "=")):
            if op in part:
                key, _, value = part.partition(op)
                reqs.append(Requirement(_check_key(key.strip(), text), norm,
                                        frozenset([_check_value(value.strip(), text)])))
                break
        else:
            if part.startswith("!"):
                reqs.append(Requirement(_check_key(part[1:].strip(), text), "!exists"))
            else:
                reqs.append(Requirement(_check_key(part, text), "exists"))
    return reqs


def labels_match(reqs: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    lab = labels or {}
    return all(r.matches(lab) for r in reqs)


def selector_map_matches(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    """A Service-style selector (a plain map) against an object's labels."""
    lab = labels or {}
    return all(lab.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    op: str  # "=" or "!="
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        actual = field_value(obj, self.path)
        return (actual == self.value) if self.op == "=" else (actual != self.value)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field; a missing field reads as ""."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None, allowed: tuple[str, ...],
                         kind: str) -> list[FieldRequirement]:
    """Parse ``f=v,g!=w``; fields other than metadata.name/namespace and ``allowed`` → 400."""
    if text is None or not text.strip():
        return []
    reqs: list[FieldRequirement] = []
    ok = ("metadata.name", "metadata.namespace", *allowed)
    for raw in text.split(","):
        part = raw.strip()
        for op, norm in (("!=", "!="), ("==", "="), ("=", "=")):
            if op in part:
                path, _, value = part.partition(op)
                path = path.strip()
                if path not in ok:
                    raise ApiError(400, f'field label not supported: {path}', "BadRequest")
                reqs.append(FieldRequirement(path, norm, value.strip()))
                break
        else:
            raise ApiError(400, f"invalid field selector: {part!r} for {kind}", "BadRequest")
    return reqs


def fields_match(reqs: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all(r.matches(obj) for r in reqs)
