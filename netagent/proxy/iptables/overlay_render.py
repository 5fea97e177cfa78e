"""The iptables rendering of the overlay's intent: masquerade pod traffic leaving the cluster.

The overlay says what it needs as backend-neutral intent
(:class:`netagent.overlay.rules_intent.OverlayRules`); this module is the
iptables mode's way of writing it, and another mode renders the same intent
into its own ruleset.

Why these rules: pod addresses mean nothing outside the cluster network, so
a pod's connection to the outside must leave with the node's address, while
traffic between pods must keep its source (NetworkPolicy and logs depend on
it). And a host whose FORWARD policy is DROP (Docker sets that) must still
forward pod traffic.

Pure: the output is a :class:`~netagent.proxy.iptables.rules.RenderedIptables`
(the proxy's vocabulary), a function of the arguments only, so the applier
can diff it and tests can trace it with :mod:`netagent.proxy.iptables.trace`.

nat ``NETAGENT-OVERLAY-POSTRTG`` (jumped from POSTROUTING), in order:

1. Packets with the proxy's masquerade mark: RETURN. The proxy's own
   POSTROUTING chain masquerades them and clears the mark; masquerading
   here as well would be harmless but would take the decision from it.
2. Pod to pod (source and destination in the cluster network): RETURN.
3. Outside the cluster network to this node's pod subnet: RETURN, so the
   source of traffic arriving for local pods (an externalTrafficPolicy=Local
   NodePort, a routed client) is kept.
4. Pod to anything outside the cluster network except multicast
   (224.0.0.0/4): MASQUERADE --random-fully (fully random source ports, so
   many pods' connections through one address do not clash).
5. Outside the cluster network (the host itself, or routed clients) to
   another node's pods: MASQUERADE, so the replies come back through this
   node (for VXLAN, the source becomes this node's ``flannel.<vni>`` address).

With ``ip_masq`` off the nat chain exists but is empty, as flannel installs
no masquerade rules then.

filter ``NETAGENT-OVERLAY-FWD`` (jumped from FORWARD): ACCEPT from and to the
cluster network.
"""

from __future__ import annotations

from netagent.model import IPFamily
from netagent.overlay.rules_intent import MULTICAST, OverlayRules
from netagent.proxy.iptables.rules import JumpRule, RenderedIptables

POSTROUTING_CHAIN = "NETAGENT-OVERLAY-POSTRTG"
FORWARD_CHAIN = "NETAGENT-OVERLAY-FWD"

JUMPS: tuple[JumpRule, ...] = (
    JumpRule("filter", "FORWARD", f'-m comment --comment "netagent overlay" -j {FORWARD_CHAIN}'),
    JumpRule(
        "nat", "POSTROUTING", f'-m comment --comment "netagent overlay" -j {POSTROUTING_CHAIN}'
    ),
)


def _rule(chain: str, matches: str, comment: str, target: str) -> str:
    return f'-A {chain} {matches}-m comment --comment "netagent overlay: {comment}" -j {target}'


def render_overlay_rules(
    intent: OverlayRules, *, masquerade_mark: int = 0x4000
) -> RenderedIptables:
    """The overlay's chains and jump rules (see the module docstring for the rules)."""
    network, ip_masq = intent.cluster_network, intent.ip_masq
    local_subnet = intent.local_subnet
    post = POSTROUTING_CHAIN
    nat: tuple[str, ...] = ()
    if ip_masq:
        mark = hex(masquerade_mark)
        rules = [
            _rule(post, f"-m mark --mark {mark}/{mark} ", "masqueraded by the proxy", "RETURN"),
            _rule(post, f"-s {network} -d {network} ", "pod to pod, no NAT", "RETURN"),
        ]
        if local_subnet is not None:
            rules.append(
                _rule(
                    post,
                    f"! -s {network} -d {local_subnet} ",
                    "to local pods, source kept",
                    "RETURN",
                )
            )
        rules += [
            _rule(
                post,
                f"-s {network} ! -d {MULTICAST} ",
                "pod to outside",
                "MASQUERADE --random-fully",
            ),
            _rule(
                post,
                f"! -s {network} -d {network} ",
                "to remote pods from outside",
                "MASQUERADE --random-fully",
            ),
        ]
        nat = tuple(rules)
    fwd = (
        _rule(FORWARD_CHAIN, f"-s {network} ", "from pods", "ACCEPT"),
        _rule(FORWARD_CHAIN, f"-d {network} ", "to pods", "ACCEPT"),
    )
    return RenderedIptables(
        family=IPFamily.IPV4,
        tables={"filter": {FORWARD_CHAIN: fwd}, "nat": {post: nat}},
        jumps=JUMPS,
    )
