"""The node's own addresses, read over rtnetlink, for IPVS mode's node ports and address binding.

Why a reader of its own: IPVS mode needs two facts the Node object cannot
give. Node-port virtual servers are made per address the node really has
(kube-proxy binds them to every local address), and a service address
already present on another interface (an LB address on the uplink, say) is
not bound to the dummy device a second time. Both come from the addresses
of every interface except netagent's dummy device.
"""

from __future__ import annotations

import ipaddress

from netagent.model import IPAddress
from netagent.proxy.ipvs.render import DUMMY_DEVICE


def read_local_addresses(
    netns: str | None = None,
) -> tuple[frozenset[IPAddress], frozenset[IPAddress]]:
    """(node addresses, addresses on other interfaces): both without the dummy device's."""
    from pyroute2 import IPRoute

    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    try:
        dummy = {
            link["index"]
            for link in ipr.get_links()
            if link.get_attr("IFLA_IFNAME") == DUMMY_DEVICE
        }
        found: set[IPAddress] = set()
        for msg in ipr.get_addr():
            if msg["index"] in dummy:
                continue
            addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if addr:
                found.add(ipaddress.ip_address(addr))
    finally:
        ipr.close()
    return frozenset(found), frozenset(found)
