"""plan_overlay: what the kernel should hold for this node, its peers and the settings.

Covers the VXLAN entries per peer (FDB, permanent neighbour, onlink route),
the devices (MTU, addresses, VXLAN identity), host-gw routes and the L2
segment rule, direct routing, every skip reason, and that the output is
sorted and does not depend on the order of the input.
"""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from netagent.overlay.model import (
    BackendType,
    FdbEntry,
    LocalNode,
    NeighEntry,
    OverlayConfig,
    RemoteNode,
    RouteEntry,
    VxlanSettings,
)
from netagent.overlay.plan import BridgeDevice, VxlanDevice, plan_overlay

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
SEGMENT = (ipaddress.IPv4Network("192.168.1.0/24"),)
VX = "flannel.1"


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def iface(text: str) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(text)


def local(subnet: str = "10.244.1.0/24", mtu: int = 1500) -> LocalNode:
    return LocalNode(
        name="node-a",
        subnet=net(subnet),
        public_ip=ip("192.168.1.10"),
        underlay_device="eth0",
        underlay_mtu=mtu,
        vtep_mac="0e:00:00:00:00:0a",
    )


def peer(
    name: str,
    subnet: str,
    public_ip: str,
    mac: str | None = None,
    backend: BackendType = BackendType.VXLAN,
) -> RemoteNode:
    return RemoteNode(name, net(subnet), ip(public_ip), backend, mac)


B = peer("node-b", "10.244.2.0/24", "192.168.1.11", "0e:00:00:00:00:0b")  # on our segment
C = peer("node-c", "10.244.3.0/24", "10.0.5.3", "0e:00:00:00:00:0c")  # routed, off-segment
HB = peer("node-b", "10.244.2.0/24", "192.168.1.11", backend=BackendType.HOST_GW)
HC = peer("node-c", "10.244.3.0/24", "10.0.5.3", backend=BackendType.HOST_GW)

VXLAN = OverlayConfig(network=NETWORK)
HOST_GW = OverlayConfig(network=NETWORK, backend=BackendType.HOST_GW)
DIRECT = OverlayConfig(network=NETWORK, direct_routing=True)


def test_vxlan_peer_gets_fdb_neigh_and_onlink_route() -> None:
    plan = plan_overlay(VXLAN, local(), [B], SEGMENT)
    assert plan.fdb == (FdbEntry(VX, "0e:00:00:00:00:0b", ip("192.168.1.11")),)
    assert plan.neigh == (NeighEntry(VX, ip("10.244.2.0"), "0e:00:00:00:00:0b"),)
    assert plan.routes == (RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True),)
    assert plan.skipped == ()


def test_vxlan_peer_off_segment_still_gets_vxlan_entries() -> None:
    plan = plan_overlay(VXLAN, local(), [C], SEGMENT)
    assert plan.fdb == (FdbEntry(VX, "0e:00:00:00:00:0c", ip("10.0.5.3")),)
    assert plan.routes == (RouteEntry(net("10.244.3.0/24"), ip("10.244.3.0"), VX, onlink=True),)


def test_vxlan_devices_mtu_and_addresses() -> None:
    plan = plan_overlay(VXLAN, local(mtu=9000), [], SEGMENT)
    assert plan.vxlan == VxlanDevice(
        name=VX,
        vni=1,
        port=8472,
        local=ip("192.168.1.10"),
        underlay_device="eth0",
        mtu=8950,
        mac="0e:00:00:00:00:0a",
        address=iface("10.244.1.0/32"),
    )
    assert plan.bridge == BridgeDevice(name="cbr0", address=iface("10.244.1.1/24"), mtu=8950)
    assert plan.vxlan_name == VX
    assert plan.network == NETWORK
    assert (plan.fdb, plan.neigh, plan.routes, plan.skipped) == ((), (), (), ())


def test_host_gw_has_no_vxlan_device_and_full_mtu() -> None:
    plan = plan_overlay(HOST_GW, local(mtu=1500), [], SEGMENT)
    assert plan.vxlan is None
    assert plan.vxlan_name == VX  # still named, so a leftover device can be found and removed
    assert plan.bridge.mtu == 1500


@pytest.mark.parametrize(
    ("subnet", "bridge_address", "vxlan_address"),
    [
        ("10.244.1.0/24", "10.244.1.1/24", "10.244.1.0/32"),
        ("10.244.1.128/25", "10.244.1.129/25", "10.244.1.128/32"),
        ("10.244.16.0/20", "10.244.16.1/20", "10.244.16.0/32"),
    ],
)
def test_bridge_gets_first_ip_with_subnet_prefix_and_vxlan_gets_dot_zero(
    subnet: str, bridge_address: str, vxlan_address: str
) -> None:
    plan = plan_overlay(VXLAN, local(subnet), [], SEGMENT)
    assert plan.bridge.address == iface(bridge_address)
    assert plan.vxlan is not None and plan.vxlan.address == iface(vxlan_address)


def test_vxlan_settings_name_the_device_and_entries() -> None:
    config = OverlayConfig(network=NETWORK, vxlan=VxlanSettings(vni=42, port=4789), bridge="br9")
    plan = plan_overlay(config, local(), [B], SEGMENT)
    assert plan.vxlan is not None
    assert (plan.vxlan.name, plan.vxlan.vni, plan.vxlan.port) == ("flannel.42", 42, 4789)
    assert plan.bridge.name == "br9"
    assert [f.device for f in plan.fdb] == ["flannel.42"]
    assert [n.device for n in plan.neigh] == ["flannel.42"]
    assert [r.device for r in plan.routes] == ["flannel.42"]


def test_host_gw_peer_on_segment_gets_plain_route_via_public_ip() -> None:
    plan = plan_overlay(HOST_GW, local(), [HB], SEGMENT)
    assert plan.routes == (RouteEntry(net("10.244.2.0/24"), ip("192.168.1.11"), "eth0"),)
    assert plan.routes[0].onlink is False
    assert plan.fdb == () and plan.neigh == ()


def test_host_gw_peer_off_segment_is_skipped_with_reason() -> None:
    plan = plan_overlay(HOST_GW, local(), [HB, HC], SEGMENT)
    assert [r.destination for r in plan.routes] == [net("10.244.2.0/24")]
    assert len(plan.skipped) == 1
    assert "node-c" in plan.skipped[0]
    assert "10.0.5.3" in plan.skipped[0] and "L2 segment" in plan.skipped[0]


def test_host_gw_ignores_the_peers_vtep_mac() -> None:
    plan = plan_overlay(HOST_GW, local(), [B], SEGMENT)  # B publishes a VtepMAC: irrelevant
    assert plan.routes == (RouteEntry(net("10.244.2.0/24"), ip("192.168.1.11"), "eth0"),)
    assert plan.fdb == () and plan.neigh == ()


def test_host_gw_with_several_underlay_subnets() -> None:
    segment = (net("192.168.1.0/24"), net("10.0.5.0/24"))
    plan = plan_overlay(HOST_GW, local(), [HB, HC], segment)
    assert [r.gateway for r in plan.routes] == [ip("192.168.1.11"), ip("10.0.5.3")]
    assert plan.skipped == ()


def test_direct_routing_mixes_host_gw_on_segment_and_vxlan_off_segment() -> None:
    plan = plan_overlay(DIRECT, local(), [B, C], SEGMENT)
    assert plan.routes == (
        RouteEntry(net("10.244.2.0/24"), ip("192.168.1.11"), "eth0"),
        RouteEntry(net("10.244.3.0/24"), ip("10.244.3.0"), VX, onlink=True),
    )
    assert plan.fdb == (FdbEntry(VX, "0e:00:00:00:00:0c", ip("10.0.5.3")),)
    assert plan.neigh == (NeighEntry(VX, ip("10.244.3.0"), "0e:00:00:00:00:0c"),)
    assert plan.vxlan is not None  # still needed for the off-segment peer
    assert plan.skipped == ()


def test_direct_routing_does_not_need_a_vtep_mac_on_segment() -> None:
    no_mac = peer("node-b", "10.244.2.0/24", "192.168.1.11", None)
    plan = plan_overlay(DIRECT, local(), [no_mac], SEGMENT)
    assert plan.routes == (RouteEntry(net("10.244.2.0/24"), ip("192.168.1.11"), "eth0"),)
    assert plan.skipped == ()


def test_without_direct_routing_an_on_segment_peer_uses_vxlan() -> None:
    plan = plan_overlay(VXLAN, local(), [B], SEGMENT)
    assert plan.routes[0].device == VX and plan.routes[0].onlink


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (peer("node-x", "10.244.9.0/24", "192.168.1.19", None), ["no VtepMAC"]),
        (
            peer("node-x", "10.99.9.0/24", "192.168.1.19", "0e:00:00:00:00:19"),
            ["10.99.9.0/24", "outside", "10.244.0.0/16"],
        ),
        (
            peer("node-x", "10.244.1.0/25", "192.168.1.19", "0e:00:00:00:00:19"),
            ["10.244.1.0/25", "overlaps", "10.244.1.0/24"],
        ),
        (
            peer("node-x", "10.244.0.0/16", "192.168.1.19", "0e:00:00:00:00:19"),
            ["10.244.0.0/16", "overlaps"],
        ),
        (
            peer("node-x", "10.244.9.0/24", "192.168.1.10", "0e:00:00:00:00:19"),
            ["192.168.1.10", "this node"],
        ),
    ],
    ids=["no-vtep-mac", "outside-network", "overlaps-ours", "contains-ours", "our-public-ip"],
)
def test_skipped_peer_gets_a_reason_naming_it_and_no_entries(
    bad: RemoteNode, words: list[str]
) -> None:
    plan = plan_overlay(VXLAN, local(), [B, bad], SEGMENT)
    assert len(plan.skipped) == 1
    reason = plan.skipped[0]
    assert reason.startswith("Node node-x:")
    for word in words:
        assert word in reason
    # B is still programmed, node-x contributes nothing.
    assert [r.destination for r in plan.routes] == [net("10.244.2.0/24")]
    assert len(plan.fdb) == 1 and len(plan.neigh) == 1


def test_overlapping_peers_first_by_name_wins_and_the_other_is_skipped() -> None:
    z = peer("node-z", "10.244.2.0/24", "192.168.1.26", "0e:00:00:00:00:26")
    for order in ([B, z], [z, B]):
        plan = plan_overlay(VXLAN, local(), order, SEGMENT)
        assert plan.fdb == (FdbEntry(VX, "0e:00:00:00:00:0b", ip("192.168.1.11")),)
        assert plan.skipped == ("Node node-z: subnet 10.244.2.0/24 overlaps 10.244.2.0/24",)


def test_a_skipped_peer_does_not_block_a_later_one_with_the_same_subnet() -> None:
    # node-b has no VtepMAC yet, so its subnet is not taken: node-c's same subnet is programmed.
    b_no_mac = peer("node-b", "10.244.2.0/24", "192.168.1.11", None)
    c_same = peer("node-c", "10.244.2.0/24", "192.168.1.12", "0e:00:00:00:00:0c")
    plan = plan_overlay(VXLAN, local(), [b_no_mac, c_same], SEGMENT)
    assert [f.remote_ip for f in plan.fdb] == [ip("192.168.1.12")]
    assert [s.split(":")[0] for s in plan.skipped] == ["Node node-b"]


def test_self_is_never_programmed() -> None:
    me = peer("node-a", "10.244.1.0/24", "192.168.1.10", "0e:00:00:00:00:0a")
    plan = plan_overlay(VXLAN, local(), [me, B], SEGMENT)
    assert [r.destination for r in plan.routes] == [net("10.244.2.0/24")]
    assert all(f.remote_ip != ip("192.168.1.10") for f in plan.fdb)
    # Our own Node is in every Node list, so it is dropped silently (no log noise each sync);
    # anything else carrying our subnet or IP is reported (see the parametrized test above).
    assert plan.skipped == ()


def test_output_is_sorted_and_independent_of_input_order() -> None:
    peers = [
        peer("node-d", "10.244.4.0/24", "192.168.1.14", "0e:00:00:00:00:0d"),
        C,
        peer("node-e", "10.244.0.0/24", "192.168.1.15", "0e:00:00:00:00:01"),
        B,
        peer("node-f", "10.244.6.0/24", "10.0.5.16", None),  # off-segment, no VtepMAC
        peer("node-g", "10.99.0.0/24", "192.168.1.17", "0e:00:00:00:00:0e"),
    ]
    plans = {plan_overlay(DIRECT, local(), list(p), SEGMENT) for p in itertools.permutations(peers)}
    assert len(plans) == 1
    (plan,) = plans
    assert list(plan.fdb) == sorted(plan.fdb)
    assert list(plan.neigh) == sorted(plan.neigh)
    assert list(plan.routes) == sorted(plan.routes)
    assert [r.destination for r in plan.routes] == [
        net("10.244.0.0/24"),
        net("10.244.2.0/24"),
        net("10.244.3.0/24"),
        net("10.244.4.0/24"),
    ]
    assert [s.split(":")[0] for s in plan.skipped] == ["Node node-f", "Node node-g"]


def test_plan_accepts_generators() -> None:
    plan = plan_overlay(VXLAN, local(), (p for p in [B, C]), iter(SEGMENT))
    assert len(plan.routes) == 2
