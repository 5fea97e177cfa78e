"""A stateful, in-memory :class:`~netagent.overlay.kernel.OverlayKernel`, for unit tests.

Why a fake and not a mock: the reconciler's promises (idempotent passes,
drift repair, nothing foreign touched, entries added in a safe order) are
about kernel *state*, and checking them needs root and network namespaces
with the real :class:`~netagent.overlay.kernel.PyrouteOverlayKernel`. This
fake keeps that state in memory and copies the real implementation's
semantics, so the reconciler's unit tests run anywhere:

* links have a kind, MTU, MAC, up flag, owner mark (the ``netagent`` alias)
  and, for VXLAN, VNI/port/local/learning/underlay and transmit checksum
  offload (on when created, as in the kernel); :meth:`create_bridge`
  and :meth:`create_vxlan` mark the link owned (the ``netagent`` alias) and bring it up;
  :meth:`create_bridge` ignores an existing name (EEXIST), while
  :meth:`create_vxlan` refuses one (:class:`FileExistsError`, EEXIST) and
  refuses a missing underlay device (:class:`LookupError`);
* deleting a link drops its addresses, FDB and neighbour entries and every
  route through it, and VXLAN devices bound to it as their underlay, as the
  kernel does; setting a link down (:meth:`set_link_down`) flushes the IPv4
  routes through it;
* :meth:`routes` returns only main-table routes with protocol
  :data:`~netagent.overlay.model.ROUTE_PROTOCOL` that have a gateway and a
  device; "foreign" routes (other protocols, tables or metrics) live beside
  them. :meth:`replace_route` replaces netagent's route with the same
  destination and metric 0 in the main table but refuses (ForeignRouteError,
  nothing changed) when that key holds a route of another protocol, needs
  the device up and, unless ``onlink``, a gateway on one of the device's
  subnets (ENETUNREACH otherwise);
* :meth:`fdb` and :meth:`neighbours` return only permanent entries on the
  device; learned / dynamic ones can be seeded with the ``add_foreign_*``
  helpers;
* adds of what exists and deletes of what is gone are no-ops; writes to a
  device that does not exist raise :class:`LookupError` (deletes are no-ops).

Test helpers: ``add_foreign_*`` seed state nobody in the code under test
wrote, :meth:`tamper_link` changes a link behind the reconciler's back,
:meth:`fail` makes the next N calls of a method raise, and :attr:`calls` is
the ordered log of every write the code attempted (including ones that
raised), so tests can assert ordering. Nothing here touches the real kernel.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from netagent.overlay.kernel import MAIN_TABLE, ForeignRouteError, LinkState, OverlayKernel
from netagent.overlay.model import ROUTE_PROTOCOL, FdbEntry, NeighEntry, RouteEntry

__all__ = ["Call", "FakeOverlayKernel", "KernelRoute"]

#: Protocol numbers of ``/etc/iproute2/rt_protos`` used for foreign routes.
PROTO_KERNEL = 2
PROTO_BOOT = 3
PROTO_STATIC = 4

_WRITES = frozenset(
    {
        "create_bridge",
        "create_vxlan",
        "set_link",
        "set_tx_checksum",
        "delete_link",
        "add_address",
        "delete_address",
        "add_fdb",
        "delete_fdb",
        "replace_neigh",
        "delete_neigh",
        "replace_route",
        "delete_route",
    }
)
_READS = frozenset({"link", "link_index", "addresses", "fdb", "neighbours", "routes"})


class Call(NamedTuple):
    """One write the code under test attempted.

    ``subject`` is the link name for link operations, ``(name, address)`` for
    address operations and the entry itself for FDB, neighbour and route
    operations.
    """

    method: str
    subject: object


@dataclass(frozen=True, slots=True, order=True)
class KernelRoute:
    """Any IPv4 route the fake holds, netagent's or not (``ip route show table all``)."""

    destination: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None
    device: str | None
    proto: int = ROUTE_PROTOCOL
    table: int = MAIN_TABLE
    metric: int = 0
    onlink: bool = False


@dataclass
class _Link:
    name: str
    index: int
    kind: str
    mtu: int
    mac: str
    up: bool
    owned: bool
    vni: int | None = None
    port: int | None = None
    local: ipaddress.IPv4Address | None = None
    learning: bool | None = None
    underlay_index: int | None = None
    tx_checksum: bool | None = None
    addresses: set[ipaddress.IPv4Interface] = field(default_factory=set)
    #: (mac, remote IP) -> permanent
    fdb: dict[tuple[str, ipaddress.IPv4Address], bool] = field(default_factory=dict)
    #: address -> (mac, permanent)
    neigh: dict[ipaddress.IPv4Address, tuple[str, bool]] = field(default_factory=dict)

    def state(self) -> LinkState:
        return LinkState(
            name=self.name,
            index=self.index,
            kind=self.kind,
            mtu=self.mtu,
            mac=self.mac,
            up=self.up,
            owned=self.owned,
            vni=self.vni,
            port=self.port,
            local=self.local,
            learning=self.learning,
            underlay_index=self.underlay_index,
            tx_checksum=self.tx_checksum,
        )


@dataclass
class _Fault:
    method: str
    exc: BaseException
    remaining: int
    when: Callable[[Any], bool] | None


def _os_error(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")


class FakeOverlayKernel:
    """Implements :class:`~netagent.overlay.kernel.OverlayKernel` in memory (see the module)."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}
        self._routes: list[KernelRoute] = []
        self._next_index = 1
        self._faults: list[_Fault] = []
        #: Every write attempted through the protocol, in order (including ones that raised).
        self.calls: list[Call] = []

    # ------------------------------------------------------------------ test helpers

    def fail(
        self,
        method: str,
        exc: BaseException,
        *,
        count: int = 1,
        when: Callable[[Any], bool] | None = None,
    ) -> None:
        """Make the next ``count`` calls of ``method`` raise ``exc`` before changing anything.

        ``when(subject)`` (see :class:`Call`; for reads, the name asked about or
        None for :meth:`routes`) restricts the fault to matching calls, e.g. one route.
        """
        if method not in _WRITES | _READS:
            raise ValueError(f"{method!r} is not an OverlayKernel method")
        if count < 1:
            raise ValueError("count must be at least 1")
        self._faults.append(_Fault(method, exc, count, when))

    @property
    def pending_faults(self) -> int:
        """How many injected failures have not fired yet."""
        return sum(f.remaining for f in self._faults)

    def call_names(self) -> list[str]:
        """The methods of :attr:`calls`, in order."""
        return [c.method for c in self.calls]

    def add_foreign_link(
        self,
        name: str,
        kind: str = "",
        *,
        mtu: int = 1500,
        mac: str | None = None,
        up: bool = True,
        owned: bool = False,
        addresses: tuple[ipaddress.IPv4Interface, ...] = (),
        vni: int | None = None,
        port: int | None = None,
        local: ipaddress.IPv4Address | None = None,
        learning: bool | None = None,
        underlay: str | None = None,
    ) -> LinkState:
        """A link the code under test did not create (``kind`` "" is a plain device like eth0).

        VXLAN attributes only apply with ``kind="vxlan"``; ``underlay`` must exist.
        """
        if name in self._links:
            raise FileExistsError(errno.EEXIST, f"link {name} exists")
        underlay_index = None
        if underlay is not None:
            underlay_index = self._need(underlay).index
        link = self._new_link(name, kind, mtu, mac, up=up, owned=owned)
        if kind == "vxlan":
            link.vni, link.port, link.local = vni, port, local
            link.learning = True if learning is None else learning
            link.tx_checksum = True
            link.underlay_index = underlay_index
        link.addresses.update(addresses)
        return link.state()

    def tamper_link(
        self,
        name: str,
        *,
        mtu: int | None = None,
        mac: str | None = None,
        up: bool | None = None,
        owned: bool | None = None,
        vni: int | None = None,
        port: int | None = None,
        local: ipaddress.IPv4Address | None = None,
        learning: bool | None = None,
        tx_checksum: bool | None = None,
    ) -> None:
        """Change a link behind the reconciler's back (not logged in :attr:`calls`)."""
        link = self._need(name)
        if tx_checksum is not None:
            link.tx_checksum = tx_checksum
        if mtu is not None:
            link.mtu = mtu
        if mac is not None:
            link.mac = mac.lower()
        if owned is not None:
            link.owned = owned
        if vni is not None:
            link.vni = vni
        if port is not None:
            link.port = port
        if local is not None:
            link.local = local
        if learning is not None:
            link.learning = learning
        if up is False:
            self.set_link_down(name)
        elif up:
            link.up = True

    def set_link_down(self, name: str) -> None:
        """``ip link set <name> down``: IPv4 flushes the routes through a downed device."""
        self._need(name).up = False
        self._routes = [r for r in self._routes if r.device != name]

    def add_foreign_route(
        self,
        destination: ipaddress.IPv4Network,
        gateway: ipaddress.IPv4Address | None,
        device: str | None,
        *,
        proto: int = PROTO_STATIC,
        table: int = MAIN_TABLE,
        metric: int = 0,
        onlink: bool = False,
    ) -> KernelRoute:
        """A route someone else installed (by default ``proto static``, main table)."""
        if device is not None:
            self._need(device)
        route = KernelRoute(destination, gateway, device, proto, table, metric, onlink)
        self._routes = [r for r in self._routes if not self._same_key(r, route)]
        self._routes.append(route)
        return route

    def add_foreign_fdb(self, entry: FdbEntry, *, permanent: bool = False) -> None:
        """An FDB entry netagent did not add (learned by default, so :meth:`fdb` hides it)."""
        self._need(entry.device).fdb[(entry.mac.lower(), entry.remote_ip)] = permanent

    def add_foreign_neigh(self, entry: NeighEntry, *, permanent: bool = False) -> None:
        """A neighbour entry netagent did not add (dynamic unless ``permanent``)."""
        self._need(entry.device).neigh[entry.address] = (entry.mac.lower(), permanent)

    def all_routes(self) -> list[KernelRoute]:
        """Every route, of any protocol and table, sorted."""
        return sorted(self._routes, key=lambda r: (r.table, r.destination, r.metric, r.proto))

    def all_fdb(self, device: str) -> dict[tuple[str, ipaddress.IPv4Address], bool]:
        """Every FDB entry on ``device``: (mac, remote IP) -> permanent."""
        link = self._links.get(device)
        return dict(link.fdb) if link else {}

    def all_neighbours(self, device: str) -> dict[ipaddress.IPv4Address, tuple[str, bool]]:
        """Every neighbour entry on ``device``: address -> (mac, permanent)."""
        link = self._links.get(device)
        return dict(link.neigh) if link else {}

    def link_names(self) -> list[str]:
        """All link names, sorted."""
        return sorted(self._links)

    # ------------------------------------------------------------------ internals

    def _enter(self, method: str, subject: object) -> None:
        if method in _WRITES:
            self.calls.append(Call(method, subject))
        for fault in self._faults:
            if fault.method == method and (fault.when is None or fault.when(subject)):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                raise fault.exc

    def _need(self, name: str) -> _Link:
        link = self._links.get(name)
        if link is None:
            raise LookupError(f"link {name} does not exist")
        return link

    def _new_link(
        self, name: str, kind: str, mtu: int, mac: str | None, *, up: bool, owned: bool
    ) -> _Link:
        index = self._next_index
        self._next_index += 1  # the kernel does not reuse indexes right away
        link = _Link(
            name=name,
            index=index,
            kind=kind,
            mtu=mtu,
            mac=(mac or f"02:fa:4e:00:{index >> 8 & 0xFF:02x}:{index & 0xFF:02x}").lower(),
            up=up,
            owned=owned,
        )
        self._links[name] = link
        return link

    @staticmethod
    def _same_key(a: KernelRoute, b: KernelRoute) -> bool:
        return (a.table, a.destination, a.metric) == (b.table, b.destination, b.metric)

    # ------------------------------------------------------------------ links

    def link(self, name: str) -> LinkState | None:
        self._enter("link", name)
        link = self._links.get(name)
        return link.state() if link else None

    def link_index(self, name: str) -> int | None:
        self._enter("link_index", name)
        link = self._links.get(name)
        return link.index if link else None

    def create_bridge(self, name: str, mtu: int) -> None:
        self._enter("create_bridge", name)
        link = self._links.get(name)
        if link is None:  # EEXIST is ignored, as in the real implementation
            link = self._new_link(name, "bridge", mtu, None, up=False, owned=False)
        link.owned = True
        link.up = True

    def create_vxlan(
        self,
        name: str,
        *,
        vni: int,
        port: int,
        local: ipaddress.IPv4Address,
        underlay_device: str,
        mtu: int,
        mac: str | None,
    ) -> None:
        self._enter("create_vxlan", name)
        underlay = self._links.get(underlay_device)
        if underlay is None:
            raise LookupError(f"underlay device {underlay_device} does not exist")
        if name in self._links:
            raise FileExistsError(errno.EEXIST, f"link {name} exists")
        link = self._new_link(name, "vxlan", mtu, mac, up=True, owned=True)
        link.vni, link.port, link.local = vni, port, local
        link.learning = False
        link.underlay_index = underlay.index
        link.tx_checksum = True  # the kernel's default for a new VXLAN device

    def set_link(self, name: str, *, mtu: int | None = None, mac: str | None = None) -> None:
        self._enter("set_link", name)
        link = self._need(name)
        if mtu is not None:
            link.mtu = mtu
        if mac is not None:
            link.mac = mac.lower()
        link.up = True

    def set_tx_checksum(self, name: str, enabled: bool) -> None:
        self._enter("set_tx_checksum", name)
        link = self._need(name)
        if link.tx_checksum is None:
            raise LookupError(f"{name} has no tx-checksum-ip-generic feature")
        link.tx_checksum = enabled

    def delete_link(self, name: str) -> None:
        self._enter("delete_link", name)
        self._drop_link(name)

    def _drop_link(self, name: str) -> None:
        link = self._links.pop(name, None)
        if link is None:
            return
        # Addresses, FDB and neighbour entries die with the link; so do routes through it
        # and VXLAN devices bound to it (vxlan_handle_lowerdev_unregister).
        self._routes = [r for r in self._routes if r.device != name]
        for other in [x for x in self._links.values() if x.underlay_index == link.index]:
            self._drop_link(other.name)

    # ------------------------------------------------------------------ addresses

    def addresses(self, name: str) -> set[ipaddress.IPv4Interface]:
        self._enter("addresses", name)
        link = self._links.get(name)
        return set(link.addresses) if link else set()

    def add_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        self._enter("add_address", (name, address))
        self._need(name).addresses.add(address)

    def delete_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        self._enter("delete_address", (name, address))
        link = self._links.get(name)
        if link is not None:
            link.addresses.discard(address)

    # ------------------------------------------------------------------ FDB and neighbours

    def fdb(self, device: str) -> set[FdbEntry]:
        self._enter("fdb", device)
        link = self._links.get(device)
        if link is None:
            return set()
        return {FdbEntry(device, mac, ip) for (mac, ip), perm in link.fdb.items() if perm}

    def add_fdb(self, entry: FdbEntry) -> None:
        self._enter("add_fdb", entry)
        link = self._need(entry.device)
        if link.kind != "vxlan":
            raise _os_error(errno.EOPNOTSUPP, f"fdb entry with dst on {link.kind} {link.name}")
        link.fdb[(entry.mac.lower(), entry.remote_ip)] = True

    def delete_fdb(self, entry: FdbEntry) -> None:
        self._enter("delete_fdb", entry)
        link = self._links.get(entry.device)
        if link is not None:
            link.fdb.pop((entry.mac.lower(), entry.remote_ip), None)

    def neighbours(self, device: str) -> set[NeighEntry]:
        self._enter("neighbours", device)
        link = self._links.get(device)
        if link is None:
            return set()
        return {NeighEntry(device, ip, mac) for ip, (mac, perm) in link.neigh.items() if perm}

    def replace_neigh(self, entry: NeighEntry) -> None:
        self._enter("replace_neigh", entry)
        self._need(entry.device).neigh[entry.address] = (entry.mac.lower(), True)

    def delete_neigh(self, entry: NeighEntry) -> None:
        self._enter("delete_neigh", entry)
        link = self._links.get(entry.device)
        if link is not None:  # by address, whatever the MAC (as the real implementation)
            link.neigh.pop(entry.address, None)

    # ------------------------------------------------------------------ routes

    def routes(self) -> set[RouteEntry]:
        self._enter("routes", None)
        return {
            RouteEntry(r.destination, r.gateway, r.device, onlink=r.onlink)
            for r in self._routes
            if r.proto == ROUTE_PROTOCOL
            and r.table == MAIN_TABLE
            and r.gateway is not None
            and r.device is not None
        }

    def replace_route(self, entry: RouteEntry) -> None:
        self._enter("replace_route", entry)
        link = self._links.get(entry.device)
        if link is None:
            raise LookupError(f"device {entry.device} does not exist")
        if not link.up:
            raise _os_error(errno.ENETDOWN, f"{entry.device} is down")
        if not entry.onlink and not any(entry.gateway in a.network for a in link.addresses):
            raise _os_error(errno.ENETUNREACH, f"nexthop {entry.gateway} has invalid gateway")
        route = KernelRoute(entry.destination, entry.gateway, entry.device, onlink=entry.onlink)
        for other in self._routes:
            if self._same_key(other, route) and other.proto != ROUTE_PROTOCOL:
                how = f"via {other.gateway}" if other.gateway else "direct"
                if other.device:
                    how += f" dev {other.device}"
                raise ForeignRouteError(entry.destination, other.proto, how)
        self._routes = [r for r in self._routes if not self._same_key(r, route)]
        self._routes.append(route)

    def delete_route(self, entry: RouteEntry) -> None:
        # By destination, protocol and table only, like the real implementation.
        self._enter("delete_route", entry)
        for r in self._routes:
            if (
                r.destination == entry.destination
                and r.proto == ROUTE_PROTOCOL
                and r.table == MAIN_TABLE
            ):
                self._routes.remove(r)
                return


def _satisfies_protocol(fake: FakeOverlayKernel) -> OverlayKernel:
    """Static check (mypy): the fake implements the whole protocol."""
    return fake
