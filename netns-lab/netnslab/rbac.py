"""Turn the lab API server's request log into RBAC attributes, and check them against a role.

Why: a ClusterRole written by reading the code drifts from what the code
does. The lab records every request an agent makes; this module maps each one
to what the Kubernetes authorizer would check (verb, API group, resource,
subresource) and matches it against the rules of ``daemonset/rbac.yaml``, so
a test can prove both directions: nothing the agent does is forbidden, and
nothing granted goes unused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs


@dataclass(frozen=True, slots=True)
class Attributes:
    """What the authorizer checks for one request."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    path: str = ""  # set only for non-resource URLs (``/version``, ``/healthz``)

    def __str__(self) -> str:
        if self.path:
            return f"{self.verb} {self.path}"
        res = self.resource + (f"/{self.subresource}" if self.subresource else "")
        return f"{self.verb} {self.group or 'core'}/{res}"


def attributes(method: str, path: str, query: str = "", watch: bool = False) -> Attributes:
    """The authorizer's view of ``method path?query``, as the apiserver derives it."""
    parts = [p for p in path.split("/") if p]
    method = method.upper()
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return Attributes(method.lower(), "", "", path=path)
    if not rest:
        return Attributes(method.lower(), "", "", path=path)  # discovery of a group version
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource: the namespace is not part of the rule
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    q = parse_qs(query)
    is_watch = watch or q.get("watch", [""])[-1] in ("1", "true")
    if method in ("GET", "HEAD"):
        verb = "watch" if is_watch else ("get" if name else "list")
    elif method == "POST":
        verb = "create"
    elif method == "PUT":
        verb = "update"
    elif method == "PATCH":
        verb = "patch"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = method.lower()
    return Attributes(verb, group, resource, sub)


def _resource_names(rule: Mapping[str, Any]) -> list[str]:
    return [str(r) for r in rule.get("resources") or []]


def rule_allows(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    """Whether one PolicyRule allows ``attrs`` (wildcards included)."""
    verbs = rule.get("verbs") or []
    if attrs.verb not in verbs and "*" not in verbs:
        return False
    if attrs.path:
        urls = rule.get("nonResourceURLs") or []
        return any(u == attrs.path or (u.endswith("*") and attrs.path.startswith(u[:-1]))
                   for u in urls)
    groups = rule.get("apiGroups") or []
    if attrs.group not in groups and "*" not in groups:
        return False
    wanted = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    names = _resource_names(rule)
    return wanted in names or "*" in names


def grants(rules: Sequence[Mapping[str, Any]]) -> set[Attributes]:
    """Every (verb, group, resource) a list of rules names explicitly (no wildcards)."""
    out: set[Attributes] = set()
    for rule in rules:
        for verb in rule.get("verbs") or []:
            for group in rule.get("apiGroups") or []:
                for res in _resource_names(rule):
                    resource, _, sub = res.partition("/")
                    out.add(Attributes(str(verb), str(group), resource, sub))
    return out


@dataclass
class Audit:
    """The result of checking requests against a role."""

    used: set[Attributes]
    denied: list[tuple[Attributes, Mapping[str, Any]]]
    unused: set[Attributes]


def audit(rules: Sequence[Mapping[str, Any]], requests: Iterable[Mapping[str, Any]]) -> Audit:
    """Check logged requests (``method``, ``path``, ``query``, ``watch``) against ``rules``."""
    used: set[Attributes] = set()
    denied: list[tuple[Attributes, Mapping[str, Any]]] = []
    for req in requests:
        attrs = attributes(str(req["method"]), str(req["path"]), str(req.get("query", "")),
                           bool(req.get("watch", False)))
        used.add(attrs)
        if not any(rule_allows(rule, attrs) for rule in rules):
            denied.append((attrs, req))
    return Audit(used=used, denied=denied, unused=grants(rules) - used)


__all__ = ["Attributes", "Audit", "attributes", "audit", "grants", "rule_allows"]
