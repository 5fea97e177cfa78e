"""Names of everything the lab creates, and how to recognise them later.

Why a module of its own: the machine is shared (other test runs, other
helpers, a developer's own namespaces), so the lab may only ever delete what
it can prove it made. Every namespace is ``na-<role>-<suffix>`` where the
suffix is six hex digits drawn fresh for each lab; the stale-run cleaner and
the end-of-session leak check both rely on this exact shape, so it is
defined once, here.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

#: Every namespace the lab creates starts with this.
PREFIX = "na-"

#: Linux refuses interface names longer than this (IFNAMSIZ - 1).
MAX_IFNAME = 15

_SUFFIX_RE = re.compile(r"^[0-9a-f]{6}$")
_ROLE_RE = re.compile(r"^[a-z][a-z0-9-]*$")


#: Suffixes handed out or used in this process, for the end-of-session leak check.
_USED: set[str] = set()


def new_suffix() -> str:
    """A fresh run suffix: six lowercase hex digits, remembered as used by this process."""
    while True:
        suffix = secrets.token_hex(3)
        if suffix not in _USED:
            remember_suffix(suffix)
            return suffix


def remember_suffix(suffix: str) -> None:
    """Note that this process created names with ``suffix``."""
    _USED.add(suffix)


def used_suffixes() -> frozenset[str]:
    """Every suffix this process created names with."""
    return frozenset(_USED)


def is_suffix(text: str) -> bool:
    """True when ``text`` has the shape of a run suffix."""
    return bool(_SUFFIX_RE.match(text))


def namespace_re(prefix: str = PREFIX) -> re.Pattern[str]:
    """The pattern of a lab namespace name, with groups ``role`` and ``suffix``."""
    return re.compile(rf"^{re.escape(prefix)}(?P<role>[a-z][a-z0-9-]*)-(?P<suffix>[0-9a-f]{{6}})$")


def namespace_name(role: str, suffix: str, prefix: str = PREFIX) -> str:
    """``na-<role>-<suffix>``; refuses roles and suffixes that would not parse back."""
    if not _ROLE_RE.match(role):
        raise ValueError(f"bad lab role {role!r}: lowercase letters, digits and '-' only")
    if not is_suffix(suffix):
        raise ValueError(f"bad run suffix {suffix!r}: six lowercase hex digits expected")
    return f"{prefix}{role}-{suffix}"


def parse_namespace(name: str, prefix: str = PREFIX) -> tuple[str, str] | None:
    """``(role, suffix)`` of a lab namespace name, or None for any other name."""
    m = namespace_re(prefix).match(name)
    if m is None:
        return None
    return m.group("role"), m.group("suffix")


def link_name(stem: str, suffix: str) -> str:
    """An interface name carrying the run suffix, checked against the kernel's limit."""
    name = f"{stem}-{suffix}"
    if len(name) > MAX_IFNAME:
        raise ValueError(f"interface name {name!r} is longer than {MAX_IFNAME} characters")
    return name


@dataclass(frozen=True, slots=True)
class LabNames:
    """Every name of one single-node lab, derived from its suffix."""

    suffix: str

    @property
    def node_ns(self) -> str:
        """The node: bridge, uplink, iptables, the agent."""
        return namespace_name("node", self.suffix)

    @property
    def client_ns(self) -> str:
        """A pod without a server, used as a cluster-internal client."""
        return namespace_name("client", self.suffix)

    @property
    def outside_ns(self) -> str:
        """A host outside the cluster, on the node's uplink."""
        return namespace_name("outside", self.suffix)

    def pod_ns(self, pod: str) -> str:
        """The namespace of a server pod (``pod-a`` -> ``na-pod-a-<suffix>``)."""
        return namespace_name(pod, self.suffix)

    @property
    def node_name(self) -> str:
        """The Kubernetes Node name; the same as the node's namespace."""
        return self.node_ns
