"""netagent.state.build_proxy_state: slices merged into per-port endpoint lists for one family.

Covers: slices of one Service merged by port name and protocol; the same
ip:port from two slices kept once (ready copy wins, whatever the slice order);
terminating/serving conditions and zone hints carried through; is_local set
from the node name; endpoints sorted by (ip, port); slices of another
namespace, Service or family ignored; dual-stack Services narrowed to the
family's addresses and single-stack Services dropped from the other family;
and the fixtures translated and merged end to end.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path

import yaml

from netagent.model import (
    Endpoint,
    EndpointSliceInfo,
    IPFamily,
    NodeInfo,
    Protocol,
    ProxyConfig,
    ServicePort,
    ServicePortName,
    SliceEndpoint,
    SlicePort,
)
from netagent.state import build_proxy_state, service_for_family
from netagent.translate import endpoint_slice, node_info, service_ports

NODE = NodeInfo(name="node-a", addresses=(IPv4Address("192.168.0.2"),))
CONFIG = ProxyConfig()
HTTP = ServicePortName("default", "web", "http")
DNS = ServicePortName("default", "web", "dns")
FIXTURES = Path(__file__).parent / "fixtures"


def web_ports(*cluster_ips: str) -> list[ServicePort]:
    ips = tuple(ip_address(ip) for ip in cluster_ips)
    return [
        ServicePort(name=HTTP, protocol=Protocol.TCP, port=80, cluster_ips=ips),
        ServicePort(name=DNS, protocol=Protocol.UDP, port=53, cluster_ips=ips),
    ]


def ep(ip: str, *, ready: bool = True, node: str = "", terminating: bool = False) -> SliceEndpoint:
    return SliceEndpoint(
        addresses=(ip_address(ip),),
        ready=ready,
        serving=ready or terminating,
        terminating=terminating,
        node_name=node,
    )


def web_slice(
    name: str,
    *endpoints: SliceEndpoint,
    ports: tuple[SlicePort, ...] = (SlicePort("http", 8080, Protocol.TCP),),
    family: IPFamily = IPFamily.IPV4,
    namespace: str = "default",
    service: str = "web",
) -> EndpointSliceInfo:
    return EndpointSliceInfo(
        namespace=namespace,
        name=name,
        service_name=service,
        address_type=family,
        ports=ports,
        endpoints=endpoints,
    )


def ips(endpoints: tuple[Endpoint, ...]) -> list[str]:
    return [str(e) for e in endpoints]


def test_two_slices_of_one_service_are_merged_and_sorted() -> None:
    slices = [
        web_slice("web-b", ep("10.244.1.9"), ep("10.244.1.10")),
        web_slice("web-a", ep("10.244.0.20"), ep("10.244.0.3")),
    ]
    state = build_proxy_state(web_ports("10.96.0.10"), slices, NODE, CONFIG, IPFamily.IPV4)
    # Numeric order, not string order: .3 before .20, 1.9 before 1.10.
    assert ips(state.endpoints[HTTP]) == [
        "10.244.0.3:8080",
        "10.244.0.20:8080",
        "10.244.1.9:8080",
        "10.244.1.10:8080",
    ]
    assert DNS in state.services and DNS not in state.endpoints  # no slice port for it
    assert state.family is IPFamily.IPV4 and state.node is NODE and state.config is CONFIG


def test_slice_ports_match_service_ports_by_name_and_protocol() -> None:
    slice_ = web_slice(
        "web-a",
        ep("10.244.0.5"),
        ports=(
            SlicePort("http", 8080, Protocol.TCP),
            SlicePort("dns", 5353, Protocol.UDP),
            SlicePort("dns", 5354, Protocol.TCP),  # same name, other protocol: no such port
            SlicePort("admin", 9000, Protocol.TCP),  # not a Service port
        ),
    )
    state = build_proxy_state(web_ports("10.96.0.10"), [slice_], NODE, CONFIG, IPFamily.IPV4)
    assert ips(state.endpoints[HTTP]) == ["10.244.0.5:8080"]
    assert ips(state.endpoints[DNS]) == ["10.244.0.5:5353"]
    assert set(state.endpoints) == {HTTP, DNS}


def test_duplicate_endpoint_prefers_the_ready_copy_whatever_the_slice_order() -> None:
    stale = ep("10.244.0.5", ready=False, node="node-b")
    fresh = ep("10.244.0.5", ready=True, node="node-b")
    for first, second in ((stale, fresh), (fresh, stale)):
        slices = [web_slice("web-a", first), web_slice("web-b", second)]
        for order in (slices, slices[::-1]):
            state = build_proxy_state(web_ports("10.96.0.10"), order, NODE, CONFIG, IPFamily.IPV4)
            (only,) = state.endpoints[HTTP]
            assert only.ready and str(only) == "10.244.0.5:8080"


def test_duplicate_with_equal_readiness_prefers_local_then_first_slice_by_name() -> None:
    local = ep("10.244.0.5", node="node-a")
    remote = ep("10.244.0.5", node="node-b")
    state = build_proxy_state(
        web_ports("10.96.0.10"),
        [web_slice("web-a", remote), web_slice("web-b", local)],
        NODE,
        CONFIG,
        IPFamily.IPV4,
    )
    assert [e.node_name for e in state.endpoints[HTTP]] == ["node-a"]
    other = NodeInfo(name="node-c")
    state = build_proxy_state(
        web_ports("10.96.0.10"),
        [web_slice("web-b", local), web_slice("web-a", remote)],
        other,
        CONFIG,
        IPFamily.IPV4,
    )
    assert [e.node_name for e in state.endpoints[HTTP]] == ["node-b"]  # slice web-a sorts first


def test_same_ip_on_two_ports_is_not_a_duplicate() -> None:
    slices = [
        web_slice("web-a", ep("10.244.0.5"), ports=(SlicePort("http", 8080, Protocol.TCP),)),
        web_slice("web-b", ep("10.244.0.5"), ports=(SlicePort("http", 8081, Protocol.TCP),)),
    ]
    state = build_proxy_state(web_ports("10.96.0.10"), slices, NODE, CONFIG, IPFamily.IPV4)
    assert ips(state.endpoints[HTTP]) == ["10.244.0.5:8080", "10.244.0.5:8081"]


def test_conditions_zone_and_locality_are_carried_through() -> None:
    terminating = SliceEndpoint(
        addresses=(IPv4Address("10.244.0.7"), IPv4Address("10.244.0.8")),
        ready=False,
        serving=True,
        terminating=True,
        node_name="node-a",
        zone="zone-a",
        zone_hints=frozenset({"zone-a", "zone-b"}),
    )
    no_node = ep("10.244.0.9")
    state = build_proxy_state(
        web_ports("10.96.0.10"),
        [web_slice("web-a", terminating, no_node, ep("10.244.0.10", node="node-b"))],
        NODE,
        CONFIG,
        IPFamily.IPV4,
    )
    assert state.endpoints[HTTP] == (
        Endpoint(
            ip=IPv4Address("10.244.0.7"),  # the first address only
            port=8080,
            ready=False,
            serving=True,
            terminating=True,
            node_name="node-a",
            zone="zone-a",
            zone_hints=frozenset({"zone-a", "zone-b"}),
            is_local=True,
        ),
        Endpoint(ip=IPv4Address("10.244.0.9"), port=8080, is_local=False),
        Endpoint(ip=IPv4Address("10.244.0.10"), port=8080, node_name="node-b", is_local=False),
    )


def test_empty_node_name_never_makes_an_endpoint_local() -> None:
    state = build_proxy_state(
        web_ports("10.96.0.10"),
        [web_slice("web-a", ep("10.244.0.9"))],
        NodeInfo(name=""),
        CONFIG,
        IPFamily.IPV4,
    )
    assert not state.endpoints[HTTP][0].is_local


def test_slices_of_other_services_namespaces_and_families_are_ignored() -> None:
    slices = [
        web_slice("web-a", ep("10.244.0.5")),
        web_slice("web-x", ep("10.244.0.6"), namespace="other"),
        web_slice("api-a", ep("10.244.0.7"), service="api"),
        web_slice("web-6", ep("fd00::7"), family=IPFamily.IPV6),
    ]
    state = build_proxy_state(web_ports("10.96.0.10"), slices, NODE, CONFIG, IPFamily.IPV4)
    assert ips(state.endpoints[HTTP]) == ["10.244.0.5:8080"]


def test_dual_stack_service_is_narrowed_to_the_family() -> None:
    svc = ServicePort(
        name=HTTP,
        protocol=Protocol.TCP,
        port=80,
        cluster_ips=(IPv4Address("10.96.0.10"), IPv6Address("fd00::10")),
        external_ips=(IPv4Address("192.0.2.1"), IPv6Address("2001:db8::1")),
        load_balancer_ips=(IPv4Address("198.51.100.1"), IPv6Address("2001:db8:1::1")),
        load_balancer_source_ranges=(IPv4Network("203.0.113.0/24"), IPv6Network("2001:db8::/32")),
        node_port=30080,
        type="LoadBalancer",
    )
    slices = [
        web_slice("web-4", ep("10.244.0.5")),
        web_slice("web-6", ep("fd00:244::5"), family=IPFamily.IPV6),
    ]
    v6 = build_proxy_state([svc], slices, NODE, CONFIG, IPFamily.IPV6)
    narrowed = v6.services[HTTP]
    assert narrowed.cluster_ips == (IPv6Address("fd00::10"),)
    assert narrowed.external_ips == (IPv6Address("2001:db8::1"),)
    assert narrowed.load_balancer_ips == (IPv6Address("2001:db8:1::1"),)
    assert narrowed.load_balancer_source_ranges == (IPv6Network("2001:db8::/32"),)
    assert narrowed.node_port == 30080
    assert ips(v6.endpoints[HTTP]) == ["[fd00:244::5]:8080"]
    v4 = build_proxy_state([svc], slices, NODE, CONFIG, IPFamily.IPV4)
    assert v4.services[HTTP].cluster_ips == (IPv4Address("10.96.0.10"),)
    assert ips(v4.endpoints[HTTP]) == ["10.244.0.5:8080"]


def test_single_stack_service_is_absent_from_the_other_family() -> None:
    svc = ServicePort(
        name=HTTP,
        protocol=Protocol.TCP,
        port=80,
        cluster_ips=(IPv4Address("10.96.0.10"),),
        node_port=30080,
        external_ips=(IPv6Address("2001:db8::1"),),  # an IPv6 external IP does not save it
        type="NodePort",
    )
    assert service_for_family(svc, IPFamily.IPV6) is None
    state = build_proxy_state(
        [svc],
        [web_slice("web-6", ep("fd00::5"), family=IPFamily.IPV6)],
        NODE,
        CONFIG,
        IPFamily.IPV6,
    )
    assert state.services == {} and state.endpoints == {}


def test_services_are_keyed_and_ordered_by_port_name() -> None:
    api = ServicePort(
        name=ServicePortName("default", "api", ""),
        protocol=Protocol.TCP,
        port=443,
        cluster_ips=(IPv4Address("10.96.0.11"),),
    )
    ports = [*web_ports("10.96.0.10"), api]
    state = build_proxy_state(ports, [], NODE, CONFIG, IPFamily.IPV4)
    assert list(state.services) == sorted(p.name for p in ports)
    assert all(state.services[name].name == name for name in state.services)


def test_fixtures_end_to_end() -> None:
    def load(name: str) -> object:
        return yaml.safe_load((FIXTURES / name).read_text())

    services = service_ports(load("service-web.yaml"))
    slice_ = endpoint_slice(load("endpointslice-web.yaml"))
    node = node_info(load("node-a.yaml"))
    assert slice_ is not None
    state = build_proxy_state(services, [slice_], node, CONFIG, IPFamily.IPV4)
    http = ServicePortName("shop", "web", "http")
    endpoints = state.endpoints[http]
    assert ips(endpoints) == ["10.244.1.5:8080", "10.244.2.9:8080", "10.244.2.10:8080"]
    assert [e.is_local for e in endpoints] == [True, False, False]
    assert [(e.ready, e.serving, e.terminating) for e in endpoints] == [
        (True, True, False),
        (False, True, True),
        (True, True, False),
    ]
    assert ips(state.endpoints[ServicePortName("shop", "web", "metrics")])[0] == "10.244.1.5:9090"
    # The IPv6 side has the Service (dual-stack) but no IPv6 slice.
    v6 = build_proxy_state(services, [slice_], node, CONFIG, IPFamily.IPV6)
    assert set(v6.services) == {http, ServicePortName("shop", "web", "metrics")}
    assert v6.endpoints == {}
