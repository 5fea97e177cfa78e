"""Service semantics, proven by tracing packets through the rendered iptables rules.

Each case renders a ProxyState, walks one packet through the ``iptables-save``
text with the packet tracer (netagent.proxy.iptables.trace), and checks which
endpoints it can reach, the final verdict, and whether its source is
masqueraded. The cases follow the behaviour users rely on in kube-proxy's
iptables mode (see /work/shared/ANCHORS.md): ClusterIP from pods, the host
and outside; NodePorts and external/LB IPs under both traffic policies; LB
source ranges; session affinity; internalTrafficPolicy=Local; the
terminating fallback; REJECT without endpoints; hairpin masquerade;
localhost NodePorts and the martian drop; masquerade_all; and
nodeport_addresses.

The node (192.168.1.10, plus 10.0.0.10 on a second interface) runs pods in
10.244.2.0/24; other nodes' pods are 10.244.1.0/24 and 10.244.3.0/24.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

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
    TrafficPolicy,
)
from netagent.proxy.iptables import trace
from netagent.proxy.iptables.render import render_iptables

ip = ipaddress.ip_address
net = ipaddress.ip_network
LOCAL = TrafficPolicy.LOCAL
NODE_IP = "192.168.1.10"
SECOND_IP = "10.0.0.10"
NODE = NodeInfo(name="node-a", addresses=(ip(NODE_IP), ip(SECOND_IP)))
CONFIG = ProxyConfig(cluster_cidrs=(net("10.244.0.0/16"),))
VIEW = trace.NodeView(local_ips=frozenset({ip(NODE_IP), ip(SECOND_IP), ip("127.0.0.1")}))

POD = trace.Origin.POD
HOST = trace.Origin.HOST
EXTERNAL = trace.Origin.EXTERNAL
OUTSIDER = "192.0.2.50"
REMOTE_POD = "10.244.1.100"


def ep(addr: str, port: int = 8080, **kw: object) -> Endpoint:
    """An endpoint; 10.244.2.x addresses are this node's pods."""
    local = addr.startswith("10.244.2.")
    return Endpoint(
        ip=ip(addr),
        port=port,
        node_name="node-a" if local else "node-b",
        is_local=local,
        **kw,  # type: ignore[arg-type]
    )


def service(name: str, cluster_ip: str, port: int = 80, **kw: object) -> ServicePort:
    return ServicePort(
        name=ServicePortName("default", name),
        protocol=kw.pop("protocol", Protocol.TCP),  # type: ignore[arg-type]
        port=port,
        cluster_ips=(ip(cluster_ip),),
        **kw,  # type: ignore[arg-type]
    )


def build_state(config: ProxyConfig = CONFIG) -> ProxyState:
    """One state holding a service per behaviour under test."""
    services_and_endpoints: list[tuple[ServicePort, tuple[Endpoint, ...]]] = [
        (
            service("web", "10.96.0.10", node_port=30080),
            (ep("10.244.1.5"), ep("10.244.2.5")),
        ),
        (
            service("dns", "10.96.0.53", 53, protocol=Protocol.UDP),
            (ep("10.244.1.53", 53), ep("10.244.3.53", 53)),
        ),
        (
            service(
                "loc",
                "10.96.0.11",
                node_port=30081,
                external_ips=(ip("198.51.100.11"),),
                external_traffic_policy=LOCAL,
            ),
            (ep("10.244.1.6"), ep("10.244.2.6")),
        ),
        (
            service("noloc", "10.96.0.12", node_port=30082, external_traffic_policy=LOCAL),
            (ep("10.244.1.7"),),
        ),
        (
            service("ext", "10.96.0.13", external_ips=(ip("198.51.100.13"),)),
            (ep("10.244.1.8"),),
        ),
        (
            service("lb", "10.96.0.14", 443, load_balancer_ips=(ip("203.0.113.14"),)),
            (ep("10.244.1.9", 8443),),
        ),
        (
            service(
                "lbfw",
                "10.96.0.15",
                443,
                load_balancer_ips=(ip("203.0.113.15"),),
                load_balancer_source_ranges=(net("198.51.100.0/24"),),
            ),
            (ep("10.244.1.10", 8443),),
        ),
        (
            service("sticky", "10.96.0.16", session_affinity=SessionAffinity.CLIENT_IP),
            (ep("10.244.1.11"), ep("10.244.3.11")),
        ),
        (
            service("itp", "10.96.0.17", internal_traffic_policy=LOCAL),
            (ep("10.244.1.12"), ep("10.244.2.12")),
        ),
        (
            service("itpnone", "10.96.0.18", internal_traffic_policy=LOCAL),
            (ep("10.244.1.13"),),
        ),
        (
            service("term", "10.96.0.19"),
            (
                ep("10.244.1.14", ready=False, serving=True, terminating=True),
                ep("10.244.1.15", ready=False, serving=False, terminating=True),
                ep("10.244.3.14", ready=False),
            ),
        ),
        (
            service("empty", "10.96.0.20", node_port=30090, external_ips=(ip("198.51.100.20"),)),
            (),
        ),
    ]
    return ProxyState(
        services={s.name: s for s, _ in services_and_endpoints},
        endpoints={s.name: e for s, e in services_and_endpoints if e},
        node=NODE,
        config=config,
    )


@dataclass(frozen=True)
class Case:
    name: str
    origin: trace.Origin
    src: str
    dst: str
    dport: int
    endpoints: frozenset[str]
    verdict: str = "ACCEPT"
    masquerade: bool = False
    protocol: str = "tcp"
    config: ProxyConfig = CONFIG


def eps(*addrs: str) -> frozenset[str]:
    return frozenset(addrs)


WEB = eps("10.244.1.5:8080", "10.244.2.5:8080")
LOC_ALL = eps("10.244.1.6:8080", "10.244.2.6:8080")

CASES = [
    # ClusterIP
    Case("clusterip from pod", POD, REMOTE_POD, "10.96.0.10", 80, WEB),
    Case("clusterip from host", HOST, NODE_IP, "10.96.0.10", 80, WEB, masquerade=True),
    Case("clusterip from outside the cluster", EXTERNAL, OUTSIDER, "10.96.0.10", 80, WEB,
         masquerade=True),
    Case("clusterip udp", POD, REMOTE_POD, "10.96.0.53", 53,
         eps("10.244.1.53:53", "10.244.3.53:53"), protocol="udp"),
    Case("wrong port is not proxied", POD, REMOTE_POD, "10.96.0.10", 81, eps()),
    # NodePort, Cluster policy
    Case("nodeport cluster from outside", EXTERNAL, OUTSIDER, NODE_IP, 30080, WEB,
         masquerade=True),
    Case("nodeport on second address", EXTERNAL, OUTSIDER, SECOND_IP, 30080, WEB,
         masquerade=True),
    # NodePort, Local policy
    Case("nodeport local from outside keeps source", EXTERNAL, OUTSIDER, NODE_IP, 30081,
         eps("10.244.2.6:8080")),
    Case("nodeport local from pod uses all endpoints", POD, REMOTE_POD, NODE_IP, 30081, LOC_ALL),
    Case("nodeport local from host uses all endpoints", HOST, NODE_IP, NODE_IP, 30081, LOC_ALL,
         masquerade=True),
    Case("nodeport local without local endpoint drops", EXTERNAL, OUTSIDER, NODE_IP, 30082,
         eps(), verdict="DROP"),
    Case("nodeport local without local endpoint, from pod", POD, REMOTE_POD, NODE_IP, 30082,
         eps("10.244.1.7:8080")),
    # external IPs and load balancers
    Case("external IP from outside", EXTERNAL, OUTSIDER, "198.51.100.13", 80,
         eps("10.244.1.8:8080"), masquerade=True),
    Case("external IP, Local policy", EXTERNAL, OUTSIDER, "198.51.100.11", 80,
         eps("10.244.2.6:8080")),
    Case("LB IP without source ranges", EXTERNAL, OUTSIDER, "203.0.113.14", 443,
         eps("10.244.1.9:8443"), masquerade=True),
    Case("LB IP, allowed source range", EXTERNAL, "198.51.100.77", "203.0.113.15", 443,
         eps("10.244.1.10:8443"), masquerade=True),
    Case("LB IP, source outside the ranges", EXTERNAL, OUTSIDER, "203.0.113.15", 443, eps(),
         verdict="DROP"),
    # affinity, policies, fallback
    Case("ClientIP affinity reaches every endpoint", POD, REMOTE_POD, "10.96.0.16", 80,
         eps("10.244.1.11:8080", "10.244.3.11:8080")),
    Case("internalTrafficPolicy Local", POD, REMOTE_POD, "10.96.0.17", 80,
         eps("10.244.2.12:8080")),
    Case("internalTrafficPolicy Local without local endpoint drops", POD, REMOTE_POD,
         "10.96.0.18", 80, eps(), verdict="DROP"),
    Case("serving terminating fallback", POD, REMOTE_POD, "10.96.0.19", 80,
         eps("10.244.1.14:8080")),
    # no endpoints
    Case("no endpoints: clusterip from pod rejects", POD, REMOTE_POD, "10.96.0.20", 80, eps(),
         verdict="REJECT"),
    Case("no endpoints: clusterip from host rejects", HOST, NODE_IP, "10.96.0.20", 80, eps(),
         verdict="REJECT"),
    Case("no endpoints: nodeport rejects", EXTERNAL, OUTSIDER, NODE_IP, 30090, eps(),
         verdict="REJECT"),
    Case("no endpoints: external IP rejects", EXTERNAL, OUTSIDER, "198.51.100.20", 80, eps(),
         verdict="REJECT"),
    # localhost NodePorts
    Case("localhost nodeport from the host", HOST, "127.0.0.1", "127.0.0.1", 30080, WEB,
         masquerade=True),
    Case("martian to a localhost service is dropped", EXTERNAL, OUTSIDER, "127.0.0.1", 10248,
         eps(), verdict="DROP"),
    Case("localhost nodeports disabled", HOST, "127.0.0.1", "127.0.0.1", 30080, eps(),
         config=replace(CONFIG, localhost_nodeports=False)),
    # options
    Case("masquerade_all masquerades pod traffic", POD, REMOTE_POD, "10.96.0.10", 80, WEB,
         masquerade=True, config=replace(CONFIG, masquerade_all=True)),
    Case("nodeport_addresses: listed address", EXTERNAL, OUTSIDER, NODE_IP, 30080, WEB,
         masquerade=True, config=replace(CONFIG, nodeport_addresses=(net("192.168.1.0/24"),))),
    Case("nodeport_addresses: other address not proxied", EXTERNAL, OUTSIDER, SECOND_IP, 30080,
         eps(), config=replace(CONFIG, nodeport_addresses=(net("192.168.1.0/24"),))),
    Case("unknown cluster CIDR: no masquerade for outsiders", EXTERNAL, OUTSIDER, "10.96.0.10",
         80, WEB, config=ProxyConfig()),
]  # fmt: skip


def run(case: Case) -> trace.TraceResult:
    text = render_iptables(build_state(case.config)).save_text()
    packet = trace.Packet(
        src=case.src, dst=case.dst, protocol=case.protocol, dport=case.dport, origin=case.origin
    )
    return trace.trace_packet(text, packet, VIEW)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_packet_semantics(case: Case) -> None:
    result = run(case)
    assert result.endpoints == case.endpoints
    assert result.verdict == case.verdict
    assert result.masquerade is case.masquerade


def test_hairpin_is_masqueraded_only_towards_itself() -> None:
    """A pod reaching itself through its service must see a source other than its own."""
    case = Case("hairpin", POD, "10.244.2.5", "10.96.0.10", 80, WEB)
    result = run(case)
    by_endpoint = {o.endpoint: o.masquerade for o in result.outcomes}
    assert by_endpoint == {"10.244.2.5:8080": True, "10.244.1.5:8080": False}


def test_affinity_rules_are_present() -> None:
    text = render_iptables(build_state()).save_text()
    sticky = [line for line in text.splitlines() if "default/sticky" in line]
    rcheck = [line for line in sticky if "--rcheck --seconds 10800 --reap" in line]
    recorded = [line for line in sticky if "-m recent --set --name" in line]
    assert len(rcheck) == 2 and len(recorded) == 2
    # Each check names the chain that records it, so a client sticks to one endpoint.
    for line in rcheck:
        name = line.split("--name ")[1].split()[0]
        assert any(line2.startswith(f"-A {name} ") for line2 in recorded)
