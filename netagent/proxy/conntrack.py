"""Stale UDP conntrack cleanup: which flows to delete after a sync, and deleting them.

Why this exists (ANCHORS: "Stale UDP conntrack", kubernetes#19029, #48370):
NAT happens only on a flow's first packet. A UDP client that keeps sending
from the same socket (a resolver, a metrics agent) keeps matching its
conntrack entry, and that entry still points at the endpoint chosen when the
flow began. When that endpoint goes away, the client blackholes until the
entry times out, which never happens while it keeps sending. TCP does not
need this: the endpoint's reset ends the connection. So after every sync
whose rules landed, flows are deleted in two cases:

1. A UDP endpoint stopped receiving traffic for a service port: delete the
   flows to that service's cluster IPs, external IPs and LB IPs (and its
   NodePort on any address) whose reply source, i.e. the DNAT target, is
   that endpoint.
2. A UDP service port went from no endpoints to some: flows created while it
   had none (rejected, or from before the reject rule existed) would keep
   going nowhere; delete every flow to its addresses and NodePort.

Before the first sync the previous state is unknown, so every UDP service
port with endpoints counts as case 2: a restarted agent cannot know what
changed while it was down. Deleting a healthy UDP flow is harmless, the next
packet creates a new one.

"Receiving traffic" uses :func:`_endpoints_in_use`: ready endpoints, or the
serving-terminating ones when no endpoint is ready (the fallback for
terminating endpoints that ANCHORS describes). An endpoint that stays
listed but turns not-ready therefore counts as gone, which is what a client
of a failing DNS pod needs.

The decision is a pure function of (previous state, new state); running
``conntrack -D`` is behind the :class:`Conntrack` Protocol, with
:class:`ConntrackTool` for the kernel and :class:`FakeConntrack` for tests.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

from netagent.model import (
    Endpoint,
    IPAddress,
    IPFamily,
    Protocol,
    ProxyState,
    ServicePort,
)

log = logging.getLogger(__name__)

_DELETED_RE = re.compile(r"(\d+) flow entries have been deleted")

CONNTRACK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ConntrackDelete:
    """One ``conntrack -D`` filter: flows to ``orig_dst:orig_port_dst`` NATed to an endpoint.

    Attributes:
        family: Which conntrack table (needed when ``orig_dst`` is None).
        orig_dst: The address the client sent to; None for a NodePort (any local address).
        orig_port_dst: The port the client sent to (service port or NodePort).
        endpoint: When set, only flows whose reply source (the DNAT target) is
            this address; None deletes every flow to the destination.
        endpoint_port: With ``endpoint``, only flows whose reply source port is this.
        protocol: Always UDP today; kept explicit for the command line.
    """

    family: IPFamily
    orig_dst: IPAddress | None
    orig_port_dst: int
    endpoint: IPAddress | None = None
    endpoint_port: int | None = None
    protocol: Protocol = Protocol.UDP

    def argv(self) -> list[str]:
        """The ``conntrack`` arguments (after the binary) that delete these flows."""
        args = ["-D", "-f", "ipv4" if self.family is IPFamily.IPV4 else "ipv6"]
        args += ["-p", self.protocol.value.lower()]
        if self.orig_dst is not None:
            args += ["--orig-dst", str(self.orig_dst)]
        args += ["--orig-port-dst", str(self.orig_port_dst)]
        if self.endpoint is not None:
            args += ["--dst-nat", str(self.endpoint)]
            if self.endpoint_port is not None:
                args += ["--reply-port-src", str(self.endpoint_port)]
        return args

    def sort_key(self) -> tuple[str, int, str, int, str]:
        """A total order for deterministic output."""
        return (
            str(self.orig_dst or ""),
            self.orig_port_dst,
            str(self.endpoint or ""),
            self.endpoint_port or 0,
            self.family.value,
        )

    def __str__(self) -> str:
        dst = f"{self.orig_dst or '*'}:{self.orig_port_dst}"
        via = f" via {self.endpoint}:{self.endpoint_port or '*'}" if self.endpoint else ""
        return f"{self.protocol.value.lower()} {dst}{via}"


def _endpoints_in_use(endpoints: Iterable[Endpoint], family: IPFamily) -> frozenset[Endpoint]:
    """Endpoints that may receive new flows: ready ones, else serving-terminating ones."""
    same_family = [e for e in endpoints if IPFamily.of(e.ip) is family]
    ready = frozenset(e for e in same_family if e.ready)
    if ready:
        return ready
    return frozenset(e for e in same_family if e.serving and e.terminating)


def _targets(svc: ServicePort, family: IPFamily) -> list[tuple[IPAddress | None, int]]:
    """(destination, port) pairs a client can send to; None is "any address" (NodePort)."""
    addrs = (*svc.cluster_ips, *svc.external_ips, *svc.load_balancer_ips)
    out: list[tuple[IPAddress | None, int]] = [
        (a, svc.port) for a in dict.fromkeys(addrs) if IPFamily.of(a) is family
    ]
    if svc.node_port:
        out.append((None, svc.node_port))
    return out


def _udp_in_use(
    state: ProxyState | None, svc: ServicePort | None
) -> frozenset[tuple[IPAddress, int]]:
    if state is None or svc is None or svc.protocol is not Protocol.UDP:
        return frozenset()
    endpoints = _endpoints_in_use(state.endpoints.get(svc.name, ()), state.family)
    return frozenset((e.ip, e.port) for e in endpoints)


def stale_udp_flows(old: ProxyState | None, new: ProxyState) -> list[ConntrackDelete]:
    """The conntrack deletions needed once ``new`` is in the kernel (see the module docstring)."""
    family = new.family
    deletes: set[ConntrackDelete] = set()
    old_services = old.services if old is not None else {}
    # 1. Endpoints that stopped receiving traffic; the *old* service says where
    #    clients sent (a deleted service's flows are stale too).
    for name, svc in old_services.items():
        gone = _udp_in_use(old, svc) - _udp_in_use(new, new.services.get(name))
        for ip, port in gone:
            for dst, dport in _targets(svc, family):
                deletes.add(ConntrackDelete(family, dst, dport, ip, port))
    # 2. Services that went from no endpoints to some.
    for name, svc in new.services.items():
        if not _udp_in_use(new, svc) or _udp_in_use(old, old_services.get(name)):
            continue
        for dst, dport in _targets(svc, family):
            deletes.add(ConntrackDelete(family, dst, dport))
    return sorted(deletes, key=ConntrackDelete.sort_key)


class ConntrackError(RuntimeError):
    """The conntrack tool failed or is missing."""


class Conntrack(TypingProtocol):
    """Deletes conntrack entries; returns how many were deleted."""

    def delete(self, flow: ConntrackDelete) -> int:
        """Delete the flows matching ``flow``."""
        ...


@dataclass
class ConntrackTool:
    """The real :class:`Conntrack`: runs ``conntrack -D`` (optionally inside ``netns``)."""

    family: IPFamily = IPFamily.IPV4
    netns: str | None = None
    binary: str = "conntrack"
    timeout: float = CONNTRACK_TIMEOUT

    def delete(self, flow: ConntrackDelete) -> int:
        """Run ``conntrack -D``; "0 flow entries" (exit status 1) is not an error."""
        if flow.family is not self.family:
            raise ValueError(f"{flow.family.value} flow given to a {self.family.value} tool")
        if shutil.which(self.binary) is None:
            raise ConntrackError(
                f"{self.binary} not found on PATH: install conntrack (conntrack-tools); "
                "without it stale UDP flows are not cleaned up"
            )
        argv = [self.binary, *flow.argv()]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except (subprocess.TimeoutExpired, OSError) as exc:
            raise ConntrackError(f"{' '.join(argv)}: {exc}") from exc
        match = _DELETED_RE.search(proc.stderr)
        count = int(match.group(1)) if match else None
        if proc.returncode == 0 or (proc.returncode == 1 and count == 0):
            log.debug("conntrack: deleted %s flows for %s", count, flow)
            return count or 0
        output = proc.stderr.strip() or proc.stdout.strip()
        raise ConntrackError(f"{' '.join(argv)} exited {proc.returncode}: {output}")


@dataclass(frozen=True, slots=True)
class FakeFlow:
    """One conntrack entry, as much of it as the filters look at."""

    orig_dst: IPAddress
    orig_port_dst: int
    reply_src: IPAddress
    reply_port_src: int
    protocol: Protocol = Protocol.UDP

    def matches(self, flow: ConntrackDelete) -> bool:
        """True when ``conntrack -D`` with ``flow``'s filters would delete this entry."""
        if self.protocol is not flow.protocol or IPFamily.of(self.orig_dst) is not flow.family:
            return False
        if flow.orig_dst is not None and self.orig_dst != flow.orig_dst:
            return False
        if self.orig_port_dst != flow.orig_port_dst:
            return False
        if flow.endpoint is not None:
            dnat = (self.reply_src, self.reply_port_src) != (self.orig_dst, self.orig_port_dst)
            if not dnat or self.reply_src != flow.endpoint:
                return False
            if flow.endpoint_port is not None and self.reply_port_src != flow.endpoint_port:
                return False
        return True


@dataclass
class FakeConntrack:
    """An in-memory conntrack table that applies the same filters as the tool."""

    flows: list[FakeFlow] = field(default_factory=list)
    deletes: list[ConntrackDelete] = field(default_factory=list)

    def delete(self, flow: ConntrackDelete) -> int:
        """Remove matching flows and record the call."""
        self.deletes.append(flow)
        keep = [f for f in self.flows if not f.matches(flow)]
        count = len(self.flows) - len(keep)
        self.flows = keep
        return count


def delete_stale_udp(conntrack: Conntrack, old: ProxyState | None, new: ProxyState) -> int:
    """Delete :func:`stale_udp_flows` once ``new`` is in the kernel; how many deletions ran.

    A failed deletion is logged and skipped: a leftover flow must not fail
    the sync that already programmed the new rules.
    """
    deletes = 0
    for flow in stale_udp_flows(old, new):
        try:
            conntrack.delete(flow)
            deletes += 1
        except Exception as exc:
            log.warning("conntrack cleanup of %s failed: %s", flow, exc)
    return deletes
