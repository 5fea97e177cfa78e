"""Typed, frozen values the overlay works on, from the Node objects to kernel entries.

Why a model of its own: the overlay's inputs (Node annotations, pod CIDRs,
flags) are validated once at the boundary, like the proxy's, and the rest of
the overlay (the pure planner, the per-object reconciler, the file writers)
only ever sees these values. Kernel entries are values too, so the planner's
output can be compared with a kernel dump with ``==`` and set operations.

Addresses use :mod:`ipaddress`, like :mod:`netagent.model`; subnet
allocation uses netaddr where its set arithmetic helps
(:mod:`netagent.overlay.subnet_alloc`).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network

#: flannel's defaults, which users and their tooling expect.
DEFAULT_VNI = 1
DEFAULT_VXLAN_PORT = 8472
DEFAULT_SUBNET_LEN = 24
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
DEFAULT_BRIDGE = "cbr0"
#: Routing protocol number that marks routes netagent owns (``ip route ... proto 0x4e``
#: shows it as 78). Unassigned in /etc/iproute2/rt_protos; anything else is never touched.
ROUTE_PROTOCOL = 78
#: flannel's annotation prefix; the prefix is configurable (``--annotation-prefix``).
DEFAULT_ANNOTATION_PREFIX = "flannel.alpha.coreos.com"


class BackendType(str, enum.Enum):
    """How packets reach other nodes' pods."""

    VXLAN = "vxlan"
    HOST_GW = "host-gw"


@dataclass(frozen=True, slots=True)
class VxlanSettings:
    """The VXLAN device's identity; the device is named ``flannel.<vni>``."""

    vni: int = DEFAULT_VNI
    port: int = DEFAULT_VXLAN_PORT
    #: Transmit checksum offload on the device (``tx-checksum-ip-generic``).
    #: Off works around the kernel bug behind kubernetes#88986 (VXLAN packets
    #: NATed with a zero UDP checksum got a bad one: 63 s connection stalls),
    #: fixed in Linux 5.7; see :func:`netagent.overlay.checksum.tx_checksum_wanted`.
    tx_checksum: bool = True

    @property
    def device(self) -> str:
        """The device name, ``flannel.1`` for VNI 1 (what flannel users look for)."""
        return f"flannel.{self.vni}"


@dataclass(frozen=True, slots=True)
class LocalNode:
    """This node, as the overlay needs it.

    ``public_ip`` is the underlay address other nodes send to (VXLAN outer
    source, host-gw next hop); ``underlay_device`` carries it, and
    ``underlay_mtu`` is that device's MTU. ``vtep_mac`` is the VXLAN device's
    MAC (stable across restarts: it is published and peers program it).
    """

    name: str
    subnet: IPv4Network
    public_ip: IPv4Address
    underlay_device: str
    underlay_mtu: int
    vtep_mac: str | None = None


@dataclass(frozen=True, slots=True, order=True)
class RemoteNode:
    """Another node, read from its Node object (pod CIDR and annotations).

    ``vtep_mac`` is None when the peer has not published one (host-gw peer, or
    not ready yet): a VXLAN route to it cannot be programmed until it does.
    ``backend`` is the peer's published backend type.
    """

    name: str
    subnet: IPv4Network
    public_ip: IPv4Address
    backend: BackendType
    vtep_mac: str | None = None


@dataclass(frozen=True, slots=True)
class OverlayConfig:
    """Cluster-wide overlay settings (flags / config file).

    ``direct_routing``: with the VXLAN backend, peers on the same L2 segment
    as this node get a plain route via their public IP instead of VXLAN.
    """

    network: IPv4Network
    backend: BackendType = BackendType.VXLAN
    subnet_len: int = DEFAULT_SUBNET_LEN
    vxlan: VxlanSettings = VxlanSettings()
    direct_routing: bool = False
    bridge: str = DEFAULT_BRIDGE
    annotation_prefix: str = DEFAULT_ANNOTATION_PREFIX
    ip_masq: bool = True


# ----------------------------------------------------------------------------- kernel entries


@dataclass(frozen=True, slots=True, order=True)
class FdbEntry:
    """``bridge fdb append <mac> dev <device> dst <remote_ip>`` (VXLAN forwarding entry)."""

    device: str
    mac: str
    remote_ip: IPv4Address


@dataclass(frozen=True, slots=True, order=True)
class NeighEntry:
    """``ip neigh replace <address> lladdr <mac> dev <device> nud permanent``."""

    device: str
    address: IPv4Address
    mac: str


@dataclass(frozen=True, slots=True, order=True)
class RouteEntry:
    """A route netagent owns (installed with :data:`ROUTE_PROTOCOL`).

    ``onlink`` is set for VXLAN routes: the gateway (the peer's ``.0``) is not
    on any local subnet, so the kernel must be told it is reachable directly.
    """

    destination: IPv4Network
    gateway: IPv4Address
    device: str
    onlink: bool = False
