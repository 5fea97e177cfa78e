"""The tracer reads what the kernel prints back: render -> iptables-restore -> iptables-save -> trace.

`netagent debug trace` runs on a live node's `iptables-save` output, which
normalises the rules netagent wrote (probabilities, marks, recent options,
comment quoting, match order). Tracing the saved text must give exactly the
outcomes that tracing the rendered text gives.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import Iterator

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
from netagent.proxy.iptables.render import render_iptables
from netagent.proxy.iptables.trace import NodeView, Origin, Packet, trace_packet

pytestmark = pytest.mark.lab
ip = ipaddress.ip_address


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"na-trace-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def state() -> ProxyState:
    def svc(name: str, vip: str, **kw: object) -> ServicePort:
        return ServicePort(
            name=ServicePortName("default", name, "p"),
            protocol=Protocol.TCP,
            port=80,
            cluster_ips=(ip(vip),),
            **kw,  # type: ignore[arg-type]
        )

    def ep(addr: str, local: bool = False) -> Endpoint:
        return Endpoint(ip=ip(addr), port=8080, node_name="n1" if local else "n2", is_local=local)

    services = [
        (svc("web", "10.96.0.10", node_port=30080), (ep("10.244.1.5"), ep("10.244.0.5", True))),
        (
            svc("sticky", "10.96.0.11", session_affinity=SessionAffinity.CLIENT_IP),
            (ep("10.244.1.6"), ep("10.244.1.7"), ep("10.244.1.8")),
        ),
        (
            svc(
                "local",
                "10.96.0.12",
                node_port=30081,
                external_traffic_policy=TrafficPolicy.LOCAL,
            ),
            (ep("10.244.1.9"), ep("10.244.0.9", True)),
        ),
        (
            svc(
                "lbfw",
                "10.96.0.13",
                load_balancer_ips=(ip("203.0.113.13"),),
                load_balancer_source_ranges=(ipaddress.ip_network("198.51.100.0/24"),),
            ),
            (ep("10.244.1.10"),),
        ),
        (svc("empty", "10.96.0.14", node_port=30082), ()),
    ]
    return ProxyState(
        services={s.name: s for s, _ in services},
        endpoints={s.name: e for s, e in services if e},
        node=NodeInfo(name="n1", addresses=(ip("192.0.2.2"),)),
        config=ProxyConfig(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),)),
    )


PACKETS = [
    Packet("10.244.0.20", "10.96.0.10", "tcp", 80, Origin.POD),
    Packet("10.244.0.5", "10.96.0.10", "tcp", 80, Origin.POD),  # hairpin
    Packet("192.0.2.100", "192.0.2.2", "tcp", 30080, Origin.EXTERNAL),
    Packet("10.244.0.20", "10.96.0.11", "tcp", 80, Origin.POD),
    Packet("192.0.2.100", "192.0.2.2", "tcp", 30081, Origin.EXTERNAL),
    Packet("192.0.2.2", "192.0.2.2", "tcp", 30081, Origin.HOST),
    Packet("198.51.100.7", "203.0.113.13", "tcp", 80, Origin.EXTERNAL),
    Packet("192.0.2.100", "203.0.113.13", "tcp", 80, Origin.EXTERNAL),
    Packet("10.244.0.20", "10.96.0.14", "tcp", 80, Origin.POD),
    Packet("192.0.2.100", "127.0.0.1", "tcp", 30080, Origin.EXTERNAL),
]


def test_saved_ruleset_traces_like_the_rendered_one(netns: str) -> None:
    rendered = render_iptables(state())
    text = rendered.save_text()
    subprocess.run(
        ["ip", "netns", "exec", netns, "iptables-restore"], input=text, text=True, check=True
    )
    saved = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables-save"], capture_output=True, text=True, check=True
    ).stdout
    assert "NETAGENT-SERVICES" in saved and saved != text
    view = NodeView(local_ips=frozenset({ip("192.0.2.2"), ip("127.0.0.1")}))
    seen_verdicts = set()
    for packet in PACKETS:
        want = trace_packet(text, packet, view)
        got = trace_packet(saved, packet, view)
        summary = {(o.verdict, o.endpoint, o.masquerade) for o in want.outcomes}
        assert {(o.verdict, o.endpoint, o.masquerade) for o in got.outcomes} == summary, packet
        assert set(got.chains) == set(want.chains), packet
        seen_verdicts |= {o.verdict for o in want.outcomes}
    # The packet list exercises accepting, dropping and rejecting paths.
    assert seen_verdicts == {"ACCEPT", "DROP", "REJECT"}
