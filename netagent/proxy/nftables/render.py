"""Render a ProxyState into netagent's nftables table: constant chains, Services as elements.

Why this shape: in nftables a chain costs far more to load than a map
element (PERF.md: a chain per endpoint loads 10,000 services in minutes, a
map of endpoint slots in seconds, and stays linear). So no chain here is
per service or per endpoint, except for the rare ClientIP-affinity service:

* **Dispatch.** ``services`` (from nat prerouting and output) looks the
  destination up in the verdict map ``service-ips`` (``daddr . l4proto .
  dport``), then node ports in ``service-nodeports`` (``l4proto . dport``,
  for local destinations). The verdict is a ``goto`` into a shared
  balancing chain named after what it does and how many endpoints it
  chooses from: ``cluster-3``, ``external-2``, ``external-local-3-1``,
  ``nodeport-2``, ``nodeport-local-3-1``.
* **Endpoint choice.** A balancing chain for N endpoints marks for
  masquerade what must be masqueraded, then ``dnat to daddr . l4proto .
  dport . numgen random mod N map @service-endpoints``: the frontend's
  slots 0..N-1 are map elements whose value is the endpoint (``ip .
  port``). Local-policy lists live in ``local-endpoints``; node ports in
  ``nodeport-endpoints`` and ``nodeport-local-endpoints``, keyed without
  the address. Which endpoints each list holds comes from the shared
  :func:`~netagent.proxy.endpoint_selection.select_endpoints`, so
  readiness, terminating fallback, topology hints and both traffic policies
  mean what they mean in iptables mode.
* **externalTrafficPolicy=Local.** ``external-local-N-M``: pods go to any
  of the N cluster-policy endpoints with their source kept; the host itself
  is marked for masquerade and goes to any of them too; everything else
  goes to the M local endpoints, source kept. With M = 0 outside traffic is
  not translated and the post-DNAT check drops it.
* **No endpoints, unknown ports.** The filter chains at input, forward and
  output run *after* DNAT: a new connection whose destination is still a
  frontend listed in ``no-endpoint-services`` (or a local node port in
  ``no-endpoint-nodeports``) was not translated, and gets that map's
  verdict: ``goto reject-chain`` when the service has no endpoint at all,
  ``drop`` when it has endpoints but none for this traffic. A destination
  still in ``cluster-ips`` was a cluster IP on a port no Service has:
  rejected.
* **loadBalancerSourceRanges.** Before DNAT (prerouting and output,
  priority dstnat - 10), a new connection to a firewalled LB frontend
  (``firewall-ips``) is dropped unless ``daddr . l4proto . dport . saddr``
  is in the interval set ``firewall-allow``.
* **Masquerade and hairpin.** ``masquerading`` (nat postrouting)
  masquerades packets carrying the masquerade mark and clears the mark, and
  masquerades translated connections from a local endpoint to itself
  (``hairpin`` holds ``ip . ip`` pairs for local endpoints), which would
  otherwise be answered directly by the pod and dropped.
* **ClientIP affinity** needs per-client memory, and nftables can record a
  client only in a dynamic set, in the rule that already knows the
  endpoint. (A dynamic map whose value is a ``numgen`` map lookup would do
  it without chains, but nft 1.0.6 rejects that syntax.) So an affinity
  service port gets chains of its own: one per endpoint
  (``update @set { saddr }`` + DNAT, one dynamic set with the timeout
  each) and one per endpoint list that checks the sets first and then
  picks by ``numgen``. This scales with affinity services x endpoints, not
  with every service.

Pure: the output is a function of the state (and, for the stable slot order
of :class:`NftablesRenderer`, of the previous render), with no I/O.
Services are visited in name order and every list is sorted, so equal input
gives an equal render.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from netagent.model import (
    Endpoint,
    IPAddress,
    IPFamily,
    IPNetwork,
    NodeInfo,
    ProxyConfig,
    ProxyState,
    ServicePort,
    ServicePortName,
    SessionAffinity,
)
from netagent.overlay.rules_intent import MULTICAST, OverlayRules
from netagent.proxy.endpoint_selection import select_endpoints
from netagent.proxy.nftables.ruleset import (
    Element,
    Frontend,
    NftChain,
    NftSet,
    RenderedNft,
    ServiceFragment,
    Skeleton,
)

log = logging.getLogger(__name__)

# Set and map names.
CLUSTER_IPS = "cluster-ips"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
SERVICE_ENDPOINTS = "service-endpoints"
LOCAL_ENDPOINTS = "local-endpoints"
NODEPORT_ENDPOINTS = "nodeport-endpoints"
NODEPORT_LOCAL_ENDPOINTS = "nodeport-local-endpoints"
FIREWALL_IPS = "firewall-ips"
FIREWALL_ALLOW = "firewall-allow"
HAIRPIN = "hairpin"

# Chain names of the skeleton.
SERVICES = "services"
MASQUERADING = "masquerading"
SERVICE_CHECKS = "service-checks"
FIREWALL_CHECK = "firewall-check"
REJECT_CHAIN = "reject-chain"
OVERLAY_POSTROUTING = "overlay-postrouting"
OVERLAY_FORWARD = "overlay-forward"

REJECT = f"goto {REJECT_CHAIN}"
DROP = "drop"

#: ClientIP affinity sets hold at most this many clients (nft's default size).
AFFINITY_SET_SIZE = 65535


@dataclass(frozen=True, slots=True)
class _Context:
    """What every rule depends on besides the service: family spelling and proxy config."""

    version: int
    node: NodeInfo
    ip: str  # "ip" / "ip6"
    addr_type: str  # "ipv4_addr" / "ipv6_addr"
    loopback: str
    mark: str  # "0x00004000"
    masquerade_all: bool
    pod_cidrs: tuple[str, ...]
    node_addresses: tuple[IPAddress, ...]
    node_pod_cidrs: tuple[IPNetwork, ...]
    nodeport_match: str


def _hex_mark(bit: int) -> str:
    return f"0x{1 << bit:08x}"


def _anon(values: Sequence[str]) -> str:
    """A match value as nft prints it: bare for one value, ``{ a, b }`` for several."""
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _family_nets(nets: Sequence[IPNetwork], version: int) -> list[IPNetwork]:
    return sorted({n for n in nets if n.version == version}, key=lambda n: (int(n[0]), n.prefixlen))


def _nodeport_match(config: ProxyConfig, ip: str, version: int, loopback: str) -> str:
    """The match that says "this destination serves node ports" (before ``meta l4proto``).

    nftables mode never serves node ports on loopback addresses, as
    kube-proxy's nftables mode: that needs route_localnet, which opens
    the node to martian packets (CVE-2020-8558).
    """
    cidrs = _family_nets(config.nodeport_addresses, version)
    if not cidrs or any(n.prefixlen == 0 for n in cidrs):
        return f"fib daddr type local {ip} daddr != {loopback}"
    return f"{ip} daddr {_anon([str(n) for n in cidrs])} fib daddr type local"


def context_for(config: ProxyConfig, node: NodeInfo, family: IPFamily) -> _Context:
    """The render context of one family."""
    version = 4 if family is IPFamily.IPV4 else 6
    ip = "ip" if version == 4 else "ip6"
    loopback = "127.0.0.0/8" if version == 4 else "::1"
    return _Context(
        version=version,
        node=node,
        ip=ip,
        addr_type="ipv4_addr" if version == 4 else "ipv6_addr",
        loopback=loopback,
        mark=_hex_mark(config.masquerade_bit),
        masquerade_all=config.masquerade_all,
        pod_cidrs=tuple(str(n) for n in _family_nets(config.cluster_cidrs, version)),
        node_addresses=tuple(a for a in node.addresses if a.version == version),
        node_pod_cidrs=tuple(_family_nets(node.pod_cidrs, version)),
        nodeport_match=_nodeport_match(config, ip, version, loopback),
    )


# ---- the skeleton ---------------------------------------------------------------------------


PROTOCOLS = ("tcp", "udp", "sctp")


def endpoint_map(base: str, proto: str) -> str:
    """The name of one protocol's endpoint-slot map (``service-endpoints-tcp``)."""
    return f"{base}-{proto}"


def _skeleton_sets(ctx: _Context) -> tuple[NftSet, ...]:
    a, ip = ctx.addr_type, ctx.ip
    frontend = f"type {a} . inet_proto . inet_service"
    sets = [
        NftSet(CLUSTER_IPS, (f"type {a}",)),
        NftSet(SERVICE_IPS, (f"{frontend} : verdict",), is_map=True),
        NftSet(SERVICE_NODEPORTS, ("type inet_proto . inet_service : verdict",), is_map=True),
        NftSet(NO_ENDPOINT_SERVICES, (f"{frontend} : verdict",), is_map=True),
        NftSet(NO_ENDPOINT_NODEPORTS, ("type inet_proto . inet_service : verdict",), is_map=True),
        NftSet(FIREWALL_IPS, (frontend,)),
        NftSet(FIREWALL_ALLOW, (f"{frontend} . {a}", "flags interval")),
        NftSet(HAIRPIN, (f"type {a} . {a}",)),
    ]
    # One endpoint-slot map per protocol. ``typeof`` with the protocol's own port
    # field: nft then adds the protocol check the DNAT needs, and (unlike ``th
    # dport``, verified with nft 1.0.6) a rule added in a later transaction against
    # the map is accepted ("conflicting protocols specified: ip vs. th" otherwise).
    for proto in PROTOCOLS:
        value = f"{ip} daddr . {proto} dport"
        by_address = f"typeof {ip} daddr . {proto} dport . numgen random mod 1 : {value}"
        by_port = f"typeof {proto} dport . numgen random mod 1 : {value}"
        for base, decl in (
            (SERVICE_ENDPOINTS, by_address),
            (LOCAL_ENDPOINTS, by_address),
            (NODEPORT_ENDPOINTS, by_port),
            (NODEPORT_LOCAL_ENDPOINTS, by_port),
        ):
            sets.append(NftSet(endpoint_map(base, proto), (decl,), is_map=True))
    return tuple(sets)


def _overlay_chains(intent: OverlayRules) -> tuple[NftChain, NftChain]:
    """The overlay's intent (see :mod:`netagent.overlay.rules_intent`) as two chains.

    Rule 1 of the intent (leave marked packets to the proxy) holds by
    construction: ``masquerading`` runs first and its masquerade ends the
    evaluation of a marked packet.
    """
    net = str(intent.cluster_network)
    post: list[str] = []
    if intent.ip_masq:
        post.append(f"ip saddr {net} ip daddr {net} return")
        if intent.local_subnet is not None:
            post.append(f"ip saddr != {net} ip daddr {intent.local_subnet} return")
        post.append(f"ip saddr {net} ip daddr != {MULTICAST} masquerade fully-random")
        post.append(f"ip saddr != {net} ip daddr {net} masquerade fully-random")
    forward = (f"ip saddr {net} accept", f"ip daddr {net} accept")
    return NftChain(OVERLAY_POSTROUTING, tuple(post)), NftChain(OVERLAY_FORWARD, forward)


def render_skeleton(ctx: _Context, overlay: OverlayRules | None) -> Skeleton:
    """Base chains, dispatch and checks: the part of the table no Service changes."""
    ip, mark = ctx.ip, ctx.mark
    frontend = f"{ip} daddr . meta l4proto . th dport"
    post = [f"jump {MASQUERADING}"]
    forward = ["ct state invalid drop", f"ct state new jump {SERVICE_CHECKS}"]
    chains = [
        NftChain(
            "nat-prerouting",
            (f"jump {SERVICES}",),
            "type nat hook prerouting priority dstnat; policy accept;",
        ),
        NftChain(
            "nat-output",
            (f"jump {SERVICES}",),
            "type nat hook output priority -100; policy accept;",
        ),
        NftChain(
            "filter-prerouting",
            (f"ct state new jump {FIREWALL_CHECK}",),
            "type filter hook prerouting priority dstnat - 10; policy accept;",
        ),
        NftChain(
            "filter-output-pre-dnat",
            (f"ct state new jump {FIREWALL_CHECK}",),
            "type filter hook output priority -110; policy accept;",
        ),
        NftChain(
            "filter-input",
            (
                f"ct state new jump {SERVICE_CHECKS}",
                f"ct state new {ctx.nodeport_match} meta l4proto . th dport"
                f" vmap @{NO_ENDPOINT_NODEPORTS}",
            ),
            "type filter hook input priority -10; policy accept;",
        ),
        NftChain(
            "filter-output",
            (f"ct state new jump {SERVICE_CHECKS}",),
            "type filter hook output priority -10; policy accept;",
        ),
        NftChain(
            SERVICES,
            (
                f"{frontend} vmap @{SERVICE_IPS}",
                f"{ctx.nodeport_match} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
            ),
        ),
        NftChain(
            MASQUERADING,
            (
                f"meta mark & {mark} == {mark} meta mark set meta mark ^ {mark}"
                " masquerade fully-random",
                f"ct status dnat {ip} saddr . {ip} daddr @{HAIRPIN} masquerade fully-random",
            ),
        ),
        NftChain(
            SERVICE_CHECKS,
            (f"{frontend} vmap @{NO_ENDPOINT_SERVICES}", f"{ip} daddr @{CLUSTER_IPS} reject"),
        ),
        NftChain(
            FIREWALL_CHECK,
            (f"{frontend} @{FIREWALL_IPS} {frontend} . {ip} saddr != @{FIREWALL_ALLOW} drop",),
        ),
        NftChain(REJECT_CHAIN, ("reject",)),
    ]
    if overlay is not None:
        if ctx.version != 4:
            raise ValueError("the overlay's rules are IPv4 only")
        post.append(f"jump {OVERLAY_POSTROUTING}")
        forward.append(f"jump {OVERLAY_FORWARD}")
        chains.extend(_overlay_chains(overlay))
    chains.append(
        NftChain(
            "nat-postrouting",
            tuple(post),
            "type nat hook postrouting priority srcnat; policy accept;",
        )
    )
    chains.append(
        NftChain(
            "filter-forward",
            tuple(forward),
            "type filter hook forward priority -10; policy accept;",
        )
    )
    return Skeleton(sets=_skeleton_sets(ctx), chains=tuple(sorted(chains, key=lambda c: c.name)))


# ---- shared balancing chains ----------------------------------------------------------------


def _masq_unless_pod(ctx: _Context) -> tuple[str, ...]:
    """The cluster-IP masquerade rule: everything with masqueradeAll, else non-pod sources."""
    set_mark = f"meta mark set meta mark | {ctx.mark}"
    if ctx.masquerade_all:
        return (set_mark,)
    if ctx.pod_cidrs:
        return (f"{ctx.ip} saddr != {_anon(ctx.pod_cidrs)} {set_mark}",)
    return ()


def _dnat(ctx: _Context, key: str, n: int, map_name: str) -> str:
    return f"dnat {ctx.ip} to {key} . numgen random mod {n} map @{map_name}"


_SHARED_NAME = re.compile(
    r"^(cluster|external|nodeport|external-local|nodeport-local)-(tcp|udp|sctp)-(\d+)(?:-(\d+))?$"
)


def shared_chain(name: str, ctx: _Context) -> NftChain:
    """The rules of the shared balancing chain ``name`` (``cluster-tcp-3``, ...)."""
    match = _SHARED_NAME.match(name)
    if match is None:
        raise ValueError(f"unknown shared chain {name!r}")
    kind, proto = match.group(1), match.group(2)
    first, second = int(match.group(3)), int(match.group(4) or 0)
    set_mark = f"meta mark set meta mark | {ctx.mark}"
    by_address = f"{ctx.ip} daddr . {proto} dport"
    by_port = f"{proto} dport"
    service_map = endpoint_map(SERVICE_ENDPOINTS, proto)
    nodeport_map = endpoint_map(NODEPORT_ENDPOINTS, proto)
    if kind == "cluster":
        rules = (*_masq_unless_pod(ctx), _dnat(ctx, by_address, first, service_map))
    elif kind == "external":
        rules = (set_mark, _dnat(ctx, by_address, first, service_map))
    elif kind == "nodeport":
        rules = (set_mark, _dnat(ctx, by_port, first, nodeport_map))
    else:
        if kind == "external-local":
            key, any_map = by_address, service_map
            local_map = endpoint_map(LOCAL_ENDPOINTS, proto)
        else:
            key, any_map = by_port, nodeport_map
            local_map = endpoint_map(NODEPORT_LOCAL_ENDPOINTS, proto)
        out: list[str] = []
        if ctx.pod_cidrs:
            out.append(f"{ctx.ip} saddr {_anon(ctx.pod_cidrs)} {_dnat(ctx, key, first, any_map)}")
        out.append(f"fib saddr type local {set_mark} {_dnat(ctx, key, first, any_map)}")
        if second:
            out.append(_dnat(ctx, key, second, local_map))
        rules = tuple(out)
    return NftChain(name, rules)


# ---- one service port -----------------------------------------------------------------------


def _addr(ip: IPAddress) -> str:
    return str(ip)


def _net_text(net: IPNetwork) -> str:
    """A network as nft prints an interval element: a host route without its prefix."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _endpoint_text(ep: Endpoint) -> str:
    """An endpoint as a map value: ``ip . port``."""
    return f"{ep.ip} . {ep.port}"


def stable_slots(previous: Sequence[str], current: Sequence[str]) -> tuple[str, ...]:
    """``current``'s endpoints in slot order, keeping every remaining endpoint in its old slot.

    New endpoints fill the slots freed by removed ones, then go at the end;
    when the list shrinks, the last slots move into the remaining holes. So
    adding or removing one endpoint rewrites at most two slots.
    """
    wanted = set(current)
    slots: list[str | None] = [e if e in wanted else None for e in previous]
    known = set(previous)
    fresh = [e for e in current if e not in known]
    for i, e in enumerate(slots):
        if e is None and fresh:
            slots[i] = fresh.pop(0)
    slots.extend(fresh)
    while None in slots:
        last = slots.pop()
        if last is None:
            continue
        slots[slots.index(None)] = last
    return tuple(e for e in slots if e is not None)


def _port_key(name: ServicePortName, protocol: str) -> str:
    digest = hashlib.sha256(f"{name}/{protocol}".encode()).hexdigest()
    return digest[:12]


def _is_local(ep: Endpoint, ctx: _Context) -> bool:
    return ep.is_local or any(ep.ip in net for net in ctx.node_pod_cidrs)


class _Sticky:
    """Chains and sets of one ClientIP-affinity service port (see the module docstring)."""

    def __init__(self, svc: ServicePort, ctx: _Context) -> None:
        self.ctx = ctx
        self.key = "sticky-" + _port_key(svc.name, svc.protocol.value)
        self.proto = svc.protocol.lowercase
        self.timeout = svc.sticky_seconds
        self.chains: dict[str, NftChain] = {}
        self.sets: dict[str, NftSet] = {}

    def _endpoint(self, ep: Endpoint) -> str:
        digest = hashlib.sha256(f"{self.key}/{ep}".encode()).hexdigest()[:8]
        name = f"{self.key}-ep-{digest}"
        if name not in self.chains:
            target = f"{ep.ip}:{ep.port}" if ep.ip.version == 4 else f"[{ep.ip}]:{ep.port}"
            self.sets[name] = NftSet(
                name,
                (
                    f"type {self.ctx.addr_type}",
                    f"size {AFFINITY_SET_SIZE}",
                    "flags dynamic,timeout",
                    f"timeout {self.timeout}s",
                ),
                dynamic=True,
            )
            self.chains[name] = NftChain(
                name,
                (
                    f"update @{name} {{ {self.ctx.ip} saddr }}",
                    f"meta l4proto {self.proto} dnat to {target}",
                ),
            )
        return name

    def pick(self, list_name: str, endpoints: Sequence[Endpoint]) -> str:
        """A chain that sends a known client to its endpoint, else picks one at random."""
        name = f"{self.key}-{list_name}"
        if name not in self.chains:
            targets = [self._endpoint(ep) for ep in endpoints]
            rules = [f"{self.ctx.ip} saddr @{t} goto {t}" for t in targets]
            if len(targets) == 1:
                rules.append(f"goto {targets[0]}")
            else:
                choices = ", ".join(f"{i} : goto {t}" for i, t in enumerate(targets))
                rules.append(f"numgen random mod {len(targets)} vmap {{ {choices} }}")
            self.chains[name] = NftChain(name, tuple(rules))
        return name

    def frontend_chain(self, suffix: str, rules: Sequence[str]) -> str:
        name = f"{self.key}-{suffix}"
        self.chains[name] = NftChain(name, tuple(rules))
        return name


def render_fragment(
    svc: ServicePort,
    endpoints: Sequence[Endpoint],
    ctx: _Context,
    previous: ServiceFragment | None = None,
) -> ServiceFragment:
    """Every element (and, for affinity, chain) of one service port."""
    v = ctx.version
    cluster_ips = [ip for ip in svc.cluster_ips if ip.version == v]
    if not cluster_ips:
        return ServiceFragment(owner=svc.name)
    usable = [ep for ep in endpoints if ep.ip.version == v]
    sel = select_endpoints(svc, usable, ctx.node)
    proto = svc.protocol.lowercase
    port = svc.port
    has_any = sel.has_any_endpoints
    sticky = _Sticky(svc, ctx) if svc.session_affinity is SessionAffinity.CLIENT_IP else None

    slot_lists: dict[str, tuple[str, ...]] = {}

    def slots(list_name: str, eps: Sequence[Endpoint]) -> tuple[str, ...]:
        texts = [_endpoint_text(ep) for ep in eps]
        before = previous.slot_list(list_name) if previous is not None else ()
        ordered = stable_slots(before, texts)
        slot_lists[list_name] = ordered
        return ordered

    shared_chains: set[str] = set()
    frontends: list[Frontend] = []
    set_mark = f"meta mark set meta mark | {ctx.mark}"
    pods = _anon(ctx.pod_cidrs) if ctx.pod_cidrs else ""

    internal_list = "local" if svc.internal_policy_local else "any"
    cluster_slots = slots(internal_list, sel.cluster) if sel.cluster else ()
    any_slots = slots("any", sel.cluster_policy) if sel.cluster_policy else ()
    local_slots = slots("local", sel.local) if sel.local else ()

    def slot_elements(base: str, key: str, ordered: Sequence[str]) -> list[Element]:
        map_name = endpoint_map(base, proto)
        return [(map_name, f"{key} . {i}", ep) for i, ep in enumerate(ordered)]

    def sticky_external() -> str:
        assert sticky is not None
        if not svc.external_policy_local:
            return sticky.frontend_chain(
                "external", (set_mark, f"goto {sticky.pick('any', sel.cluster_policy)}")
            )
        rules: list[str] = []
        any_chain = sticky.pick("any", sel.cluster_policy)
        if pods:
            rules.append(f"{ctx.ip} saddr {pods} goto {any_chain}")
        rules.append(f"fib saddr type local {set_mark} goto {any_chain}")
        if sel.local:
            rules.append(f"goto {sticky.pick('local', sel.local)}")
        return sticky.frontend_chain("external-local", rules)

    # Cluster IPs.
    for ip in cluster_ips:
        key = f"{_addr(ip)} . {proto} . {port}"
        if sel.cluster:
            if sticky is not None:
                chain = sticky.frontend_chain(
                    "cluster",
                    (*_masq_unless_pod(ctx), f"goto {sticky.pick(internal_list, sel.cluster)}"),
                )
                elements: list[Element] = [(SERVICE_IPS, key, f"goto {chain}")]
            else:
                chain = f"cluster-{proto}-{len(cluster_slots)}"
                shared_chains.add(chain)
                elements = [(SERVICE_IPS, key, f"goto {chain}")]
                elements += slot_elements(SERVICE_ENDPOINTS, f"{_addr(ip)} . {port}", cluster_slots)
            frontends.append(
                Frontend(key, "cluster IP", f"goto {chain}", tuple(elements), cluster_slots)
            )
        else:
            verdict = DROP if has_any else REJECT
            frontends.append(
                Frontend(key, "cluster IP", verdict, ((NO_ENDPOINT_SERVICES, key, verdict),))
            )

    # External and load-balancer IPs.
    source_ranges = [n for n in svc.load_balancer_source_ranges if n.version == v]
    addresses = [("external IP", ip) for ip in svc.external_ips if ip.version == v]
    addresses += [("load balancer IP", ip) for ip in svc.load_balancer_ips if ip.version == v]
    for kind, ip in addresses:
        key = f"{_addr(ip)} . {proto} . {port}"
        slot_key = f"{_addr(ip)} . {port}"
        elements = []
        reached: tuple[str, ...] = ()
        if not has_any:
            verdict = REJECT
            elements.append((NO_ENDPOINT_SERVICES, key, verdict))
        else:
            if sticky is not None:
                verdict = f"goto {sticky_external()}"
            elif svc.external_policy_local:
                chain = f"external-local-{proto}-{len(any_slots)}-{len(local_slots)}"
                shared_chains.add(chain)
                verdict = f"goto {chain}"
                elements += slot_elements(SERVICE_ENDPOINTS, slot_key, any_slots)
                elements += slot_elements(LOCAL_ENDPOINTS, slot_key, local_slots)
            else:
                chain = f"external-{proto}-{len(any_slots)}"
                shared_chains.add(chain)
                verdict = f"goto {chain}"
                elements += slot_elements(SERVICE_ENDPOINTS, slot_key, any_slots)
            elements.insert(0, (SERVICE_IPS, key, verdict))
            reached = local_slots if svc.external_policy_local else any_slots
            if not sel.external:
                elements.append((NO_ENDPOINT_SERVICES, key, DROP))
            if kind == "load balancer IP" and source_ranges:
                elements.append((FIREWALL_IPS, key, ""))
                allowed = list(source_ranges)
                if any(a in n for n in source_ranges for a in ctx.node_addresses):
                    # The node's own requests to a VIP-style LB address carry it as source.
                    allowed.append(ipaddress.ip_network(ip))
                # Collapsed: nft refuses overlapping intervals in a concatenated interval
                # set ("File exists"), and the API lets ranges overlap (0.0.0.0/0 with
                # 10.0.0.0/8, or a range holding the LB address); found by fuzzing.
                elements += [
                    (FIREWALL_ALLOW, f"{key} . {_net_text(net)}", "")
                    for net in ipaddress.collapse_addresses(allowed)  # type: ignore[type-var]
                ]
        frontends.append(Frontend(key, kind, verdict, tuple(elements), reached))

    # The node port.
    if svc.node_port:
        key = f"{proto} . {svc.node_port}"
        elements = []
        reached = ()
        if not has_any:
            verdict = REJECT
            elements.append((NO_ENDPOINT_NODEPORTS, key, verdict))
        else:
            if sticky is not None:
                verdict = f"goto {sticky_external()}"
            elif svc.external_policy_local:
                chain = f"nodeport-local-{proto}-{len(any_slots)}-{len(local_slots)}"
                shared_chains.add(chain)
                verdict = f"goto {chain}"
                elements += slot_elements(NODEPORT_ENDPOINTS, str(svc.node_port), any_slots)
                elements += slot_elements(NODEPORT_LOCAL_ENDPOINTS, str(svc.node_port), local_slots)
            else:
                chain = f"nodeport-{proto}-{len(any_slots)}"
                shared_chains.add(chain)
                verdict = f"goto {chain}"
                elements += slot_elements(NODEPORT_ENDPOINTS, str(svc.node_port), any_slots)
            elements.insert(0, (SERVICE_NODEPORTS, key, verdict))
            reached = local_slots if svc.external_policy_local else any_slots
            if not sel.external:
                elements.append((NO_ENDPOINT_NODEPORTS, key, DROP))
        claim = f"node port {key}"
        frontends.append(Frontend(claim, "node port", verdict, tuple(elements), reached))

    shared: list[tuple[str, str]] = [(CLUSTER_IPS, _addr(ip)) for ip in cluster_ips]
    hairpin = sorted(
        {_addr(ep.ip) for ep in sel.all_reachable if _is_local(ep, ctx)},
        key=lambda a: int(ipaddress.ip_address(a)),
    )
    shared += [(HAIRPIN, f"{a} . {a}") for a in hairpin]
    return ServiceFragment(
        owner=svc.name,
        frontends=tuple(frontends),
        shared_elements=tuple(shared),
        shared_chains=tuple(sorted(shared_chains)),
        chains=tuple(sticky.chains[n] for n in sorted(sticky.chains)) if sticky else (),
        sets=tuple(sticky.sets[n] for n in sorted(sticky.sets)) if sticky else (),
        slots=tuple(sorted(slot_lists.items())),
    )


# ---- the whole table ------------------------------------------------------------------------


def _without_conflicts(
    fragments: dict[ServicePortName, ServiceFragment],
) -> tuple[dict[ServicePortName, ServiceFragment], list[str]]:
    """Drop frontends claimed by an earlier service port (in name order), naming each conflict."""
    claimed: dict[str, ServicePortName] = {}
    conflicts: list[str] = []
    out: dict[ServicePortName, ServiceFragment] = {}
    for name in sorted(fragments):
        fragment = fragments[name]
        keep: list[Frontend] = []
        for frontend in fragment.frontends:
            owner = claimed.get(frontend.claim)
            if owner is None:
                claimed[frontend.claim] = name
                keep.append(frontend)
            else:
                conflicts.append(
                    f"service port {name}: {frontend.kind} {frontend.claim} is already"
                    f" used by {owner}; not programmed for {name}"
                )
        if len(keep) != len(fragment.frontends):
            fragment = replace(fragment, frontends=tuple(keep))
        out[name] = fragment
    return out, conflicts


_Entry = tuple[ServicePort, tuple[Endpoint, ...], ServiceFragment]


@dataclass(slots=True)
class _Memo:
    """The last render of one family: its context, each service port's fragment, and claims.

    ``claims`` maps every frontend to the service port that claims it, kept
    up to date by each render for the fragments that changed, so a render
    finds a frontend claimed twice without visiting every frontend. While
    any conflict exists, renders resolve them with a full pass in name order.
    """

    key: tuple[IPFamily, ProxyConfig, NodeInfo, OverlayRules | None]
    ctx: _Context
    skeleton: Skeleton
    entries: dict[ServicePortName, _Entry]
    claims: dict[str, ServicePortName] = field(default_factory=dict)
    conflicted: bool = False


def _release(
    claims: dict[str, ServicePortName], name: ServicePortName, old: ServiceFragment
) -> None:
    for frontend in old.frontends:
        if claims.get(frontend.claim) == name:
            del claims[frontend.claim]


def _claim(claims: dict[str, ServicePortName], name: ServicePortName, new: ServiceFragment) -> bool:
    """Record ``new``'s frontends as ``name``'s; False when another service port holds one."""
    clean = True
    for frontend in new.frontends:
        owner = claims.setdefault(frontend.claim, name)
        if owner != name:
            clean = False
    return clean


class NftablesRenderer:
    """Renders ``ProxyState`` into :class:`RenderedNft`, reusing unchanged service ports.

    One per proxier (so one per family). A service port whose ServicePort
    and endpoints compare equal to the last render's gets the same fragment
    object back, which is what lets a sync diff only what changed; a changed
    one keeps its endpoints' slots (:func:`stable_slots`). Anything every
    rule depends on (family, proxy config, node, overlay) empties the memo.
    """

    def __init__(self) -> None:
        self._memo: _Memo | None = None

    def render(self, state: ProxyState, overlay: OverlayRules | None = None) -> RenderedNft:
        """The complete table for ``state``."""
        memo = self._memo_for(state, overlay)
        previous = memo.entries
        claims = memo.claims
        current: dict[ServicePortName, _Entry] = {}
        empty: tuple[Endpoint, ...] = ()
        endpoints = state.endpoints
        conflicted = memo.conflicted
        found = 0
        # Dict order, not name order: only conflicts depend on the order, and they
        # are resolved by name below. Sorting 10,000 names would cost more than
        # everything else an unchanged service port costs here.
        for name, svc in state.services.items():
            eps = endpoints.get(name, empty)
            hit = previous.get(name)
            if hit is not None:
                found += 1
                if (hit[0] is svc or hit[0] == svc) and (hit[1] is eps or hit[1] == eps):
                    current[name] = hit
                    continue
                _release(claims, name, hit[2])
            fragment = render_fragment(svc, eps, memo.ctx, hit[2] if hit else None)
            current[name] = (svc, eps, fragment)
            if not _claim(claims, name, fragment):
                conflicted = True
        if found < len(previous):
            for name in previous.keys() - current.keys():
                _release(claims, name, previous[name][2])
        memo.entries = current
        fragments = {name: entry[2] for name, entry in current.items()}
        conflicts: list[str] = []
        if conflicted:
            fragments, conflicts = _without_conflicts(fragments)
            for conflict in conflicts:
                log.warning("%s", conflict)
            memo.claims = claims = {}
            for name, fragment in fragments.items():
                _claim(claims, name, fragment)
            memo.conflicted = bool(conflicts)
        names: set[str] = set()
        for fragment in fragments.values():
            names.update(fragment.shared_chains)
        return RenderedNft(
            family=state.family,
            skeleton=memo.skeleton,
            shared_chains={n: shared_chain(n, memo.ctx) for n in sorted(names)},
            fragments=fragments,
            conflicts=tuple(conflicts),
        )

    def _memo_for(self, state: ProxyState, overlay: OverlayRules | None) -> _Memo:
        version = 4 if state.family is IPFamily.IPV4 else 6
        node = NodeInfo(
            name=state.node.name,
            addresses=tuple(a for a in state.node.addresses if a.version == version),
            pod_cidrs=tuple(n for n in state.node.pod_cidrs if n.version == version),
            zone=state.node.zone,
        )
        key = (state.family, state.config, node, overlay)
        memo = self._memo
        if memo is None or memo.key != key:
            ctx = context_for(state.config, node, state.family)
            memo = _Memo(key, ctx, render_skeleton(ctx, overlay), {})
            self._memo = memo
        return memo


def render_nftables(state: ProxyState, overlay: OverlayRules | None = None) -> RenderedNft:
    """The complete table for ``state``, rendered cold (endpoints in sorted slot order)."""
    return NftablesRenderer().render(state, overlay)
