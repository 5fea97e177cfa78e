"""Value types of the IPVS kernel layer: virtual servers, real servers, ipsets and their entries.

Why a module of its own: the IPVS proxier (still to come) computes the
wanted state as these values, the kernel adapters
(:mod:`~netagent.proxy.ipvs.netlink`, :mod:`~netagent.proxy.ipvs.ipsets`)
dump the actual state as the same values, and reconciling is comparing
them. Keeping them free of pyroute2 lets the proxier, the fakes and their
tests import them anywhere.

What the fields mean, and why they look the way they do:

* :class:`VirtualServer` is one IPVS service, identified by its
  :attr:`~VirtualServer.key` (protocol, address, port) exactly as the kernel
  identifies it. ``persistent`` is kube-proxy's sessionAffinity ClientIP:
  the persistence timeout in seconds, 0 for none (the kernel's
  ``IP_VS_SVC_F_PERSISTENT`` flag is derived from it, never set by hand).
  ``netmask`` is the persistence granularity as a prefix length; ``None``
  means one client address (32 or 128), which is what kube-proxy uses.
  Firewall-mark services have no address and are not represented.
* :class:`RealServer` is one destination of a virtual server. netagent only
  ever creates ``masq`` (NAT) destinations; the other forwarding methods
  exist so a dump of someone else's service can be represented faithfully.
  :class:`RealServerStats` is a dumped destination with its connection
  counters, which graceful termination waits on.
* :class:`IpsetSpec` is one ipset as ``ipset create`` would make it, and
  :class:`IpsetEntry` one member; its :meth:`~IpsetEntry.text` is the
  canonical form ``ipset list`` prints (``10.96.0.1,tcp:80``,
  ``192.0.2.1,tcp:80,10.0.0.0/8``, ``30080``...), which is also the form
  :meth:`~netagent.proxy.ipvs.ipsets.IpsetKernel.members` returns. Diffs are
  done on that text, so wanted entries must be produced through
  :class:`IpsetEntry` (or :func:`canonical_entry`) to compare equal.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

IpvsProtocol: TypeAlias = Literal["TCP", "UDP", "SCTP"]
#: IP protocol numbers, as IPVS and ipset carry them.
PROTOCOL_NUMBERS: dict[IpvsProtocol, int] = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES: dict[int, IpvsProtocol] = {v: k for k, v in PROTOCOL_NUMBERS.items()}

#: kube-proxy's default scheduler (``--ipvs-scheduler`` empty means ``rr``).
DEFAULT_SCHEDULER = "rr"
#: The schedulers a mainline kernel ships (``net/netfilter/ipvs/ip_vs_<name>.c``).
KNOWN_SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}
)
#: ``IP_VS_SCHEDNAME_MAXLEN`` is 16 including the terminating NUL.
SCHEDULER_NAME_MAX = 15

# IP_VS_SVC_F_* from include/uapi/linux/ip_vs.h.
SVC_F_PERSISTENT = 0x0001
#: Set by the kernel on every service it has hashed; never sent, stripped from dumps.
SVC_F_HASHED = 0x0002
SVC_F_ONEPACKET = 0x0004
SVC_F_SCHED1 = 0x0008  # sh-fallback / mh-fallback
SVC_F_SCHED2 = 0x0010  # sh-port / mh-port
SVC_F_SCHED3 = 0x0020

Forward: TypeAlias = Literal["masq", "local", "tunnel", "route", "bypass"]
#: ``IP_VS_CONN_F_*`` forwarding methods. 0 (masq) is NAT, the only one netagent
#: creates; pyroute2's own default is 3 (direct routing), hence it is always sent.
FORWARD_METHODS: dict[Forward, int] = {"masq": 0, "local": 1, "tunnel": 2, "route": 3, "bypass": 4}
FORWARD_NAMES: dict[int, Forward] = {v: k for k, v in FORWARD_METHODS.items()}

VirtualServerKey: TypeAlias = tuple[IpvsProtocol, IPAddress, int]
RealServerKey: TypeAlias = tuple[IPAddress, int]

_U32 = 2**32


def _check_port(port: int, what: str) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} {port} is not a port number (0-65535)")


def _hostport(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def address_sort_key(address: IPAddress) -> tuple[int, int]:
    """Orders IPv4 before IPv6, then numerically (mixed families do not compare)."""
    return (address.version, int(address))


@dataclass(frozen=True, slots=True)
class IpvsTimeouts:
    """The kernel's IPVS connection timeouts of one network namespace, in seconds.

    ``ipvsadm --set TCP TCPFIN UDP``. In a request, 0 means "leave this one as
    it is" (the kernel skips it); read back, the values are what the kernel uses.
    """

    tcp: int = 0
    tcp_fin: int = 0
    udp: int = 0

    def __post_init__(self) -> None:
        for name in ("tcp", "tcp_fin", "udp"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= MAX_TIMEOUT:
                raise ValueError(f"IPVS {name} timeout must be 0..{MAX_TIMEOUT} seconds")

    def is_unset(self) -> bool:
        return not (self.tcp or self.tcp_fin or self.udp)

    def merged_over(self, current: IpvsTimeouts) -> IpvsTimeouts:
        """What the kernel holds after this request is applied to ``current``."""
        return IpvsTimeouts(
            self.tcp or current.tcp, self.tcp_fin or current.tcp_fin, self.udp or current.udp
        )

    def __str__(self) -> str:
        return f"tcp {self.tcp}s, tcpfin {self.tcp_fin}s, udp {self.udp}s"


#: The kernel refuses a timeout above INT_MAX / HZ (HZ up to 1000).
MAX_TIMEOUT = 2_147_483
#: A fresh namespace's timeouts (IP_VS_TCP_S_ESTABLISHED, FIN_WAIT, UDP_S_NORMAL).
KERNEL_DEFAULT_TIMEOUTS = IpvsTimeouts(900, 120, 300)


@dataclass(frozen=True, slots=True)
class VirtualServer:
    """One IPVS service (virtual server), as netagent creates it and as a dump returns it."""

    protocol: IpvsProtocol
    address: IPAddress
    port: int
    scheduler: str = DEFAULT_SCHEDULER
    #: Persistence (sessionAffinity ClientIP) timeout in seconds; 0 = none.
    persistent: int = 0
    #: Persistence granularity as a prefix length; None = one address (32 or 128).
    netmask: int | None = None
    #: Other ``IP_VS_SVC_F_*`` bits (one-packet, scheduler flags); not PERSISTENT/HASHED.
    flags: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOL_NUMBERS:
            raise ValueError(f"IPVS protocol {self.protocol!r} is not one of TCP, UDP, SCTP")
        _check_port(self.port, "virtual server port")
        if not self.scheduler or len(self.scheduler) > SCHEDULER_NAME_MAX:
            raise ValueError(f"IPVS scheduler name {self.scheduler!r} is empty or too long")
        if not 0 <= self.persistent < _U32:
            raise ValueError(f"persistence timeout {self.persistent} out of range")
        if self.netmask is not None and not 1 <= self.netmask <= self.address.max_prefixlen:
            raise ValueError(f"persistence netmask /{self.netmask} invalid for {self.address}")
        if self.flags & (SVC_F_PERSISTENT | SVC_F_HASHED) or not 0 <= self.flags < _U32:
            raise ValueError(
                f"flags {self.flags:#x}: persistence is set through 'persistent', "
                "and HASHED belongs to the kernel"
            )

    @property
    def key(self) -> VirtualServerKey:
        """What the kernel identifies the service by."""
        return (self.protocol, self.address, self.port)

    @property
    def family(self) -> int:
        """``AF_INET`` or ``AF_INET6``."""
        return socket.AF_INET if self.address.version == 4 else socket.AF_INET6

    @property
    def prefix_len(self) -> int:
        """The persistence netmask as a prefix length (the address's full length by default)."""
        return self.address.max_prefixlen if self.netmask is None else self.netmask

    @property
    def kernel_flags(self) -> int:
        """The ``IP_VS_SVC_F_*`` word to send: :attr:`flags` plus PERSISTENT when persistent."""
        return self.flags | (SVC_F_PERSISTENT if self.persistent else 0)

    def sort_key(self) -> tuple[int, int, int, str]:
        """A total order over services of both families."""
        return (*address_sort_key(self.address), self.port, self.protocol)

    def __str__(self) -> str:
        text = f"{self.protocol} {_hostport(self.address, self.port)} {self.scheduler}"
        if self.persistent:
            text += f" persistent {self.persistent}"
        return text


@dataclass(frozen=True, slots=True)
class RealServer:
    """One destination (real server) of a virtual server."""

    address: IPAddress
    port: int
    weight: int = 1
    forward: Forward = "masq"

    def __post_init__(self) -> None:
        _check_port(self.port, "real server port")
        if not 0 <= self.weight <= 2**31 - 1:
            raise ValueError(f"real server weight {self.weight} out of range")
        if self.forward not in FORWARD_METHODS:
            raise ValueError(f"unknown forwarding method {self.forward!r}")

    @property
    def key(self) -> RealServerKey:
        """What the kernel identifies a destination by, within its service."""
        return (self.address, self.port)

    def __str__(self) -> str:
        return f"{_hostport(self.address, self.port)} {self.forward} weight {self.weight}"


@dataclass(frozen=True, slots=True)
class RealServerStats:
    """A dumped destination with the kernel's connection counters."""

    address: IPAddress
    port: int
    weight: int
    forward: Forward
    active_conns: int = 0
    inactive_conns: int = 0
    persistent_conns: int = 0

    @property
    def server(self) -> RealServer:
        """The destination without its counters."""
        return RealServer(self.address, self.port, self.weight, self.forward)

    @property
    def key(self) -> RealServerKey:
        return (self.address, self.port)

    @property
    def connections(self) -> int:
        """Active plus inactive connections: graceful termination deletes at 0, as kube-proxy."""
        return self.active_conns + self.inactive_conns


# ---- ipsets ---------------------------------------------------------------------------

HASH_IP = "hash:ip"
HASH_IP_PORT = "hash:ip,port"
HASH_IP_PORT_IP = "hash:ip,port,ip"
HASH_IP_PORT_NET = "hash:ip,port,net"
BITMAP_PORT = "bitmap:port"
#: The set types netagent creates and can read entries of.
SUPPORTED_IPSET_TYPES = frozenset(
    {HASH_IP, HASH_IP_PORT, HASH_IP_PORT_IP, HASH_IP_PORT_NET, BITMAP_PORT}
)
IpsetFamily: TypeAlias = Literal["inet", "inet6"]
#: Protocol names as ``ipset`` prints them.
IPSET_PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17, "sctp": 132}
IPSET_PROTOCOL_NAMES: dict[int, str] = {v: k for k, v in IPSET_PROTOCOLS.items()}
#: ``IPSET_MAXNAMELEN`` is 32 including the terminating NUL.
IPSET_NAME_MAX = 31


class IpsetEntryError(ValueError):
    """An entry's text does not fit its set's type or family (never sent to the kernel)."""


def _family_of(address: IPAddress) -> IpsetFamily:
    return "inet" if address.version == 4 else "inet6"


@dataclass(frozen=True, slots=True)
class IpsetEntry:
    """One ipset member; which fields are set depends on :attr:`set_type`.

    ``hash:ip`` has ``address``; ``hash:ip,port`` adds ``protocol`` and
    ``port``; ``hash:ip,port,ip`` adds ``address2``; ``hash:ip,port,net``
    adds ``net`` (host bits are cleared, as the kernel does); ``bitmap:port``
    has only ``port``.
    """

    set_type: str
    address: IPAddress | None = None
    protocol: str | None = None
    port: int | None = None
    address2: IPAddress | None = None
    net: IPNetwork | None = None

    def __post_init__(self) -> None:
        t = self.set_type
        if t not in SUPPORTED_IPSET_TYPES:
            raise IpsetEntryError(f"ipset type {t!r} is not one netagent handles")
        wants_address = t != BITMAP_PORT
        wants_port = t != HASH_IP
        wants_proto = t in (HASH_IP_PORT, HASH_IP_PORT_IP, HASH_IP_PORT_NET)
        shape = {
            "address": (self.address is not None, wants_address),
            "protocol": (self.protocol is not None, wants_proto),
            "port": (self.port is not None, wants_port),
            "address2": (self.address2 is not None, t == HASH_IP_PORT_IP),
            "net": (self.net is not None, t == HASH_IP_PORT_NET),
        }
        wrong = [name for name, (has, wants) in shape.items() if has != wants]
        if wrong:
            raise IpsetEntryError(f"{t} entry: field(s) {', '.join(wrong)} missing or not allowed")
        if self.protocol is not None and self.protocol not in IPSET_PROTOCOLS:
            raise IpsetEntryError(
                f"{t} entry: protocol {self.protocol!r} not one of tcp, udp, sctp"
            )
        if self.port is not None and not 0 <= self.port <= 65535:
            raise IpsetEntryError(f"{t} entry: port {self.port} out of range")
        versions = {a.version for a in (self.address, self.address2, self.net) if a is not None}
        if len(versions) > 1:
            raise IpsetEntryError(f"{t} entry mixes IPv4 and IPv6")

    @property
    def family(self) -> IpsetFamily | None:
        """The entry's address family; None for ``bitmap:port``."""
        return None if self.address is None else _family_of(self.address)

    def text(self) -> str:
        """The entry as ``ipset list`` prints it."""
        if self.set_type == BITMAP_PORT:
            return str(self.port)
        parts = [str(self.address)]
        if self.port is not None:
            parts.append(f"{self.protocol}:{self.port}")
        if self.address2 is not None:
            parts.append(str(self.address2))
        if self.net is not None:
            full = self.net.prefixlen == self.net.max_prefixlen
            parts.append(str(self.net.network_address) if full else str(self.net))
        return ",".join(parts)

    def __str__(self) -> str:
        return self.text()

    @classmethod
    def parse(cls, set_type: str, text: str) -> IpsetEntry:
        """Read an entry in ``ipset`` syntax; raises :class:`IpsetEntryError`."""
        if set_type not in SUPPORTED_IPSET_TYPES:
            raise IpsetEntryError(f"ipset type {set_type!r} is not one netagent handles")
        parts = text.strip().split(",")
        expected = set_type.split(":", 1)[1].count(",") + 1
        if len(parts) != expected:
            raise IpsetEntryError(f"{set_type} entry {text!r}: expected {expected} parts")
        try:
            if set_type == BITMAP_PORT:
                if not parts[0].isdigit():
                    raise ValueError("a bare port number is expected")
                return cls(set_type, port=int(parts[0]))
            address = ipaddress.ip_address(parts[0])
            if set_type == HASH_IP:
                return cls(set_type, address=address)
            proto, sep, port = parts[1].partition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"{parts[1]!r} is not proto:port")
            address2 = ipaddress.ip_address(parts[2]) if set_type == HASH_IP_PORT_IP else None
            net = (
                ipaddress.ip_network(parts[2], strict=False)
                if set_type == HASH_IP_PORT_NET
                else None
            )
            return cls(set_type, address, proto.lower(), int(port), address2, net)
        except IpsetEntryError:
            raise
        except ValueError as exc:
            raise IpsetEntryError(f"{set_type} entry {text!r}: {exc}") from exc

    # -- constructors, one per set type ------------------------------------------------

    @classmethod
    def ip(cls, address: IPAddress) -> IpsetEntry:
        return cls(HASH_IP, address=address)

    @classmethod
    def ip_port(cls, address: IPAddress, protocol: str, port: int) -> IpsetEntry:
        return cls(HASH_IP_PORT, address, protocol.lower(), port)

    @classmethod
    def ip_port_ip(
        cls, address: IPAddress, protocol: str, port: int, address2: IPAddress
    ) -> IpsetEntry:
        return cls(HASH_IP_PORT_IP, address, protocol.lower(), port, address2=address2)

    @classmethod
    def ip_port_net(
        cls, address: IPAddress, protocol: str, port: int, net: IPNetwork
    ) -> IpsetEntry:
        return cls(
            HASH_IP_PORT_NET,
            address,
            protocol.lower(),
            port,
            net=ipaddress.ip_network(net, strict=False),
        )

    @classmethod
    def bitmap_port(cls, port: int) -> IpsetEntry:
        return cls(BITMAP_PORT, port=port)


def canonical_entry(set_type: str, text: str) -> str:
    """``text`` rewritten the way ``ipset list`` would print it back."""
    return IpsetEntry.parse(set_type, text).text()


@dataclass(frozen=True, slots=True)
class IpsetSpec:
    """One ipset: what ``ipset create NAME TYPE [family F] [range A-B]`` makes.

    ``family`` is None for ``bitmap:port`` (the kernel keeps no family for
    it; one given is dropped), ``port_range`` only exists for it and defaults
    to the whole range, as kube-proxy's node-port sets. ``hashsize`` and
    ``maxelem`` are creation hints the kernel may change (hash sets grow),
    and ``comment`` is netagent's own description of the set (the kernel has
    no set-level comment, so dumps carry ""): none of the three take part in
    equality, so a dumped spec equals the wanted one.

    Sets of types netagent does not handle (someone else's) can be
    represented, so a dump is complete, but not created nor read entry by
    entry.
    """

    name: str
    type: str
    family: IpsetFamily | None = "inet"
    port_range: tuple[int, int] | None = None
    hashsize: int = field(default=1024, compare=False)
    maxelem: int = field(default=65536, compare=False)
    comment: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= IPSET_NAME_MAX:
            raise ValueError(f"ipset name {self.name!r} must be 1-{IPSET_NAME_MAX} characters")
        if self.type == BITMAP_PORT:
            object.__setattr__(self, "family", None)
            if self.port_range is None:
                object.__setattr__(self, "port_range", (0, 65535))
            low, high = self.port_range or (0, 65535)
            if not 0 <= low <= high <= 65535:
                raise ValueError(f"bitmap:port range {low}-{high} invalid")
        elif self.type in SUPPORTED_IPSET_TYPES:
            if self.family not in ("inet", "inet6"):
                raise ValueError(f"{self.type} set {self.name} needs family inet or inet6")
            if self.port_range is not None:
                raise ValueError("only bitmap:port sets have a port range")

    @property
    def supported(self) -> bool:
        """Whether netagent can create this set and read its entries."""
        return self.type in SUPPORTED_IPSET_TYPES

    def entry(self, text: str) -> IpsetEntry:
        """Parse ``text`` as a member of this set, checking its type and family."""
        parsed = IpsetEntry.parse(self.type, text)
        self.check(parsed)
        return parsed

    def check(self, entry: IpsetEntry) -> None:
        """Raise :class:`IpsetEntryError` unless ``entry`` can be a member of this set."""
        if entry.set_type != self.type:
            raise IpsetEntryError(f"{entry.set_type} entry {entry} does not fit {self.type} set")
        if entry.family is not None and entry.family != self.family:
            raise IpsetEntryError(f"{entry.family} entry {entry} in {self.family} set {self.name}")
