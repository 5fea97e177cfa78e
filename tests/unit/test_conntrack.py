"""Stale UDP flow cleanup without root: which deletions a state change needs, and how they run.

stale_udp_flows is pure, so each case is (old state, new state) -> the exact
ConntrackDelete list. The deletions are then applied to a FakeConntrack
holding realistic flows, to check that the flows towards the vanished
endpoint go and the others stay. ConntrackTool's command line and its exit
status handling are checked with a stand-in ``conntrack`` script on PATH.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import replace
from pathlib import Path

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
)
from netagent.proxy.conntrack import (
    ConntrackDelete,
    ConntrackError,
    ConntrackTool,
    FakeConntrack,
    FakeFlow,
    stale_udp_flows,
)

ip = ipaddress.ip_address
V4 = IPFamily.IPV4
DNS = ServicePortName("kube-system", "kube-dns", "dns")
DNS_TCP = ServicePortName("kube-system", "kube-dns", "dns-tcp")
CLUSTER_IP = ip("10.96.0.10")


def dns_service(**changes: object) -> ServicePort:
    svc = ServicePort(name=DNS, protocol=Protocol.UDP, port=53, cluster_ips=(CLUSTER_IP,))
    return replace(svc, **changes)  # type: ignore[arg-type]


def ep(addr: str, port: int = 5353) -> Endpoint:
    return Endpoint(ip=ip(addr), port=port)


def state(
    services: list[ServicePort], endpoints: dict[ServicePortName, tuple[Endpoint, ...]]
) -> ProxyState:
    return ProxyState(
        services={s.name: s for s in services},
        endpoints=endpoints,
        node=NodeInfo(name="node-a"),
        config=ProxyConfig(),
    )


A, B = ep("10.244.1.5"), ep("10.244.2.5")


def test_removed_endpoint_deletes_its_flows_on_every_service_address() -> None:
    svc = dns_service(
        node_port=30053,
        external_ips=(ip("192.0.2.10"),),
        load_balancer_ips=(ip("198.51.100.7"),),
    )
    old = state([svc], {DNS: (A, B)})
    new = state([svc], {DNS: (A,)})
    assert stale_udp_flows(old, new) == [
        ConntrackDelete(V4, None, 30053, B.ip, 5353),
        ConntrackDelete(V4, CLUSTER_IP, 53, B.ip, 5353),
        ConntrackDelete(V4, ip("192.0.2.10"), 53, B.ip, 5353),
        ConntrackDelete(V4, ip("198.51.100.7"), 53, B.ip, 5353),
    ]


def test_flows_to_the_removed_endpoint_go_and_others_stay() -> None:
    svc = dns_service()
    table = FakeConntrack(
        flows=[
            FakeFlow(CLUSTER_IP, 53, A.ip, 5353),
            FakeFlow(CLUSTER_IP, 53, B.ip, 5353),
            FakeFlow(ip("10.96.0.11"), 53, B.ip, 5353),  # another service, same pod
            FakeFlow(CLUSTER_IP, 53, CLUSTER_IP, 53),  # not NATed
        ]
    )
    for flow in stale_udp_flows(state([svc], {DNS: (A, B)}), state([svc], {DNS: (A,)})):
        table.delete(flow)
    assert [f.reply_src for f in table.flows] == [A.ip, B.ip, CLUSTER_IP]
    assert table.flows[1].orig_dst == ip("10.96.0.11")


def test_endpoint_that_turns_not_ready_counts_as_gone() -> None:
    svc = dns_service()
    old = state([svc], {DNS: (A, B)})
    new = state([svc], {DNS: (A, replace(B, ready=False, serving=False))})
    assert stale_udp_flows(old, new) == [ConntrackDelete(V4, CLUSTER_IP, 53, B.ip, 5353)]


def test_port_change_of_an_endpoint_is_a_removal() -> None:
    svc = dns_service()
    moved = ep("10.244.2.5", 5354)
    assert stale_udp_flows(state([svc], {DNS: (A, B)}), state([svc], {DNS: (A, moved)})) == [
        ConntrackDelete(V4, CLUSTER_IP, 53, B.ip, 5353)
    ]


def test_deleted_service_uses_its_old_addresses() -> None:
    svc = dns_service(node_port=30053)
    deletes = stale_udp_flows(state([svc], {DNS: (A,)}), state([], {}))
    assert deletes == [
        ConntrackDelete(V4, None, 30053, A.ip, 5353),
        ConntrackDelete(V4, CLUSTER_IP, 53, A.ip, 5353),
    ]


def test_no_endpoints_to_some_deletes_everything_to_the_service() -> None:
    svc = dns_service(node_port=30053)
    old = state([svc], {})
    new = state([svc], {DNS: (A,)})
    assert stale_udp_flows(old, new) == [
        ConntrackDelete(V4, None, 30053),
        ConntrackDelete(V4, CLUSTER_IP, 53),
    ]
    table = FakeConntrack(flows=[FakeFlow(CLUSTER_IP, 53, CLUSTER_IP, 53)])
    for flow in stale_udp_flows(old, new):
        table.delete(flow)
    assert table.flows == []


def test_terminating_fallback_counts_as_endpoints() -> None:
    svc = dns_service()
    draining = replace(A, ready=False, serving=True, terminating=True)
    # Only a serving-terminating endpoint: traffic still flows, nothing is stale.
    assert stale_udp_flows(state([svc], {DNS: (draining,)}), state([svc], {DNS: (draining,)})) == []
    # Not-serving, not-ready endpoints only: same as none.
    dead = replace(A, ready=False, serving=False)
    assert stale_udp_flows(state([svc], {DNS: (dead,)}), state([svc], {DNS: (A,)})) == [
        ConntrackDelete(V4, CLUSTER_IP, 53)
    ]


def test_first_sync_treats_every_udp_service_with_endpoints_as_new() -> None:
    tcp = ServicePort(name=DNS_TCP, protocol=Protocol.TCP, port=53, cluster_ips=(CLUSTER_IP,))
    empty = ServicePort(
        name=ServicePortName("default", "empty"),
        protocol=Protocol.UDP,
        port=9,
        cluster_ips=(ip("10.96.0.20"),),
    )
    new = state([dns_service(), tcp, empty], {DNS: (A,), DNS_TCP: (A,)})
    assert stale_udp_flows(None, new) == [ConntrackDelete(V4, CLUSTER_IP, 53)]


def test_unchanged_and_tcp_changes_need_nothing() -> None:
    tcp = ServicePort(name=DNS_TCP, protocol=Protocol.TCP, port=53, cluster_ips=(CLUSTER_IP,))
    old = state([dns_service(), tcp], {DNS: (A, B), DNS_TCP: (A, B)})
    new = state([dns_service(), tcp], {DNS: (B, A), DNS_TCP: (A,)})
    assert stale_udp_flows(old, new) == []


def test_ipv6_state() -> None:
    v6_ip = ip("fd00:96::a")
    svc = ServicePort(
        name=DNS, protocol=Protocol.UDP, port=53, cluster_ips=(v6_ip,), node_port=30053
    )
    old = replace(state([svc], {DNS: (ep("fd00:244::5"),)}), family=IPFamily.IPV6)
    new = replace(state([svc], {}), family=IPFamily.IPV6)
    deletes = stale_udp_flows(old, new)
    assert deletes == [
        ConntrackDelete(IPFamily.IPV6, None, 30053, ip("fd00:244::5"), 5353),
        ConntrackDelete(IPFamily.IPV6, v6_ip, 53, ip("fd00:244::5"), 5353),
    ]
    assert deletes[0].argv()[:3] == ["-D", "-f", "ipv6"]


def test_argv() -> None:
    flow = ConntrackDelete(V4, CLUSTER_IP, 53, B.ip, 5353)
    assert flow.argv() == [
        "-D", "-f", "ipv4", "-p", "udp", "--orig-dst", "10.96.0.10", "--orig-port-dst", "53",
        "--dst-nat", "10.244.2.5", "--reply-port-src", "5353",
    ]  # fmt: skip
    assert ConntrackDelete(V4, None, 30053).argv() == [
        "-D", "-f", "ipv4", "-p", "udp", "--orig-port-dst", "30053",
    ]  # fmt: skip
    assert str(flow) == "udp 10.96.0.10:53 via 10.244.2.5:5353"


def fake_conntrack_binary(tmp_path: Path, status: int, stderr: str) -> Path:
    """A ``conntrack`` script that logs its argv and exits like the real tool."""
    log = tmp_path / "argv"
    script = tmp_path / "conntrack"
    script.write_text(
        f'#!/bin/sh\necho "$@" > {log}\necho "conntrack v1.4.7: {stderr}" >&2\nexit {status}\n'
    )
    script.chmod(0o755)
    return log


@pytest.mark.parametrize(
    ("status", "stderr", "expected"),
    [(0, "2 flow entries have been deleted.", 2), (1, "0 flow entries have been deleted.", 0)],
)
def test_tool_counts_deletions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: int, stderr: str, expected: int
) -> None:
    log = fake_conntrack_binary(tmp_path, status, stderr)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    flow = ConntrackDelete(V4, CLUSTER_IP, 53, B.ip, 5353)
    assert ConntrackTool().delete(flow) == expected
    assert log.read_text().split() == flow.argv()


def test_tool_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_conntrack_binary(tmp_path, 1, "Operation failed: invalid parameters")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConntrackError, match="invalid parameters"):
        ConntrackTool().delete(ConntrackDelete(V4, CLUSTER_IP, 53))
    with pytest.raises(ValueError, match="IPv6 flow"):
        ConntrackTool().delete(ConntrackDelete(IPFamily.IPV6, None, 53))
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ConntrackError, match="not found"):
        ConntrackTool().delete(ConntrackDelete(V4, CLUSTER_IP, 53))
