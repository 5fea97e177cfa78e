"""flannel-compatible Node annotations: what we publish, how peers are parsed, VTEP MACs.

Covers the published values (vxlan and host-gw), the merge patch (only changed
keys, None when nothing changed), peer parsing (public-ip-overwrite wins,
missing values mean "not ready", every kind of bad value names the Node, the
key and the reason), remote_nodes' filtering, and the derived VTEP MAC.
"""

from __future__ import annotations

import ipaddress

import pytest

from netagent.model import NodeInfo
from netagent.overlay.annotations import (
    InvalidAnnotation,
    node_annotations,
    normalize_mac,
    public_ip_of,
    publish_patch,
    remote_node,
    remote_nodes,
    vtep_mac_for,
)
from netagent.overlay.model import BackendType, RemoteNode

P = "flannel.alpha.coreos.com"
IP = ipaddress.IPv4Address("192.168.1.12")
MAC = "a2:5e:11:00:3c:01"


def node(name: str = "node-2", cidrs: tuple[str, ...] = ("10.244.2.0/24",), **ann: str) -> NodeInfo:
    return NodeInfo(
        name=name,
        pod_cidrs=tuple(ipaddress.ip_network(c) for c in cidrs),
        annotations=tuple((f"{P}/{k.replace('_', '-')}", v) for k, v in ann.items()),
    )


def vxlan_node(name: str = "node-2", **extra: str) -> NodeInfo:
    ann = {
        "backend_type": "vxlan",
        "backend_data": '{"VNI":1,"VtepMAC":"A2:5E:11:00:3C:01"}',
        "public_ip": "192.168.1.12",
        **extra,
    }
    return node(name, **ann)


def test_vxlan_annotations_match_flannel_format() -> None:
    assert node_annotations(P, BackendType.VXLAN, IP, MAC, 1) == {
        f"{P}/backend-type": "vxlan",
        f"{P}/backend-data": '{"VNI":1,"VtepMAC":"a2:5e:11:00:3c:01"}',
        f"{P}/kube-subnet-manager": "true",
        f"{P}/public-ip": "192.168.1.12",
    }


def test_host_gw_backend_data_is_null() -> None:
    ann = node_annotations("example.com", BackendType.HOST_GW, IP, None, 1)
    assert ann["example.com/backend-data"] == "null"
    assert ann["example.com/backend-type"] == "host-gw"


def test_vxlan_without_or_with_bad_mac_is_refused() -> None:
    with pytest.raises(ValueError, match="VTEP MAC"):
        node_annotations(P, BackendType.VXLAN, IP, None, 1)
    with pytest.raises(ValueError, match="invalid VTEP MAC"):
        node_annotations(P, BackendType.VXLAN, IP, "01:00:5e:00:00:01", 1)


def test_publish_patch_contains_only_changes() -> None:
    full = publish_patch(P, BackendType.VXLAN, IP, MAC, 1)
    assert full == {"metadata": {"annotations": node_annotations(P, BackendType.VXLAN, IP, MAC, 1)}}
    current = dict(node_annotations(P, BackendType.VXLAN, IP, MAC, 1))
    assert publish_patch(P, BackendType.VXLAN, IP, MAC, 1, current=current) is None
    new_ip = ipaddress.IPv4Address("192.168.1.99")
    assert publish_patch(P, BackendType.VXLAN, new_ip, MAC, 1, current=current) == {
        "metadata": {"annotations": {f"{P}/public-ip": "192.168.1.99"}}
    }


def test_remote_vxlan_node_is_parsed() -> None:
    assert remote_node(vxlan_node(), P) == RemoteNode(
        name="node-2",
        subnet=ipaddress.IPv4Network("10.244.2.0/24"),
        public_ip=IP,
        backend=BackendType.VXLAN,
        vtep_mac=MAC,  # normalised to lowercase
    )


def test_public_ip_overwrite_wins() -> None:
    peer = remote_node(vxlan_node(public_ip_overwrite="10.0.0.5"), P)
    assert peer is not None
    assert peer.public_ip == ipaddress.IPv4Address("10.0.0.5")
    assert public_ip_of(vxlan_node(public_ip_overwrite=" "), P) == IP  # blank is ignored


def test_host_gw_node_has_no_mac() -> None:
    peer = remote_node(node(backend_type="host-gw", backend_data="null", public_ip="10.0.0.7"), P)
    assert peer is not None
    assert (peer.backend, peer.vtep_mac) == (BackendType.HOST_GW, None)


def test_first_ipv4_pod_cidr_is_the_subnet() -> None:
    peer = remote_node(
        node(cidrs=("fd00:1::/64", "10.244.7.0/24"), backend_type="host-gw", public_ip="10.0.0.7"),
        P,
    )
    assert peer is not None
    assert peer.subnet == ipaddress.IPv4Network("10.244.7.0/24")


@pytest.mark.parametrize(
    "n",
    [
        node(cidrs=(), backend_type="vxlan", public_ip="10.0.0.7"),  # no pod CIDR yet
        node(public_ip="10.0.0.7"),  # no backend type
        node(backend_type="vxlan"),  # no public IP
        node(cidrs=("fd00::/64",), backend_type="vxlan", public_ip="10.0.0.7"),  # IPv6 only
    ],
)
def test_unpublished_node_is_not_ready(n: NodeInfo) -> None:
    assert remote_node(n, P) is None


def test_vxlan_node_without_mac_yet_has_none() -> None:
    peer = remote_node(vxlan_node(backend_data='{"VNI":1}'), P)
    assert peer is not None
    assert peer.vtep_mac is None


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (
            vxlan_node(backend_data='{"VNI":1,"VtepMAC":"zz"}'),
            f'Node node-2: annotation {P}/backend-data: invalid VtepMAC "zz"',
        ),
        (
            vxlan_node(backend_data='{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}'),
            f'Node node-2: annotation {P}/backend-data: invalid VtepMAC "ff:ff:ff:ff:ff:ff"',
        ),
        (vxlan_node(backend_data="{nope"), f"Node node-2: annotation {P}/backend-data: not JSON"),
        (
            vxlan_node(backend_data="[1]"),
            f"Node node-2: annotation {P}/backend-data: expected a JSON object",
        ),
        (
            vxlan_node(public_ip="300.1.1.1"),
            f'Node node-2: annotation {P}/public-ip: invalid IPv4 address "300.1.1.1"',
        ),
        (
            vxlan_node(public_ip_overwrite="fd00::1"),
            f'Node node-2: annotation {P}/public-ip-overwrite: invalid IPv4 address "fd00::1"',
        ),
        (
            vxlan_node(backend_type="udp"),
            f'Node node-2: annotation {P}/backend-type: unknown backend type "udp"',
        ),
    ],
)
def test_bad_values_name_node_key_and_reason(n: NodeInfo, message: str) -> None:
    with pytest.raises(InvalidAnnotation) as info:
        remote_node(n, P)
    assert str(info.value).startswith(message)
    assert info.value.node == "node-2"


def test_remote_nodes_skips_self_unready_and_reports_invalid() -> None:
    nodes = [
        vxlan_node("node-3"),
        vxlan_node("node-1"),
        vxlan_node("node-2", backend_type="bogus"),
        node("node-4", cidrs=()),
        vxlan_node("me"),
    ]
    peers, errors = remote_nodes(nodes, P, "me")
    assert [p.name for p in peers] == ["node-1", "node-3"]
    assert [(e.node, e.key) for e in errors] == [("node-2", f"{P}/backend-type")]


def test_vtep_mac_is_stable_unicast_and_locally_administered() -> None:
    a = vtep_mac_for("node-a")
    assert a == vtep_mac_for("node-a")
    assert a != vtep_mac_for("node-b")
    first = int(a[:2], 16)
    assert first & 0x01 == 0  # unicast
    assert first & 0x02 == 0x02  # locally administered
    assert normalize_mac(a) == a
    macs = {vtep_mac_for(f"n{i}") for i in range(1000)}
    assert len(macs) == 1000


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("AA-BB-CC-DD-EE-FE", "aa:bb:cc:dd:ee:fe"),
        ("02:00:00:00:00:01", "02:00:00:00:00:01"),
        ("00:00:00:00:00:00", None),
        ("03:00:00:00:00:01", None),  # multicast bit
        ("02:00:00:00:00", None),
        ("", None),
    ],
)
def test_normalize_mac(text: str, want: str | None) -> None:
    assert normalize_mac(text) == want
