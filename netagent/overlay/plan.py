"""The overlay's desired kernel state: Node information in, devices and entries out (pure).

Why a pure planner: what the kernel should hold is a function of this node,
the peers and the settings, nothing else. Keeping that function free of I/O
and sorted makes it testable without root, and lets the reconciler compare
it with a kernel dump entry by entry.

What each peer gets, and why (the design flannel settled on for VXLAN):

* **VXLAN peers** get three static entries instead of relying on the
  kernel's learning or multicast: an FDB entry on the VXLAN device (peer
  VTEP MAC -> peer public IP: where to send the encapsulated frame), a
  permanent neighbour entry (peer subnet's ``.0`` -> peer VTEP MAC: the
  inner Ethernet destination, so no ARP ever crosses the tunnel), and a
  route ``<peer subnet> via <peer .0> dev flannel.1 onlink`` (``onlink``
  because ``.0`` is on no local subnet). Static entries mean a new node is
  reachable as soon as its Node object is seen, and nothing expires.
* **host-gw peers** (and, with ``direct_routing``, VXLAN peers on our L2
  segment) get one plain route ``<peer subnet> via <peer public IP>``:
  no encapsulation, but it needs the peer to be a direct L2 neighbour.

A peer that cannot be programmed is skipped with a reason (for logs):
VXLAN without a published VTEP MAC, a subnet outside the cluster network or
overlapping ours, our own public IP, or host-gw to a peer not on our L2
segment (the route's next hop would not be reachable).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from netagent.overlay.model import (
    VXLAN_OVERHEAD,
    BackendType,
    FdbEntry,
    IPv4Address,
    IPv4Network,
    LocalNode,
    NeighEntry,
    OverlayConfig,
    RemoteNode,
    RouteEntry,
)


@dataclass(frozen=True, slots=True)
class VxlanDevice:
    """The VXLAN device as it must be (``ip -d link show flannel.1``)."""

    name: str
    vni: int
    port: int
    local: IPv4Address
    underlay_device: str
    mtu: int
    mac: str | None
    address: ipaddress.IPv4Interface
    tx_checksum: bool = True


@dataclass(frozen=True, slots=True)
class BridgeDevice:
    """The pod bridge: it holds the first address of the node's pod CIDR."""

    name: str
    address: ipaddress.IPv4Interface
    mtu: int


@dataclass(frozen=True, slots=True)
class DesiredOverlay:
    """Everything the overlay wants in the kernel, sorted."""

    network: IPv4Network
    bridge: BridgeDevice
    vxlan: VxlanDevice | None
    vxlan_name: str
    fdb: tuple[FdbEntry, ...]
    neigh: tuple[NeighEntry, ...]
    routes: tuple[RouteEntry, ...]
    skipped: tuple[str, ...] = ()


def _on_segment(ip: IPv4Address, subnets: Iterable[IPv4Network]) -> bool:
    return any(ip in s for s in subnets)


def plan_overlay(
    config: OverlayConfig,
    local: LocalNode,
    remotes: Iterable[RemoteNode],
    underlay_subnets: Iterable[IPv4Network],
) -> DesiredOverlay:
    """The desired devices and per-peer entries (see the module docstring)."""
    segment = tuple(underlay_subnets)
    vxlan_mode = config.backend is BackendType.VXLAN
    dev_name = config.vxlan.device
    pod_mtu = local.underlay_mtu - VXLAN_OVERHEAD if vxlan_mode else local.underlay_mtu
    bridge = BridgeDevice(
        name=config.bridge,
        address=ipaddress.IPv4Interface((local.subnet.network_address + 1, local.subnet.prefixlen)),
        mtu=pod_mtu,
    )
    vxlan = None
    if vxlan_mode:
        vxlan = VxlanDevice(
            name=dev_name,
            vni=config.vxlan.vni,
            port=config.vxlan.port,
            local=local.public_ip,
            underlay_device=local.underlay_device,
            mtu=pod_mtu,
            mac=local.vtep_mac,
            address=ipaddress.IPv4Interface((local.subnet.network_address, 32)),
            tx_checksum=config.vxlan.tx_checksum,
        )
    fdb: list[FdbEntry] = []
    neigh: list[NeighEntry] = []
    routes: list[RouteEntry] = []
    skipped: list[str] = []
    seen: list[IPv4Network] = [local.subnet]
    for peer in sorted(remotes):
        if peer.name == local.name:
            continue
        if not peer.subnet.subnet_of(config.network):
            skipped.append(f"Node {peer.name}: subnet {peer.subnet} is outside {config.network}")
            continue
        clash = next((s for s in seen if s.overlaps(peer.subnet)), None)
        if clash is not None:
            skipped.append(f"Node {peer.name}: subnet {peer.subnet} overlaps {clash}")
            continue
        if peer.public_ip == local.public_ip:
            skipped.append(f"Node {peer.name}: public IP {peer.public_ip} is this node's")
            continue
        direct = _on_segment(peer.public_ip, segment)
        if not vxlan_mode or (config.direct_routing and direct):
            if not direct:
                skipped.append(
                    f"Node {peer.name}: host-gw needs {peer.public_ip} on this node's L2 segment"
                )
                continue
            routes.append(RouteEntry(peer.subnet, peer.public_ip, local.underlay_device))
        else:
            if peer.vtep_mac is None:
                skipped.append(f"Node {peer.name}: no VtepMAC published yet")
                continue
            gateway = peer.subnet.network_address
            fdb.append(FdbEntry(dev_name, peer.vtep_mac, peer.public_ip))
            neigh.append(NeighEntry(dev_name, gateway, peer.vtep_mac))
            routes.append(RouteEntry(peer.subnet, gateway, dev_name, onlink=True))
        seen.append(peer.subnet)
    return DesiredOverlay(
        network=config.network,
        bridge=bridge,
        vxlan=vxlan,
        vxlan_name=dev_name,
        fdb=tuple(sorted(fdb)),
        neigh=tuple(sorted(neigh)),
        routes=tuple(sorted(routes)),
        skipped=tuple(skipped),
    )
