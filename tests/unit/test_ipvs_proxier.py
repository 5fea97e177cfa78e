"""IPVS mode without an IPVS kernel: the render's semantics and the proxier over stateful fakes.

The fakes (FakeIpvs, FakeIpsets, FakeDummy; tested on their own in
test_ipvs_fakes.py) and FakeIptables stand in for the kernel. Pinned here:

* one virtual server per frontend (node ports on every node address),
  masquerading real servers from the shared endpoint selection, persistence
  for ClientIP affinity, the Local-policy fallback, no real server for a
  service without endpoints;
* a constant number of iptables rules whatever the number of services;
* a partial sync touches only what changed (a constant number of calls);
* graceful termination: a removed TCP real server goes to weight 0 and is
  deleted once its connections are gone; UDP ones go at once;
* a periodic full sync restores a real server deleted by hand, and a
  foreign virtual server survives syncs and cleanup;
* cleanup removes the virtual servers, sets, chains and device it made.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace

import pytest

from bench.synthetic import build_state, with_one_endpoint_changed
from netagent.model import (
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ProxyConfig,
    ProxyState,
    ServicePort,
    ServicePortName,
    SessionAffinity,
    TrafficPolicy,
)
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.runner import XtablesLockBusy
from netagent.proxy.ipvs.fake import FakeDummy, FakeIpsets, FakeIpvs
from netagent.proxy.ipvs.model import IpsetSpec, RealServer, VirtualServer
from netagent.proxy.ipvs.proxier import IpvsProxier
from netagent.proxy.ipvs.render import IpvsRenderer, render_ipvs
from netagent.proxy.proxier import OwnedObject

ip = ipaddress.ip_address
net = ipaddress.ip_network
NODE_IP = ip("192.0.2.2")
NODE = NodeInfo(name="node-a", addresses=(NODE_IP,), pod_cidrs=(net("10.244.0.0/24"),))
CONFIG = ProxyConfig(cluster_cidrs=(net("10.244.0.0/16"),))


def ep(addr: str, port: int = 8080, **kw: object) -> Endpoint:
    return Endpoint(ip=ip(addr), port=port, **kw)  # type: ignore[arg-type]


WEB = ServicePortName("default", "web", "http")
DNS = ServicePortName("default", "dns", "dns")
LB = ServicePortName("default", "lb", "")


def state() -> ProxyState:
    services = {
        WEB: ServicePort(
            WEB,
            Protocol.TCP,
            80,
            cluster_ips=(ip("10.96.0.10"),),
            node_port=30080,
            session_affinity=SessionAffinity.CLIENT_IP,
            sticky_seconds=600,
        ),
        DNS: ServicePort(DNS, Protocol.UDP, 53, cluster_ips=(ip("10.96.0.53"),)),
        LB: ServicePort(
            LB,
            Protocol.TCP,
            443,
            cluster_ips=(ip("10.96.0.20"),),
            load_balancer_ips=(ip("198.51.100.20"),),
            load_balancer_source_ranges=(net("203.0.113.0/24"),),
            external_traffic_policy=TrafficPolicy.LOCAL,
            type="LoadBalancer",
        ),
    }
    endpoints = {
        WEB: (ep("10.244.0.5", node_name="node-a", is_local=True), ep("10.244.1.5")),
        DNS: (ep("10.244.1.7", 5353), ep("10.244.2.7", 5353)),
        LB: (ep("10.244.1.9"),),  # no local endpoint: external traffic falls back to all
    }
    return ProxyState(services, endpoints, NODE, CONFIG, IPFamily.IPV4)


def local() -> tuple[frozenset[ipaddress.IPv4Address], frozenset[ipaddress.IPv4Address]]:
    return frozenset({NODE_IP, ip("127.0.0.1")}), frozenset({NODE_IP})  # type: ignore[return-value]


def test_one_virtual_server_per_frontend_with_the_selected_real_servers() -> None:
    r = render_ipvs(state(), node_addresses=[NODE_IP, ip("127.0.0.1")], scheduler="wrr")
    keys = {(k[1].exploded, k[2]) for k in r.virtual_servers}
    assert keys == {
        ("10.96.0.10", 80),
        ("192.0.2.2", 30080),  # node port on the node address, never on loopback
        ("10.96.0.53", 53),
        ("10.96.0.20", 443),
        ("198.51.100.20", 443),
    }
    web = r.virtual_servers[("TCP", ip("10.96.0.10"), 80)]
    assert web.server.persistent == 600 and web.server.scheduler == "wrr"
    assert [str(rs) for rs in web.real_servers] == [
        "10.244.0.5:8080 masq weight 1",
        "10.244.1.5:8080 masq weight 1",
    ]
    lb = r.virtual_servers[("TCP", ip("198.51.100.20"), 443)]
    assert [str(rs.address) for rs in lb.real_servers] == ["10.244.1.9"]
    assert r.addresses == {ip("10.96.0.10"), ip("10.96.0.53"), ip("10.96.0.20"), ip("198.51.100.20")}
    assert r.ipsets["NETAGENT-LB-SRC-CIDR"] == {"198.51.100.20,tcp:443,203.0.113.0/24"}
    assert r.ipsets["NETAGENT-LB-LOCAL"] == {"198.51.100.20,tcp:443"}
    assert r.ipsets["NETAGENT-LOOP-BACK"] == {"10.244.0.5,tcp:8080,10.244.0.5"}
    assert r.ipsets["NETAGENT-NODE-PORT-TCP"] == {"30080"}


def test_a_source_range_of_every_address_means_no_firewall() -> None:
    # hash:ip,port,net refuses a /0 net; one refused entry would fail the whole sync.
    s = state()
    everyone = replace(s.services[LB], load_balancer_source_ranges=(net("0.0.0.0/0"),
                                                                     net("203.0.113.0/24")))
    r = render_ipvs(replace(s, services={**s.services, LB: everyone}), node_addresses=[NODE_IP])
    assert r.ipsets["NETAGENT-LB-FW"] == frozenset()
    assert r.ipsets["NETAGENT-LB-SRC-CIDR"] == frozenset()
    p, _, sets, _ = proxier()
    p.sync(replace(s, services={**s.services, LB: everyone}))  # the fake refuses a /0 too
    assert sets.members("NETAGENT-LB") == {"198.51.100.20,tcp:443"}


def test_the_nodes_own_connections_meet_the_drop_mark_in_filter_output() -> None:
    # nat OUTPUT marks the node's connection to a firewalled LB IP; IPVS takes it at
    # LOCAL_OUT, so INPUT never sees it: filter OUTPUT must drop it (kubernetes#119656).
    jumps = render_ipvs(state(), node_addresses=[NODE_IP]).iptables.jumps
    assert ("filter", "OUTPUT", "NETAGENT-DROP-MARKED") in {
        (j.table, j.chain, j.spec.rsplit(" ", 1)[-1]) for j in jumps
    }


def test_a_frontend_on_another_interfaces_address_is_reconciled_after_a_restart() -> None:
    # A VIP-style LB IP on the node's lo: not bound to the dummy device, still netagent's.
    lb_ip = ip("198.51.100.20")

    def with_vip() -> tuple[frozenset[ipaddress.IPv4Address], frozenset[ipaddress.IPv4Address]]:
        return frozenset({NODE_IP, lb_ip}), frozenset({NODE_IP, lb_ip})  # type: ignore[arg-type]

    ipvs, sets, dummy, iptables = FakeIpvs(), FakeIpsets(), FakeDummy(), FakeIptables()

    def start() -> IpvsProxier:  # a new process on the same node (the same kernel)
        return IpvsProxier(ipvs=ipvs, ipsets=sets, dummy=dummy, iptables=iptables,
                           local_addresses=with_vip, conntrack=None)  # fmt: skip

    s = state()
    start().sync(s)
    key = ("TCP", lb_ip, 443)
    assert key in {v.key for v in ipvs.services()}
    assert lb_ip not in dummy.addresses()
    restarted = start()
    assert restarted.sync(s).full  # the kernel already has it: reconciled, not added twice
    want = restarted.render_objects(s)
    assert restarted.kernel_objects() == want
    debug = start()  # a fresh process, as `netagent debug diff` is: render first, then read
    assert debug.render_objects(s) == want

    def contents(objects: Sequence[OwnedObject]) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(o.kind, o.key, o.content) for o in objects]  # a fresh process knows no owner

    assert contents(debug.kernel_objects()) == contents(want)
    gone = replace(s, services={k: v for k, v in s.services.items() if k != LB})
    restarted.sync(gone)
    assert key not in {v.key for v in ipvs.services()}, "the last sync programmed it"


def test_iptables_rules_do_not_grow_with_services() -> None:
    small = render_ipvs(build_state(10, 3), node_addresses=[NODE_IP]).iptables
    big = render_ipvs(build_state(2000, 3), node_addresses=[NODE_IP]).iptables
    assert small.tables == big.tables


def test_a_service_without_endpoints_keeps_its_virtual_server_with_no_real_server() -> None:
    s = state()
    s = replace(s, endpoints={k: v for k, v in s.endpoints.items() if k != DNS})
    r = render_ipvs(s, node_addresses=[NODE_IP])
    assert r.virtual_servers[("UDP", ip("10.96.0.53"), 53)].real_servers == ()


def proxier(**kw: object) -> tuple[IpvsProxier, FakeIpvs, FakeIpsets, FakeDummy]:
    ipvs, sets, dummy = FakeIpvs(), FakeIpsets(), FakeDummy()
    p = IpvsProxier(
        ipvs=ipvs,
        ipsets=sets,
        dummy=dummy,
        iptables=FakeIptables(),
        local_addresses=local,  # type: ignore[arg-type]
        conntrack=None,
        **kw,  # type: ignore[arg-type]
    )
    return p, ipvs, sets, dummy


def test_full_sync_programs_every_interface_and_the_kernel_equals_the_render() -> None:
    p, ipvs, sets, dummy = proxier()
    s = state()
    assert p.sync(s).full
    assert len(ipvs.services()) == 5
    assert dummy.addresses() == {ip("10.96.0.10"), ip("10.96.0.53"), ip("10.96.0.20"), ip("198.51.100.20")}
    assert sets.members("NETAGENT-CLUSTER-IP") == {
        "10.96.0.10,tcp:80",
        "10.96.0.53,udp:53",
        "10.96.0.20,tcp:443",
    }
    assert p.kernel_objects() == p.render_objects(s)


def test_a_partial_sync_touches_only_what_changed() -> None:
    p, ipvs, sets, dummy = proxier()
    big = build_state(300, 5)
    p.sync(big)
    before = len(ipvs.calls) + len(sets.calls) + len(dummy.calls)
    result = p.sync(with_one_endpoint_changed(big, 7))
    assert not result.full
    writes = [c for c in ipvs.calls[-10:] if c.method != "services"]
    spent = len(ipvs.calls) + len(sets.calls) + len(dummy.calls) - before
    assert spent <= 6, (spent, writes)
    assert result.objects_written >= 1


def test_the_memoised_render_equals_a_fresh_one_and_reuses_unchanged_frontends() -> None:
    renderer = IpvsRenderer()
    big = build_state(200, 4, node_ports=True)
    first = renderer.render(big, node_addresses=[NODE_IP])
    assert first == render_ipvs(big, node_addresses=[NODE_IP])
    changed = with_one_endpoint_changed(big, 7)
    second = renderer.render(changed, node_addresses=[NODE_IP])
    assert second == render_ipvs(changed, node_addresses=[NODE_IP])
    fresh = [k for k, f in second.virtual_servers.items() if f is not first.virtual_servers[k]]
    # Service 7's cluster IP and its node port: the only frontends built again.
    assert sorted(second.virtual_servers[k].owner.name for k in fresh) == ["svc-7", "svc-7"]
    # Another node address is another input: every node port is rendered again.
    third = renderer.render(changed, node_addresses=[NODE_IP, ip("192.0.2.3")])
    assert third == render_ipvs(changed, node_addresses=[NODE_IP, ip("192.0.2.3")])
    assert len(third.virtual_servers) == 600


def test_a_partial_sync_skips_unchanged_frontends_and_still_drains_the_changed_one() -> None:
    p, ipvs, _, _ = proxier()
    big = build_state(300, 5)
    p.sync(big)
    changed = with_one_endpoint_changed(big, 7)
    name = ServicePortName("bench", "svc-7", "http")
    (vs,) = [v for v in ipvs.services() if v.address == changed.services[name].cluster_ips[0]]
    leaving = next(d for d in ipvs.dests(vs) if d.address == big.endpoints[name][0].ip)
    ipvs.set_connections(vs, leaving, active=1)  # an open connection keeps it draining
    p.sync(changed)
    weights = {(d.address, d.weight) for d in ipvs.dests(vs)}
    moved = {e.ip for e in changed.endpoints[name]} - {e.ip for e in big.endpoints[name]}
    gone = {e.ip for e in big.endpoints[name]} - {e.ip for e in changed.endpoints[name]}
    assert {(a, 1) for a in moved} <= weights
    assert {(a, 0) for a in gone} <= weights  # TCP: drained at weight 0, not deleted
    # The endpoint comes back: the drained real server returns to weight 1.
    p.sync(big)
    assert {d.weight for d in ipvs.dests(vs)} == {1}
    assert p.kernel_objects() == p.render_objects(big)


def test_graceful_termination_of_tcp_and_immediate_removal_of_udp() -> None:
    p, ipvs, _, _ = proxier()
    s = state()
    p.sync(s)
    web_vs = next(v for v in ipvs.services() if v.port == 80)
    gone = RealServer(ip("10.244.1.5"), 8080)
    ipvs.set_connections(web_vs, gone, active=2, inactive=1)
    endpoints = dict(s.endpoints)
    endpoints[WEB] = endpoints[WEB][:1]
    endpoints[DNS] = endpoints[DNS][:1]
    s2 = replace(s, endpoints=endpoints)
    p.sync(s2)
    dests = {d.key: d for d in ipvs.dests(web_vs)}
    assert dests[gone.key].weight == 0, "the removed TCP real server must drain at weight 0"
    dns_vs = next(v for v in ipvs.services() if v.port == 53)
    assert [str(d.address) for d in ipvs.dests(dns_vs)] == ["10.244.1.7"], "UDP goes at once"
    p.sync(s2)
    assert gone.key in {d.key for d in ipvs.dests(web_vs)}, "deleted while connections remain"
    ipvs.set_connections(web_vs, gone, active=0, inactive=0)
    p.sync(s2)
    assert gone.key not in {d.key for d in ipvs.dests(web_vs)}
    assert not p.terminating


def test_periodic_full_sync_restores_a_hand_deleted_real_server_and_spares_foreign_ones() -> None:
    now = [0.0]
    p, ipvs, sets, dummy = proxier(drift_check_period=30.0, clock=lambda: now[0])
    foreign = VirtualServer("TCP", ip("192.0.2.99"), 8000, scheduler="wlc")
    ipvs.seed(foreign, RealServer(ip("192.0.2.100"), 80))
    sets.seed(IpsetSpec("KUBE-CLUSTER-IP", "hash:ip,port"), ["10.0.0.1,tcp:80"])
    s = state()
    p.sync(s)
    web_vs = next(v for v in ipvs.services() if v.port == 80)
    ipvs.delete_dest(web_vs, RealServer(ip("10.244.1.5"), 8080))
    now[0] = 31.0
    assert p.sync(s).full
    assert ip("10.244.1.5") in {d.address for d in ipvs.dests(web_vs)}
    assert foreign in ipvs.services()
    result = p.cleanup()
    assert result.removed > 0 and not result.failures
    assert ipvs.services() == [foreign]
    assert list(sets.list_sets()) == ["KUBE-CLUSTER-IP"]
    assert sets.members("KUBE-CLUSTER-IP") == {"10.0.0.1,tcp:80"}
    assert not dummy.exists()


# ---- an iptables failure once the constant rules are in ------------------------------------


class LockedIptables(FakeIptables):
    """FakeIptables whose every call fails as with a held xtables lock while ``locked``."""

    locked = False

    def _check(self) -> None:
        if self.locked:
            raise XtablesLockBusy("iptables-legacy: another program held the xtables lock")

    def restore(self, payload: str) -> None:
        self._check()
        super().restore(payload)

    def save(self, table: str | None = None) -> str:
        self._check()
        return super().save(table)

    def chain_exists(self, table: str, chain: str) -> bool:
        self._check()
        return super().chain_exists(table, chain)


def locked_proxier() -> tuple[IpvsProxier, FakeIpvs, LockedIptables]:
    ipvs, iptables = FakeIpvs(), LockedIptables()
    p = IpvsProxier(
        ipvs=ipvs,
        ipsets=FakeIpsets(),
        dummy=FakeDummy(),
        iptables=iptables,
        local_addresses=local,  # type: ignore[arg-type]
        conntrack=None,
    )
    return p, ipvs, iptables


def test_a_failing_iptables_after_the_constant_rules_are_in_still_programs_the_services() -> None:
    p, ipvs, iptables = locked_proxier()
    s = state()
    p.sync(s)
    rules = iptables.save()
    iptables.locked = True
    without_dns = replace(
        s,
        services={k: v for k, v in s.services.items() if k != DNS},
        endpoints={k: v for k, v in s.endpoints.items() if k != DNS},
    )
    for full in (False, True):  # a partial sync (its canary check fails) and a full one
        with pytest.raises(XtablesLockBusy):
            p.sync(without_dns, full=full)
        assert ("UDP", ip("10.96.0.53"), 53) not in {v.key for v in ipvs.services()}
        assert p.needs_full_sync
        iptables.locked = False  # reading the kernel's objects takes the lock too
        assert p.kernel_objects() == p.render_objects(without_dns)
        iptables.locked = True
    iptables.locked = False
    assert iptables.save() == rules, "nothing was written to iptables during the failure"
    result = p.sync(s)
    assert result.full and ("UDP", ip("10.96.0.53"), 53) in {v.key for v in ipvs.services()}
    assert not p.needs_full_sync and p.kernel_objects() == p.render_objects(s)


def test_a_failing_iptables_on_the_first_sync_or_with_new_rules_stops_the_sync() -> None:
    p, ipvs, iptables = locked_proxier()
    iptables.locked = True
    with pytest.raises(XtablesLockBusy):
        p.sync(state())
    assert ipvs.services() == [], "no virtual server before the iptables rules are in"
    iptables.locked = False
    p.sync(state())
    before = sorted(v.key for v in ipvs.services())
    # Other iptables rules wanted (masquerade-all changes the constant set): the failure stops
    # the sync before any virtual server changes.
    other = replace(state(), config=replace(CONFIG, masquerade_all=True))
    other = replace(other, services={k: v for k, v in other.services.items() if k != DNS})
    iptables.locked = True
    with pytest.raises(XtablesLockBusy):
        p.sync(other)
    assert sorted(v.key for v in ipvs.services()) == before
