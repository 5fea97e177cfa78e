"""netagent.translate: Kubernetes objects -> the frozen model, and every way an object is rejected.

Covers the fixtures (a two-port dual-stack LoadBalancer Service, an EndpointSlice,
a Node) translated field by field; that kubernetes-client model objects give the
same result as the plain dicts; the defaults and the kube-proxy choices
(skipped Service kinds, policies only where they apply, LB ingress modes,
source-range annotation, sloppy IPv4); and a table of invalid objects where the
exact one-line message names the object and the field.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from netagent.model import (
    EndpointSliceInfo,
    IPFamily,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    SessionAffinity,
    SliceEndpoint,
    SlicePort,
    TrafficPolicy,
)
from netagent.translate import (
    InvalidObject,
    as_dict,
    endpoint_slice,
    node_info,
    parse_cidr,
    parse_ip,
    service_ports,
)

FIXTURES = Path(__file__).parent / "fixtures"
Obj = dict[str, Any]


def fixture(name: str) -> Obj:
    data = yaml.safe_load((FIXTURES / name).read_text())
    assert isinstance(data, dict)
    return data


def to_client_model(data: Obj, model: str) -> Any:
    """The kubernetes-client object an API call would return for ``data``."""
    return client.ApiClient().deserialize(json.dumps(data), model, None)


def base_service() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        },
    }


def base_slice() -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-abc",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": True}}],
    }


def base_node() -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-a"},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]},
    }


# --------------------------------------------------------------------------- fixtures


def test_service_fixture_translates_every_field() -> None:
    ports = service_ports(fixture("service-web.yaml"))
    common: dict[str, Any] = dict(
        cluster_ips=(IPv4Address("10.96.0.20"), IPv6Address("fd00:10:96::20")),
        external_ips=(IPv4Address("192.0.2.10"),),
        load_balancer_ips=(IPv4Address("198.51.100.7"), IPv6Address("2001:db8:1::7")),
        load_balancer_source_ranges=(IPv4Network("203.0.113.0/24"), IPv6Network("2001:db8::/32")),
        session_affinity=SessionAffinity.CLIENT_IP,
        sticky_seconds=600,
        external_traffic_policy=TrafficPolicy.LOCAL,
        internal_traffic_policy=TrafficPolicy.CLUSTER,
        health_check_node_port=32100,
        type="LoadBalancer",
    )
    assert ports == (
        ServicePort(
            name=ServicePortName("shop", "web", "http"),
            protocol=Protocol.TCP,
            port=80,
            node_port=30080,
            **common,
        ),
        ServicePort(
            name=ServicePortName("shop", "web", "metrics"),
            protocol=Protocol.TCP,  # protocol omitted: TCP
            port=9090,
            node_port=30090,
            **common,
        ),
    )
    assert all(p.external_policy_local for p in ports)


def test_endpoint_slice_fixture_translates_conditions_hints_and_trigger_time() -> None:
    info = endpoint_slice(fixture("endpointslice-web.yaml"))
    expected_time = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC).timestamp()
    assert info == EndpointSliceInfo(
        namespace="shop",
        name="web-7xk2p",
        service_name="web",
        address_type=IPFamily.IPV4,
        ports=(SlicePort("http", 8080, Protocol.TCP), SlicePort("metrics", 9090, Protocol.TCP)),
        endpoints=(
            SliceEndpoint(
                addresses=(IPv4Address("10.244.1.5"),),
                ready=True,
                serving=True,
                terminating=False,
                node_name="node-a",
                zone="zone-a",
                zone_hints=frozenset({"zone-a"}),
            ),
            SliceEndpoint(
                addresses=(IPv4Address("10.244.2.9"),),
                ready=False,
                serving=True,
                terminating=True,
                node_name="node-b",
                zone="zone-b",
            ),
            # Every condition unset: ready, serving (follows ready), not terminating.
            SliceEndpoint(
                addresses=(IPv4Address("10.244.2.10"),),
                ready=True,
                serving=True,
                terminating=False,
                node_name="node-b",
            ),
        ),
        trigger_time=expected_time,
    )


def test_node_fixture_puts_internal_addresses_first() -> None:
    node = node_info(fixture("node-a.yaml"))
    assert node == NodeInfo(
        name="node-a",
        addresses=(
            IPv4Address("192.168.10.11"),
            IPv6Address("fd00:192:168::11"),
            IPv4Address("203.0.113.50"),
        ),
        pod_cidrs=(IPv4Network("10.244.1.0/24"), IPv6Network("fd00:10:244:1::/64")),
        zone="zone-a",
        labels=(
            ("kubernetes.io/hostname", "node-a"),
            ("topology.kubernetes.io/zone", "zone-a"),
        ),
        annotations=(("flannel.alpha.coreos.com/backend-type", "vxlan"),),
        resource_version="981",
    )
    assert node.addresses_of(IPFamily.IPV6) == (IPv6Address("fd00:192:168::11"),)


# --------------------------------------------------------------------------- dict vs client model


@pytest.mark.parametrize(
    ("name", "model", "translate"),
    [
        ("service-web.yaml", "V1Service", service_ports),
        ("endpointslice-web.yaml", "V1EndpointSlice", endpoint_slice),
        ("node-a.yaml", "V1Node", node_info),
    ],
)
def test_client_model_gives_the_same_result_as_the_dict(
    name: str, model: str, translate: Callable[[object], object]
) -> None:
    data = fixture(name)
    obj = to_client_model(data, model)
    assert type(obj).__name__ == model
    assert translate(obj) == translate(data)


def test_hand_built_client_service_matches_dict() -> None:
    svc = client.V1Service(
        metadata=client.V1ObjectMeta(name="web", namespace="default"),
        spec=client.V1ServiceSpec(
            type="NodePort",
            cluster_ip="10.96.0.10",
            ports=[client.V1ServicePort(name="http", port=80, node_port=30001, target_port=8080)],
            session_affinity="ClientIP",
        ),
    )
    data = {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 80, "nodePort": 30001, "targetPort": 8080}],
            "sessionAffinity": "ClientIP",
        },
    }
    assert as_dict(svc) == data
    assert service_ports(svc) == service_ports(data)
    assert service_ports(svc)[0].sticky_seconds == 10800


def test_client_model_errors_match_dict_errors() -> None:
    data = base_service()
    data["spec"]["ports"][1]["port"] = 70000
    with pytest.raises(InvalidObject) as from_dict:
        service_ports(data)
    obj = client.V1Service(
        metadata=client.V1ObjectMeta(name="web", namespace="default"),
        spec=client.V1ServiceSpec(
            cluster_ip="10.96.0.10",
            ports=[
                client.V1ServicePort(name="http", port=80, protocol="TCP"),
                client.V1ServicePort(name="dns", port=70000, protocol="UDP"),
            ],
        ),
    )
    with pytest.raises(InvalidObject) as from_model:
        service_ports(obj)
    assert str(from_model.value) == str(from_dict.value)


def test_rejects_something_that_is_neither_dict_nor_model() -> None:
    with pytest.raises(TypeError, match="expected a dict"):
        service_ports(["not", "an", "object"])


# --------------------------------------------------------------------------- Service semantics


def test_namespace_defaults_to_default_like_kubectl() -> None:
    data = base_service()
    del data["metadata"]["namespace"]
    assert {p.name.namespace for p in service_ports(data)} == {"default"}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            {"type": "ExternalName", "externalName": "example.com", "clusterIP": None},
            "ExternalName",
        ),
        ({"clusterIP": "None", "clusterIPs": ["None"]}, "headless"),
        ({"clusterIP": None, "clusterIPs": None}, "unallocated"),
    ],
)
def test_services_kube_proxy_does_not_proxy_yield_no_ports(change: Obj, why: str) -> None:
    data = base_service()
    data["spec"].update({k: v for k, v in change.items()})
    for key in [k for k, v in change.items() if v is None]:
        del data["spec"][key]
    assert service_ports(data) == (), why


def test_unrelated_metadata_is_not_validated() -> None:
    """A numeric annotation or label the agent does not use must not sink the object."""
    data = base_service()
    data["metadata"]["annotations"] = {"prometheus.io/port": 9090}
    assert len(service_ports(data)) == 2
    slice_data = base_slice()
    slice_data["metadata"]["labels"]["version"] = 2
    assert endpoint_slice(slice_data) is not None


def test_single_port_may_be_unnamed_and_protocol_defaults_to_tcp() -> None:
    data = base_service()
    data["spec"]["ports"] = [{"port": 443}]
    (port,) = service_ports(data)
    assert port.name == ServicePortName("default", "web", "")
    assert port.protocol is Protocol.TCP
    assert str(port.name) == "default/web"


def test_node_port_only_for_nodeport_and_loadbalancer_and_api_range_not_enforced() -> None:
    data = base_service()
    data["spec"]["ports"][0]["nodePort"] = 80  # outside 30000-32767: the API server's business
    assert service_ports(data)[0].node_port == 0  # ClusterIP type: ignored
    data["spec"]["type"] = "NodePort"
    assert service_ports(data)[0].node_port == 80


def test_external_policy_only_kept_where_it_applies() -> None:
    data = base_service()
    data["spec"]["externalTrafficPolicy"] = "Local"
    data["spec"]["healthCheckNodePort"] = 32000
    plain = service_ports(data)[0]
    assert plain.external_traffic_policy is TrafficPolicy.CLUSTER
    assert plain.health_check_node_port == 0
    data["spec"]["externalIPs"] = ["192.0.2.1"]
    with_external = service_ports(data)[0]
    assert with_external.external_traffic_policy is TrafficPolicy.LOCAL
    assert with_external.external_policy_local
    assert with_external.health_check_node_port == 0  # only LoadBalancer services get one
    data["spec"]["type"] = "LoadBalancer"
    assert service_ports(data)[0].health_check_node_port == 32000


def test_internal_traffic_policy_local() -> None:
    data = base_service()
    data["spec"]["internalTrafficPolicy"] = "Local"
    assert all(p.internal_policy_local for p in service_ports(data))


def test_load_balancer_ingress_vip_mode_only_and_only_for_loadbalancer_type() -> None:
    data = base_service()
    data["status"] = {
        "loadBalancer": {
            "ingress": [
                {"ip": "198.51.100.2", "ipMode": "Proxy"},
                {"ip": "198.51.100.1", "ipMode": "VIP"},
                {"hostname": "lb.example.com"},
            ]
        }
    }
    assert service_ports(data)[0].load_balancer_ips == ()
    data["spec"]["type"] = "LoadBalancer"
    assert service_ports(data)[0].load_balancer_ips == (IPv4Address("198.51.100.1"),)


def test_source_ranges_annotation_is_used_only_when_the_field_is_empty() -> None:
    data = base_service()
    key = "service.beta.kubernetes.io/load-balancer-source-ranges"
    data["metadata"]["annotations"] = {key: "10.1.0.0/16, 10.0.0.0/8"}
    assert service_ports(data)[0].load_balancer_source_ranges == (
        IPv4Network("10.0.0.0/8"),
        IPv4Network("10.1.0.0/16"),
    )
    data["spec"]["loadBalancerSourceRanges"] = ["192.0.2.0/24"]
    assert service_ports(data)[0].load_balancer_source_ranges == (IPv4Network("192.0.2.0/24"),)


def test_addresses_are_sorted_and_deduplicated() -> None:
    data = base_service()
    data["spec"]["externalIPs"] = ["2001:db8::1", "192.0.2.9", "192.0.2.1", "192.0.2.9"]
    assert service_ports(data)[0].external_ips == (
        IPv4Address("192.0.2.1"),
        IPv4Address("192.0.2.9"),
        IPv6Address("2001:db8::1"),
    )


def test_session_affinity_timeout_defaults_and_bounds() -> None:
    data = base_service()
    data["spec"]["sessionAffinity"] = "ClientIP"
    assert service_ports(data)[0].sticky_seconds == 10800
    for seconds in (1, 86400):
        data["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": seconds}}
        assert service_ports(data)[0].sticky_seconds == seconds


def test_sloppy_ipv4_and_no_zone_index() -> None:
    assert parse_ip("010.096.000.001") == IPv4Address("10.96.0.1")
    assert parse_ip("fe80::1%eth0") is None
    assert parse_ip(167772161) is None  # ipaddress would take an int; the API never does
    assert parse_cidr("10.1.2.3/8") == IPv4Network("10.0.0.0/8")
    assert parse_cidr("10.0.0.0") is None
    assert parse_cidr("10.0.0.0/33") is None


# ------------------------------------------------------------------ EndpointSlice semantics


def test_fqdn_slice_is_ignored_with_a_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    data = base_slice()
    data["addressType"] = "FQDN"
    data["endpoints"] = [{"addresses": ["db.example.com"]}]
    with caplog.at_level(logging.DEBUG, logger="netagent.translate"):
        assert endpoint_slice(data) is None
    assert any("FQDN" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({}, (True, True, False)),
        ({"ready": False}, (False, False, False)),  # serving nil follows ready
        ({"ready": False, "serving": True, "terminating": True}, (False, True, True)),
        ({"ready": True, "serving": None, "terminating": None}, (True, True, False)),
    ],
)
def test_endpoint_condition_defaults(conditions: Obj, expected: tuple[bool, bool, bool]) -> None:
    data = base_slice()
    data["endpoints"][0]["conditions"] = conditions
    info = endpoint_slice(data)
    assert info is not None
    ep = info.endpoints[0]
    assert (ep.ready, ep.serving, ep.terminating) == expected


def test_slice_port_defaults_and_unset_port_skipped() -> None:
    data = base_slice()
    data["ports"] = [{"port": 8080}, {"name": "all"}]
    info = endpoint_slice(data)
    assert info is not None
    assert info.ports == (SlicePort("", 8080, Protocol.TCP),)


def test_ipv6_slice() -> None:
    data = base_slice()
    data["addressType"] = "IPv6"
    data["endpoints"] = [{"addresses": ["fd00::5", "fd00::6"]}]
    info = endpoint_slice(data)
    assert info is not None
    assert info.address_type is IPFamily.IPV6
    assert info.endpoints[0].addresses == (IPv6Address("fd00::5"), IPv6Address("fd00::6"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:00:00.123456789Z", 1714564800.123456),
        ("2024-05-01T14:00:00+02:00", 1714564800.0),
        ("yesterday", 0.0),
        (None, 0.0),
        # Shaped like a time but not one (annotations are never validated; found by fuzzing:
        # these used to raise ValueError out of the boundary and fail the whole sync).
        ("2026-13-45T25:61:61Z", 0.0),
        ("2026-02-30T00:00:00Z", 0.0),
        ("2026-01-02T03:04:05+99:00", 0.0),
        ("\u0662\u0660\u0662\u0666-01-02T03:04:05Z", 0.0),  # Arabic-Indic digits
    ],
)
def test_trigger_time(value: str | None, expected: float) -> None:
    data = base_slice()
    if value is not None:
        data["metadata"]["annotations"] = {
            "endpoints.kubernetes.io/last-change-trigger-time": value
        }
    info = endpoint_slice(data)
    assert info is not None
    assert info.trigger_time == pytest.approx(expected)


def test_node_with_only_pod_cidr_and_no_addresses() -> None:
    data = base_node()
    del data["status"]
    node = node_info(data)
    assert node.pod_cidrs == (IPv4Network("10.244.0.0/24"),)
    assert node.addresses == ()
    assert node.zone == ""


def test_node_going_away_from_deletion_timestamp_or_autoscaler_taint() -> None:
    plain = node_info(base_node())
    assert not plain.deleting and plain.taint_keys == () and not plain.going_away

    data = base_node()
    data["spec"]["taints"] = [
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
        {"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"},
    ]
    tainted = node_info(data)
    assert tainted.taint_keys == (
        "ToBeDeletedByClusterAutoscaler",
        "node.kubernetes.io/unschedulable",
    )
    assert tainted.going_away and not tainted.deleting

    data = base_node()
    data["spec"]["taints"] = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
    assert not node_info(data).going_away  # cordoned is not going away

    data = base_node()
    data["metadata"]["deletionTimestamp"] = "2026-12-01T10:00:00Z"
    deleting = node_info(data)
    assert deleting.deleting and deleting.going_away


def test_node_with_a_malformed_taint_names_the_field() -> None:
    data = base_node()
    data["spec"]["taints"] = ["ToBeDeletedByClusterAutoscaler"]
    with pytest.raises(InvalidObject, match=r"spec\.taints\[0\]"):
        node_info(data)


# --------------------------------------------------------------------------- invalid objects

Mutation = Callable[[Obj], None]


def svc_case(mutate: Mutation, message: str) -> tuple[Callable[[Obj], object], Obj, str]:
    data = base_service()
    mutate(data)
    return service_ports, data, message


def slice_case(mutate: Mutation, message: str) -> tuple[Callable[[Obj], object], Obj, str]:
    data = base_slice()
    mutate(data)
    return endpoint_slice, data, message


def node_case(mutate: Mutation, message: str) -> tuple[Callable[[Obj], object], Obj, str]:
    data = base_node()
    mutate(data)
    return node_info, data, message


def spec(**changes: Any) -> Mutation:
    def apply(d: Obj) -> None:
        for key, value in changes.items():
            if value is None:
                d["spec"].pop(key, None)
            else:
                d["spec"][key] = value

    return apply


def port(index: int, **changes: Any) -> Mutation:
    def apply(d: Obj) -> None:
        entry = d["spec"]["ports"][index]
        for key, value in changes.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value

    return apply


def meta(**changes: Any) -> Mutation:
    def apply(d: Obj) -> None:
        for key, value in changes.items():
            if value is None:
                d["metadata"].pop(key, None)
            else:
                d["metadata"][key] = value

    return apply


def both(*mutations: Mutation) -> Mutation:
    def apply(d: Obj) -> None:
        for m in mutations:
            m(d)

    return apply


def endpoint(**changes: Any) -> Mutation:
    def apply(d: Obj) -> None:
        d["endpoints"][0].update(changes)

    return apply


SVC = "Service default/web: "
EPS = "EndpointSlice default/web-abc: "
LABEL_RULE = "(a-z, 0-9 and '-', alphanumeric at both ends, at most 63 characters)"
SUBDOMAIN_RULE = "(dot-separated labels of a-z, 0-9 and '-', at most 253 characters)"
SOURCE_RANGES = "service.beta.kubernetes.io/load-balancer-source-ranges"

INVALID = {
    # --- Service: cluster IPs
    "clusterIP not an IP": svc_case(
        spec(clusterIP="10.96.0.300", clusterIPs=None),
        SVC + 'spec.clusterIP "10.96.0.300" is not an IP address',
    ),
    "clusterIPs with garbage": svc_case(
        spec(clusterIPs=["10.96.0.10", "bogus"]),
        SVC + 'spec.clusterIPs[1] "bogus" is not an IP address',
    ),
    "clusterIPs mixes None": svc_case(
        spec(clusterIP=None, clusterIPs=["None", "10.96.0.10"]),
        SVC + 'spec.clusterIPs ["None", "10.96.0.10"] mixes None with addresses',
    ),
    "clusterIP disagrees with clusterIPs": svc_case(
        spec(clusterIPs=["10.96.0.11"]),
        SVC + 'spec.clusterIP "10.96.0.10" does not match spec.clusterIPs[0] "10.96.0.11"',
    ),
    "two IPv4 clusterIPs": svc_case(
        spec(clusterIPs=["10.96.0.10", "10.96.0.11"]),
        SVC + 'spec.clusterIPs ["10.96.0.10", "10.96.0.11"] has two addresses of the same family',
    ),
    "clusterIP not a string": svc_case(
        spec(clusterIP=167772161, clusterIPs=None),
        SVC + "spec.clusterIP 167772161 is not a string",
    ),
    # --- Service: ports
    "port above 65535": svc_case(
        port(1, port=70000), SVC + "spec.ports[1].port 70000 is out of range 1-65535"
    ),
    "port zero": svc_case(port(0, port=0), SVC + "spec.ports[0].port 0 is out of range 1-65535"),
    "port missing": svc_case(port(0, port=None), SVC + "spec.ports[0].port is missing"),
    "port a string": svc_case(
        port(0, port="80"), SVC + 'spec.ports[0].port "80" is not an integer'
    ),
    "port a bool": svc_case(port(0, port=True), SVC + "spec.ports[0].port true is not an integer"),
    "nodePort out of range": svc_case(
        both(spec(type="NodePort"), port(0, nodePort=65536)),
        SVC + "spec.ports[0].nodePort 65536 is out of range 1-65535",
    ),
    "nodePort negative": svc_case(
        both(spec(type="NodePort"), port(0, nodePort=-1)),
        SVC + "spec.ports[0].nodePort -1 is out of range 1-65535",
    ),
    "duplicate nodePort": svc_case(
        both(
            spec(type="NodePort"),
            port(0, nodePort=30001, protocol="UDP"),
            port(1, nodePort=30001),
        ),
        SVC + "spec.ports[1].nodePort 30001 duplicates spec.ports[0].nodePort",
    ),
    "unknown protocol": svc_case(
        port(0, protocol="HTTP"),
        SVC + 'spec.ports[0].protocol "HTTP" is not one of TCP, UDP, SCTP',
    ),
    "lower-case protocol": svc_case(
        port(1, protocol="udp"),
        SVC + 'spec.ports[1].protocol "udp" is not one of TCP, UDP, SCTP',
    ),
    "duplicate port names": svc_case(
        port(1, name="http"), SVC + 'spec.ports[1].name "http" duplicates spec.ports[0].name'
    ),
    "duplicate port and protocol": svc_case(
        port(1, port=80, protocol="TCP"), SVC + "spec.ports[1] 80/TCP duplicates spec.ports[0]"
    ),
    "unnamed port among several": svc_case(
        port(1, name=None),
        SVC + "spec.ports[1].name is required when a Service has more than one port",
    ),
    "port name with upper case": svc_case(
        port(0, name="HTTP"),
        SVC + f'spec.ports[0].name "HTTP" is not a DNS-1123 label {LABEL_RULE}',
    ),
    "no ports": svc_case(spec(ports=[]), SVC + "spec.ports is empty"),
    "ports not a list": svc_case(
        spec(ports={"port": 80}), SVC + 'spec.ports {"port": 80} is not a list'
    ),
    "port entry not an object": svc_case(
        spec(ports=[80]), SVC + "spec.ports[0] 80 is not an object"
    ),
    # --- Service: metadata
    "name with upper case and underscore": svc_case(
        meta(name="Web_App"),
        'Service default/Web_App: metadata.name "Web_App" is not a DNS-1123 label ' + LABEL_RULE,
    ),
    "name with a quote": svc_case(
        meta(name='we"b'),
        'Service default/"we\\"b": metadata.name "we\\"b" is not a DNS-1123 label ' + LABEL_RULE,
    ),
    "name with a newline": svc_case(
        meta(name="web\nx"),
        'Service default/"web\\nx": metadata.name "web\\nx" is not a DNS-1123 label ' + LABEL_RULE,
    ),
    "name with a space": svc_case(
        meta(name="web app"),
        'Service default/"web app": metadata.name "web app" is not a DNS-1123 label ' + LABEL_RULE,
    ),
    "name too long": svc_case(
        meta(name="a" * 64),
        f'Service default/{"a" * 64}: metadata.name "{"a" * 64}" is not a DNS-1123 label '
        + LABEL_RULE,
    ),
    "namespace with a space": svc_case(
        meta(namespace="prod env"),
        'Service "prod env"/web: metadata.namespace "prod env" is not a DNS-1123 label '
        + LABEL_RULE,
    ),
    "name missing": svc_case(
        meta(name=None), "Service default/<no name>: metadata.name is missing"
    ),
    "metadata missing": svc_case(
        lambda d: d.pop("metadata"), "Service default/<no name>: metadata is missing"
    ),
    "name not a string": svc_case(
        meta(name=42), "Service default/42: metadata.name 42 is not a string"
    ),
    "wrong kind": svc_case(lambda d: d.update(kind="Pod"), SVC + 'kind "Pod" is not Service'),
    # --- Service: type, external addresses
    "unknown type": svc_case(
        spec(type="Ingress"),
        SVC + 'spec.type "Ingress" is not one of ClusterIP, NodePort, LoadBalancer, ExternalName',
    ),
    "bad externalIP": svc_case(
        spec(externalIPs=["192.0.2.1", "192.0.2"]),
        SVC + 'spec.externalIPs[1] "192.0.2" is not an IP address',
    ),
    "externalIP with zone index": svc_case(
        spec(externalIPs=["fe80::1%eth0"]),
        SVC + 'spec.externalIPs[0] "fe80::1%eth0" is not an IP address',
    ),
    "bad LB ingress IP": svc_case(
        lambda d: d.update(status={"loadBalancer": {"ingress": [{"ip": "lb-1"}]}}),
        SVC + 'status.loadBalancer.ingress[0].ip "lb-1" is not an IP address',
    ),
    "bad source range": svc_case(
        spec(loadBalancerSourceRanges=["10.0.0.0/8", "10.0.0.0/40"]),
        SVC + 'spec.loadBalancerSourceRanges[1] "10.0.0.0/40" is not a CIDR',
    ),
    "source range without a length": svc_case(
        spec(loadBalancerSourceRanges=["10.0.0.1"]),
        SVC + 'spec.loadBalancerSourceRanges[0] "10.0.0.1" is not a CIDR',
    ),
    "bad source range annotation": svc_case(
        meta(annotations={SOURCE_RANGES: "10.0.0.0/8,everyone"}),
        SVC + f'metadata.annotations["{SOURCE_RANGES}"] entry "everyone" is not a CIDR',
    ),
    # --- Service: affinity and policies
    "bad sessionAffinity": svc_case(
        spec(sessionAffinity="Sticky"),
        SVC + 'spec.sessionAffinity "Sticky" is not one of None, ClientIP',
    ),
    "affinity timeout zero": svc_case(
        spec(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}),
        SVC + "spec.sessionAffinityConfig.clientIP.timeoutSeconds 0 is out of range 1-86400",
    ),
    "affinity timeout above a day": svc_case(
        spec(
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 86401}},
        ),
        SVC + "spec.sessionAffinityConfig.clientIP.timeoutSeconds 86401 is out of range 1-86400",
    ),
    "legacy Global policy": svc_case(
        spec(externalTrafficPolicy="Global"),
        SVC + 'spec.externalTrafficPolicy "Global" is not one of Cluster, Local '
        '("Global" was an annotation value; use Cluster)',
    ),
    "bad external policy": svc_case(
        spec(externalTrafficPolicy="local"),
        SVC + 'spec.externalTrafficPolicy "local" is not one of Cluster, Local',
    ),
    "bad internal policy": svc_case(
        spec(internalTrafficPolicy="NodeLocal"),
        SVC + 'spec.internalTrafficPolicy "NodeLocal" is not one of Cluster, Local',
    ),
    "healthCheckNodePort out of range": svc_case(
        spec(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=99999),
        SVC + "spec.healthCheckNodePort 99999 is out of range 1-65535",
    ),
    # --- EndpointSlice
    "slice without service-name label": slice_case(
        meta(labels={"app": "web"}),
        EPS + 'metadata.labels["kubernetes.io/service-name"] is missing',
    ),
    "slice service-name not a label": slice_case(
        meta(labels={"kubernetes.io/service-name": "Web"}),
        EPS
        + 'metadata.labels["kubernetes.io/service-name"] "Web" is not a DNS-1123 label '
        + LABEL_RULE,
    ),
    "bad endpoint address": slice_case(
        endpoint(addresses=["10.244.0.256"]),
        EPS + 'endpoints[0].addresses[0] "10.244.0.256" is not an IP address',
    ),
    "endpoint address of the wrong family": slice_case(
        endpoint(addresses=["fd00::1"]),
        EPS + 'endpoints[0].addresses[0] "fd00::1" is not an IPv4 address',
    ),
    "endpoint without addresses": slice_case(
        endpoint(addresses=[]), EPS + "endpoints[0].addresses is empty"
    ),
    "endpoint condition not a bool": slice_case(
        endpoint(conditions={"ready": "yes"}),
        EPS + 'endpoints[0].conditions.ready "yes" is not true or false',
    ),
    "endpoint nodeName with a space": slice_case(
        endpoint(nodeName="node a"),
        EPS + f'endpoints[0].nodeName "node a" is not a DNS-1123 subdomain {SUBDOMAIN_RULE}',
    ),
    "endpoint port out of range": slice_case(
        lambda d: d["ports"][0].update(port=65536),
        EPS + "ports[0].port 65536 is out of range 1-65535",
    ),
    "endpoint port zero": slice_case(
        lambda d: d["ports"][0].update(port=0), EPS + "ports[0].port 0 is out of range 1-65535"
    ),
    "endpoint port protocol": slice_case(
        lambda d: d["ports"][0].update(protocol="ICMP"),
        EPS + 'ports[0].protocol "ICMP" is not one of TCP, UDP, SCTP',
    ),
    "duplicate slice port names": slice_case(
        lambda d: d["ports"].append({"name": "http", "port": 8081}),
        EPS + 'ports[1].name "http" duplicates ports[0].name',
    ),
    "unknown addressType": slice_case(
        lambda d: d.update(addressType="IPX"),
        EPS + 'addressType "IPX" is not one of IPv4, IPv6, FQDN',
    ),
    "missing addressType": slice_case(
        lambda d: d.pop("addressType"), EPS + "addressType is missing"
    ),
    "slice name with upper case": slice_case(
        meta(name="Web-abc"),
        'EndpointSlice default/Web-abc: metadata.name "Web-abc" is not a DNS-1123 subdomain '
        + SUBDOMAIN_RULE,
    ),
    # --- Node
    "podCIDR not a CIDR": node_case(
        lambda d: d["spec"].update(podCIDR="10.244.0.0/33"),
        'Node node-a: spec.podCIDR "10.244.0.0/33" is not a CIDR',
    ),
    "podCIDRs garbage": node_case(
        lambda d: d["spec"].update(podCIDRs=["10.244.0.0/24", "banana"]),
        'Node node-a: spec.podCIDRs[1] "banana" is not a CIDR',
    ),
    "two IPv4 podCIDRs": node_case(
        lambda d: d["spec"].update(podCIDRs=["10.244.0.0/24", "10.245.0.0/24"]),
        'Node node-a: spec.podCIDRs ["10.244.0.0/24", "10.245.0.0/24"] has more than one CIDR '
        "of a family",
    ),
    "bad node address": node_case(
        lambda d: d["status"]["addresses"].append({"type": "ExternalIP", "address": "1.2.3"}),
        'Node node-a: status.addresses[1].address "1.2.3" is not an IP address',
    ),
    "node annotation not a string": node_case(
        meta(annotations={"flannel.alpha.coreos.com/backend-data": {"VNI": 1}}),
        'Node node-a: metadata.annotations["flannel.alpha.coreos.com/backend-data"] {"VNI": 1} '
        "is not a string",
    ),
    "node name with a slash": node_case(
        meta(name="node/a"),
        'Node node/a: metadata.name "node/a" is not a DNS-1123 subdomain ' + SUBDOMAIN_RULE,
    ),
}


@pytest.mark.parametrize(("translate", "data", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid_object_message_names_object_and_field(
    translate: Callable[[Obj], object], data: Obj, message: str
) -> None:
    with pytest.raises(InvalidObject) as caught:
        translate(copy.deepcopy(data))
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    assert str(caught.value).endswith(caught.value.reason)


def test_invalid_object_carries_its_parts() -> None:
    data = base_service()
    data["spec"]["ports"][1]["port"] = 70000
    with pytest.raises(InvalidObject) as caught:
        service_ports(data)
    err = caught.value
    assert (err.kind, err.namespace, err.name) == ("Service", "default", "web")
    assert err.reason == "spec.ports[1].port 70000 is out of range 1-65535"
    assert err.ref == "default/web"


def test_good_base_objects_are_valid() -> None:
    """The table above mutates these; each must be valid unmutated."""
    assert len(service_ports(base_service())) == 2
    assert endpoint_slice(base_slice()) is not None
    assert node_info(base_node()).name == "node-a"
