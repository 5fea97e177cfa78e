"""The nftables tracer on hand-built states: what netagent's rendered table does with a packet.

Each case renders a small ProxyState with the real renderer and walks it
with the tracer, which interprets the render's own rules and elements, so
these tests check the render's semantics (which endpoints, which share,
masqueraded or not, dropped before or rejected after DNAT), not a
re-statement of them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

import pytest

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
from netagent.proxy.nftables.render import render_nftables
from netagent.proxy.nftables.ruleset import NftChain, RenderedNft, Skeleton
from netagent.proxy.nftables.trace import (
    NftTrace,
    NftTracer,
    Origin,
    Packet,
    TraceError,
    local_addresses,
    trace_packet,
    trace_state,
)

ip = ipaddress.ip_address
net = ipaddress.ip_network
NODE_IP = "192.0.2.11"
NODE = NodeInfo(name="node-1", addresses=(ip(NODE_IP),), pod_cidrs=(net("10.244.1.0/24"),))
CONFIG = ProxyConfig(cluster_cidrs=(net("10.244.0.0/16"),))
POD = "10.244.1.5"  # a pod on this node
OUTSIDE = "203.0.113.7"


def svc(name: str, vip: str, **kw: Any) -> ServicePort:
    return ServicePort(
        name=ServicePortName("default", name, "http"),
        protocol=kw.pop("protocol", Protocol.TCP),
        port=kw.pop("port", 80),
        cluster_ips=(ip(vip),),
        **kw,
    )


def ep(addr: str, *, local: bool = False, port: int = 8080, ready: bool = True) -> Endpoint:
    return Endpoint(
        ip=ip(addr),
        port=port,
        ready=ready,
        serving=ready,
        node_name="node-1" if local else "node-2",
        is_local=local,
    )


def state(
    *pairs: tuple[ServicePort, tuple[Endpoint, ...]], config: ProxyConfig = CONFIG
) -> ProxyState:
    return ProxyState(
        services={s.name: s for s, _ in pairs},
        endpoints={s.name: eps for s, eps in pairs if eps},
        node=NODE,
        config=config,
    )


def trace(
    st: ProxyState,
    src: str,
    dst: str,
    port: int = 80,
    origin: Origin = Origin.POD,
    proto: str = "tcp",
) -> NftTrace:
    return trace_state(st, Packet(src=src, dst=dst, protocol=proto, dport=port, origin=origin))


def shares(res: NftTrace) -> dict[str | None, float]:
    return {k: round(v, 9) for k, v in res.endpoint_probabilities().items()}


THREE = (ep("10.244.1.11", local=True), ep("10.244.2.11"), ep("10.244.3.11"))


# ---- cluster IPs ----------------------------------------------------------------------------


def test_cluster_ip_spreads_new_connections_over_three_endpoints() -> None:
    st = state((svc("web", "10.96.0.10"), THREE))
    res = trace(st, POD, "10.96.0.10")
    assert res.outcome == "DNAT"
    assert shares(res) == {
        "10.244.1.11:8080": round(1 / 3, 9),
        "10.244.2.11:8080": round(1 / 3, 9),
        "10.244.3.11:8080": round(1 / 3, 9),
    }
    assert sum(p.probability for p in res.paths) == pytest.approx(1.0)
    assert res.masquerade is False  # a pod source is kept
    assert res.service == "default/web:http"
    dispatch = next(s for s in res.paths[0].steps if s.chain == "services" and s.matched)
    assert dispatch.verdict == "goto cluster-tcp-3"
    assert dispatch.detail == "10.96.0.10 . tcp . 80 in @service-ips"
    assert dispatch.owner == "default/web:http"
    slots = sorted(s.detail for p in res.paths for s in p.steps if s.verdict.startswith("dnat"))
    assert slots == [
        f"10.96.0.10 . 80 . {i} in @service-endpoints-tcp (slot {i} of 3, p=0.3333)"
        for i in range(3)
    ]
    # The firewall check ran before the dispatch (priority dstnat - 10).
    chains = res.paths[0].chains
    assert chains.index("firewall-check") < chains.index("services")
    assert "masquerade no" in res.summary() and "DNAT to 10.244.1.11:8080 p=0.3333" in res.summary()


def test_cluster_ip_from_the_host_and_from_outside_is_masqueraded() -> None:
    st = state((svc("web", "10.96.0.10"), THREE))
    host = trace(st, NODE_IP, "10.96.0.10", origin=Origin.HOST)
    assert host.outcome == "DNAT" and len(host.endpoints) == 3
    assert host.masquerade is True
    assert host.paths[0].chains[:2] == ("filter-output-pre-dnat", "firewall-check")
    outside = trace(st, OUTSIDE, "10.96.0.10", origin=Origin.EXTERNAL)
    assert outside.masquerade is True and len(outside.endpoints) == 3


def test_masquerade_all_masquerades_pods_too() -> None:
    st = state((svc("web", "10.96.0.10"), THREE), config=replace(CONFIG, masquerade_all=True))
    assert trace(st, POD, "10.96.0.10").masquerade is True


def test_unknown_port_on_a_cluster_ip_is_rejected_after_dnat() -> None:
    st = state((svc("web", "10.96.0.10"), THREE))
    for res in (
        trace(st, POD, "10.96.0.10", 81),
        trace(st, NODE_IP, "10.96.0.10", 81, Origin.HOST),
        trace(st, POD, "10.96.0.10", 80, proto="udp"),
    ):
        assert res.outcome == "REJECT" and res.endpoints == set()
        last = res.paths[0].steps[-1]
        assert (last.chain, last.verdict, last.detail) == (
            "service-checks",
            "reject",
            "10.96.0.10 in @cluster-ips",
        )
        assert not res.service


def test_no_endpoints_is_rejected() -> None:
    st = state((svc("empty", "10.96.0.12", node_port=30012, type="NodePort"), ()))
    res = trace(st, POD, "10.96.0.12")
    assert res.outcome == "REJECT"
    check = next(s for s in res.paths[0].steps if s.chain == "service-checks" and s.matched)
    assert check.verdict == "goto reject-chain" and check.owner == "default/empty:http"
    assert res.paths[0].chains[-1] == "reject-chain"
    # The node port: not translated, then rejected at input.
    nodeport = trace(st, OUTSIDE, NODE_IP, 30012, Origin.EXTERNAL)
    assert nodeport.outcome == "REJECT"
    assert any(
        s.chain == "filter-input" and s.verdict == "goto reject-chain"
        for s in nodeport.paths[0].steps
    )


def test_not_a_service_passes_untouched() -> None:
    st = state((svc("web", "10.96.0.10"), THREE))
    res = trace(st, POD, "10.244.2.50", 8080)
    assert res.outcome == "ACCEPT" and res.endpoints == set() and res.masquerade is False
    assert res.summary().startswith("ACCEPT untouched")
    # A node port nobody has, on the node's address: accepted untouched too.
    assert trace(st, OUTSIDE, NODE_IP, 31999, Origin.EXTERNAL).outcome == "ACCEPT"


# ---- node ports and external traffic policy -------------------------------------------------


def test_node_port_from_outside_under_cluster_policy_is_masqueraded() -> None:
    st = state((svc("web", "10.96.0.10", node_port=30080, type="NodePort"), THREE))
    res = trace(st, OUTSIDE, NODE_IP, 30080, Origin.EXTERNAL)
    assert res.outcome == "DNAT" and len(res.endpoints) == 3
    assert res.masquerade is True
    dispatch = next(s for s in res.paths[0].steps if s.chain == "services" and s.matched)
    assert dispatch.verdict == "goto nodeport-tcp-3"
    # Node ports are not served on loopback (route_localnet stays off).
    assert trace(st, NODE_IP, "127.0.0.1", 30080, Origin.HOST).outcome == "ACCEPT"


ETP_LOCAL = {"external_traffic_policy": TrafficPolicy.LOCAL, "type": "LoadBalancer"}


def local_policy_state(*endpoints: Endpoint) -> ProxyState:
    service = svc(
        "web", "10.96.0.10", node_port=30080, load_balancer_ips=(ip("198.51.100.10"),), **ETP_LOCAL
    )
    return state((service, endpoints))


def test_local_policy_from_outside_goes_to_local_endpoints_only_with_the_source_kept() -> None:
    st = local_policy_state(*THREE)
    for dst, port in ((NODE_IP, 30080), ("198.51.100.10", 80)):
        res = trace(st, OUTSIDE, dst, port, Origin.EXTERNAL)
        assert shares(res) == {"10.244.1.11:8080": 1.0}
        assert res.masquerade is False


def test_local_policy_without_local_endpoints_drops_outside_traffic() -> None:
    st = local_policy_state(ep("10.244.2.11"), ep("10.244.3.11"))
    lb = trace(st, OUTSIDE, "198.51.100.10", 80, Origin.EXTERNAL)
    assert lb.outcome == "DROP" and lb.endpoints == set()
    drop = lb.paths[0].steps[-1]
    assert (drop.chain, drop.verdict, drop.owner) == (
        "service-checks",
        "drop",
        "default/web:http",
    )
    nodeport = trace(st, OUTSIDE, NODE_IP, 30080, Origin.EXTERNAL)
    assert nodeport.outcome == "DROP"
    assert nodeport.paths[0].steps[-1].chain == "filter-input"


def test_local_policy_from_a_pod_and_from_the_host_reaches_every_endpoint() -> None:
    st = local_policy_state(ep("10.244.2.11"), ep("10.244.3.11"))
    pod = trace(st, POD, "198.51.100.10", 80)
    assert shares(pod) == {"10.244.2.11:8080": 0.5, "10.244.3.11:8080": 0.5}
    assert pod.masquerade is False
    host = trace(st, NODE_IP, NODE_IP, 30080, Origin.HOST)
    assert len(host.endpoints) == 2 and host.masquerade is True


def test_traced_endpoints_are_the_frontends_endpoints_of_the_render() -> None:
    st = local_policy_state(*THREE)
    rendered = render_nftables(st)
    tracer = NftTracer(rendered, local_addresses(NODE))
    for frontend in rendered.fragments[ServicePortName("default", "web", "http")].frontends:
        if frontend.kind == "node port":
            dst, port = NODE_IP, 30080
        else:
            dst, port = frontend.claim.split(" . ")[0], 80
        origin = Origin.POD if frontend.kind == "cluster IP" else Origin.EXTERNAL
        src = POD if origin is Origin.POD else OUTSIDE
        res = tracer.trace(Packet(src=src, dst=dst, protocol="tcp", dport=port, origin=origin))
        wanted = {e.replace(" . ", ":") for e in frontend.endpoints}
        assert res.endpoints == wanted, frontend.claim


# ---- load-balancer source ranges ------------------------------------------------------------


def test_source_ranges_allow_before_dnat_and_drop_the_rest() -> None:
    service = svc(
        "lb",
        "10.96.0.20",
        type="LoadBalancer",
        load_balancer_ips=(ip("198.51.100.20"),),
        load_balancer_source_ranges=(net("203.0.113.0/28"),),
    )
    st = state((service, THREE))
    allowed = trace(st, "203.0.113.5", "198.51.100.20", 80, Origin.EXTERNAL)
    assert allowed.outcome == "DNAT" and len(allowed.endpoints) == 3
    check = next(s for s in allowed.paths[0].steps if s.chain == "firewall-check")
    assert not check.matched and "in @firewall-allow" in check.detail
    denied = trace(st, "203.0.113.77", "198.51.100.20", 80, Origin.EXTERNAL)
    assert denied.outcome == "DROP" and denied.service == "default/lb:http"
    assert denied.paths[0].chains == ("filter-prerouting", "firewall-check")  # before DNAT
    drop = denied.paths[0].steps[-1]
    assert drop.verdict == "drop" and drop.owner == "default/lb:http"
    assert "203.0.113.77 not in @firewall-allow" in drop.detail
    # The cluster IP is not firewalled.
    assert trace(st, "203.0.113.77", "10.96.0.20", 80, Origin.EXTERNAL).outcome == "DNAT"


# ---- hairpin and affinity -------------------------------------------------------------------


def test_hairpin_to_the_own_endpoint_is_masqueraded() -> None:
    st = state((svc("web", "10.96.0.10"), (ep("10.244.1.11", local=True), ep("10.244.2.11"))))
    res = trace(st, "10.244.1.11", "10.96.0.10")
    by_endpoint = {p.endpoint: p.masquerade for p in res.paths}
    assert by_endpoint == {"10.244.1.11:8080": True, "10.244.2.11:8080": False}
    assert res.masquerade is None and "masquerade on some paths" in res.summary()
    hairpin = next(p for p in res.paths if p.masquerade).steps[-1]
    assert (hairpin.chain, hairpin.verdict) == ("masquerading", "masquerade")
    assert "10.244.1.11 . 10.244.1.11 in @hairpin" in hairpin.detail


def test_client_ip_affinity_checks_the_client_first_then_picks_at_random() -> None:
    service = svc("sticky", "10.96.0.30", session_affinity=SessionAffinity.CLIENT_IP)
    st = state((service, THREE))
    res = trace(st, POD, "10.96.0.30")
    assert res.outcome == "DNAT"
    assert shares(res) == {
        e: round(1 / 3, 9) for e in ("10.244.1.11:8080", "10.244.2.11:8080", "10.244.3.11:8080")
    }
    known = [p for p in res.paths if p.affinity]
    assert len(known) == 3 and all(p.probability == 1.0 for p in known)
    assert {p.endpoint for p in known} == set(res.endpoints)
    rendered = render_nftables(st)
    dynamic = {n for n, s in rendered.all_sets().items() if s.dynamic}
    assert {p.affinity[0] for p in known} == dynamic
    assert all(c.startswith("sticky-") for p in res.paths for c in p.chains if "sticky" in c)
    owners = {s.owner for p in res.paths for s in p.steps if s.chain.startswith("sticky-")}
    assert owners == {"default/sticky:http"}
    assert "ClientIP affinity first, then random" in res.summary()


# ---- families, overlay, and what the tracer refuses ------------------------------------------


def test_ipv6_cluster_ip() -> None:
    node = NodeInfo(
        name="node-1", addresses=(ip("2001:db8::11"),), pod_cidrs=(net("fd00:10:244:1::/64"),)
    )
    service = svc("web6", "fd00:96::10")
    st = ProxyState(
        services={service.name: service},
        endpoints={service.name: (ep("fd00:10:244:2::11"), ep("fd00:10:244:3::11"))},
        node=node,
        config=ProxyConfig(cluster_cidrs=(net("fd00:10:244::/48"),)),
        family=IPFamily.IPV6,
    )
    res = trace(st, "fd00:10:244:1::5", "fd00:96::10")
    assert shares(res) == {"[fd00:10:244:2::11]:8080": 0.5, "[fd00:10:244:3::11]:8080": 0.5}
    assert res.masquerade is False
    with pytest.raises(TraceError, match="does not pass the ip6 netagent table"):
        trace(st, POD, "10.96.0.10")


def test_the_overlay_chains_masquerade_pod_traffic_leaving_the_cluster() -> None:
    st = state((svc("web", "10.96.0.10"), THREE))
    overlay = OverlayRules(net("10.244.0.0/16"), net("10.244.1.0/24"), True)  # type: ignore[arg-type]
    packet = Packet(src=POD, dst="8.8.8.8", protocol="tcp", dport=443, origin=Origin.POD)
    res = trace_state(st, packet, overlay=overlay)
    assert res.outcome == "ACCEPT" and res.masquerade is True
    assert "overlay-postrouting" in res.paths[0].chains
    to_pod = trace_state(st, replace(packet, dst="10.244.2.9"), overlay=overlay)
    assert to_pod.masquerade is False


def test_a_missing_slot_element_leaves_the_packet_untranslated() -> None:
    st = state((svc("web", "10.96.0.10"), THREE))
    rendered = render_nftables(st)
    name = ServicePortName("default", "web", "http")
    fragment = rendered.fragments[name]
    frontend = fragment.frontends[0]
    elements = tuple(e for e in frontend.elements if not e[1].endswith(" . 2"))
    broken = replace(
        rendered,
        fragments={name: replace(fragment, frontends=(replace(frontend, elements=elements),))},
    )
    res = trace_packet(
        broken, Packet(POD, "10.96.0.10", "tcp", 80, Origin.POD), local_addresses(NODE)
    )
    assert res.outcome == "mixed: DNAT, REJECT"
    rejected = next(p for p in res.paths if p.verdict == "REJECT")
    assert rejected.probability == pytest.approx(1 / 3)
    assert any("not translated" in s.detail for s in rejected.steps)


def _with_chain(rendered: RenderedNft, chain: NftChain) -> RenderedNft:
    chains = (*(c for c in rendered.skeleton.chains if c.name != chain.name), chain)
    return replace(rendered, skeleton=Skeleton(sets=rendered.skeleton.sets, chains=chains))


def test_unknown_expressions_and_missing_chains_raise() -> None:
    rendered = render_nftables(state((svc("web", "10.96.0.10"), THREE)))
    packet = Packet(POD, "10.96.0.10", "tcp", 80, Origin.POD)
    odd = _with_chain(rendered, NftChain("services", ("iifname cbr0 accept",)))
    with pytest.raises(TraceError, match="unmodelled expression at 'iifname'"):
        trace_packet(odd, packet)
    gone = _with_chain(rendered, NftChain("services", ("jump nowhere",)))
    with pytest.raises(TraceError, match="jump to missing chain nowhere"):
        trace_packet(gone, packet)
    loop = _with_chain(rendered, NftChain("services", ("jump services",)))
    with pytest.raises(TraceError, match="deeper than"):
        trace_packet(loop, packet)
    with pytest.raises(TraceError):
        trace_packet(rendered, Packet("not-an-ip", "10.96.0.10", "tcp", 80, Origin.POD))
