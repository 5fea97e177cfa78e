"""Which interface and address carry the overlay: flag, public IP, or the default route.

Why it matters: the public IP is what every peer sends VXLAN packets (or
routes host-gw traffic) to, so a wrong pick on a multi-NIC host silently
breaks cross-node traffic (a top flannel complaint). The choice, in order:

1. ``--iface``: that device, its first IPv4 address unless ``--public-ip``
   (which must then be an address of that device: it is the VXLAN device's
   ``local`` address and the next hop peers route host-gw traffic to);
2. ``--public-ip`` alone: the device that holds that address;
3. otherwise the device of the IPv4 default route and its first address.

Whatever is chosen is logged at start and published on the Node, so a
wrong pick is visible (``public-ip`` annotation) and overridable
(``public-ip-overwrite`` on the Node, or the flags). ``netagent run`` looks
the underlay up once before it starts, so a bad ``--iface`` or
``--public-ip`` stops it with exit status 2 instead of failing every sync.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute


class UnderlayError(RuntimeError):
    """No usable underlay; the message says what was looked for.

    ``key`` is the config key to fix (``overlay.iface`` or ``overlay.publicIP``),
    so the CLI can report it like any other invalid setting.
    """

    def __init__(self, message: str, *, key: str = "overlay.iface") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Underlay:
    """The underlay device, the public IP on it, its MTU and its connected subnets."""

    device: str
    address: ipaddress.IPv4Address
    mtu: int
    subnets: tuple[ipaddress.IPv4Network, ...]


def find_underlay(
    *, iface: str | None = None, public_ip: ipaddress.IPv4Address | None = None
) -> Underlay:
    """The underlay per the module docstring; raises UnderlayError when none fits."""
    with IPRoute() as ipr:
        addrs: dict[int, list[ipaddress.IPv4Interface]] = {}
        for msg in ipr.get_addr(family=socket.AF_INET):
            iface_addr = ipaddress.IPv4Interface((msg.get("IFA_ADDRESS"), msg["prefixlen"]))
            addrs.setdefault(int(msg["index"]), []).append(iface_addr)
        index: int | None = None
        if iface is not None:
            found = ipr.link_lookup(ifname=iface)
            if not found:
                raise UnderlayError(f"--iface {iface}: no such interface")
            index = int(found[0])
        elif public_ip is not None:
            index = next((i for i, a in addrs.items() if any(x.ip == public_ip for x in a)), None)
            if index is None:
                raise UnderlayError(
                    f"--public-ip {public_ip} is on no local interface (pass --iface)",
                    key="overlay.publicIP",
                )
        else:
            for route in ipr.route("dump", family=socket.AF_INET):
                if route["dst_len"] == 0 and route.get("RTA_TABLE") == 254 and route.get("RTA_OIF"):
                    index = int(route.get("RTA_OIF"))
                    break
            if index is None:
                raise UnderlayError("no IPv4 default route; pass --iface to pick the underlay")
        link = ipr.get_links(index)[0]
        name = str(link.get("IFLA_IFNAME"))
        mine = addrs.get(index, [])
        if public_ip is None:
            if not mine:
                if iface is not None:
                    raise UnderlayError(f"--iface {name} has no IPv4 address")
                raise UnderlayError(
                    f"underlay {name} (the default route's) has no IPv4 address "
                    "(pass --iface or --public-ip)"
                )
            public_ip = mine[0].ip
        elif not any(a.ip == public_ip for a in mine):
            raise UnderlayError(
                f"--public-ip {public_ip} is not an address of --iface {name}",
                key="overlay.publicIP",
            )
        return Underlay(
            device=name,
            address=public_ip,
            mtu=int(link.get("IFLA_MTU")),
            subnets=tuple(sorted({a.network for a in mine})),
        )
