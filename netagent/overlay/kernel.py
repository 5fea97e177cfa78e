"""The overlay's kernel interface: links, addresses, FDB, neighbours and routes, via netlink.

Why a small Protocol: the reconciler only needs to read what netagent owns
and to add or remove one object at a time. Behind :class:`OverlayKernel`
sit the real implementation (:class:`PyrouteOverlayKernel`, pyroute2 over
rtnetlink) and a stateful fake (:mod:`netagent.overlay.kernel_fake`) that the
reconciler's unit tests run against.

Ownership, so that nothing foreign is ever touched:

* routes: only those with protocol :data:`~netagent.overlay.model.ROUTE_PROTOCOL`
  (78) are dumped; netagent installs every route with it;
* links: the devices netagent creates carry the interface alias
  :data:`OWNER_ALIAS`; a pre-existing device of the same name without it is
  used (cbr0 made by hand or by a CNI plugin) but never deleted or recreated;
* FDB and neighbour entries: only permanent ones on the VXLAN device, which
  netagent owns as a whole.

The VXLAN device's transmit checksum offload is read and set with
pyroute2's ethtool ioctl wrapper (the same switch as ``ethtool -K``), so no
``ethtool`` binary is needed on the node.

Every write is idempotent: adding what exists and deleting what is gone are
no-ops, so a reconcile pass that races with another actor cannot fail on
EEXIST/ENOENT.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pyroute2 import IPRoute, NetlinkError
from pyroute2.ethtool import Ethtool

from netagent.overlay.model import ROUTE_PROTOCOL, FdbEntry, NeighEntry, RouteEntry

#: The interface alias of links netagent created (``ip link show`` prints it).
OWNER_ALIAS = "netagent"
#: The ethtool feature ``ethtool -K <dev> tx-checksum-ip-generic off`` turns off.
TX_CHECKSUM_FEATURE = "tx-checksum-ip-generic"

log = logging.getLogger(__name__)

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
MAIN_TABLE = 254


@dataclass(frozen=True, slots=True)
class LinkState:
    """What the reconciler needs to know about one link."""

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
    #: VXLAN devices: ``tx-checksum-ip-generic`` (None when it could not be read).
    tx_checksum: bool | None = None


class OverlayKernel(Protocol):
    """The kernel operations the overlay reconciler uses."""

    def link(self, name: str) -> LinkState | None:
        """The link called ``name``, or None."""
        ...

    def link_index(self, name: str) -> int | None:
        """The index of ``name``, or None."""
        ...

    def create_bridge(self, name: str, mtu: int) -> None:
        """Create a bridge marked as netagent's."""
        ...

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
        """Create a VXLAN device (learning off) marked as netagent's."""
        ...

    def set_link(self, name: str, *, mtu: int | None = None, mac: str | None = None) -> None:
        """Change MTU and/or MAC, and bring the link up."""
        ...

    def set_tx_checksum(self, name: str, enabled: bool) -> None:
        """Turn transmit checksum offload (``tx-checksum-ip-generic``) on or off."""
        ...

    def delete_link(self, name: str) -> None:
        """Delete a link (no-op when absent)."""
        ...

    def addresses(self, name: str) -> set[ipaddress.IPv4Interface]:
        """IPv4 addresses on ``name``."""
        ...

    def add_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        """Add an address (no-op when present)."""
        ...

    def delete_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        """Remove an address (no-op when absent)."""
        ...

    def fdb(self, device: str) -> set[FdbEntry]:
        """Permanent FDB entries with a remote IP on ``device``."""
        ...

    def add_fdb(self, entry: FdbEntry) -> None:
        """Add an FDB entry."""
        ...

    def delete_fdb(self, entry: FdbEntry) -> None:
        """Remove an FDB entry."""
        ...

    def neighbours(self, device: str) -> set[NeighEntry]:
        """Permanent IPv4 neighbour entries on ``device``."""
        ...

    def replace_neigh(self, entry: NeighEntry) -> None:
        """Add or update a permanent neighbour entry."""
        ...

    def delete_neigh(self, entry: NeighEntry) -> None:
        """Remove a neighbour entry."""
        ...

    def routes(self) -> set[RouteEntry]:
        """Routes in the main table with netagent's protocol number."""
        ...

    def replace_route(self, entry: RouteEntry) -> None:
        """Add or update one of netagent's routes.

        Raises :class:`ForeignRouteError`, changing nothing, when the main
        table already holds a route to the same destination (metric 0) that
        netagent did not create: ``ip route replace`` would overwrite it.
        """
        ...

    def delete_route(self, entry: RouteEntry) -> None:
        """Remove one of netagent's routes."""
        ...


class ForeignRouteError(RuntimeError):
    """A route netagent did not create holds the destination it wants; it is left alone."""

    def __init__(self, destination: ipaddress.IPv4Network, proto: int, how: str) -> None:
        name = _PROTO_NAMES.get(proto, str(proto))
        super().__init__(
            f"a route to {destination} ({how}, proto {name}) exists that netagent did not "
            "create; it is left in place (delete it to let netagent route the peer's pods)"
        )
        self.destination = destination
        self.proto = proto


@dataclass(frozen=True, slots=True)
class _Foreign:
    """A route another program holds: its protocol, gateway and output interface index."""

    proto: int
    gateway: str | None
    oif: int | None


#: Names ``ip route`` prints for the common protocol numbers (``/etc/iproute2/rt_protos``).
_PROTO_NAMES = {2: "kernel", 3: "boot", 4: "static", 16: "dhcp", 186: "bgp"}


def _ignore(exc: NetlinkError, *codes: int) -> None:
    if exc.code not in codes:
        raise exc


class PyrouteOverlayKernel:
    """:class:`OverlayKernel` over rtnetlink, in the calling process's network namespace."""

    def __init__(self) -> None:
        self._ipr = IPRoute()
        self._ethtool: Ethtool | None = None  # opened on first use (VXLAN only)
        #: Main-table metric-0 route keys held by other protocols, from the last dump.
        self._foreign: dict[ipaddress.IPv4Network, _Foreign] | None = None

    def close(self) -> None:
        """Release the netlink socket."""
        self._ipr.close()
        if self._ethtool is not None:
            self._ethtool.close()

    # ---- links --------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        found = self._ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def _name_of(self, index: int) -> str:
        links = self._ipr.get_links(index)
        return str(links[0].get("IFLA_IFNAME")) if links else ""

    def link(self, name: str) -> LinkState | None:
        index = self.link_index(name)
        if index is None:
            return None
        msg: Any = self._ipr.get_links(index)[0]
        info = msg.get("IFLA_LINKINFO")
        kind = str(info.get("IFLA_INFO_KIND")) if info is not None else ""
        data = info.get("IFLA_INFO_DATA") if info is not None else None
        state = LinkState(
            name=name,
            index=index,
            kind=kind,
            mtu=int(msg.get("IFLA_MTU")),
            mac=str(msg.get("IFLA_ADDRESS")),
            up=bool(msg["flags"] & 1),
            owned=msg.get("IFLA_IFALIAS") == OWNER_ALIAS,
        )
        if kind == "vxlan" and data is not None:
            local = data.get("IFLA_VXLAN_LOCAL")
            state = replace(
                state,
                vni=data.get("IFLA_VXLAN_ID"),
                port=data.get("IFLA_VXLAN_PORT"),
                local=ipaddress.IPv4Address(local) if local else None,
                learning=bool(data.get("IFLA_VXLAN_LEARNING")),
                underlay_index=data.get("IFLA_VXLAN_LINK"),
                tx_checksum=self._tx_checksum(name),
            )
        return state

    def _tx_checksum(self, name: str) -> bool | None:
        try:
            features = self._ethtool_handle().get_features(name).features
        except Exception as exc:  # unreadable is reported as unknown
            log.debug("ethtool features of %s: %s", name, exc)
            return None
        feature = features.get(TX_CHECKSUM_FEATURE)
        return None if feature is None else bool(feature.enable)

    def _ethtool_handle(self) -> Ethtool:
        if self._ethtool is None:
            self._ethtool = Ethtool()
        return self._ethtool

    def set_tx_checksum(self, name: str, enabled: bool) -> None:
        ethtool = self._ethtool_handle()
        features = ethtool.get_features(name)
        feature = features.features.get(TX_CHECKSUM_FEATURE)
        if feature is None:
            raise LookupError(f"{name} has no {TX_CHECKSUM_FEATURE} feature")
        feature.enable = enabled
        ethtool.set_features(name, features)

    def create_bridge(self, name: str, mtu: int) -> None:
        try:
            self._ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
        except NetlinkError as exc:
            _ignore(exc, errno.EEXIST)
        index = self.link_index(name)
        self._ipr.link("set", index=index, ifalias=OWNER_ALIAS, state="up")

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
        underlay = self.link_index(underlay_device)
        if underlay is None:
            raise LookupError(f"underlay device {underlay_device} does not exist")
        args: dict[str, Any] = {
            "ifname": name,
            "kind": "vxlan",
            "vxlan_id": vni,
            "vxlan_port": port,
            "vxlan_local": str(local),
            "vxlan_learning": 0,
            "vxlan_link": underlay,
            "mtu": mtu,
        }
        if mac:
            args["address"] = mac
        self._ipr.link("add", **args)
        index = self.link_index(name)
        self._ipr.link("set", index=index, ifalias=OWNER_ALIAS, state="up")

    def set_link(self, name: str, *, mtu: int | None = None, mac: str | None = None) -> None:
        index = self.link_index(name)
        if index is None:
            raise LookupError(f"link {name} does not exist")
        args: dict[str, Any] = {"index": index, "state": "up"}
        if mtu is not None:
            args["mtu"] = mtu
        if mac is not None:
            args["address"] = mac
        self._ipr.link("set", **args)

    def delete_link(self, name: str) -> None:
        index = self.link_index(name)
        if index is None:
            return
        try:
            self._ipr.link("del", index=index)
        except NetlinkError as exc:
            _ignore(exc, errno.ENODEV, errno.ENOENT)

    # ---- addresses ----------------------------------------------------------------------

    def addresses(self, name: str) -> set[ipaddress.IPv4Interface]:
        index = self.link_index(name)
        if index is None:
            return set()
        out = set()
        for msg in self._ipr.get_addr(family=socket.AF_INET, index=index):
            out.add(ipaddress.IPv4Interface((msg.get("IFA_ADDRESS"), msg["prefixlen"])))
        return out

    def add_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        index = self.link_index(name)
        try:
            self._ipr.addr(
                "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as exc:
            _ignore(exc, errno.EEXIST)

    def delete_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        index = self.link_index(name)
        if index is None:
            return
        try:
            self._ipr.addr(
                "del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen
            )
        except NetlinkError as exc:
            _ignore(exc, errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV)

    # ---- FDB and neighbours -------------------------------------------------------------

    def fdb(self, device: str) -> set[FdbEntry]:
        index = self.link_index(device)
        if index is None:
            return set()
        out = set()
        for msg in self._ipr.fdb("dump", ifindex=index):
            dst = msg.get("NDA_DST")
            if msg["ifindex"] != index or not dst or not msg["state"] & NUD_PERMANENT:
                continue
            out.add(FdbEntry(device, str(msg.get("NDA_LLADDR")), ipaddress.IPv4Address(dst)))
        return out

    def add_fdb(self, entry: FdbEntry) -> None:
        index = self.link_index(entry.device)
        try:
            self._ipr.fdb(
                "append",
                ifindex=index,
                lladdr=entry.mac,
                dst=str(entry.remote_ip),
                state=NUD_PERMANENT | NUD_NOARP,
                flags=NTF_SELF,
            )
        except NetlinkError as exc:
            _ignore(exc, errno.EEXIST)

    def delete_fdb(self, entry: FdbEntry) -> None:
        index = self.link_index(entry.device)
        if index is None:
            return
        try:
            self._ipr.fdb(
                "del", ifindex=index, lladdr=entry.mac, dst=str(entry.remote_ip), flags=NTF_SELF
            )
        except NetlinkError as exc:
            _ignore(exc, errno.ENOENT, errno.ENODEV)

    def neighbours(self, device: str) -> set[NeighEntry]:
        index = self.link_index(device)
        if index is None:
            return set()
        out = set()
        for msg in self._ipr.neigh("dump", ifindex=index, family=socket.AF_INET):
            mac = msg.get("NDA_LLADDR")
            if msg["ifindex"] != index or not mac or not msg["state"] & NUD_PERMANENT:
                continue
            out.add(NeighEntry(device, ipaddress.IPv4Address(msg.get("NDA_DST")), str(mac)))
        return out

    def replace_neigh(self, entry: NeighEntry) -> None:
        self._ipr.neigh(
            "replace",
            dst=str(entry.address),
            lladdr=entry.mac,
            ifindex=self.link_index(entry.device),
            state=NUD_PERMANENT,
        )

    def delete_neigh(self, entry: NeighEntry) -> None:
        index = self.link_index(entry.device)
        if index is None:
            return
        try:
            self._ipr.neigh("del", dst=str(entry.address), ifindex=index)
        except NetlinkError as exc:
            _ignore(exc, errno.ENOENT, errno.ENODEV)

    # ---- routes -------------------------------------------------------------------------

    def routes(self) -> set[RouteEntry]:
        owned, self._foreign = self._dump_routes()
        return owned

    def _dump_routes(self) -> tuple[set[RouteEntry], dict[ipaddress.IPv4Network, _Foreign]]:
        """One dump: netagent's routes, and the main-table metric-0 keys others hold."""
        owned: set[RouteEntry] = set()
        foreign: dict[ipaddress.IPv4Network, _Foreign] = {}
        for msg in self._ipr.route("dump", family=socket.AF_INET):
            if msg.get("RTA_TABLE") != MAIN_TABLE:
                continue
            destination = ipaddress.IPv4Network((msg.get("RTA_DST") or "0.0.0.0", msg["dst_len"]))
            gateway = msg.get("RTA_GATEWAY")
            oif = msg.get("RTA_OIF")
            if msg["proto"] != ROUTE_PROTOCOL:
                if (msg.get("RTA_PRIORITY") or 0) == 0:
                    foreign[destination] = _Foreign(int(msg["proto"]), gateway, oif)
                continue
            if gateway is None or oif is None:
                continue
            owned.add(
                RouteEntry(
                    destination,
                    ipaddress.IPv4Address(gateway),
                    self._name_of(int(oif)),
                    onlink=bool(msg["flags"] & RTNH_F_ONLINK),
                )
            )
        return owned, foreign

    def replace_route(self, entry: RouteEntry) -> None:
        index = self.link_index(entry.device)
        if index is None:
            raise LookupError(f"device {entry.device} does not exist")
        self._refuse_foreign(entry.destination)
        self._ipr.route(
            "replace",
            dst=str(entry.destination.network_address),
            dst_len=entry.destination.prefixlen,
            gateway=str(entry.gateway),
            oif=index,
            flags=RTNH_F_ONLINK if entry.onlink else 0,
            proto=ROUTE_PROTOCOL,
            table=MAIN_TABLE,
        )

    def _refuse_foreign(self, destination: ipaddress.IPv4Network) -> None:
        """Raise ForeignRouteError if someone else's route has this key (what replace hits).

        Uses the foreign keys of the last :meth:`routes` dump, which a reconcile
        pass takes before any replace: one dump per pass, not one per route (a
        thousand peers at start-up would otherwise parse the table a thousand
        times). A foreign route added between that dump and the replace is not
        seen; the window is one pass.
        """
        if self._foreign is None:
            _, self._foreign = self._dump_routes()
        found = self._foreign.get(destination)
        if found is None:
            return
        how = f"via {found.gateway}" if found.gateway else "direct"
        if found.oif is not None:
            how += f" dev {self._name_of(int(found.oif))}"
        raise ForeignRouteError(destination, found.proto, how)

    def delete_route(self, entry: RouteEntry) -> None:
        try:
            self._ipr.route(
                "del",
                dst=str(entry.destination.network_address),
                dst_len=entry.destination.prefixlen,
                proto=ROUTE_PROTOCOL,
                table=MAIN_TABLE,
            )
        except NetlinkError as exc:
            _ignore(exc, errno.ESRCH, errno.ENOENT)
