"""Render a ProxyState into what IPVS mode programs: virtual servers, ipsets, addresses, iptables.

Why pure: the IPVS proxier reconciles four kernel interfaces (IPVS over
netlink, ipsets, the dummy device's addresses, and a constant iptables
ruleset). Computing all four from the state with no I/O keeps the
semantics testable without an IPVS kernel, and lets the proxier diff each
against a dump or against what it committed.

Semantics, as kube-proxy's IPVS mode (differences noted):

* **Virtual servers.** One per frontend: each cluster IP, external IP and
  load-balancer IP of a service port, and its node port on every node
  address (the node's own addresses, narrowed to ``nodePortAddresses``).
  Real servers are masquerading destinations of weight 1, from the shared
  endpoint selection: internal traffic reaches :attr:`cluster` endpoints,
  external traffic its :attr:`external` ones; under
  externalTrafficPolicy=Local with no local endpoint, external frontends
  fall back to every endpoint (kube-proxy #97081), because IPVS cannot tell
  a pod's connection from an outside one. ClientIP affinity is IPVS
  persistence with the affinity timeout. A service port without endpoints
  keeps its virtual servers with no real server: the kernel refuses new
  connections at once.
* **Addresses.** Every cluster, external and LB IP is bound to the dummy
  device, except those already on another interface of the node.
* **ipsets** hold the frontends for the constant iptables rules below.
* **iptables** (nat): non-pod sources to a cluster IP are marked for
  masquerade (all of them with masqueradeAll); external IPs and LB IPs are
  masqueraded unless their policy is Local (then the host's own
  connections still are); LB source ranges mark everything else for drop;
  node ports are masqueraded unless Local; a local endpoint reaching itself
  (``LOOP-BACK``) is masqueraded in POSTROUTING. filter: the drop mark is
  dropped, new connections to a bound address on a port no Service has are
  rejected (kubernetes#72236), FORWARD accepts marked and established
  traffic. The rule count is constant: services only add set members.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from netagent.model import (
    Endpoint,
    IPAddress,
    IPFamily,
    IPNetwork,
    ProxyConfig,
    ProxyState,
    ServicePort,
    ServicePortName,
    SessionAffinity,
)
from netagent.proxy.endpoint_selection import select_endpoints
from netagent.proxy.iptables.rules import JumpRule, RenderedIptables
from netagent.proxy.ipvs.model import (
    BITMAP_PORT,
    HASH_IP,
    HASH_IP_PORT,
    HASH_IP_PORT_IP,
    HASH_IP_PORT_NET,
    IpsetEntry,
    IpsetSpec,
    IpvsProtocol,
    RealServer,
    VirtualServer,
    VirtualServerKey,
)

#: The dummy device that holds the service addresses (kube-proxy's kube-ipvs0).
DUMMY_DEVICE = "netagent-ipvs0"
PROTOCOLS: tuple[IpvsProtocol, ...] = ("TCP", "UDP", "SCTP")

# Chain names (nat and filter).
SERVICES = "NETAGENT-SERVICES"
NODE_PORT = "NETAGENT-NODE-PORT"
LOAD_BALANCER = "NETAGENT-LOAD-BALANCER"
FIREWALL = "NETAGENT-FIREWALL"
EXTERNAL_LOCAL = "NETAGENT-EXTERNAL-LOCAL"
MARK_MASQ = "NETAGENT-MARK-MASQ"
MARK_DROP = "NETAGENT-MARK-DROP"
POSTROUTING = "NETAGENT-POSTROUTING"
FORWARD = "NETAGENT-FORWARD"
IPVS_FILTER = "NETAGENT-IPVS-FILTER"
DROP_MARKED = "NETAGENT-DROP-MARKED"

#: Every chain IPVS mode writes (the iptables mode's cleaner keeps them when IPVS starts).
IPVS_CHAINS = frozenset(
    {
        SERVICES,
        NODE_PORT,
        LOAD_BALANCER,
        FIREWALL,
        EXTERNAL_LOCAL,
        MARK_MASQ,
        MARK_DROP,
        POSTROUTING,
        FORWARD,
        IPVS_FILTER,
        DROP_MARKED,
    }
)

#: The drop mark kube-proxy uses (bit 15), for LB source ranges.
DROP_MARK = "0x8000"


#: (base name, ipset type, what it holds) of every set IPVS mode owns.
SET_KINDS: tuple[tuple[str, str, str], ...] = (
    ("CLUSTER-IP", HASH_IP_PORT, "cluster IP,proto:port of every service port"),
    ("LOOP-BACK", HASH_IP_PORT_IP, "local endpoint,proto:port,itself: hairpin masquerade"),
    ("EXTERNAL-IP", HASH_IP_PORT, "external IPs of Cluster-policy service ports"),
    ("EXTERNAL-IP-LOCAL", HASH_IP_PORT, "external IPs of Local-policy service ports"),
    ("LB", HASH_IP_PORT, "load-balancer IPs"),
    ("LB-LOCAL", HASH_IP_PORT, "load-balancer IPs of Local-policy service ports"),
    ("LB-FW", HASH_IP_PORT, "load-balancer IPs with loadBalancerSourceRanges"),
    ("LB-SRC-CIDR", HASH_IP_PORT_NET, "LB IP,proto:port,allowed source range"),
    ("LB-SRC-IP", HASH_IP_PORT_IP, "LB IP,proto:port,the LB IP itself (the node's own calls)"),
    ("NODE-PORT-TCP", BITMAP_PORT, "TCP node ports"),
    ("NODE-PORT-UDP", BITMAP_PORT, "UDP node ports"),
    ("NODE-PORT-SCTP", BITMAP_PORT, "SCTP node ports"),
    ("NODE-PORT-LOCAL-TCP", BITMAP_PORT, "TCP node ports of Local-policy service ports"),
    ("NODE-PORT-LOCAL-UDP", BITMAP_PORT, "UDP node ports of Local-policy service ports"),
    ("NODE-PORT-LOCAL-SCTP", BITMAP_PORT, "SCTP node ports of Local-policy service ports"),
    ("HC-NODE-PORT", BITMAP_PORT, "health-check node ports"),
    ("IPVS-IPS", HASH_IP, "every address bound to the dummy device"),
)


def set_prefix(family: IPFamily) -> str:
    """``NETAGENT-`` or ``NETAGENT-6-``."""
    return "NETAGENT-" if family is IPFamily.IPV4 else "NETAGENT-6-"


def set_specs(family: IPFamily) -> dict[str, IpsetSpec]:
    """Every ipset of one family, by name."""
    prefix = set_prefix(family)
    inet: Literal["inet", "inet6"] = "inet" if family is IPFamily.IPV4 else "inet6"
    return {
        prefix + base: IpsetSpec(name=prefix + base, type=kind, family=inet, comment=about)
        for base, kind, about in SET_KINDS
    }


@dataclass(frozen=True, slots=True)
class IpvsFrontend:
    """One virtual server and what it belongs to."""

    server: VirtualServer
    real_servers: tuple[RealServer, ...]
    owner: ServicePortName
    kind: str  # "cluster IP", "external IP", "load balancer IP", "node port"


@dataclass(frozen=True, slots=True)
class RenderedIpvs:
    """Everything IPVS mode programs for one family."""

    family: IPFamily
    virtual_servers: Mapping[VirtualServerKey, IpvsFrontend]
    addresses: frozenset[IPAddress]
    ipsets: Mapping[str, frozenset[str]]
    iptables: RenderedIptables


def _nets(nets: Iterable[IPNetwork], version: int) -> list[IPNetwork]:
    return sorted({n for n in nets if n.version == version}, key=lambda n: (int(n[0]), n.prefixlen))


def nodeport_addresses(
    config: ProxyConfig, local: Iterable[IPAddress], family: IPFamily
) -> list[IPAddress]:
    """The node addresses that get node-port virtual servers (never loopback)."""
    version = 4 if family is IPFamily.IPV4 else 6
    cidrs = _nets(config.nodeport_addresses, version)
    out = []
    for addr in sorted({a for a in local if a.version == version}, key=int):
        if addr.is_loopback or addr.is_link_local:
            continue
        if cidrs and not any(n.prefixlen == 0 for n in cidrs) and not any(addr in n for n in cidrs):
            continue
        out.append(addr)
    return out


def _is_local(ep: Endpoint, state: ProxyState) -> bool:
    pods = (n for n in state.node.pod_cidrs if n.version == ep.ip.version)
    return ep.is_local or any(ep.ip in n for n in pods)


@dataclass(frozen=True, slots=True)
class _PortFragment:
    """What one service port contributes, memoised while its inputs stay equal.

    ``frontends`` are in claim order (within the port, the first claim of a
    frontend wins, as across ports); ``entries`` are ``(set base, entry)``.
    """

    frontends: tuple[IpvsFrontend, ...]
    bound: tuple[IPAddress, ...]
    entries: tuple[tuple[str, str], ...]


_MemoKey = tuple[object, ...]
_T = TypeVar("_T")


class IpvsRenderer:
    """:func:`render_ipvs` kept up to date by patching, for the proxier's every sync.

    Why: at 10,000 services a render from scratch takes about a second
    here, and a one-endpoint change should not cost that, nor should it cost
    rebuilding and sorting 20,000 virtual servers. The renderer keeps what
    each service port contributed (its *fragment*: frontends, bound
    addresses, set entries) and the totals they add up to, with a count per
    set entry and per address and every claim on each virtual server. A port
    whose service, endpoints, node, scheduler and node-port addresses are
    equal to last time keeps its fragment; a changed, new or removed port
    takes its old fragment out of the totals and puts its new one in. Only
    what was touched is rebuilt: the winner of each touched virtual server,
    the sets that gained or lost an entry, the sorted order only where keys
    came or went. So an unchanged port's :class:`IpvsFrontend` objects are
    *the same objects* as in the previous render, and the proxier's partial
    sync skips them; unchanged sets and addresses are the same objects too.

    The result is equal to a fresh :func:`render_ipvs` of the same input
    (unit tests check it over random change sequences). Conflicts resolve as
    a fresh render does: the first claim of a virtual server in service-port
    name order wins, and within a port its first frontend.
    """

    def __init__(self) -> None:
        self._context: tuple[object, ...] | None = None
        self._prefix = set_prefix(IPFamily.IPV4)
        self._memo: dict[ServicePortName, tuple[_MemoKey, _PortFragment]] = {}
        #: Claims on each virtual server: (port, its first frontend for the key).
        self._claims: dict[VirtualServerKey, list[tuple[ServicePortName, IpvsFrontend]]] = {}
        self._servers: dict[VirtualServerKey, IpvsFrontend] = {}
        self._order: list[VirtualServerKey] = []  # sorted by VirtualServer.sort_key
        self._order_keys: list[tuple[int, int, int, str]] = []
        self._bound: dict[IPAddress, int] = {}
        self._entries: dict[str, dict[str, int]] = {}
        self._frozen: dict[str, frozenset[str]] = {}
        self._addresses: frozenset[IPAddress] = frozenset()
        self._last: RenderedIpvs | None = None
        self._previous: RenderedIpvs | None = None
        self._touched: frozenset[VirtualServerKey] = frozenset()

    def render(
        self,
        state: ProxyState,
        *,
        node_addresses: Iterable[IPAddress],
        other_interface_addresses: Iterable[IPAddress] = (),
        scheduler: str = "rr",
        overlay_rules: RenderedIptables | None = None,
    ) -> RenderedIpvs:
        """Virtual servers, addresses, ipsets and iptables rules for ``state``.

        ``node_addresses`` are this node's own addresses (for node ports);
        ``other_interface_addresses`` are addresses already on another interface,
        which are not bound to the dummy device again. ``overlay_rules`` are the
        overlay's chains, written in the same iptables-restore.
        """
        family = state.family
        version = 4 if family is IPFamily.IPV4 else 6
        node_ips = tuple(nodeport_addresses(state.config, node_addresses, family))
        other = frozenset(a for a in other_interface_addresses if a.version == version)
        context = (family, state.config, other, overlay_rules)
        if context != self._context:
            self._reset(family)
            self._context = context
        changed: list[tuple[ServicePortName, _MemoKey]] = []
        endpoints = state.endpoints
        added = 0
        for name, svc in state.services.items():
            key: _MemoKey = (svc, endpoints.get(name, ()), state.node, scheduler, node_ips, version)
            cached = self._memo.get(name)
            if cached is None:
                added += 1
                changed.append((name, key))
            elif cached[0] != key:
                changed.append((name, key))
        if len(self._memo) + added == len(state.services):
            removed: list[ServicePortName] = []  # every remembered port is still there
        else:
            removed = [name for name in self._memo if name not in state.services]
        if not changed and not removed and self._last is not None:
            self._previous, self._touched = self._last, frozenset()
            return self._last

        touched_servers: set[VirtualServerKey] = set()
        touched_sets: set[str] = set()
        addresses_moved = False
        for name in removed:
            old_fragment = self._memo.pop(name)[1]
            addresses_moved |= self._swap(name, old_fragment, None, touched_servers, touched_sets)
        for name, key in changed:
            old = self._memo.get(name)
            fragment = _render_port(state.services[name], state, scheduler, node_ips, version)
            self._memo[name] = (key, fragment)
            addresses_moved |= self._swap(
                name, old[1] if old is not None else None, fragment, touched_servers, touched_sets
            )
        reordered = self._resolve(touched_servers)

        if addresses_moved or self._last is None:
            addresses = frozenset(a for a in self._bound if a not in other)
            ips = self._prefix + "IPVS-IPS"
            entries = self._entries[ips]
            for addr in self._addresses - addresses:
                del entries[IpsetEntry.ip(addr).text()]
            for addr in addresses - self._addresses:
                entries[IpsetEntry.ip(addr).text()] = 1
            if addresses != self._addresses:
                touched_sets.add(ips)
                self._addresses = addresses
        for set_name in touched_sets:
            self._frozen[set_name] = frozenset(self._entries[set_name])
        servers: Mapping[VirtualServerKey, IpvsFrontend]
        if self._last is not None and not touched_servers:
            servers = self._last.virtual_servers
        elif self._last is not None and not reordered:
            patched = dict(self._last.virtual_servers)  # a copy keeps order, without rehashing
            for key in touched_servers:
                patched[key] = self._servers[key]
            servers = patched
        else:
            servers = {k: self._servers[k] for k in self._order}
        if self._last is not None and not touched_sets:
            ipsets = self._last.ipsets
        else:
            ipsets = dict(sorted(self._frozen.items()))
        if self._last is not None:
            rules = self._last.iptables
        else:
            rules = render_ipvs_iptables(state.config, family)
            if overlay_rules is not None:
                from netagent.proxy.iptables.proxier import merge_rendered

                rules = merge_rendered(rules, overlay_rules)
        self._previous = self._last
        self._touched = frozenset(touched_servers)
        self._last = RenderedIpvs(
            family=family,
            virtual_servers=servers,
            addresses=self._addresses,
            ipsets=ipsets,
            iptables=rules,
        )
        return self._last

    def changed_between(
        self, earlier: RenderedIpvs | None, later: RenderedIpvs
    ) -> frozenset[VirtualServerKey] | None:
        """The virtual servers whose frontend may differ between two renders of this renderer.

        Known only when ``later`` is the last render and ``earlier`` the one
        just before it (else None: compare everything). Every other key maps
        to the very same :class:`IpvsFrontend` object in both, or is in neither.
        """
        if earlier is None or later is not self._last or earlier is not self._previous:
            return None
        return self._touched

    def _reset(self, family: IPFamily) -> None:
        """Forget everything: a new family, config, overlay or set of other addresses."""
        prefix = self._prefix = set_prefix(family)
        self._memo = {}
        self._claims = {}
        self._servers = {}
        self._order = []
        self._order_keys = []
        self._bound = {}
        self._entries = {prefix + base: {} for base, _, _ in SET_KINDS}
        self._frozen = {name: frozenset() for name in self._entries}
        self._addresses = frozenset()
        self._last = None  # and so changed_between() answers None: compare everything

    def _swap(
        self,
        name: ServicePortName,
        old: _PortFragment | None,
        new: _PortFragment | None,
        servers: set[VirtualServerKey],
        sets: set[str],
    ) -> bool:
        """Replace a port's fragment in the totals; whether the bound addresses changed.

        Only the difference between the two fragments is applied, so a set
        or the address list is marked touched only when it really changed.
        """
        old_fronts = _first_per_key(old.frontends) if old is not None else {}
        new_fronts = _first_per_key(new.frontends) if new is not None else {}
        for key in old_fronts.keys() - new_fronts.keys():
            claims = [c for c in self._claims[key] if c[0] != name]
            if claims:
                self._claims[key] = claims
            else:
                del self._claims[key]
            servers.add(key)
        for key, frontend in new_fronts.items():
            if key in old_fronts:
                claims = self._claims[key]
                self._claims[key] = [(n, frontend if n == name else f) for n, f in claims]
            else:
                self._claims.setdefault(key, []).append((name, frontend))
            servers.add(key)
        old_bound = old.bound if old is not None else ()
        new_bound = new.bound if new is not None else ()
        old_entries = old.entries if old is not None else ()
        new_entries = new.entries if new is not None else ()
        if old_bound and new_bound:
            gone_bound, came_bound = _multiset_diff(old_bound, new_bound)
        else:
            gone_bound, came_bound = list(old_bound), list(new_bound)
        if old_entries and new_entries:
            gone_entries, came_entries = _multiset_diff(old_entries, new_entries)
        else:
            gone_entries, came_entries = list(old_entries), list(new_entries)
        moved = False
        for addr in came_bound:
            count = self._bound.get(addr, 0)
            self._bound[addr] = count + 1
            moved |= count == 0
        for addr in gone_bound:
            count = self._bound[addr] - 1
            if count:
                self._bound[addr] = count
            else:
                del self._bound[addr]
                moved = True
        for base, entry in came_entries:
            counts = self._entries[self._prefix + base]
            count = counts.get(entry, 0)
            counts[entry] = count + 1
            if count == 0:
                sets.add(self._prefix + base)
        for base, entry in gone_entries:
            counts = self._entries[self._prefix + base]
            count = counts[entry] - 1
            if count:
                counts[entry] = count
            else:
                del counts[entry]
                sets.add(self._prefix + base)
        return moved

    def _resolve(self, keys: set[VirtualServerKey]) -> bool:
        """The winner of each touched virtual server, and the sorted order where keys moved.

        Returns whether a key came or went (the order changed).
        """
        reordered = False
        for key in keys:
            claims = self._claims.get(key)
            present = key in self._servers
            if claims:
                self._servers[key] = min(claims, key=lambda c: c[0])[1]
                if not present:
                    sort_key = self._servers[key].server.sort_key()
                    at = bisect.bisect_left(self._order_keys, sort_key)
                    self._order.insert(at, key)
                    self._order_keys.insert(at, sort_key)
                    reordered = True
            elif present:
                sort_key = self._servers.pop(key).server.sort_key()
                at = bisect.bisect_left(self._order_keys, sort_key)
                del self._order[at]
                del self._order_keys[at]
                reordered = True
        return reordered


def _first_per_key(frontends: Iterable[IpvsFrontend]) -> dict[VirtualServerKey, IpvsFrontend]:
    """A port's frontends by key; within a port, its first frontend for a key wins."""
    out: dict[VirtualServerKey, IpvsFrontend] = {}
    for frontend in frontends:
        out.setdefault(frontend.server.key, frontend)
    return out


def _multiset_diff(old: Sequence[_T], new: Sequence[_T]) -> tuple[list[_T], list[_T]]:
    """What ``old`` has beyond ``new`` and ``new`` beyond ``old``, counting repeats."""
    gone = Counter(old)
    gone.subtract(new)
    return (
        [item for item, n in gone.items() for _ in range(n) if n > 0],
        [item for item, n in gone.items() for _ in range(-n) if n < 0],
    )


def render_ipvs(
    state: ProxyState,
    *,
    node_addresses: Iterable[IPAddress],
    other_interface_addresses: Iterable[IPAddress] = (),
    scheduler: str = "rr",
    overlay_rules: RenderedIptables | None = None,
) -> RenderedIpvs:
    """One render from scratch (see :meth:`IpvsRenderer.render`)."""
    return IpvsRenderer().render(
        state,
        node_addresses=node_addresses,
        other_interface_addresses=other_interface_addresses,
        scheduler=scheduler,
        overlay_rules=overlay_rules,
    )


def _render_port(
    svc: ServicePort,
    state: ProxyState,
    scheduler: str,
    node_ips: tuple[IPAddress, ...],
    version: int,
) -> _PortFragment:
    frontends: list[IpvsFrontend] = []
    bound: list[IPAddress] = []
    entries: list[tuple[str, str]] = []

    def add_entry(base: str, entry: IpsetEntry) -> None:
        entries.append((base, entry.text()))

    cluster_ips = [ip for ip in svc.cluster_ips if ip.version == version]
    if not cluster_ips:
        return _PortFragment((), (), ())
    eps = [ep for ep in state.endpoints.get(svc.name, ()) if ep.ip.version == version]
    sel = select_endpoints(svc, eps, state.node)
    proto: IpvsProtocol = svc.protocol.value
    lproto = svc.protocol.lowercase
    persistent = svc.sticky_seconds if svc.session_affinity is SessionAffinity.CLIENT_IP else 0
    external_eps = sel.external or sel.cluster_policy  # kube-proxy #97081: Local falls back

    def real(endpoints: Iterable[Endpoint]) -> tuple[RealServer, ...]:
        return tuple(RealServer(ep.ip, ep.port) for ep in endpoints)

    def server(addr: IPAddress, port: int, kind: str, endpoints: Iterable[Endpoint]) -> None:
        vs = VirtualServer(proto, addr, port, scheduler=scheduler, persistent=persistent)
        frontends.append(IpvsFrontend(vs, real(endpoints), svc.name, kind))

    local = svc.external_policy_local
    for ip in cluster_ips:
        server(ip, svc.port, "cluster IP", sel.cluster)
        bound.append(ip)
        add_entry("CLUSTER-IP", IpsetEntry.ip_port(ip, lproto, svc.port))
    for ip in (a for a in svc.external_ips if a.version == version):
        server(ip, svc.port, "external IP", external_eps)
        bound.append(ip)
        base = "EXTERNAL-IP-LOCAL" if local else "EXTERNAL-IP"
        add_entry(base, IpsetEntry.ip_port(ip, lproto, svc.port))
    ranges = [n for n in svc.load_balancer_source_ranges if n.version == version]
    if any(n.prefixlen == 0 for n in ranges):
        # A range of every address admits everyone: no firewall. (hash:ip,port,net refuses
        # a /0 entry, and one refused entry would fail the whole sync.)
        ranges = []
    for ip in (a for a in svc.load_balancer_ips if a.version == version):
        server(ip, svc.port, "load balancer IP", external_eps)
        bound.append(ip)
        entry = IpsetEntry.ip_port(ip, lproto, svc.port)
        add_entry("LB", entry)
        if local:
            add_entry("LB-LOCAL", entry)
        if ranges:
            add_entry("LB-FW", entry)
            for net in ranges:
                add_entry("LB-SRC-CIDR", IpsetEntry.ip_port_net(ip, lproto, svc.port, net))
            if any(a in n for n in ranges for a in state.node.addresses):
                add_entry("LB-SRC-IP", IpsetEntry.ip_port_ip(ip, lproto, svc.port, ip))
    if svc.node_port:
        for ip in node_ips:
            server(ip, svc.node_port, "node port", external_eps)
        add_entry(f"NODE-PORT-{proto}", IpsetEntry.bitmap_port(svc.node_port))
        if local:
            add_entry(f"NODE-PORT-LOCAL-{proto}", IpsetEntry.bitmap_port(svc.node_port))
    if svc.health_check_node_port:
        add_entry("HC-NODE-PORT", IpsetEntry.bitmap_port(svc.health_check_node_port))
    for ep in sel.all_reachable:
        if _is_local(ep, state):
            add_entry("LOOP-BACK", IpsetEntry.ip_port_ip(ep.ip, lproto, ep.port, ep.ip))
    return _PortFragment(tuple(frontends), tuple(bound), tuple(entries))


def _set(name: str, flags: str) -> str:
    return f"-m set --match-set {name} {flags}"


def render_ipvs_iptables(config: ProxyConfig, family: IPFamily) -> RenderedIptables:
    """The constant iptables rules of IPVS mode (see the module docstring)."""
    p = set_prefix(family)
    version = 4 if family is IPFamily.IPV4 else 6
    mark = config.masquerade_mark
    pods = [str(n) for n in _nets(config.cluster_cidrs, version)]
    cluster_ip = _set(p + "CLUSTER-IP", "dst,dst")
    if config.masquerade_all:
        masq_cluster = [f"-A {SERVICES} {cluster_ip} -j {MARK_MASQ}"]
    elif len(pods) == 1:
        masq_cluster = [f"-A {SERVICES} ! -s {pods[0]} {cluster_ip} -j {MARK_MASQ}"]
    else:
        # Several (or no) pod CIDRs: mark unless the source is in one of them.
        masq_cluster = [
            *(f"-A {SERVICES} -s {cidr} {cluster_ip} -j ACCEPT" for cidr in pods),
            *([f"-A {SERVICES} {cluster_ip} -j {MARK_MASQ}"] if pods else []),
        ]
    services = [
        *masq_cluster,
        f"-A {SERVICES} {cluster_ip} -j ACCEPT",
        f"-A {SERVICES} {_set(p + 'EXTERNAL-IP', 'dst,dst')} -j {MARK_MASQ}",
        f"-A {SERVICES} {_set(p + 'EXTERNAL-IP', 'dst,dst')} -j ACCEPT",
        f"-A {SERVICES} {_set(p + 'EXTERNAL-IP-LOCAL', 'dst,dst')} -j {EXTERNAL_LOCAL}",
        f"-A {SERVICES} {_set(p + 'EXTERNAL-IP-LOCAL', 'dst,dst')} -j ACCEPT",
        f"-A {SERVICES} {_set(p + 'LB', 'dst,dst')} -j {LOAD_BALANCER}",
        f"-A {SERVICES} {_set(p + 'LB', 'dst,dst')} -j ACCEPT",
        f"-A {SERVICES} -m addrtype --dst-type LOCAL -j {NODE_PORT}",
    ]
    node_port: list[str] = []
    for proto in PROTOCOLS:
        lower = proto.lower()
        node_port += [
            f"-A {NODE_PORT} -p {lower} {_set(p + f'NODE-PORT-LOCAL-{proto}', 'dst')} -j RETURN",
            f"-A {NODE_PORT} -p {lower} {_set(p + f'NODE-PORT-{proto}', 'dst')} -j {MARK_MASQ}",
        ]
    nat: dict[str, tuple[str, ...]] = {
        SERVICES: tuple(services),
        NODE_PORT: tuple(node_port),
        EXTERNAL_LOCAL: (
            # Local policy keeps the client's source, but the host's own connections
            # leave with a local address the endpoint may not route back.
            f"-A {EXTERNAL_LOCAL} -m addrtype --src-type LOCAL -j {MARK_MASQ}",
        ),
        LOAD_BALANCER: (
            f"-A {LOAD_BALANCER} {_set(p + 'LB-FW', 'dst,dst')} -j {FIREWALL}",
            f"-A {LOAD_BALANCER} {_set(p + 'LB-LOCAL', 'dst,dst')} -j RETURN",
            f"-A {LOAD_BALANCER} -j {MARK_MASQ}",
        ),
        FIREWALL: (
            f"-A {FIREWALL} {_set(p + 'LB-SRC-CIDR', 'dst,dst,src')} -j RETURN",
            f"-A {FIREWALL} {_set(p + 'LB-SRC-IP', 'dst,dst,src')} -j RETURN",
            f"-A {FIREWALL} -j {MARK_DROP}",
        ),
        MARK_MASQ: (f"-A {MARK_MASQ} -j MARK --or-mark {mark}",),
        MARK_DROP: (f"-A {MARK_DROP} -j MARK --or-mark {DROP_MARK}",),
        POSTROUTING: (
            f"-A {POSTROUTING} {_set(p + 'LOOP-BACK', 'dst,dst,src')} -j MASQUERADE --random-fully",
            f"-A {POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A {POSTROUTING} -j MARK --xor-mark {mark}",
            f"-A {POSTROUTING} -j MASQUERADE --random-fully",
        ),
    }
    filter_table: dict[str, tuple[str, ...]] = {
        DROP_MARKED: (f"-A {DROP_MARKED} -m mark --mark {DROP_MARK}/{DROP_MARK} -j DROP",),
        IPVS_FILTER: (
            f"-A {IPVS_FILTER} {_set(p + 'LB', 'dst,dst')} -j RETURN",
            f"-A {IPVS_FILTER} {cluster_ip} -j RETURN",
            f"-A {IPVS_FILTER} {_set(p + 'EXTERNAL-IP', 'dst,dst')} -j RETURN",
            f"-A {IPVS_FILTER} {_set(p + 'EXTERNAL-IP-LOCAL', 'dst,dst')} -j RETURN",
            f"-A {IPVS_FILTER} -p tcp {_set(p + 'HC-NODE-PORT', 'dst')} -j RETURN",
            f"-A {IPVS_FILTER} -m conntrack --ctstate NEW {_set(p + 'IPVS-IPS', 'dst')} -j REJECT",
        ),
        FORWARD: (
            f"-A {FORWARD} -m conntrack --ctstate INVALID -j DROP",
            f"-A {FORWARD} -m mark --mark {mark}/{mark} -j ACCEPT",
            f"-A {FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
    }

    def jump(table: str, chain: str, target: str) -> JumpRule:
        return JumpRule(table, chain, f'-m comment --comment "netagent ipvs" -j {target}')

    jumps = (
        jump("filter", "INPUT", DROP_MARKED),
        jump("filter", "INPUT", IPVS_FILTER),
        jump("filter", "FORWARD", DROP_MARKED),
        jump("filter", "FORWARD", FORWARD),
        # The node's own connections to an LB IP are marked in nat OUTPUT and must be
        # dropped here; IPVS takes them at LOCAL_OUT, before INPUT (kubernetes#119656).
        jump("filter", "OUTPUT", DROP_MARKED),
        jump("nat", "PREROUTING", SERVICES),
        jump("nat", "OUTPUT", SERVICES),
        jump("nat", "POSTROUTING", POSTROUTING),
    )
    return RenderedIptables(family=family, tables={"nat": nat, "filter": filter_table}, jumps=jumps)


def owned_address(addr: IPAddress, excluded: Iterable[IPNetwork]) -> bool:
    """False for an address in ``ipvs.excludeCIDRs``: its virtual servers are never touched."""
    return not any(addr in n for n in excluded if n.version == addr.version)
