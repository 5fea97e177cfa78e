"""The overlay's packet-filter needs as backend-neutral intent, rendered by the active proxy mode.

Why intent and not rules: the overlay must masquerade pod traffic that
leaves the cluster network and make sure FORWARD accepts pod traffic, but
*how* that is written depends on the proxy mode (iptables chains today, an
nftables table in the nftables mode). The overlay therefore says only what
it wants; each backend renders it into its own ruleset so the overlay's
rules land in the same atomic apply as the Service rules, and a node in
nftables mode needs no iptables rules from netagent at all.

What the intent means, whatever renders it:

1. Packets carrying the proxy's masquerade mark are left to the proxy.
2. Pod to pod (source and destination in ``cluster_network``): no NAT.
3. From outside the cluster network to this node's ``local_subnet``: no NAT,
   so the client's source reaches local pods.
4. From a pod to anything outside the cluster network except multicast:
   masquerade (fully random source ports).
5. From outside the cluster network to another node's pods: masquerade, so
   replies return through this node.
6. FORWARD accepts packets from and to the cluster network.

Rules 1-5 apply only when ``ip_masq`` is on (flannel's ``--ip-masq``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: Multicast is never masqueraded (rule 4).
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")


@dataclass(frozen=True, slots=True)
class OverlayRules:
    """What the overlay needs from the node's packet filter (see the module docstring)."""

    cluster_network: ipaddress.IPv4Network
    local_subnet: ipaddress.IPv4Network | None
    ip_masq: bool

    @property
    def masquerade_exempt(self) -> tuple[ipaddress.IPv4Network, ...]:
        """Destinations whose traffic keeps its source, whatever its origin."""
        return (self.local_subnet,) if self.local_subnet is not None else ()
