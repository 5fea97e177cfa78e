"""Endpoint selection: readiness, the terminating fallback, traffic policies and topology hints.

One table of cases pins which endpoints each kind of traffic reaches, for
every renderer that reuses :func:`select_endpoints`. Endpoints are named by
the last octet of their address so the expectations read as sets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import pytest

from netagent.model import (
    Endpoint,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    TrafficPolicy,
)
from netagent.proxy.endpoint_selection import (
    select_endpoints,
    topology_applies,
)

NODE = NodeInfo(name="node-a", zone="zone-a")


def ep(
    n: int,
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    local: bool = False,
    hints: tuple[str, ...] = (),
    port: int = 8080,
) -> Endpoint:
    """Endpoint 10.0.0.<n>; ``serving`` defaults to ``ready`` as in the API."""
    return Endpoint(
        ip=ipaddress.ip_address(f"10.0.0.{n}"),
        port=port,
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=terminating,
        node_name="node-a" if local else "node-b",
        zone_hints=frozenset(hints),
        is_local=local,
    )


def svc(
    *,
    itp: TrafficPolicy = TrafficPolicy.CLUSTER,
    etp: TrafficPolicy = TrafficPolicy.CLUSTER,
    node_port: int = 0,
) -> ServicePort:
    return ServicePort(
        name=ServicePortName("ns", "web", "http"),
        protocol=Protocol.TCP,
        port=80,
        cluster_ips=(ipaddress.ip_address("10.96.0.10"),),
        node_port=node_port,
        internal_traffic_policy=itp,
        external_traffic_policy=etp,
    )


def octets(endpoints: tuple[Endpoint, ...]) -> list[int]:
    """Last octet of each endpoint, in the order given (order is part of the contract)."""
    return [int(str(e.ip).rsplit(".", 1)[1]) for e in endpoints]


@dataclass(frozen=True)
class Case:
    name: str
    service: ServicePort
    endpoints: tuple[Endpoint, ...]
    cluster: list[int]
    local: list[int]
    external: list[int]
    reachable: list[int]
    has_any: bool = True
    node: NodeInfo = field(default=NODE)


LOCAL = TrafficPolicy.LOCAL

CASES = [
    Case("all ready", svc(), (ep(1), ep(2)), [1, 2], [], [], [1, 2]),
    Case("not-ready endpoints skipped", svc(), (ep(1), ep(2, ready=False)), [1], [], [], [1]),
    Case(
        "terminating fallback when none ready",
        svc(),
        (
            ep(1, ready=False, serving=True, terminating=True),
            ep(2, ready=False, serving=False, terminating=True),
            ep(3, ready=False, serving=False),
        ),
        [1],
        [],
        [],
        [1],
    ),
    Case(
        "terminating ignored while one is ready",
        svc(),
        (ep(1, ready=False, serving=True, terminating=True), ep(2)),
        [2],
        [],
        [],
        [2],
    ),
    Case(
        "nothing serving",
        svc(),
        (ep(1, ready=False), ep(2, ready=False, serving=False, terminating=True)),
        [],
        [],
        [],
        [],
        has_any=False,
    ),
    Case("no endpoints", svc(), (), [], [], [], [], has_any=False),
    Case(
        "internal Local uses local endpoints",
        svc(itp=LOCAL),
        (ep(1, local=True), ep(2)),
        [1],
        [1],
        [],
        [1],
    ),
    Case(
        "internal Local without local endpoints drops (has_any stays true)",
        svc(itp=LOCAL),
        (ep(1), ep(2)),
        [],
        [],
        [],
        [],
    ),
    Case(
        "internal Local falls back to local serving-terminating",
        svc(itp=LOCAL),
        (ep(1, ready=False, serving=True, terminating=True, local=True), ep(2)),
        [1],
        [1],
        [],
        [1],
    ),
    Case(
        "NodePort Cluster policy: external uses every endpoint",
        svc(node_port=30080),
        (ep(1, local=True), ep(2)),
        [1, 2],
        [],
        [1, 2],
        [1, 2],
    ),
    Case(
        "external Local: external to local, internal to all",
        svc(etp=LOCAL, node_port=30080),
        (ep(1), ep(2, local=True), ep(3)),
        [1, 2, 3],
        [2],
        [2],
        [1, 2, 3],
    ),
    Case(
        "external Local without local endpoints",
        svc(etp=LOCAL, node_port=30080),
        (ep(1), ep(2)),
        [1, 2],
        [],
        [],
        [1, 2],
    ),
    Case(
        "external Local on a ClusterIP-only service is ignored",
        svc(etp=LOCAL),
        (ep(1), ep(2, local=True)),
        [1, 2],
        [],
        [],
        [1, 2],
    ),
    Case(
        "external Local: local terminating fallback while remote ones are ready",
        svc(etp=LOCAL, node_port=30080),
        (ep(1), ep(2, ready=False, serving=True, terminating=True, local=True)),
        [1],
        [2],
        [2],
        [1, 2],
    ),
    Case(
        "both policies Local: cluster endpoints still kept for pod/host short-circuit",
        svc(itp=LOCAL, etp=LOCAL, node_port=30080),
        (ep(1), ep(2, local=True)),
        [2],
        [2],
        [2],
        [1, 2],
    ),
    Case(
        "topology: hints narrow to the node's zone",
        svc(),
        (ep(1, hints=("zone-a",)), ep(2, hints=("zone-b",)), ep(3, hints=("zone-a", "zone-b"))),
        [1, 3],
        [],
        [],
        [1, 3],
    ),
    Case(
        "topology: one ready endpoint without hints disables them",
        svc(),
        (ep(1, hints=("zone-a",)), ep(2)),
        [1, 2],
        [],
        [],
        [1, 2],
    ),
    Case(
        "topology: a not-ready endpoint without hints does not matter",
        svc(),
        (ep(1, hints=("zone-a",)), ep(2, hints=("zone-b",)), ep(3, ready=False)),
        [1],
        [],
        [],
        [1],
    ),
    Case(
        "topology: no hint for this zone disables them",
        svc(),
        (ep(1, hints=("zone-b",)), ep(2, hints=("zone-c",))),
        [1, 2],
        [],
        [],
        [1, 2],
    ),
    Case(
        "topology: a node without a zone ignores hints",
        svc(),
        (ep(1, hints=("zone-a",)), ep(2, hints=("zone-b",))),
        [1, 2],
        [],
        [],
        [1, 2],
        node=NodeInfo(name="node-a"),
    ),
    Case(
        "topology does not filter local endpoints",
        svc(etp=LOCAL, node_port=30080),
        (ep(1, hints=("zone-a",)), ep(2, hints=("zone-b",), local=True)),
        [1],
        [2],
        [2],
        [1, 2],
    ),
    Case(
        "output is sorted by address then port",
        svc(),
        (ep(9), ep(2, port=9090), ep(2, port=80), ep(10)),
        [2, 2, 9, 10],
        [],
        [],
        [2, 2, 9, 10],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_select_endpoints(case: Case) -> None:
    sel = select_endpoints(case.service, case.endpoints, case.node)
    assert octets(sel.cluster) == case.cluster
    assert octets(sel.local) == case.local
    assert octets(sel.external) == case.external
    assert octets(sel.all_reachable) == case.reachable
    assert sel.has_any_endpoints is case.has_any


def test_sorting_orders_ports_within_an_address() -> None:
    sel = select_endpoints(svc(), (ep(2, port=9090), ep(2, port=80)), NODE)
    assert [e.port for e in sel.cluster] == [80, 9090]


def test_all_reachable_holds_each_endpoint_once() -> None:
    sel = select_endpoints(
        svc(etp=LOCAL, node_port=30080), (ep(1, local=True), ep(2, local=True), ep(3)), NODE
    )
    keys = [(e.ip, e.port) for e in sel.all_reachable]
    assert len(keys) == len(set(keys)) == 3


def test_input_order_does_not_matter() -> None:
    endpoints = (ep(3), ep(1, local=True), ep(2, ready=False, serving=True, terminating=True))
    service = svc(etp=LOCAL, node_port=30080)
    forward = select_endpoints(service, endpoints, NODE)
    backward = select_endpoints(service, tuple(reversed(endpoints)), NODE)
    assert forward == backward


@pytest.mark.parametrize(
    ("zone", "endpoints", "expected"),
    [
        ("zone-a", (ep(1, hints=("zone-a",)),), True),
        ("", (ep(1, hints=("zone-a",)),), False),
        ("zone-a", (ep(1, hints=("zone-a",)), ep(2)), False),
        ("zone-a", (ep(1, hints=("zone-b",)),), False),
        ("zone-a", (), False),
    ],
)
def test_topology_applies(zone: str, endpoints: tuple[Endpoint, ...], expected: bool) -> None:
    assert topology_applies(endpoints, zone) is expected
