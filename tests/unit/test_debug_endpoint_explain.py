"""explain_endpoints: its verdicts are select_endpoints' lists, and its reasons name the rule."""

from __future__ import annotations

import ipaddress
import itertools
import random

import pytest

from netagent.model import Endpoint, NodeInfo, Protocol, ServicePort, ServicePortName, TrafficPolicy
from netagent.proxy.endpoint_explain import Traffic, endpoint_state, explain_endpoints
from netagent.proxy.endpoint_selection import select_endpoints

ip = ipaddress.ip_address
NODE = NodeInfo(name="n1", zone="a")


def svc(**kw: object) -> ServicePort:
    return ServicePort(
        ServicePortName("ns", "s", "p"), Protocol.TCP, 80, cluster_ips=(ip("10.96.0.1"),), **kw
    )  # type: ignore[arg-type]


def ep(
    i: int,
    *,
    ready: bool = True,
    serving: bool = True,
    terminating: bool = False,
    local: bool = False,
    hints: tuple[str, ...] = (),
) -> Endpoint:
    return Endpoint(
        ip=ip(f"10.244.0.{i}"),
        port=8080,
        ready=ready,
        serving=serving,
        terminating=terminating,
        node_name="n1" if local else "n2",
        is_local=local,
        zone_hints=frozenset(hints),
    )


def reasons(
    service: ServicePort, eps: list[Endpoint], traffic: Traffic
) -> dict[int, tuple[bool, str]]:
    return {
        int(str(v.endpoint.ip).rsplit(".", 1)[1]): (v.selected, v.reason)
        for v in explain_endpoints(service, eps, NODE, traffic)
    }


def test_readiness_and_terminating_fallback() -> None:
    eps = [
        ep(1),
        ep(2, ready=False, terminating=True),
        ep(3, ready=False, serving=False),
        ep(4, ready=False, serving=False, terminating=True),
    ]
    got = reasons(svc(), eps, Traffic.INTERNAL)
    assert got == {
        1: (True, "ready"),
        2: (False, "terminating; others are ready"),
        3: (False, "not ready"),
        4: (False, "terminating and not serving"),
    }
    fallback = reasons(svc(), eps[1:], Traffic.INTERNAL)
    assert fallback[2] == (True, "terminating fallback (none ready)")
    assert [endpoint_state(e) for e in eps] == [
        "ready",
        "serving-terminating",
        "not-serving",
        "not-serving",
    ]


def test_local_policies() -> None:
    service = svc(
        node_port=30080,
        external_traffic_policy=TrafficPolicy.LOCAL,
        internal_traffic_policy=TrafficPolicy.LOCAL,
    )
    eps = [ep(1, local=True), ep(2), ep(3, local=True, ready=False, terminating=True)]
    assert reasons(service, eps, Traffic.INTERNAL) == {
        1: (True, "local"),
        2: (False, "not local (internalTrafficPolicy=Local)"),
        3: (False, "terminating; other local ones are ready"),
    }
    assert reasons(service, eps, Traffic.EXTERNAL)[2] == (
        False,
        "not local (externalTrafficPolicy=Local)",
    )
    assert reasons(service, eps, Traffic.EXTERNAL_FROM_CLUSTER)[2] == (True, "ready")
    only_terminating = [ep(3, local=True, ready=False, terminating=True), ep(2)]
    assert reasons(service, only_terminating, Traffic.EXTERNAL)[3] == (
        True,
        "local, terminating fallback (none ready)",
    )


def test_topology_hints() -> None:
    eps = [ep(1, hints=("a",)), ep(2, hints=("b",))]
    assert reasons(svc(), eps, Traffic.INTERNAL) == {
        1: (True, "ready, hinted for zone a"),
        2: (False, "hints for zone b, node in a"),
    }
    # A half-hinted slice: hints are ignored.
    assert reasons(svc(), [ep(1, hints=("a",)), ep(2)], Traffic.INTERNAL)[2] == (True, "ready")


def test_no_endpoint_can_serve() -> None:
    got = reasons(svc(), [ep(1, ready=False, serving=False)], Traffic.INTERNAL)
    assert got == {1: (False, "not-serving: no endpoint can serve, traffic is rejected")}


@pytest.mark.parametrize("seed", range(40))
def test_verdicts_are_exactly_the_selection(seed: int) -> None:
    rng = random.Random(seed)
    eps = [
        ep(
            i,
            ready=rng.random() < 0.5,
            serving=rng.random() < 0.7,
            terminating=rng.random() < 0.4,
            local=rng.random() < 0.4,
            hints=tuple(rng.sample(["a", "b", "c"], rng.randint(0, 2))),
        )
        for i in range(1, rng.randint(1, 8))
    ]
    eps = [
        e
        if not e.ready
        else Endpoint(
            **{**{f: getattr(e, f) for f in e.__slots__}, "serving": True, "terminating": False}
        )
        for e in eps
    ]  # type: ignore[arg-type]
    for etp, itp, node_port in itertools.product(TrafficPolicy, TrafficPolicy, (0, 30080)):
        service = svc(node_port=node_port, external_traffic_policy=etp, internal_traffic_policy=itp)
        sel = select_endpoints(service, eps, NODE)
        lists = {
            Traffic.INTERNAL: sel.cluster,
            Traffic.EXTERNAL: sel.external,
            Traffic.EXTERNAL_FROM_CLUSTER: (
                sel.cluster_policy if service.external_policy_local else sel.external
            ),
        }
        for traffic, chosen in lists.items():
            verdicts = explain_endpoints(service, eps, NODE, traffic)
            assert {v.endpoint for v in verdicts if v.selected} == set(chosen), (traffic, etp, itp)
            assert all(v.reason and v.reason != "not selected" for v in verdicts)
