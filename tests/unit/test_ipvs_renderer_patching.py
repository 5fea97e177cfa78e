"""IpvsRenderer patches its last render; each result must equal a render from scratch.

The renderer keeps per-port fragments and counted totals (set entries,
bound addresses, claims on each virtual server) and rebuilds only what a
change touched. These tests drive it through seeded random sequences of the
changes a cluster makes -- endpoints move, services come and go, two
services claim the same external IP and port, a node address appears, an
address moves to another interface, the config changes -- and compare every
result with :func:`render_ipvs` of the same input. They also check what the
patching is for: unchanged frontends and sets are the very objects of the
previous render, and an unchanged state returns the previous render itself.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest

from bench.synthetic import build_state, with_one_endpoint_changed
from netagent.model import (
    Endpoint,
    IPAddress,
    Protocol,
    ProxyState,
    ServicePort,
    ServicePortName,
    SessionAffinity,
    TrafficPolicy,
)
from netagent.proxy.ipvs.render import IpvsRenderer, RenderedIpvs, render_ipvs

NODE_IP = ipaddress.ip_address("192.0.2.2")
SHARED_EXTERNAL = ipaddress.ip_address("198.51.100.7")


def fresh(state: ProxyState, nodes: list[IPAddress], other: list[IPAddress]) -> RenderedIpvs:
    return render_ipvs(state, node_addresses=nodes, other_interface_addresses=other)


def mutate(rng: random.Random, state: ProxyState, step: int) -> ProxyState:
    """One random change of the kinds a cluster makes."""
    services = dict(state.services)
    endpoints = dict(state.endpoints)
    names = sorted(services)
    kind = rng.randrange(7)
    if kind == 0 and names:  # an endpoint moves
        name = rng.choice(names)
        old = endpoints.get(name, ())
        if old:
            moved = replace(old[0], ip=ipaddress.ip_address(f"10.244.250.{step % 250 + 1}"))
            endpoints[name] = tuple(sorted((moved, *old[1:])))
    elif kind == 1 and names:  # a service goes
        name = rng.choice(names)
        del services[name]
        endpoints.pop(name, None)
    elif kind == 2:  # a service comes, sometimes claiming the shared external IP
        name = ServicePortName("extra", f"svc-{step}", "http")
        services[name] = ServicePort(
            name=name,
            protocol=rng.choice([Protocol.TCP, Protocol.UDP]),
            port=80,
            cluster_ips=(ipaddress.ip_address(f"10.100.{step // 250}.{step % 250 + 1}"),),
            external_ips=(SHARED_EXTERNAL,) if rng.random() < 0.5 else (),
            node_port=30500 + step % 100 if rng.random() < 0.5 else 0,
        )
        endpoints[name] = (
            Endpoint(ip=ipaddress.ip_address("10.244.0.9"), port=8080, node_name="bench-node"),
        )
    elif kind == 3 and names:  # a service changes policy or affinity
        name = rng.choice(names)
        services[name] = replace(
            services[name],
            external_traffic_policy=rng.choice(list(TrafficPolicy)),
            session_affinity=rng.choice(list(SessionAffinity)),
        )
    elif kind == 4 and names:  # a service's endpoints all go
        endpoints.pop(rng.choice(names), None)
    elif kind == 5 and names:  # two services share a cluster IP's address (a conflict)
        a, b = rng.sample(names, 2) if len(names) > 1 else (names[0], names[0])
        services[b] = replace(services[b], cluster_ips=services[a].cluster_ips)
    return replace(state, services=services, endpoints=endpoints)


@pytest.mark.parametrize("seed", range(8))
def test_every_patched_render_equals_a_render_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    state = build_state(40, 3, node_ports=True)
    nodes: list[IPAddress] = [NODE_IP]
    other: list[IPAddress] = []
    renderer = IpvsRenderer()
    for step in range(120):
        roll = rng.random()
        if roll < 0.05:
            nodes = [NODE_IP] if len(nodes) > 1 else [NODE_IP, ipaddress.ip_address("192.0.2.3")]
        elif roll < 0.08 and state.services:  # an address moves to (or off) another interface
            svc = state.services[rng.choice(sorted(state.services))]
            other = [] if other else list(svc.cluster_ips)
        elif roll < 0.10:
            state = replace(state, config=replace(state.config, masquerade_all=rng.random() < 0.5))
        else:
            state = mutate(rng, state, step)
        got = renderer.render(state, node_addresses=nodes, other_interface_addresses=other)
        want = fresh(state, nodes, other)
        assert got == want, f"seed {seed} step {step}"
        assert list(got.virtual_servers) == list(want.virtual_servers), "order differs"
        assert list(got.ipsets) == list(want.ipsets)


def test_unchanged_parts_are_the_previous_objects() -> None:
    renderer = IpvsRenderer()
    big = build_state(200, 4, node_ports=True)
    first = renderer.render(big, node_addresses=[NODE_IP])
    assert renderer.render(big, node_addresses=[NODE_IP]) is first, "nothing changed"

    second = renderer.render(with_one_endpoint_changed(big, 7), node_addresses=[NODE_IP])
    fresh_frontends = [
        k for k, f in second.virtual_servers.items() if f is not first.virtual_servers[k]
    ]
    assert sorted(second.virtual_servers[k].owner.name for k in fresh_frontends) == [
        "svc-7",
        "svc-7",
    ]
    # An endpoint on another node moved: no set entry changed, so every set is reused.
    assert all(second.ipsets[n] is first.ipsets[n] for n in first.ipsets)
    assert second.addresses is first.addresses
    assert second.iptables is first.iptables


def test_the_first_claim_in_name_order_wins_and_the_next_takes_over_when_it_goes() -> None:
    base = build_state(0, 0)
    a = ServicePortName("a", "first", "http")
    b = ServicePortName("b", "second", "http")
    services = {
        n: ServicePort(
            name=n,
            protocol=Protocol.TCP,
            port=80,
            cluster_ips=(ipaddress.ip_address(ip),),
            external_ips=(SHARED_EXTERNAL,),
        )
        for n, ip in ((a, "10.96.0.1"), (b, "10.96.0.2"))
    }
    endpoints = {
        a: (Endpoint(ip=ipaddress.ip_address("10.244.1.1"), port=8080, node_name="x"),),
        b: (Endpoint(ip=ipaddress.ip_address("10.244.1.2"), port=8080, node_name="x"),),
    }
    renderer = IpvsRenderer()
    both = replace(base, services=services, endpoints=endpoints)
    key = ("TCP", SHARED_EXTERNAL, 80)
    assert renderer.render(both, node_addresses=[NODE_IP]).virtual_servers[key].owner == a
    only_b = replace(both, services={b: services[b]}, endpoints={b: endpoints[b]})
    got = renderer.render(only_b, node_addresses=[NODE_IP])
    assert got.virtual_servers[key].owner == b
    assert got == fresh(only_b, [NODE_IP], [])
    # a comes back: it wins again.
    assert renderer.render(both, node_addresses=[NODE_IP]).virtual_servers[key].owner == a
