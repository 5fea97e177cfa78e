"""Synthetic cluster states for benchmarks: N services x K endpoints, built as model objects.

Why not YAML: the benchmarks measure rendering and kernel apply, not YAML
parsing, so they build the typed model the boundary would produce. Addresses
are deterministic (service i gets 10.96.x.y, endpoint j of it 10.244.a.b), so
two runs render byte-identical payloads.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

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

NODE = NodeInfo(
    name="bench-node",
    addresses=(ipaddress.IPv4Address("192.0.2.2"),),
    pod_cidrs=(ipaddress.IPv4Network("10.244.0.0/24"),),
)
CONFIG = ProxyConfig(cluster_cidrs=(ipaddress.IPv4Network("10.244.0.0/16"),))


def service_ip(i: int) -> ipaddress.IPv4Address:
    """The ClusterIP of service ``i`` (inside 10.96.0.0/12)."""
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.96.0.10")) + i)


def endpoint_ip(i: int, j: int, per_service: int) -> ipaddress.IPv4Address:
    """Endpoint ``j`` of service ``i`` (inside 10.244.0.0/16, wrapping is fine)."""
    base = int(ipaddress.IPv4Address("10.244.1.0"))
    return ipaddress.IPv4Address(base + (i * per_service + j) % (1 << 16))


def build_state(services: int, endpoints: int, *, node_ports: bool = False) -> ProxyState:
    """A ProxyState with ``services`` TCP ClusterIP services of ``endpoints`` endpoints each."""
    svcs: dict[ServicePortName, ServicePort] = {}
    eps: dict[ServicePortName, tuple[Endpoint, ...]] = {}
    for i in range(services):
        name = ServicePortName("bench", f"svc-{i}", "http")
        svcs[name] = ServicePort(
            name=name,
            protocol=Protocol.TCP,
            port=80,
            cluster_ips=(service_ip(i),),
            node_port=(30000 + i % 2768) if node_ports else 0,
            type="NodePort" if node_ports else "ClusterIP",
        )
        eps[name] = tuple(
            sorted(
                Endpoint(ip=endpoint_ip(i, j, endpoints), port=8080, node_name="other")
                for j in range(endpoints)
            )
        )
    return ProxyState(services=svcs, endpoints=eps, node=NODE, config=CONFIG, family=IPFamily.IPV4)


def with_one_endpoint_changed(state: ProxyState, service_index: int) -> ProxyState:
    """The same state with the first endpoint of one service moved to a new IP."""
    name = ServicePortName("bench", f"svc-{service_index}", "http")
    old = state.endpoints[name]
    moved = replace(old[0], ip=ipaddress.IPv4Address("10.244.255.254"))
    endpoints = dict(state.endpoints)
    endpoints[name] = tuple(sorted((moved, *old[1:])))
    return replace(state, endpoints=endpoints)


#: The name of the service ``with_target_service`` adds. Its namespace sorts
#: after ``bench``, so renderers that order services by name put it last.
TARGET = ServicePortName("zz-target", "first-packet", "http")


def with_target_service(
    state: ProxyState,
    cluster_ip: ipaddress.IPv4Address,
    backend_ip: ipaddress.IPv4Address,
    backend_port: int,
    *,
    port: int = 80,
) -> ProxyState:
    """The same state plus one TCP ClusterIP service (:data:`TARGET`) with one real backend.

    The first-packet benchmark connects to ``cluster_ip:port`` and expects the
    connection to reach ``backend_ip:backend_port``.
    """
    services = dict(state.services)
    services[TARGET] = ServicePort(
        name=TARGET, protocol=Protocol.TCP, port=port, cluster_ips=(cluster_ip,)
    )
    endpoints = dict(state.endpoints)
    endpoints[TARGET] = (Endpoint(ip=backend_ip, port=backend_port, node_name="other"),)
    return replace(state, services=services, endpoints=endpoints)
