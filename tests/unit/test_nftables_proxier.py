"""The nftables mode without root: render shape, transactions and the proxier over FakeNft.

What is pinned here, with the stateful fake of the nft runner (whose own
semantics are tested in test_nftables_fake.py and against the kernel in
tests/lab/test_nftables_runner_kernel.py):

* the table's shape: a constant number of chains whatever the number of
  services, every service as map elements, protocols kept apart;
* a golden render of a small state, so a change to the ruleset is a
  reviewed diff of tests/unit/golden/nftables_small.nft;
* stable slots: one endpoint change rewrites at most a couple of elements;
* an endpoint change is sent as element changes only, with no listing of
  the table; an unchanged state sends nothing;
* a refused transaction keeps the old table and the next sync repairs;
* drift (a deleted element, a deleted table) is found by the periodic check
  and repaired by a full sync; a full sync keeps affinity sets' clients;
* frontends claimed twice are programmed once, for the first by name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

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
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.nftables.fake import FakeNft
from netagent.proxy.nftables.proxier import NftablesProxier
from netagent.proxy.nftables.render import render_nftables, stable_slots
from netagent.proxy.nftables.runner import NftError
from netagent.proxy.nftables.transaction import full_transaction

GOLDEN = Path(__file__).parent / "golden" / "nftables_small.nft"
ip = ipaddress.ip_address
net = ipaddress.ip_network

NODE = NodeInfo(name="node-a", addresses=(ip("192.0.2.2"),), pod_cidrs=(net("10.244.0.0/24"),))
CONFIG = ProxyConfig(cluster_cidrs=(net("10.244.0.0/16"),))


def ep(addr: str, port: int = 8080, **kw: object) -> Endpoint:
    return Endpoint(ip=ip(addr), port=port, **kw)  # type: ignore[arg-type]


def small_state() -> ProxyState:
    """One service port of every kind the table distinguishes."""
    web = ServicePortName("default", "web", "http")
    dns = ServicePortName("default", "dns", "dns")
    lb = ServicePortName("default", "lb", "")
    sticky = ServicePortName("default", "sticky", "")
    empty = ServicePortName("default", "empty", "")
    services = {
        web: ServicePort(web, Protocol.TCP, 80, cluster_ips=(ip("10.96.0.10"),), node_port=30080),
        dns: ServicePort(dns, Protocol.UDP, 53, cluster_ips=(ip("10.96.0.10"),)),
        lb: ServicePort(
            lb,
            Protocol.TCP,
            443,
            cluster_ips=(ip("10.96.0.20"),),
            external_ips=(ip("198.51.100.10"),),
            load_balancer_ips=(ip("198.51.100.20"),),
            load_balancer_source_ranges=(net("203.0.113.0/24"),),
            node_port=30443,
            external_traffic_policy=TrafficPolicy.LOCAL,
            type="LoadBalancer",
        ),
        sticky: ServicePort(
            sticky,
            Protocol.TCP,
            80,
            cluster_ips=(ip("10.96.0.30"),),
            session_affinity=SessionAffinity.CLIENT_IP,
            sticky_seconds=600,
        ),
        empty: ServicePort(empty, Protocol.SCTP, 9000, cluster_ips=(ip("10.96.0.40"),)),
    }
    local = ep("10.244.0.5", node_name="node-a", is_local=True)
    remote = ep("10.244.1.5", node_name="node-b")
    endpoints = {
        web: (local, remote, ep("10.244.2.5", node_name="node-c")),
        dns: (ep("10.244.0.5", 5353, node_name="node-a", is_local=True),),
        lb: (local, remote),
        sticky: (local, remote),
    }
    return ProxyState(services, endpoints, NODE, CONFIG, IPFamily.IPV4)


OVERLAY = OverlayRules(net("10.244.0.0/16"), net("10.244.0.0/24"), True)  # type: ignore[arg-type]


def test_golden_render_of_one_service_port_of_each_kind() -> None:
    payload = full_transaction(render_nftables(small_state(), OVERLAY), None).payload
    if not GOLDEN.exists():  # first run writes it; review the file like code
        GOLDEN.write_text(payload)
    assert payload == GOLDEN.read_text()


def test_chains_do_not_grow_with_services_and_protocols_stay_apart() -> None:
    small = render_nftables(build_state(100, 10)).counts()
    big = render_nftables(build_state(2000, 10)).counts()
    assert big["chains"] == small["chains"]
    assert big["rules"] == small["rules"]
    assert big["elements"] == 2000 * (1 + 1 + 10)  # verdict + cluster IP + 10 slots
    chains = render_nftables(small_state()).all_chains()
    assert "cluster-tcp-3" in chains and "cluster-udp-1" in chains
    assert all("udp" not in rule for rule in chains["cluster-tcp-3"].rules)


def test_render_is_deterministic_and_local_policy_uses_local_endpoints() -> None:
    one = render_nftables(small_state())
    assert full_transaction(one).payload == full_transaction(render_nftables(small_state())).payload
    elements = one.elements()
    assert elements["service-ips"]["198.51.100.10 . tcp . 443"] == "goto external-local-tcp-2-1"
    assert elements["local-endpoints-tcp"] == {
        "198.51.100.10 . 443 . 0": "10.244.0.5 . 8080",
        "198.51.100.20 . 443 . 0": "10.244.0.5 . 8080",
    }
    assert elements["no-endpoint-services"]["10.96.0.40 . sctp . 9000"] == "goto reject-chain"
    assert elements["firewall-allow"] == {"198.51.100.20 . tcp . 443 . 203.0.113.0/24": ""}
    assert elements["hairpin"] == {"10.244.0.5 . 10.244.0.5": ""}


def test_overlapping_source_ranges_are_collapsed_so_nft_accepts_them() -> None:
    """The API lets ranges overlap; nft refuses overlapping intervals of one key (fuzz find)."""
    state = small_state()
    lb = ServicePortName("default", "lb", "")
    ranges = (net("0.0.0.0/0"), net("10.0.0.0/8"), net("203.0.113.0/24"), net("203.0.113.7/32"))
    services = dict(state.services)
    services[lb] = replace(services[lb], load_balancer_source_ranges=ranges)
    wide = replace(state, services=services)
    assert render_nftables(wide).elements()["firewall-allow"] == {
        "198.51.100.20 . tcp . 443 . 0.0.0.0/0": ""
    }
    services[lb] = replace(
        services[lb],
        load_balancer_source_ranges=(net("10.0.0.0/9"), net("10.128.0.0/9"), net("10.1.0.0/16")),
    )
    merged = render_nftables(replace(state, services=services))
    assert merged.elements()["firewall-allow"] == {"198.51.100.20 . tcp . 443 . 10.0.0.0/8": ""}
    FakeNft().run(full_transaction(render_nftables(wide)).payload)  # the fake refuses overlaps


@pytest.mark.parametrize(
    ("before", "after", "moved"),
    [
        (("a", "b", "c"), ("a", "c"), 1),  # c moves into b's slot
        (("a", "b", "c"), ("a", "b", "c", "d"), 0),
        (("a", "b", "c"), ("a", "d", "c"), 0),  # d takes b's slot
        (("a", "b", "c"), ("c",), 1),
    ],
)
def test_stable_slots_keep_remaining_endpoints_in_place(
    before: tuple[str, ...], after: tuple[str, ...], moved: int
) -> None:
    slots = stable_slots(before, after)
    assert sorted(slots) == sorted(after)
    kept = sum(1 for i, e in enumerate(slots) if i < len(before) and before[i] == e)
    assert kept >= len(set(before) & set(after)) - moved


def proxier(fake: FakeNft, **kw: object) -> NftablesProxier:
    return NftablesProxier(runner=fake, conntrack=None, **kw)  # type: ignore[arg-type]


def test_an_endpoint_change_is_sent_as_a_few_element_changes_without_listing() -> None:
    fake = FakeNft()
    p = proxier(fake)
    state = build_state(500, 10)
    first = p.sync(state)
    assert first.full
    lists = fake.lists
    result = p.sync(with_one_endpoint_changed(state, 7))
    assert not result.full
    assert fake.lists == lists, "a partial sync listed the table"
    lines = [line for line in p.last_payload.splitlines() if line]
    assert lines and all(line.split()[1] == "element" for line in lines), lines
    assert result.bytes_written < 1024
    assert fake.elements("service-endpoints-tcp")["10.96.0.17 . 80 . 0"] == "10.244.255.254 . 8080"
    runs = len(fake.runs)
    p.sync(with_one_endpoint_changed(state, 7))
    assert len(fake.runs) == runs, "an unchanged state sent a transaction"


def test_services_and_chains_come_and_go_incrementally() -> None:
    fake = FakeNft()
    p = proxier(fake)
    state = small_state()
    p.sync(state)
    gone = ServicePortName("default", "web", "http")
    services = {k: v for k, v in state.services.items() if k != gone}
    endpoints = {k: v for k, v in state.endpoints.items() if k != gone}
    smaller = replace(state, services=services, endpoints=endpoints)
    result = p.sync(smaller)
    assert not result.full
    assert "cluster-tcp-3" not in fake.chains(), "an unreferenced shared chain stayed"
    assert "10.96.0.10 . tcp . 80" not in fake.elements("service-ips")
    # The cluster IP is shared with the dns port: it stays while dns uses it.
    assert "10.96.0.10" in fake.elements("cluster-ips")
    sticky = ServicePortName("default", "sticky", "")
    no_sticky = replace(
        smaller,
        services={k: v for k, v in smaller.services.items() if k != sticky},
        endpoints={k: v for k, v in smaller.endpoints.items() if k != sticky},
    )
    p.sync(no_sticky)
    assert not [c for c in fake.chains() if c.startswith("sticky-")]
    assert not [s for s in fake.set_names() if s.startswith("sticky-")]
    result = p.sync(state)
    assert p.kernel_objects() == p.render_objects(state)
    # Counts kept up to date from each transaction match a count of a fresh render.
    assert dict(result.rule_counts) == render_nftables(state).counts()


def test_a_refused_transaction_keeps_the_old_table_and_the_next_sync_repairs() -> None:
    fake = FakeNft()
    p = proxier(fake)
    state = build_state(20, 3)
    p.sync(state)
    before = fake.elements("service-endpoints-tcp")
    fake.fail_next(2)  # the incremental transaction and the full retry
    changed = with_one_endpoint_changed(state, 1)
    with pytest.raises(NftError):
        p.sync(changed)
    assert fake.elements("service-endpoints-tcp") == before
    assert p.needs_full_sync
    result = p.sync(changed)
    assert result.full
    assert p.kernel_objects() == p.render_objects(changed)


def test_a_table_deleted_by_hand_is_restored_by_the_next_change() -> None:
    fake = FakeNft()
    p = proxier(fake)
    state = build_state(10, 2)
    p.sync(state)
    fake.run("delete table ip netagent\n")
    result = p.sync(with_one_endpoint_changed(state, 3))
    assert result.full, "the refused incremental transaction must fall back to a full sync"
    assert p.kernel_objects() == p.render_objects(with_one_endpoint_changed(state, 3))


def test_drift_check_finds_a_deleted_element_and_the_sync_repairs_it() -> None:
    fake = FakeNft()
    p = proxier(fake, drift_check_period=0.0)
    state = build_state(10, 2)
    p.sync(state)
    fake.run("delete element ip netagent service-endpoints-tcp { 10.96.0.12 . 80 . 1 }\n")
    result = p.sync(state)
    assert result.full
    assert "drift" in result.summary
    assert p.kernel_objects() == p.render_objects(state)
    quiet = proxier(FakeNft(), drift_check_period=3600.0)
    quiet.sync(state)
    runner = quiet._runner
    assert isinstance(runner, FakeNft)
    lists = runner.lists
    quiet.sync(with_one_endpoint_changed(state, 2))
    assert runner.lists == lists, "a drift check ran before its period"


def test_a_full_sync_keeps_the_clients_of_affinity_sets() -> None:
    fake = FakeNft()
    p = proxier(fake)
    state = small_state()
    p.sync(state)
    sticky_sets = [s for s in fake.set_names() if s.startswith("sticky-")]
    assert len(sticky_sets) == 2
    fake.run(f"add element ip netagent {sticky_sets[0]} {{ 192.0.2.77 }}\n")
    assert p.sync(state, full=True).full
    assert "192.0.2.77" in fake.elements(sticky_sets[0])


def test_a_frontend_claimed_twice_is_programmed_once_for_the_first_by_name() -> None:
    state = small_state()
    a = ServicePortName("default", "a", "")
    b = ServicePortName("default", "b", "")
    shared_ip = (ip("198.51.100.99"),)
    services = dict(state.services)
    services[a] = ServicePort(a, Protocol.TCP, 80, (ip("10.96.1.1"),), external_ips=shared_ip)
    services[b] = ServicePort(b, Protocol.TCP, 80, (ip("10.96.1.2"),), external_ips=shared_ip)
    endpoints = dict(state.endpoints)
    endpoints[a] = (ep("10.244.5.1"),)
    endpoints[b] = (ep("10.244.5.2"),)
    rendered = render_nftables(replace(state, services=services, endpoints=endpoints))
    assert len(rendered.conflicts) == 1 and "default/b" in rendered.conflicts[0]
    slots = rendered.elements()["service-endpoints-tcp"]
    assert slots["198.51.100.99 . 80 . 0"] == "10.244.5.1 . 8080"
    fake = FakeNft()
    proxier(fake).sync(replace(state, services=services, endpoints=endpoints))
    assert fake.elements("service-endpoints-tcp")["198.51.100.99 . 80 . 0"] == "10.244.5.1 . 8080"


def test_ipv6_table_is_ip6_netagent() -> None:
    web = ServicePortName("default", "web6", "")
    state = ProxyState(
        {web: ServicePort(web, Protocol.TCP, 80, cluster_ips=(ip("fd00::10"),))},
        {web: (ep("fd00:1::5"),)},
        NodeInfo(name="n"),
        ProxyConfig(),
        IPFamily.IPV6,
    )
    fake = FakeNft()
    p = proxier(fake, family=IPFamily.IPV6)
    p.sync(state)
    assert fake.tables() == ["ip6 netagent"]
    assert fake.elements("service-endpoints-tcp", "ip6 netagent") == {
        "fd00::10 . 80 . 0": "fd00:1::5 . 8080"
    }
    assert p.cleanup().removed == 1
    assert fake.tables() == []
