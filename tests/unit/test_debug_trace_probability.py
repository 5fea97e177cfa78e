"""Path probabilities in the packet tracer: statistic branches multiply, identical ends add up."""

from __future__ import annotations

import ipaddress

import pytest

from netagent.model import (
    Endpoint,
    NodeInfo,
    Protocol,
    ProxyConfig,
    ProxyState,
    ServicePort,
    ServicePortName,
    SessionAffinity,
)
from netagent.proxy.iptables.render import render_iptables
from netagent.proxy.iptables.trace import NodeView, Origin, Packet, trace_packet

ip = ipaddress.ip_address
NODE = NodeView(local_ips=frozenset({ip("192.0.2.2")}))


def nat(body: str) -> str:
    return (
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ":POSTROUTING ACCEPT [0:0]\n" + body + "COMMIT\n"
    )


def pod_packet(dst: str = "10.96.0.1") -> Packet:
    return Packet("10.244.0.20", dst, "tcp", 80, Origin.POD)


def test_probabilities_multiply_along_a_path() -> None:
    rules = nat(
        "-A PREROUTING -m statistic --mode random --probability 0.25 -j DNAT --to-destination 10.0.0.1:80\n"
        "-A PREROUTING -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.0.0.2:80\n"
        "-A PREROUTING -j DNAT --to-destination 10.0.0.3:80\n"
    )
    res = trace_packet(rules, pod_packet(), NODE)
    shares = {o.endpoint: o.probability for o in res.outcomes}
    assert shares == pytest.approx(
        {"10.0.0.1:80": 0.25, "10.0.0.2:80": 0.375, "10.0.0.3:80": 0.375}
    )
    assert sum(shares.values()) == pytest.approx(1.0)


def test_negated_statistic_takes_one_minus_p() -> None:
    rules = nat(
        "-A PREROUTING -m statistic --mode random ! --probability 0.2 -j DNAT --to-destination 10.0.0.1:80\n"
        "-A PREROUTING -j DNAT --to-destination 10.0.0.2:80\n"
    )
    shares = {o.endpoint: o.probability for o in trace_packet(rules, pod_packet(), NODE).outcomes}
    assert shares == pytest.approx({"10.0.0.1:80": 0.8, "10.0.0.2:80": 0.2})


def test_branches_that_end_identically_add_up() -> None:
    # Both statistic branches fall through to the same DNAT: one path, probability 1.
    rules = nat(
        "-A PREROUTING -d 10.9.9.9/32 -m statistic --mode random --probability 0.5 -j DROP\n"
        "-A PREROUTING -m statistic --mode random --probability 0.5 -j RETURN\n"
        "-A PREROUTING -j DNAT --to-destination 10.0.0.2:80\n"
    )
    res = trace_packet(rules, pod_packet(), NODE)
    assert {(o.endpoint, round(o.probability, 9)) for o in res.outcomes} == {
        (None, 0.5),
        ("10.0.0.2:80", 0.5),
    }


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_a_rendered_service_spreads_new_clients_evenly(count: int) -> None:
    spn = ServicePortName("default", "web", "http")
    affinity = SessionAffinity.CLIENT_IP if count == 3 else SessionAffinity.NONE
    svc = ServicePort(
        spn, Protocol.TCP, 80, cluster_ips=(ip("10.96.0.1"),), session_affinity=affinity
    )
    eps = tuple(Endpoint(ip=ip(f"10.244.1.{i}"), port=8080) for i in range(1, count + 1))
    state = ProxyState(
        services={spn: svc},
        endpoints={spn: eps},
        node=NodeInfo(name="n1"),
        config=ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),)),
    )
    res = trace_packet(render_iptables(state).save_text(), pod_packet(), NODE)
    shares = res.endpoint_probabilities()
    assert set(shares) == {str(e) for e in eps}
    assert all(s == pytest.approx(1 / count, abs=1e-6) for s in shares.values())
    sticky = [o for o in res.outcomes if o.affinity]
    if affinity is SessionAffinity.CLIENT_IP:
        # One path per endpoint for a client that already has affinity, each certain.
        assert len(sticky) == count and all(o.probability == 1.0 for o in sticky)
        assert {o.affinity[0] for o in sticky} == {
            r.split("--name ")[1].split()[0]
            for r in render_iptables(state).save_text().splitlines()
            if "--rcheck" in r
        }
    else:
        assert sticky == []


def test_saved_probabilities_still_sum_to_one() -> None:
    # What iptables-save prints back for 1/3 and 1/2.
    rules = nat(
        "-A PREROUTING -m statistic --mode random --probability 0.33333333349 -j DNAT --to-destination 10.0.0.1:80\n"
        "-A PREROUTING -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.0.0.2:80\n"
        "-A PREROUTING -j DNAT --to-destination 10.0.0.3:80\n"
    )
    res = trace_packet(rules, pod_packet(), NODE)
    assert sum(o.probability for o in res.outcomes) == pytest.approx(1.0)
    assert all(o.probability == pytest.approx(1 / 3, abs=1e-6) for o in res.outcomes)
