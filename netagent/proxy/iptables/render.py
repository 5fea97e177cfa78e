"""Render a ProxyState into the iptables ruleset kube-proxy's iptables mode would program.

Why pure and why this shape: the renderer is a function of its input and
nothing else (no I/O, no clock, no randomness), so golden files and the
packet tracer can check it without root, and the applier can diff two
renders chain by chain to write only what changed. Services are visited in
ServicePortName order and endpoints in (ip, port) order, so equal input
gives byte-identical output.

Packet paths (nat table unless said otherwise):

* PREROUTING and OUTPUT jump to ``NETAGENT-SERVICES``. It holds one rule per
  cluster IP, external IP and LB IP of every service port, then, last, the
  jump to ``NETAGENT-NODEPORTS`` for packets to a local address (or to the
  configured NodePort CIDRs).
* A cluster IP goes to the service's SVC chain (SVL under
  internalTrafficPolicy=Local). The first rule of that chain marks for
  masquerade what must be masqueraded: everything with masquerade_all, else
  sources outside the pod CIDRs (off-cluster clients routed to the VIP).
* External IPs, LB IPs and NodePorts go to the EXT chain (LB IPs with
  loadBalancerSourceRanges pass the FW chain first). Under Cluster policy EXT
  marks for masquerade and goes to SVC. Under Local policy pod-sourced
  traffic goes to SVC, host-sourced traffic is marked and goes to SVC, and
  everything else goes to SVL, source kept.
* SVC/SVL pick an endpoint: ClientIP affinity checks (``recent --rcheck``)
  first, then ``statistic`` rules with probability 1/(n-i) and an
  unconditional last rule. Each endpoint's SEP chain marks hairpin traffic
  (an endpoint reaching itself), records affinity, and DNATs.
* POSTROUTING's ``NETAGENT-POSTROUTING`` masquerades marked packets and
  clears the mark so that it does not leak into later decisions.
* filter: ``NETAGENT-SERVICES`` and ``NETAGENT-EXTERNAL-SERVICES`` REJECT new
  connections to services without endpoints (so clients fail at once, not
  after a timeout) and DROP external traffic to Local-policy services
  without a local endpoint. The nat table cannot drop, so LB source ranges
  work in two halves: the FW chain lets allowed sources through to DNAT, and
  ``NETAGENT-PROXY-FIREWALL`` drops what still targets the LB IP, i.e. what
  the FW chain did not let through. ``NETAGENT-FORWARD`` accepts marked and
  established traffic despite a FORWARD DROP policy; ``NETAGENT-FIREWALL``
  drops martian packets to 127.0.0.0/8 when localhost NodePorts are on
  (route_localnet=1 would otherwise let them in, CVE-2020-8558).

Speed: at 10,000 services x 10 endpoints the payload has ~300,000 rules and
iptables-restore needs ~17 s for it; rendering must stay a small fraction of
that. Each service port's rules are built with plain string formatting and
memoised per service port: a render reuses the previous render's output for
every service port whose ServicePort and endpoint tuple compare equal, and
the memo holds exactly the last render's service ports, so it cannot grow.
Anything that changes the rules of every service (config, node, family)
empties it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from socket import inet_ntoa

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
from netagent.proxy.endpoint_selection import EndpointSelection, select_endpoints
from netagent.proxy.iptables import chain_names as cn
from netagent.proxy.iptables.rules import JumpRule, RenderedIptables

_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.ip_network("::1/128")


def probability(n: int) -> str:
    """The ``--probability`` that picks 1 of ``n`` remaining endpoints, 10 decimals."""
    if n < len(_PROBABILITIES):
        return _PROBABILITIES[n]
    return f"{1.0 / n:.10f}"


# Index n holds the probability for n endpoints left; index 0 is never used.
_PROBABILITIES = ("", *(f"{1.0 / n:.10f}" for n in range(1, 257)))


def _ip_text(ip: IPAddress) -> str:
    """``str(ip)``, faster for IPv4 (ipaddress formats it in Python; this is C)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return inet_ntoa(ip.packed)
    return str(ip)


@dataclass(frozen=True, slots=True)
class _Context:
    """What a service port's rules depend on besides the port itself.

    ``node`` keeps only the fields that matter (name, zone, this family's
    addresses), so that it can key the memo.
    """

    node: NodeInfo
    version: int
    host_suffix: str  # "/32" or "/128"
    masquerade_all: bool
    pod_cidrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _ServiceRules:
    """One service port's share of the ruleset."""

    nat_services: tuple[str, ...] = ()
    nat_nodeports: tuple[str, ...] = ()
    nat_chains: tuple[tuple[str, tuple[str, ...]], ...] = ()
    filter_services: tuple[str, ...] = ()
    filter_external: tuple[str, ...] = ()
    filter_nodeports: tuple[str, ...] = ()
    filter_firewall: tuple[str, ...] = ()


_NOTHING = _ServiceRules()

_CacheEntry = tuple[ServicePort, tuple[Endpoint, ...], _ServiceRules]


@dataclass(slots=True)
class _Memo:
    """The previous render of one family: its context and each service port's rules."""

    key: tuple[IPFamily, ProxyConfig, NodeInfo]
    context: _Context
    entries: dict[ServicePortName, _CacheEntry]


def _family_nets(nets: tuple[IPNetwork, ...], version: int) -> list[IPNetwork]:
    return sorted({n for n in nets if n.version == version}, key=lambda n: (int(n[0]), n.prefixlen))


def _context(config: ProxyConfig, node: NodeInfo, version: int) -> _Context:
    return _Context(
        node=node,
        version=version,
        host_suffix="/32" if version == 4 else "/128",
        masquerade_all=config.masquerade_all,
        pod_cidrs=tuple(str(n) for n in _family_nets(config.cluster_cidrs, version)),
    )


def _balance(
    chain: str,
    endpoints: tuple[Endpoint, ...],
    seps: Mapping[int, tuple[str, str]],
    name: str,
    affinity_seconds: int,
) -> list[str]:
    """Rules of an SVC/SVL chain that spread new connections over ``endpoints``."""
    rules: list[str] = []
    head = f'-A {chain} -m comment --comment "{name} -> '
    if affinity_seconds:
        for ep in endpoints:
            epstr, sep = seps[id(ep)]
            rules.append(
                f'{head}{epstr}" -m recent --rcheck --seconds {affinity_seconds} --reap'
                f" --name {sep} -j {sep}"
            )
    last = len(endpoints) - 1
    for i, ep in enumerate(endpoints):
        epstr, sep = seps[id(ep)]
        if i < last:
            rules.append(
                f'{head}{epstr}" -m statistic --mode random --probability'
                f" {probability(last + 1 - i)} -j {sep}"
            )
        else:
            rules.append(f'{head}{epstr}" -j {sep}')
    return rules


def _render_service(
    svc: ServicePort, endpoints: tuple[Endpoint, ...], ctx: _Context
) -> _ServiceRules:
    """Every rule and chain of one service port."""
    v = ctx.version
    suffix = ctx.host_suffix
    cluster_ips = [_ip_text(ip) + suffix for ip in svc.cluster_ips if ip.version == v]
    if not cluster_ips:
        return _NOTHING
    spn = svc.name
    name = str(spn)
    proto = svc.protocol.lowercase
    port_match = f"-p {proto} -m comment --comment"
    dport = f"-m {proto} --dport {svc.port}"

    usable = (
        endpoints
        if all(ep.ip.version == v for ep in endpoints)
        else tuple(ep for ep in endpoints if ep.ip.version == v)
    )
    sel = select_endpoints(svc, usable, ctx.node)
    has_endpoints = sel.has_any_endpoints
    has_internal = bool(sel.cluster)
    has_external = bool(sel.external)
    external_ips = [_ip_text(ip) + suffix for ip in svc.external_ips if ip.version == v]
    lb_ips = [_ip_text(ip) + suffix for ip in svc.load_balancer_ips if ip.version == v]
    source_ranges = [str(n) for n in svc.load_balancer_source_ranges if n.version == v]

    port_chains = cn.service_port_chains(spn, svc.protocol)
    svc_chain, ext_chain, fw_chain, svl_chain = port_chains
    internal_chain = svl_chain if svc.internal_policy_local else svc_chain
    uses_ext = has_endpoints and svc.has_external
    uses_fw = has_endpoints and bool(lb_ips) and bool(source_ranges)
    lb_chain = fw_chain if uses_fw else ext_chain

    if not has_endpoints:
        internal_target = external_target = "REJECT"
        internal_note = external_note = f"{name} has no endpoints"
    else:
        internal_target = external_target = "DROP"
        internal_note = external_note = f"{name} has no local endpoints"

    nat_services: list[str] = []
    nat_nodeports: list[str] = []
    filter_services: list[str] = []
    filter_external: list[str] = []
    filter_nodeports: list[str] = []
    filter_firewall: list[str] = []

    # Dispatch: cluster IPs, then external IPs, then LB IPs.
    for cip in cluster_ips:
        if has_internal:
            nat_services.append(
                f'-A {cn.SERVICES} -d {cip} {port_match} "{name} cluster IP" {dport}'
                f" -j {internal_chain}"
            )
        else:
            filter_services.append(
                f'-A {cn.SERVICES} -d {cip} {port_match} "{internal_note}" {dport}'
                f" -j {internal_target}"
            )
    for eip in external_ips:
        if has_endpoints:
            nat_services.append(
                f'-A {cn.SERVICES} -d {eip} {port_match} "{name} external IP" {dport}'
                f" -j {ext_chain}"
            )
        if not has_external:
            filter_external.append(
                f'-A {cn.EXTERNAL_SERVICES} -d {eip} {port_match} "{external_note}" {dport}'
                f" -j {external_target}"
            )
    for lbip in lb_ips:
        if has_endpoints:
            nat_services.append(
                f'-A {cn.SERVICES} -d {lbip} {port_match} "{name} loadbalancer IP" {dport}'
                f" -j {lb_chain}"
            )
        if uses_fw:
            filter_firewall.append(
                f"-A {cn.PROXY_FIREWALL} -d {lbip} {port_match}"
                f' "{name} traffic not accepted by {fw_chain}" {dport} -j DROP'
            )
        if not has_external:
            filter_external.append(
                f'-A {cn.EXTERNAL_SERVICES} -d {lbip} {port_match} "{external_note}" {dport}'
                f" -j {external_target}"
            )
    if svc.node_port:
        np_match = f"-m {proto} --dport {svc.node_port}"
        if has_endpoints:
            nat_nodeports.append(
                f'-A {cn.NODEPORTS} {port_match} "{name} node port" {np_match} -j {ext_chain}'
            )
        if not has_external:
            filter_external.append(
                f'-A {cn.EXTERNAL_SERVICES} {port_match} "{external_note}"'
                f" -m addrtype --dst-type LOCAL {np_match} -j {external_target}"
            )
    if svc.health_check_node_port:
        filter_nodeports.append(
            f'-A {cn.NODEPORTS} -p tcp -m comment --comment "{spn.service} health check node port"'
            f" -m tcp --dport {svc.health_check_node_port} -j ACCEPT"
        )

    chains: list[tuple[str, tuple[str, ...]]] = []
    if has_endpoints:
        # Keyed by identity: the selection's lists share their Endpoint objects,
        # and hashing addresses is what makes a cold render slow.
        seps: dict[int, tuple[str, str]] = {}
        sep_chains: list[tuple[str, tuple[str, ...]]] = []
        sep_comment = f'-m comment --comment "{name}"'
        affinity = svc.session_affinity is SessionAffinity.CLIENT_IP
        dnat_head = f"-p {proto} {sep_comment}"
        key = cn.port_key(spn, svc.protocol)
        sep_name = cn.endpoint_chain_for_key
        for ep in sel.all_reachable:
            ipstr = _ip_text(ep.ip)
            epstr = f"{ipstr}:{ep.port}" if v == 4 else f"[{ipstr}]:{ep.port}"
            sep = sep_name(key, epstr)
            seps[id(ep)] = (epstr, sep)
            recent = f" -m recent --set --name {sep}" if affinity else ""
            sep_chains.append(
                (
                    sep,
                    (
                        f"-A {sep} -s {ipstr}{suffix} {sep_comment} -j {cn.MARK_MASQ}",
                        f"-A {sep} {dnat_head}{recent} -j DNAT --to-destination {epstr}",
                    ),
                )
            )

        masq: list[str] = []
        if has_internal:
            for cip in cluster_ips:
                head = f"-A {internal_chain}"
                tail = f'-d {cip} {port_match} "{name} cluster IP" {dport}'
                if ctx.masquerade_all:
                    masq.append(f"{head} {tail} -j {cn.MARK_MASQ}")
                elif len(ctx.pod_cidrs) == 1:
                    masq.append(f"{head} ! -s {ctx.pod_cidrs[0]} {tail} -j {cn.MARK_MASQ}")
                elif ctx.pod_cidrs:
                    masq.append(f"{head} {tail} -j {cn.MARK_MASQ_NON_POD}")
        affinity_seconds = svc.sticky_seconds if affinity else 0
        if sel.cluster_policy:
            rules = list(masq) if internal_chain == svc_chain else []
            rules += _balance(svc_chain, sel.cluster_policy, seps, name, affinity_seconds)
            chains.append((svc_chain, tuple(rules)))
        if sel.local:
            rules = list(masq) if internal_chain == svl_chain else []
            rules += _balance(svl_chain, sel.local, seps, name, affinity_seconds)
            chains.append((svl_chain, tuple(rules)))
        if uses_ext:
            ext_rules = _external_chain(svc, sel, port_chains, name, ctx.pod_cidrs)
            chains.append((ext_chain, tuple(ext_rules)))
        if uses_fw:
            fw_rules = [
                f"-A {fw_chain}{_source_match(src)} -m comment"
                f' --comment "{name} loadbalancer source range" -j {ext_chain}'
                for src in source_ranges
            ]
            ranges = [n for n in svc.load_balancer_source_ranges if n.version == v]
            if any(ip in n for n in ranges for ip in ctx.node.addresses):
                # A VIP-style LB address is often local to the node, so the
                # node's own requests to it arrive with the VIP as source.
                fw_rules.extend(
                    f'-A {fw_chain} -s {lbip} -m comment --comment "{name} loadbalancer IP'
                    f' from this node" -j {ext_chain}'
                    for lbip in lb_ips
                )
            chains.append((fw_chain, tuple(fw_rules)))
        chains.extend(sep_chains)

    return _ServiceRules(
        nat_services=tuple(nat_services),
        nat_nodeports=tuple(nat_nodeports),
        nat_chains=tuple(chains),
        filter_services=tuple(filter_services),
        filter_external=tuple(filter_external),
        filter_nodeports=tuple(filter_nodeports),
        filter_firewall=tuple(filter_firewall),
    )


def _external_chain(
    svc: ServicePort,
    sel: EndpointSelection,
    chains: cn.ServicePortChains,
    name: str,
    pod_cidrs: tuple[str, ...],
) -> list[str]:
    """Rules of the EXT chain: masquerade and policy for NodePort/external/LB traffic."""
    head = f"-A {chains.external}"
    svc_chain = chains.service
    if not svc.external_policy_local:
        return [
            f'{head} -m comment --comment "{name} external traffic, masquerade" -j {cn.MARK_MASQ}',
            f'{head} -m comment --comment "{name} external traffic to any endpoint" -j {svc_chain}',
        ]
    rules: list[str] = []
    if sel.cluster_policy:
        # Pods and the host itself are not subject to the Local policy: as if
        # they had gone out to the load balancer and come back to any node.
        rules.extend(
            f'{head} -s {cidr} -m comment --comment "{name} pod traffic to any endpoint"'
            f" -j {svc_chain}"
            for cidr in pod_cidrs
        )
        # The host's source address is a local one the endpoint cannot answer
        # directly when the endpoint is remote, hence the masquerade.
        rules.append(
            f'{head} -m comment --comment "{name} host traffic, masquerade"'
            f" -m addrtype --src-type LOCAL -j {cn.MARK_MASQ}"
        )
        rules.append(
            f'{head} -m comment --comment "{name} host traffic to any endpoint"'
            f" -m addrtype --src-type LOCAL -j {svc_chain}"
        )
    if sel.local:
        rules.append(
            f'{head} -m comment --comment "{name} external traffic to local endpoints, source kept"'
            f" -j {chains.local}"
        )
    return rules


def _nodeport_dispatch(config: ProxyConfig, version: int) -> list[str]:
    """The last rules of nat NETAGENT-SERVICES: which destinations are NodePort addresses."""
    loopback = _LOOPBACK_V4 if version == 4 else _LOOPBACK_V6
    # route_localnet exists for IPv4 only, so IPv6 never serves ::1 NodePorts.
    exclude_loopback = version == 6 or not config.localhost_nodeports
    comment = '-m comment --comment "netagent service nodeports; must stay the last rules"'
    jump = f"-m addrtype --dst-type LOCAL -j {cn.NODEPORTS}"
    cidrs = _family_nets(config.nodeport_addresses, version)
    if not cidrs or any(n.prefixlen == 0 for n in cidrs):
        negate = f" ! -d {loopback}" if exclude_loopback else ""
        return [f"-A {cn.SERVICES}{negate} {comment} {jump}"]
    rules: list[str] = []
    if exclude_loopback:
        cidrs = [n for n in cidrs if not _subnet_of(n, loopback)]
        if any(n.overlaps(loopback) for n in cidrs):
            rules.append(
                f"-A {cn.SERVICES} -d {loopback}"
                f' -m comment --comment "netagent localhost nodeports disabled" -j RETURN'
            )
    rules.extend(f"-A {cn.SERVICES} -d {n} {comment} {jump}" for n in cidrs)
    return rules


def _subnet_of(inner: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _fixed_nat(config: ProxyConfig, ctx: _Context) -> dict[str, tuple[str, ...]]:
    mark = config.masquerade_mark
    chains: dict[str, tuple[str, ...]] = {
        cn.POSTROUTING: (
            f"-A {cn.POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A {cn.POSTROUTING} -j MARK --xor-mark {mark}",
            f'-A {cn.POSTROUTING} -m comment --comment "netagent service traffic requiring SNAT"'
            " -j MASQUERADE --random-fully",
        ),
        cn.MARK_MASQ: (f"-A {cn.MARK_MASQ} -j MARK --or-mark {mark}",),
    }
    if len(ctx.pod_cidrs) > 1 and not ctx.masquerade_all:  # see _render_service's masq rules
        chains[cn.MARK_MASQ_NON_POD] = (
            *(
                f'-A {cn.MARK_MASQ_NON_POD} -s {cidr} -m comment --comment "pod source" -j RETURN'
                for cidr in ctx.pod_cidrs
            ),
            f"-A {cn.MARK_MASQ_NON_POD} -j {cn.MARK_MASQ}",
        )
    return chains


def _fixed_filter(config: ProxyConfig, ctx: _Context) -> dict[str, tuple[str, ...]]:
    mark = config.masquerade_mark
    martian: tuple[str, ...] = ()
    if config.localhost_nodeports and ctx.version == 4:
        martian = (
            f"-A {cn.FIREWALL} -d 127.0.0.0/8 ! -s 127.0.0.0/8"
            ' -m comment --comment "netagent: block non-local traffic to localhost nodeports"'
            " -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
        )
    return {
        cn.FORWARD: (
            f"-A {cn.FORWARD} -m conntrack --ctstate INVALID"
            ' -m comment --comment "netagent: drop packets conntrack cannot place" -j DROP',
            f'-A {cn.FORWARD} -m comment --comment "netagent forwarding rules"'
            f" -m mark --mark {mark}/{mark} -j ACCEPT",
            f'-A {cn.FORWARD} -m comment --comment "netagent forwarding conntrack rule"'
            " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
        cn.FIREWALL: martian,
    }


def _jump(table: str, chain: str, comment: str, target: str, *, new_only: bool) -> JumpRule:
    state = "-m conntrack --ctstate NEW " if new_only else ""
    return JumpRule(table, chain, f'{state}-m comment --comment "{comment}" -j {target}')


#: Jump rules from built-in chains. Within a chain the order is the order at
#: its top: drops (martians, LB source ranges) before rejects before accepts.
JUMPS: tuple[JumpRule, ...] = (
    _jump("filter", "INPUT", "netagent firewall", cn.FIREWALL, new_only=False),
    _jump("filter", "INPUT", "netagent load balancer firewall", cn.PROXY_FIREWALL, new_only=True),
    _jump(
        "filter",
        "INPUT",
        "netagent externally-visible service portals",
        cn.EXTERNAL_SERVICES,
        new_only=True,
    ),
    _jump("filter", "INPUT", "netagent health check service ports", cn.NODEPORTS, new_only=False),
    _jump("filter", "FORWARD", "netagent load balancer firewall", cn.PROXY_FIREWALL, new_only=True),
    _jump("filter", "FORWARD", "netagent service portals", cn.SERVICES, new_only=True),
    _jump(
        "filter",
        "FORWARD",
        "netagent externally-visible service portals",
        cn.EXTERNAL_SERVICES,
        new_only=True,
    ),
    _jump("filter", "FORWARD", "netagent forwarding rules", cn.FORWARD, new_only=False),
    _jump("filter", "OUTPUT", "netagent firewall", cn.FIREWALL, new_only=False),
    _jump("filter", "OUTPUT", "netagent load balancer firewall", cn.PROXY_FIREWALL, new_only=True),
    _jump("filter", "OUTPUT", "netagent service portals", cn.SERVICES, new_only=True),
    _jump(
        "filter",
        "OUTPUT",
        "netagent externally-visible service portals",
        cn.EXTERNAL_SERVICES,
        new_only=True,
    ),
    _jump("nat", "PREROUTING", "netagent service portals", cn.SERVICES, new_only=False),
    _jump("nat", "OUTPUT", "netagent service portals", cn.SERVICES, new_only=False),
    _jump("nat", "POSTROUTING", "netagent postrouting rules", cn.POSTROUTING, new_only=False),
)


def _same(old: object, new: object) -> bool:
    return old is new or old == new


def _sort_key(spn: ServicePortName) -> tuple[str, str, str]:
    return (spn.namespace, spn.name, spn.port)


def _source_match(cidr: str) -> str:
    """`` -s CIDR``, or nothing for a ``/0`` range.

    A range of every address matches without ``-s``, and iptables-save
    prints such a rule without it; rendering ``-s 0.0.0.0/0`` would leave
    the kernel's text different from the desired one forever (``debug
    diff``, the drift check). Found by fuzzing.
    """
    return "" if cidr.endswith("/0") else f" -s {cidr}"


def render_iptables(state: ProxyState) -> RenderedIptables:
    """The complete iptables ruleset (nat and filter) for ``state``, rendered cold."""
    return IptablesRenderer().render(state)


class IptablesRenderer:
    """Renders ``ProxyState`` into iptables rules, reusing the last render's per-service output.

    The memo belongs to the instance (one per proxier, so one per family):
    two proxiers, or a debug command rendering next to a running agent,
    never share or evict each other's entries. Output is a pure function of
    the state; the memo only makes an unchanged service port cost a lookup.
    """

    def __init__(self) -> None:
        self._memo: _Memo | None = None

    def _memo_for(self, state: ProxyState) -> _Memo:
        # Only the node fields the rules depend on are part of the key: a Node's
        # status changes every few seconds and must not force a cold render.
        version = 4 if state.family is IPFamily.IPV4 else 6
        node = NodeInfo(
            name=state.node.name,
            addresses=tuple(a for a in state.node.addresses if a.version == version),
            zone=state.node.zone,
        )
        key = (state.family, state.config, node)
        memo = self._memo
        if memo is None or memo.key != key:
            memo = _Memo(key=key, context=_context(state.config, node, version), entries={})
            self._memo = memo
        return memo

    def render(self, state: ProxyState) -> RenderedIptables:
        """The complete iptables ruleset (nat and filter) for ``state``."""
        return _render_with(self._memo_for(state), state)


def _render_with(memo: _Memo, state: ProxyState) -> RenderedIptables:
    ctx = memo.context
    previous = memo.entries
    current: dict[ServicePortName, _CacheEntry] = {}
    empty: tuple[Endpoint, ...] = ()

    nat_services: list[str] = []
    nat_nodeports: list[str] = []
    nat_chains: dict[str, tuple[str, ...]] = {}
    filter_services: list[str] = []
    filter_external: list[str] = []
    filter_nodeports: dict[str, None] = {}
    filter_firewall: list[str] = []

    services = state.services
    endpoints = state.endpoints
    for spn in sorted(services, key=_sort_key):
        svc = services[spn]
        eps = endpoints.get(spn, empty)
        hit = previous.get(spn)
        if hit is not None and _same(hit[0], svc) and _same(hit[1], eps):
            rules = hit[2]
        else:
            rules = _render_service(svc, eps, ctx)
        current[spn] = (svc, eps, rules)
        if rules is _NOTHING:
            continue
        nat_services.extend(rules.nat_services)
        nat_nodeports.extend(rules.nat_nodeports)
        nat_chains.update(rules.nat_chains)
        filter_services.extend(rules.filter_services)
        filter_external.extend(rules.filter_external)
        filter_firewall.extend(rules.filter_firewall)
        for rule in rules.filter_nodeports:  # ports of one Service share its health check
            filter_nodeports[rule] = None
    memo.entries = current

    nat_services.extend(_nodeport_dispatch(state.config, ctx.version))
    nat: dict[str, tuple[str, ...]] = {
        cn.SERVICES: tuple(nat_services),
        cn.NODEPORTS: tuple(nat_nodeports),
        **_fixed_nat(state.config, ctx),
    }
    nat.update(nat_chains)
    filter_table: dict[str, tuple[str, ...]] = {
        cn.SERVICES: tuple(filter_services),
        cn.EXTERNAL_SERVICES: tuple(filter_external),
        cn.NODEPORTS: tuple(filter_nodeports),
        cn.PROXY_FIREWALL: tuple(filter_firewall),
        **_fixed_filter(state.config, ctx),
    }
    return RenderedIptables(
        family=state.family,
        tables={"filter": filter_table, "nat": nat},
        jumps=JUMPS,
    )
