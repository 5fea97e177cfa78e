"""Kernel settings the proxy depends on, written only when they differ.

Why a Protocol and a fake: sysctls under /proc/sys/net are per network
namespace, and the agent writes them in its own namespace at start-up. Tests
must never write the host's, so everything goes through :class:`Sysctl`;
unit tests use :class:`FakeSysctl`, lab tests run :class:`ProcSysctl` in a
process already inside a test namespace.

What the proxy needs and why:

- ``net.ipv4.ip_forward=1``: DNATed service traffic to pods on other nodes
  (and to pods behind the bridge) is forwarded, not delivered locally.
- ``net.ipv4.conf.all.route_localnet=1``: NodePorts on 127.0.0.1 are DNATed
  to pod IPs; without it the kernel drops packets with a loopback source
  that leave the host (the martian-drop rule of CVE-2020-8558 limits this to
  locally generated traffic).
- ``net.bridge.bridge-nf-call-iptables=1``: pod-to-service traffic between
  pods on the same bridge is bridged, not routed; only with this does it
  traverse iptables (the DNAT, and conntrack undoing it on the reply). The
  file exists only once br_netfilter is loaded; its absence is logged, not
  fatal, because a node without a bridge does not need it.

Writing only when the value differs keeps restarts quiet and avoids needless
writes that some settings (e.g. ``ip_forward``, which resets other
per-interface settings when toggled) make costly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")

IP_FORWARD = "net/ipv4/ip_forward"
ROUTE_LOCALNET = "net/ipv4/conf/all/route_localnet"
BRIDGE_NF_CALL_IPTABLES = "net/bridge/bridge-nf-call-iptables"
IPV6_FORWARDING = "net/ipv6/conf/all/forwarding"
BRIDGE_NF_CALL_IP6TABLES = "net/bridge/bridge-nf-call-ip6tables"

#: Settings whose file may be missing (module not loaded) without failing the agent.
OPTIONAL_SYSCTLS = frozenset({BRIDGE_NF_CALL_IPTABLES, BRIDGE_NF_CALL_IP6TABLES})


class SysctlError(RuntimeError):
    """A sysctl could not be read or written."""


def sysctl_path(name: str) -> str:
    """``net.ipv4.ip_forward`` -> ``net/ipv4/ip_forward``; slash names are kept as given.

    Dotted names cannot express interface names that contain dots
    (``eth0.100``); pass those in slash form.
    """
    name = name.strip().strip("/")
    return name if "/" in name else name.replace(".", "/")


class Sysctl(Protocol):
    """Reads and writes sysctls of one network namespace (names in slash form)."""

    def read(self, name: str) -> str:
        """The current value, whitespace-stripped; raise FileNotFoundError when absent."""
        ...

    def write(self, name: str, value: str) -> None:
        """Set the value; raise FileNotFoundError when absent."""
        ...


@dataclass(frozen=True, slots=True)
class ProcSysctl:
    """The real :class:`Sysctl`: files under /proc/sys of the calling process's namespace."""

    root: Path = PROC_SYS

    def read(self, name: str) -> str:
        """Read ``/proc/sys/<name>``."""
        return (self.root / sysctl_path(name)).read_text().strip()

    def write(self, name: str, value: str) -> None:
        """Write ``/proc/sys/<name>``."""
        (self.root / sysctl_path(name)).write_text(f"{value}\n")


@dataclass
class FakeSysctl:
    """An in-memory :class:`Sysctl`; names missing from ``values`` do not exist."""

    values: dict[str, str] = field(default_factory=dict)
    writes: list[tuple[str, str]] = field(default_factory=list)

    def read(self, name: str) -> str:
        """The stored value."""
        try:
            return self.values[sysctl_path(name)]
        except KeyError:
            raise FileNotFoundError(sysctl_path(name)) from None

    def write(self, name: str, value: str) -> None:
        """Store the value and record the write."""
        path = sysctl_path(name)
        if path not in self.values:
            raise FileNotFoundError(path)
        self.values[path] = value
        self.writes.append((path, value))


def ensure_sysctl(sysctl: Sysctl, name: str, value: str) -> bool:
    """Set ``name`` to ``value`` unless it already is; True when it was written.

    Raises SysctlError when the setting does not exist or cannot be written.
    """
    path = sysctl_path(name)
    try:
        current = sysctl.read(path)
        if current == value:
            return False
        sysctl.write(path, value)
    except OSError as exc:
        raise SysctlError(f"sysctl {path.replace('/', '.')}: {exc}") from exc
    log.info("sysctl %s: %s -> %s", path.replace("/", "."), current, value)
    return True


def proxy_sysctls(*, localhost_nodeports: bool, ipv6: bool = False) -> tuple[tuple[str, str], ...]:
    """The settings the proxy needs, in the order they are applied."""
    wanted = [(IP_FORWARD, "1")]
    if localhost_nodeports:
        wanted.append((ROUTE_LOCALNET, "1"))
    wanted.append((BRIDGE_NF_CALL_IPTABLES, "1"))
    if ipv6:
        wanted += [(IPV6_FORWARDING, "1"), (BRIDGE_NF_CALL_IP6TABLES, "1")]
    return tuple(wanted)


def ensure_proxy_sysctls(
    sysctl: Sysctl, *, localhost_nodeports: bool, ipv6: bool = False
) -> list[str]:
    """Apply :func:`proxy_sysctls`; returns the names written.

    A missing optional setting (br_netfilter not loaded) is logged as a
    warning; any other failure raises SysctlError.
    """
    written: list[str] = []
    for name, value in proxy_sysctls(localhost_nodeports=localhost_nodeports, ipv6=ipv6):
        try:
            if ensure_sysctl(sysctl, name, value):
                written.append(name)
        except SysctlError as exc:
            if name in OPTIONAL_SYSCTLS and isinstance(exc.__cause__, FileNotFoundError):
                log.warning(
                    "%s; is br_netfilter loaded? Without it, pod-to-service traffic between "
                    "pods on the same bridge bypasses iptables",
                    exc,
                )
                continue
            raise
    return written


#: IPVS mode's settings, each for a reason kube-proxy learned the hard way:
#: ``vs/conntrack`` keeps conntrack entries for IPVS connections, so the
#: iptables masquerade rules (which match conntrack state) apply to them;
#: ``expire_nodest_conn`` drops connections whose real server was deleted
#: instead of blackholing them; ``expire_quiescent_template`` expires
#: persistence templates of weight-0 real servers, so affinity does not keep
#: new connections on a draining endpoint.
IPVS_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
)
#: strictARP: answer ARP only for addresses of the receiving interface, and
#: announce with the best local address, so the dummy device's service
#: addresses are never advertised on the network (needed by MetalLB L2).
STRICT_ARP_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
)


def conn_reuse_mode(release: str) -> str | None:
    """``vs/conn_reuse_mode`` for a kernel release: "0" on 4.1 to 5.8, else leave it.

    On those kernels mode 1 stalls reused connections for a second
    (kubernetes#70747); from 5.9 the kernel fixed it and mode 1 is right.
    """
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return None
    return "0" if (4, 1) <= (major, minor) < (5, 9) else None


def ensure_ipvs_sysctls(
    sysctl: Sysctl, *, strict_arp: bool, release: str | None = None
) -> list[str]:
    """Apply IPVS mode's settings (see :data:`IPVS_SYSCTLS`); the names written."""
    import os

    wanted = list(IPVS_SYSCTLS)
    reuse = conn_reuse_mode(release if release is not None else os.uname().release)
    if reuse is not None:
        wanted.append(("net/ipv4/vs/conn_reuse_mode", reuse))
    if strict_arp:
        wanted += STRICT_ARP_SYSCTLS
    return [name for name, value in wanted if ensure_sysctl(sysctl, name, value)]

