"""ipsets over nfnetlink (pyroute2), behind a small Protocol, updated by diff.

Why this module exists: kube-proxy's IPVS mode keeps its iptables rules
constant and puts everything that changes with Services into ipsets
(``hash:ip,port`` for cluster IPs, ``hash:ip,port,ip`` for hairpin,
``hash:ip,port,net`` for load-balancer source ranges, ``bitmap:port`` for
node ports, ``hash:ip`` for every bound address). netagent does the same
without running ``ipset``: :class:`IpsetKernel` is the set operations the
proxier needs, :class:`PyrouteIpset` implements them with
:class:`pyroute2.ipset.IPSet`, and
:class:`~netagent.proxy.ipvs.fake.FakeIpsets` copies their semantics.

How sets are kept up to date: :meth:`IpsetKernel.members` dumps a set as the
canonical entry texts ``ipset list`` prints, :func:`ipset_diff` compares
that with the wanted texts, and only the difference is added and deleted.
A set is destroyed only once nothing references it; the kernel refuses
otherwise (``IPSET_ERR_BUSY``), and the caller must remove the iptables
rules first.

The kernel's answers, which the fake copies (codes are errno values or the
kernel's ``IPSET_ERR_*``): creating an existing name is EEXIST; any command
on a missing set is ENOENT; adding a member that is there, or deleting one
that is not, is ``IPSET_ERR_EXIST``; destroying a referenced set is
``IPSET_ERR_BUSY``; swapping with a missing second set is
``IPSET_ERR_EXIST_SETNAME2`` and with a set of another type or family
``IPSET_ERR_TYPE_MISMATCH``; a port outside a ``bitmap:port`` range is
``IPSET_ERR_TYPE_SPECIFIC``. An entry whose text does not fit the set's type
or family never reaches the kernel:
:class:`~netagent.proxy.ipvs.model.IpsetEntryError`.

pyroute2 details handled here: :class:`~pyroute2.ipset.IPSet` has no
``netns`` argument (unlike pyroute2's other sockets), so a subclass sets the
socket's namespace before it is opened, with ``flags=0`` so a missing
namespace is an error rather than silently created; ``destroy()`` and
``flush()`` without a name act on *every* set in the namespace, so the
methods here refuse an empty name; and ``list(name)`` of a missing set
raises ENOENT (its docstring says it returns nothing). ipsets are per
network namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from typing import Any, Protocol

from netagent.proxy.ipvs._netns import netns_exists
from netagent.proxy.ipvs.model import (
    BITMAP_PORT,
    HASH_IP,
    HASH_IP_PORT,
    HASH_IP_PORT_IP,
    HASH_IP_PORT_NET,
    IPSET_PROTOCOL_NAMES,
    IPSET_PROTOCOLS,
    SUPPORTED_IPSET_TYPES,
    IpsetEntry,
    IpsetEntryError,
    IpsetFamily,
    IpsetSpec,
)

log = logging.getLogger(__name__)

# From include/uapi/linux/netfilter/ipset/ip_set.h.
IPSET_ERR_PROTOCOL = 4097
IPSET_ERR_FIND_TYPE = 4098
IPSET_ERR_MAX_SETS = 4099
IPSET_ERR_BUSY = 4100
IPSET_ERR_EXIST_SETNAME2 = 4101
IPSET_ERR_TYPE_MISMATCH = 4102
IPSET_ERR_EXIST = 4103
#: A net of prefix length 0 in a ``hash:*net`` set (the kernel takes /1 to /32, /128).
IPSET_ERR_INVALID_CIDR = 4104
IPSET_ERR_INVALID_FAMILY = 4106
IPSET_ERR_IPADDR_IPV4 = 4109
IPSET_ERR_IPADDR_IPV6 = 4110
#: Type-specific: a port outside a bitmap's range, or a full hash.
IPSET_ERR_TYPE_SPECIFIC = 4352

_CODE_NAMES: dict[int, str] = {
    IPSET_ERR_PROTOCOL: "IPSET_ERR_PROTOCOL",
    IPSET_ERR_FIND_TYPE: "IPSET_ERR_FIND_TYPE",
    IPSET_ERR_MAX_SETS: "IPSET_ERR_MAX_SETS",
    IPSET_ERR_BUSY: "IPSET_ERR_BUSY",
    IPSET_ERR_EXIST_SETNAME2: "IPSET_ERR_EXIST_SETNAME2",
    IPSET_ERR_TYPE_MISMATCH: "IPSET_ERR_TYPE_MISMATCH",
    IPSET_ERR_EXIST: "IPSET_ERR_EXIST",
    IPSET_ERR_INVALID_CIDR: "IPSET_ERR_INVALID_CIDR",
    IPSET_ERR_INVALID_FAMILY: "IPSET_ERR_INVALID_FAMILY",
    IPSET_ERR_IPADDR_IPV4: "IPSET_ERR_IPADDR_IPV4",
    IPSET_ERR_IPADDR_IPV6: "IPSET_ERR_IPADDR_IPV6",
    IPSET_ERR_TYPE_SPECIFIC: "IPSET_ERR_TYPE_SPECIFIC",
}
_MESSAGES: dict[tuple[str, int], str] = {
    ("create", errno.EEXIST): "a set with this name exists",
    ("create", IPSET_ERR_FIND_TYPE): "the kernel does not support this set type",
    ("create", IPSET_ERR_MAX_SETS): "the kernel's maximal number of sets is reached",
    ("add", IPSET_ERR_EXIST): "the element is in the set already",
    ("add", IPSET_ERR_INVALID_CIDR): "a net of prefix length 0 cannot be a member",
    ("add", IPSET_ERR_TYPE_SPECIFIC): "outside the bitmap's range, or the hash is full",
    ("delete", IPSET_ERR_EXIST): "the element is not in the set",
    ("destroy", IPSET_ERR_BUSY): "the set is in use by a kernel component (a rule references it)",
    ("swap", IPSET_ERR_EXIST_SETNAME2): "the second set does not exist",
    ("swap", IPSET_ERR_TYPE_MISMATCH): "the sets' types or families differ",
}

_FAMILIES: dict[IpsetFamily, int] = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}
_FAMILY_NAMES: dict[int, IpsetFamily] = {v: k for k, v in _FAMILIES.items()}
#: pyroute2's ``etype`` for each set type: the entry's dimensions.
_ETYPES = {
    HASH_IP: "ip",
    HASH_IP_PORT: "ip,port",
    HASH_IP_PORT_IP: "ip,port,ip",
    HASH_IP_PORT_NET: "ip,port,net",
    BITMAP_PORT: "port",
}
_WITH_COMMENT = 0x10  # IPSET_FLAG_WITH_COMMENT
_LIST_HEADER = 0x04  # IPSET_FLAG_LIST_HEADER: dump headers, no members


class IpsetError(Exception):
    """An ipset operation the kernel refused; names the operation, set, entry and code."""

    def __init__(self, op: str, name: str, code: int, entry: str | None = None) -> None:
        self.op = op
        self.name = name
        self.code = code
        self.entry = entry
        label = _CODE_NAMES.get(code) or errno.errorcode.get(code, str(code))
        what = _MESSAGES.get((op, code)) or (
            os.strerror(code) if code < 4096 else "ipset kernel error"
        )
        target = f"{name} {entry}" if entry is not None else name
        super().__init__(f"ipset {op} {target}: [{label}] {what}")


class IpsetKernel(Protocol):
    """The ipset operations the proxier uses, one set or one member at a time."""

    def list_sets(self) -> dict[str, IpsetSpec]:
        """Every set in the namespace (netagent's and others'), by name, without members."""
        ...

    def members(self, name: str) -> set[str]:
        """The members of ``name`` as ``ipset list`` prints them; ENOENT if it is missing."""
        ...

    def create(self, spec: IpsetSpec) -> None:
        """Create an empty set; EEXIST when the name is taken."""
        ...

    def add(self, name: str, entry: str | IpsetEntry) -> None:
        """Add one member; ``IPSET_ERR_EXIST`` when it is there."""
        ...

    def delete(self, name: str, entry: str | IpsetEntry) -> None:
        """Delete one member; ``IPSET_ERR_EXIST`` when it is not there."""
        ...

    def destroy(self, name: str) -> None:
        """Destroy one set; ``IPSET_ERR_BUSY`` while a rule references it."""
        ...

    def swap(self, a: str, b: str) -> None:
        """Exchange the contents of two sets of the same type and family (names stay)."""
        ...

    def flush(self, name: str) -> None:
        """Remove every member of one set."""
        ...


def ipset_diff(current: set[str], wanted: set[str]) -> tuple[list[str], list[str]]:
    """``(to_add, to_delete)``, each sorted, turning ``current`` into ``wanted``.

    Both sides must be canonical entry texts (what :meth:`IpsetKernel.members`
    returns and :meth:`IpsetEntry.text` produces), or equal members look
    different and get rewritten on every sync.
    """
    return sorted(wanted - current), sorted(current - wanted)


def check_set_name(name: str) -> None:
    # pyroute2's destroy()/flush() with no name act on every set in the namespace.
    if not isinstance(name, str) or not name:
        raise ValueError(f"an ipset name is required, got {name!r}")


# ---- pyroute2 -------------------------------------------------------------------------


def _open_ipset(netns: str | None) -> Any:
    from pyroute2.ipset import AsyncIPSet, IPSet
    from pyroute2.netlink.exceptions import NetlinkError

    class NetnsIPSet(IPSet):  # type: ignore[misc]
        """pyroute2's IPSet with the socket opened in ``netns`` (IPSet() has no such argument)."""

        def __init__(self, netns: str) -> None:
            # The same steps as IPSet.__init__, with the namespace set on the
            # socket spec first: the socket is created lazily from the spec, in
            # whichever thread uses it, so every socket lands in ``netns``.
            self.asyncore = AsyncIPSet()
            self.asyncore.spec["netns"] = netns
            self.asyncore.spec["flags"] = 0  # never create a missing namespace
            self.asyncore.local.keep_event_loop = True
            self.asyncore.status["event_loop"] = "new"
            self.asyncore.status["nlm_generator"] = True
            try:
                self.asyncore.event_loop.run_until_complete(self.asyncore.setup_endpoint())
            except BaseException:
                self.asyncore.event_loop.close()
                raise

    where = f"network namespace {netns}" if netns else "the current network namespace"
    if netns and not netns_exists(netns):
        raise IpsetError("open", where, errno.ENOENT)
    try:
        return NetnsIPSet(netns) if netns else IPSet()
    except FileNotFoundError as exc:
        raise IpsetError("open", where, errno.ENOENT) from exc
    except NetlinkError as exc:
        raise IpsetError("open", where, exc.code) from exc


class PyrouteIpset:
    """:class:`IpsetKernel` over pyroute2's nfnetlink ipset socket.

    Entries given as text are parsed against the set's type and family, which
    are remembered from :meth:`list_sets` / :meth:`create` and otherwise read
    from the kernel (one header request per set). ``sock`` replaces the socket
    in tests. Not thread-safe.
    """

    def __init__(self, netns: str | None = None, *, sock: Any = None) -> None:
        self.netns = netns
        self._sock: Any = sock if sock is not None else _open_ipset(netns)
        self._specs: dict[str, IpsetSpec] = {}

    def close(self) -> None:
        """Release the netlink socket."""
        self._sock.close()

    def __enter__(self) -> PyrouteIpset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: str, name: str, fn: Any, entry: str | None = None) -> Any:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            return fn()
        except NetlinkError as exc:
            raise IpsetError(op, name, exc.code, entry) from exc

    def _spec(self, name: str, op: str) -> IpsetSpec:
        check_set_name(name)
        spec = self._specs.get(name)
        if spec is None:
            msgs = self._call(op, name, lambda: list(self._sock.headers(name)))
            specs = _parse_headers(msgs)
            if name not in specs:
                raise IpsetError(op, name, errno.ENOENT)
            spec = self._specs[name] = specs[name]
        return spec

    def _entry(self, op: str, name: str, entry: str | IpsetEntry) -> tuple[IpsetSpec, IpsetEntry]:
        spec = self._spec(name, op)
        if isinstance(entry, IpsetEntry):
            spec.check(entry)
            return spec, entry
        return spec, spec.entry(entry)

    # -- reads ---------------------------------------------------------------------------

    def list_sets(self) -> dict[str, IpsetSpec]:
        msgs = self._call("list", "*", lambda: list(self._sock.list(flags=_LIST_HEADER)))
        specs = _parse_headers(msgs)
        self._specs = dict(specs)
        return specs

    def members(self, name: str) -> set[str]:
        spec = self._spec(name, "list")
        if not spec.supported:
            raise IpsetEntryError(f"set {name} is of type {spec.type}, which netagent cannot read")
        msgs = self._call("list", name, lambda: list(self._sock.list(name)))
        out: set[str] = set()
        for msg in msgs:
            if msg.get_attr("IPSET_ATTR_SETNAME") != name:
                continue
            adt = msg.get_attr("IPSET_ATTR_ADT")
            for data in adt.get_attrs("IPSET_ATTR_DATA") if adt is not None else ():
                entry = _parse_entry(spec, data)
                if entry is not None:
                    out.add(entry.text())
        return out

    # -- writes --------------------------------------------------------------------------

    def create(self, spec: IpsetSpec) -> None:
        if not spec.supported:
            raise ValueError(f"netagent does not create {spec.type} sets")
        kwargs: dict[str, Any] = {}
        if spec.type == BITMAP_PORT:
            kwargs["bitmap_ports_range"] = spec.port_range
        else:
            kwargs["hashsize"] = spec.hashsize
            kwargs["maxelem"] = spec.maxelem
        family = _FAMILIES[spec.family] if spec.family else socket.AF_INET
        self._call(
            "create",
            spec.name,
            lambda: self._sock.create(
                spec.name, stype=spec.type, family=family, exclusive=True, **kwargs
            ),
        )
        self._specs[spec.name] = spec

    def add(self, name: str, entry: str | IpsetEntry) -> None:
        spec, parsed = self._entry("add", name, entry)
        self._call(
            "add",
            name,
            lambda: self._sock.add(
                name,
                _pyroute_entry(parsed),
                family=_FAMILIES[spec.family] if spec.family else socket.AF_INET,
                exclusive=True,
                etype=_ETYPES[spec.type],
            ),
            parsed.text(),
        )

    def delete(self, name: str, entry: str | IpsetEntry) -> None:
        spec, parsed = self._entry("delete", name, entry)
        self._call(
            "delete",
            name,
            lambda: self._sock.delete(
                name,
                _pyroute_entry(parsed),
                family=_FAMILIES[spec.family] if spec.family else socket.AF_INET,
                exclusive=True,
                etype=_ETYPES[spec.type],
            ),
            parsed.text(),
        )

    def destroy(self, name: str) -> None:
        check_set_name(name)
        self._call("destroy", name, lambda: self._sock.destroy(name))
        self._specs.pop(name, None)

    def swap(self, a: str, b: str) -> None:
        check_set_name(a)
        check_set_name(b)
        self._call("swap", a, lambda: self._sock.swap(a, b), b)
        self._specs.pop(a, None)
        self._specs.pop(b, None)

    def flush(self, name: str) -> None:
        check_set_name(name)
        self._call("flush", name, lambda: self._sock.flush(name))


# ---- message parsing ------------------------------------------------------------------


def _parse_headers(msgs: list[Any]) -> dict[str, IpsetSpec]:
    """Set headers from list / header replies; a set split over several messages merges."""
    out: dict[str, IpsetSpec] = {}
    for msg in msgs:
        name = msg.get_attr("IPSET_ATTR_SETNAME")
        stype = msg.get_attr("IPSET_ATTR_TYPENAME")
        if not name or not stype or name in out:
            continue
        data = msg.get_attr("IPSET_ATTR_DATA")

        def get(attr: str, default: Any = None, data: Any = data) -> Any:
            value = data.get_attr(attr) if data is not None else None
            return default if value is None else value

        family = _FAMILY_NAMES.get(int(msg.get_attr("IPSET_ATTR_FAMILY") or 0))
        port_range = None
        if stype == BITMAP_PORT:
            port_range = (
                int(get("IPSET_ATTR_PORT_FROM", 0)),
                int(get("IPSET_ATTR_PORT_TO", 65535)),
            )
        out[name] = IpsetSpec(
            name=name,
            type=stype,
            family=family,
            port_range=port_range,
            hashsize=int(get("IPSET_ATTR_HASHSIZE", 0)),
            maxelem=int(get("IPSET_ATTR_MAXELEM", 0)),
        )
    return out


def _ip(nla: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if nla is None:
        return None
    text = nla.get_attr("IPSET_ATTR_IPADDR_IPV4") or nla.get_attr("IPSET_ATTR_IPADDR_IPV6")
    return ipaddress.ip_address(text) if text else None


def _parse_entry(spec: IpsetSpec, data: Any) -> IpsetEntry | None:
    """One dumped member as an :class:`IpsetEntry`; None (logged) for one netagent cannot write."""
    try:
        port = data.get_attr("IPSET_ATTR_PORT_FROM")
        if port is None:
            port = data.get_attr("IPSET_ATTR_PORT")
        if spec.type == BITMAP_PORT:
            return IpsetEntry.bitmap_port(int(port))
        address = _ip(data.get_attr("IPSET_ATTR_IP_FROM"))
        if address is None:
            raise IpsetEntryError("no address")
        if spec.type == HASH_IP:
            return IpsetEntry.ip(address)
        proto_num = int(data.get_attr("IPSET_ATTR_PROTO") or 0)
        protocol = IPSET_PROTOCOL_NAMES.get(proto_num)
        if protocol is None:
            raise IpsetEntryError(f"protocol {proto_num} is not tcp, udp or sctp")
        if spec.type == HASH_IP_PORT:
            return IpsetEntry.ip_port(address, protocol, int(port))
        address2 = _ip(data.get_attr("IPSET_ATTR_IP2"))
        if address2 is None:
            raise IpsetEntryError("no second address")
        if spec.type == HASH_IP_PORT_IP:
            return IpsetEntry.ip_port_ip(address, protocol, int(port), address2)
        cidr = data.get_attr("IPSET_ATTR_CIDR2")
        prefix = address2.max_prefixlen if cidr is None else int(cidr)
        net = ipaddress.ip_network(f"{address2}/{prefix}", strict=False)
        return IpsetEntry.ip_port_net(address, protocol, int(port), net)
    except (IpsetEntryError, TypeError, ValueError) as exc:
        log.warning("ipset %s: skipping a member netagent cannot represent (%s)", spec.name, exc)
        return None


def _pyroute_entry(entry: IpsetEntry) -> Any:
    """The ``entry`` argument pyroute2's add/delete take for the entry's set type."""
    from pyroute2.ipset import PortEntry

    if entry.set_type == BITMAP_PORT:
        return entry.port
    if entry.set_type == HASH_IP:
        return str(entry.address)
    assert entry.protocol is not None and entry.set_type in SUPPORTED_IPSET_TYPES
    port = PortEntry(entry.port, protocol=IPSET_PROTOCOLS[entry.protocol])
    if entry.set_type == HASH_IP_PORT:
        return (str(entry.address), port)
    if entry.set_type == HASH_IP_PORT_IP:
        return (str(entry.address), port, str(entry.address2))
    return (str(entry.address), port, str(entry.net))
