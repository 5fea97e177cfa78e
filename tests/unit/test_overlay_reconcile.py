"""OverlayReconciler and remove_all against FakeOverlayKernel (no root needed).

Covers building from nothing, idempotent passes, departed peers, drift
repair (entries deleted by hand, the VXLAN device deleted, misconfigured or
set down, MTU changed), changed peer MACs, ownership (foreign routes, links,
addresses and a pre-existing cbr0 are left alone, by reconcile and by
remove_all), per-object failures (recorded with the object, the rest still
programmed, repaired on the next pass), the add/remove ordering, and
switching between the VXLAN and host-gw backends.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
from collections.abc import Sequence

import pytest

from netagent.overlay.kernel_fake import PROTO_KERNEL, Call, FakeOverlayKernel, KernelRoute
from netagent.overlay.model import (
    ROUTE_PROTOCOL,
    BackendType,
    FdbEntry,
    LocalNode,
    NeighEntry,
    OverlayConfig,
    RemoteNode,
    RouteEntry,
    VxlanSettings,
)
from netagent.overlay.plan import DesiredOverlay, plan_overlay
from netagent.overlay.reconcile import OverlayReconciler, ReconcileReport, remove_all

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
SEGMENT = (ipaddress.IPv4Network("192.168.1.0/24"),)
VX = "flannel.1"
LOCAL_MAC = "0e:00:00:00:00:0a"


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def iface(text: str) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(text)


LOCAL = LocalNode(
    name="node-a",
    subnet=net("10.244.1.0/24"),
    public_ip=ip("192.168.1.10"),
    underlay_device="eth0",
    underlay_mtu=1500,
    vtep_mac=LOCAL_MAC,
)


def peer(name: str, n: int, public_ip: str, mac: str | None = None) -> RemoteNode:
    return RemoteNode(name, net(f"10.244.{n}.0/24"), ip(public_ip), BackendType.VXLAN, mac)


B = peer("node-b", 2, "192.168.1.11", "0e:00:00:00:00:0b")
C = peer("node-c", 3, "10.0.5.3", "0e:00:00:00:00:0c")
D = peer("node-d", 4, "192.168.1.14", "0e:00:00:00:00:0d")

VXLAN = OverlayConfig(network=NETWORK)
HOST_GW = OverlayConfig(network=NETWORK, backend=BackendType.HOST_GW)


def plan(peers: Sequence[RemoteNode] = (B, C), config: OverlayConfig = VXLAN) -> DesiredOverlay:
    return plan_overlay(config, LOCAL, peers, SEGMENT)


def vx_route(n: int) -> RouteEntry:
    return RouteEntry(net(f"10.244.{n}.0/24"), ip(f"10.244.{n}.0"), VX, onlink=True)


def new_kernel() -> FakeOverlayKernel:
    k = FakeOverlayKernel()
    k.add_foreign_link("eth0", mtu=1500, addresses=(iface("192.168.1.10/24"),))
    return k


def built(desired: DesiredOverlay | None = None) -> tuple[FakeOverlayKernel, OverlayReconciler]:
    """A kernel already reconciled to ``desired`` (default: VXLAN with B and C); calls cleared."""
    k = new_kernel()
    r = OverlayReconciler(k)
    report = r.reconcile(desired or plan())
    assert report.failures == []
    k.calls.clear()
    return k, r


def assert_matches(k: FakeOverlayKernel, desired: DesiredOverlay) -> None:
    """The kernel holds exactly what the plan asks for."""
    assert k.routes() == set(desired.routes)
    assert k.fdb(desired.vxlan_name) == set(desired.fdb)
    assert k.neighbours(desired.vxlan_name) == set(desired.neigh)
    bridge = k.link(desired.bridge.name)
    assert bridge is not None and bridge.kind == "bridge" and bridge.up
    assert bridge.mtu == desired.bridge.mtu
    assert desired.bridge.address in k.addresses(desired.bridge.name)
    if desired.vxlan is not None:
        vx = k.link(desired.vxlan.name)
        assert vx is not None and vx.kind == "vxlan" and vx.up
        assert (vx.vni, vx.port, vx.local, vx.learning) == (
            desired.vxlan.vni,
            desired.vxlan.port,
            desired.vxlan.local,
            False,
        )
        assert vx.mtu == desired.vxlan.mtu and vx.mac == desired.vxlan.mac
        assert vx.tx_checksum is desired.vxlan.tx_checksum
        assert vx.underlay_index == k.link_index(desired.vxlan.underlay_device)
        assert k.addresses(desired.vxlan.name) == {desired.vxlan.address}


def assert_noop(r: OverlayReconciler, k: FakeOverlayKernel, desired: DesiredOverlay) -> None:
    k.calls.clear()
    report = r.reconcile(desired)
    assert not report.changed, report.summary()
    assert report.failures == []
    assert k.calls == []


# ------------------------------------------------------------------------- building


def test_from_empty_builds_everything() -> None:
    k = new_kernel()
    desired = plan()
    report = OverlayReconciler(k).reconcile(desired)
    assert report.failures == []
    assert_matches(k, desired)
    bridge, vx = k.link("cbr0"), k.link(VX)
    assert bridge is not None and bridge.owned and bridge.mtu == 1450
    assert vx is not None and vx.owned and vx.mtu == 1450 and vx.mac == LOCAL_MAC
    assert k.addresses("cbr0") == {iface("10.244.1.1/24")}
    assert k.addresses(VX) == {iface("10.244.1.0/32")}
    assert k.routes() == {vx_route(2), vx_route(3)}
    assert report.counts == {
        "created bridge": 1,
        "created vxlan": 1,
        "added address": 2,
        "added fdb": 2,
        "added neigh": 2,
        "added route": 2,
    }
    assert report.summary() == (
        "added 2 address, added 2 fdb, added 2 neigh, added 2 route, "
        "created 1 bridge, created 1 vxlan"
    )


def test_second_pass_is_a_noop() -> None:
    k, r = built()
    report = r.reconcile(plan())
    assert report.changed is False
    assert report.summary() == "no changes"
    assert k.calls == []


def test_underlay_device_is_never_written() -> None:
    k = new_kernel()
    OverlayReconciler(k).reconcile(plan())
    remove_all(k, vxlan_name=VX, bridge="cbr0")
    assert k.calls  # something was written, just never to eth0
    assert all(c.subject != "eth0" for c in k.calls)
    eth0 = k.link("eth0")
    assert eth0 is not None and not eth0.owned and eth0.mtu == 1500
    assert k.addresses("eth0") == {iface("192.168.1.10/24")}


# ------------------------------------------------------------------------- peers


def test_departed_peer_entries_are_removed() -> None:
    k, r = built()
    report = r.reconcile(plan([B]))
    assert report.failures == []
    assert k.routes() == {vx_route(2)}
    assert k.fdb(VX) == {FdbEntry(VX, "0e:00:00:00:00:0b", ip("192.168.1.11"))}
    assert k.neighbours(VX) == {NeighEntry(VX, ip("10.244.2.0"), "0e:00:00:00:00:0b")}
    assert report.counts == {"removed route": 1, "removed neigh": 1, "removed fdb": 1}
    assert_noop(r, k, plan([B]))


def test_all_peers_gone_leaves_devices_but_no_entries() -> None:
    k, r = built()
    r.reconcile(plan([]))
    assert k.routes() == set() and k.fdb(VX) == set() and k.neighbours(VX) == set()
    assert k.link(VX) is not None and k.link("cbr0") is not None


def test_new_peer_is_added_without_touching_others() -> None:
    k, r = built()
    report = r.reconcile(plan([B, C, D]))
    assert report.counts == {"added fdb": 1, "added neigh": 1, "added route": 1}
    assert {c.subject for c in k.calls} == {
        FdbEntry(VX, "0e:00:00:00:00:0d", ip("192.168.1.14")),
        NeighEntry(VX, ip("10.244.4.0"), "0e:00:00:00:00:0d"),
        vx_route(4),
    }
    assert_matches(k, plan([B, C, D]))


def test_changed_peer_mac_updates_fdb_and_neigh_in_place() -> None:
    k, r = built()
    b2 = peer("node-b", 2, "192.168.1.11", "0e:00:00:00:00:bb")
    report = r.reconcile(plan([b2, C]))
    assert report.failures == []
    assert_matches(k, plan([b2, C]))
    assert FdbEntry(VX, "0e:00:00:00:00:0b", ip("192.168.1.11")) not in k.fdb(VX)
    assert NeighEntry(VX, ip("10.244.2.0"), "0e:00:00:00:00:bb") in k.neighbours(VX)
    # The route did not change, so it was not touched (no traffic disruption).
    assert "replace_route" not in k.call_names() and "delete_route" not in k.call_names()
    assert report.counts == {"added fdb": 1, "added neigh": 1, "removed fdb": 1}
    # New FDB entry first, the old one removed last.
    assert k.call_names() == ["add_fdb", "replace_neigh", "delete_fdb"]


def test_changed_peer_public_ip_updates_fdb() -> None:
    k, r = built()
    c2 = peer("node-c", 3, "10.0.6.3", "0e:00:00:00:00:0c")
    r.reconcile(plan([B, c2]))
    assert_matches(k, plan([B, c2]))
    assert k.all_fdb(VX) == {
        ("0e:00:00:00:00:0b", ip("192.168.1.11")): True,
        ("0e:00:00:00:00:0c", ip("10.0.6.3")): True,
    }


def test_changed_peer_subnet_moves_route_and_neigh() -> None:
    k, r = built()
    c2 = peer("node-c", 9, "10.0.5.3", "0e:00:00:00:00:0c")
    r.reconcile(plan([B, c2]))
    assert_matches(k, plan([B, c2]))
    assert k.call_names() == ["delete_route", "replace_neigh", "replace_route", "delete_neigh"]


# ------------------------------------------------------------------------- drift repair


def test_route_fdb_and_neigh_deleted_by_hand_are_restored() -> None:
    k, r = built()
    fdb = FdbEntry(VX, "0e:00:00:00:00:0c", ip("10.0.5.3"))
    neigh = NeighEntry(VX, ip("10.244.3.0"), "0e:00:00:00:00:0c")
    k.delete_route(vx_route(3))
    k.delete_fdb(fdb)
    k.delete_neigh(neigh)
    k.calls.clear()
    report = r.reconcile(plan())
    assert report.counts == {"added fdb": 1, "added neigh": 1, "added route": 1}
    assert k.calls == [
        Call("add_fdb", fdb),
        Call("replace_neigh", neigh),
        Call("replace_route", vx_route(3)),
    ]
    assert_matches(k, plan())


def test_route_changed_by_hand_is_replaced() -> None:
    k, r = built()
    wrong = RouteEntry(net("10.244.3.0/24"), ip("192.168.1.99"), "eth0")
    k.replace_route(wrong)
    k.calls.clear()
    report = r.reconcile(plan())
    assert report.counts == {"added route": 1}
    assert k.calls == [Call("replace_route", vx_route(3))]
    assert k.routes() == {vx_route(2), vx_route(3)}


def test_neigh_with_wrong_mac_is_replaced() -> None:
    k, r = built()
    k.replace_neigh(NeighEntry(VX, ip("10.244.2.0"), "0e:00:00:00:00:ff"))
    k.calls.clear()
    r.reconcile(plan())
    assert k.calls == [Call("replace_neigh", NeighEntry(VX, ip("10.244.2.0"), "0e:00:00:00:00:0b"))]
    assert_matches(k, plan())


def test_unknown_permanent_entries_on_the_vxlan_device_are_removed() -> None:
    k, r = built()
    junk_fdb = FdbEntry(VX, "0e:00:00:00:00:99", ip("10.9.9.9"))
    junk_neigh = NeighEntry(VX, ip("10.244.99.0"), "0e:00:00:00:00:99")
    k.add_foreign_fdb(junk_fdb, permanent=True)
    k.add_foreign_neigh(junk_neigh, permanent=True)
    r.reconcile(plan())
    assert k.calls == [Call("delete_neigh", junk_neigh), Call("delete_fdb", junk_fdb)]
    assert_matches(k, plan())


def test_learned_entries_on_the_vxlan_device_are_left_alone() -> None:
    k, r = built()
    learned = FdbEntry(VX, "0e:00:00:00:00:99", ip("10.9.9.9"))
    dynamic = NeighEntry(VX, ip("10.244.99.0"), "0e:00:00:00:00:99")
    k.add_foreign_fdb(learned)
    k.add_foreign_neigh(dynamic)
    assert_noop(r, k, plan())
    assert ("0e:00:00:00:00:99", ip("10.9.9.9")) in k.all_fdb(VX)
    assert ip("10.244.99.0") in k.all_neighbours(VX)


def test_deleted_vxlan_device_is_recreated_with_its_entries() -> None:
    k, r = built()
    k.delete_link(VX)
    assert k.routes() == set()
    k.calls.clear()
    report = r.reconcile(plan())
    assert report.failures == []
    assert report.counts["created vxlan"] == 1
    assert report.counts["added route"] == 2 and report.counts["added fdb"] == 2
    assert report.counts["added neigh"] == 2 and report.counts["added address"] == 1
    assert_matches(k, plan())
    assert_noop(r, k, plan())


@pytest.mark.parametrize(
    "change",
    [
        {"vni": 2},
        {"port": 4789},
        {"local": ipaddress.IPv4Address("192.168.1.99")},
        {"learning": True},
    ],
    ids=["vni", "port", "local", "learning"],
)
def test_misconfigured_vxlan_is_deleted_and_recreated(change: dict[str, object]) -> None:
    k, r = built()
    old_index = k.link_index(VX)
    k.tamper_link(VX, **change)  # type: ignore[arg-type]
    report = r.reconcile(plan())
    assert report.failures == []
    assert k.call_names()[:2] == ["delete_link", "create_vxlan"]
    assert report.counts["removed vxlan"] == 1 and report.counts["created vxlan"] == 1
    assert k.link_index(VX) != old_index
    assert_matches(k, plan())
    assert_noop(r, k, plan())


def test_vxlan_bound_to_another_underlay_is_recreated() -> None:
    k = new_kernel()
    k.add_foreign_link("eth1")
    k.add_foreign_link(
        VX,
        "vxlan",
        owned=True,
        vni=1,
        port=8472,
        local=ip("192.168.1.10"),
        learning=False,
        underlay="eth1",
        mac=LOCAL_MAC,
        mtu=1450,
    )
    r = OverlayReconciler(k)
    report = r.reconcile(plan())
    assert report.counts["removed vxlan"] == 1 and report.counts["created vxlan"] == 1
    assert_matches(k, plan())


def test_vxlan_mtu_mac_and_down_are_fixed_in_place() -> None:
    k, r = built()
    index = k.link_index(VX)
    k.tamper_link(VX, mtu=1400, mac="0e:00:00:00:00:ee", up=False)  # down flushes its routes
    assert k.routes() == set()
    report = r.reconcile(plan())
    assert report.failures == []
    assert k.link_index(VX) == index  # not recreated
    assert k.calls[0] == Call("set_link", VX)
    assert report.counts == {"repaired vxlan": 1, "added route": 2}
    assert_matches(k, plan())


def test_vxlan_set_down_by_hand_is_brought_up_and_its_routes_restored() -> None:
    k, r = built()
    k.set_link_down(VX)
    report = r.reconcile(plan())
    assert report.failures == []
    assert k.calls[0] == Call("set_link", VX)
    assert report.counts == {"repaired vxlan": 1, "added route": 2}
    assert_matches(k, plan())


def test_bridge_set_down_by_hand_is_brought_up() -> None:
    k, r = built()
    k.set_link_down("cbr0")
    report = r.reconcile(plan())
    assert report.counts == {"repaired bridge": 1}
    assert k.link("cbr0").up  # type: ignore[union-attr]


def test_vtep_mac_compared_case_insensitively() -> None:
    upper = dataclasses.replace(LOCAL, vtep_mac=LOCAL_MAC.upper())
    desired = plan_overlay(VXLAN, upper, [B], SEGMENT)
    k = new_kernel()
    r = OverlayReconciler(k)
    r.reconcile(desired)
    assert k.link(VX).mac == LOCAL_MAC  # type: ignore[union-attr]
    assert_noop(r, k, desired)


def test_bridge_mtu_and_down_are_repaired() -> None:
    k, r = built()
    k.tamper_link("cbr0", mtu=1500, up=False)
    report = r.reconcile(plan())
    assert report.counts == {"repaired bridge": 1}
    bridge = k.link("cbr0")
    assert bridge is not None and bridge.mtu == 1450 and bridge.up


# ------------------------------------------------------------------------- ownership


def test_foreign_routes_and_links_are_never_touched() -> None:
    k = new_kernel()
    k.add_foreign_link("docker0", "bridge", addresses=(iface("172.17.0.1/16"),))
    foreign = [
        k.add_foreign_route(net("10.99.0.0/16"), ip("192.168.1.1"), "eth0"),
        k.add_foreign_route(net("192.168.1.0/24"), None, "eth0", proto=PROTO_KERNEL),
        k.add_foreign_route(net("172.17.0.0/16"), None, "docker0", proto=PROTO_KERNEL),
        # netagent's protocol but another table: not ours either.
        k.add_foreign_route(
            net("10.244.5.0/24"), ip("192.168.1.1"), "eth0", proto=ROUTE_PROTOCOL, table=100
        ),
        # A static route inside the cluster network that netagent does not plan.
        k.add_foreign_route(net("10.244.200.0/24"), ip("192.168.1.1"), "eth0"),
    ]
    docker0 = k.link("docker0")
    r = OverlayReconciler(k)
    assert r.reconcile(plan()).failures == []
    assert_noop(r, k, plan())
    report = remove_all(k, vxlan_name=VX, bridge="cbr0")
    assert report.failures == []
    assert [x for x in k.all_routes() if x.proto != ROUTE_PROTOCOL or x.table != 254] == sorted(
        foreign, key=lambda x: (x.table, x.destination, x.metric, x.proto)
    )
    assert k.link("docker0") == docker0
    assert k.addresses("docker0") == {iface("172.17.0.1/16")}
    assert all(c.subject != "docker0" for c in k.calls)


def test_pre_existing_unowned_bridge_is_used_and_left_by_remove_all() -> None:
    k = new_kernel()
    k.add_foreign_link("cbr0", "bridge", mtu=1450, addresses=(iface("172.30.0.1/24"),))
    r = OverlayReconciler(k)
    report = r.reconcile(plan())
    assert report.failures == []
    assert "create_bridge" not in k.call_names()
    assert k.addresses("cbr0") == {iface("10.244.1.1/24"), iface("172.30.0.1/24")}
    cbr0 = k.link("cbr0")
    assert cbr0 is not None and not cbr0.owned
    report = remove_all(k, vxlan_name=VX, bridge="cbr0")
    assert report.counts == {"removed route": 2, "removed link": 1}
    assert k.link("cbr0") is not None and k.link(VX) is None
    assert "delete_link" in k.call_names() and Call("delete_link", "cbr0") not in k.calls


def test_non_bridge_cbr0_is_reported_and_the_rest_still_programmed() -> None:
    k = new_kernel()
    k.add_foreign_link("cbr0", "dummy")
    report = OverlayReconciler(k).reconcile(plan())
    assert report.failures == ["cbr0 exists and is a dummy link"]
    assert "create_bridge" not in k.call_names() and k.addresses("cbr0") == set()
    assert k.routes() == {vx_route(2), vx_route(3)}


def test_non_vxlan_link_named_like_the_vxlan_device_is_reported_not_deleted() -> None:
    k = new_kernel()
    k.add_foreign_link(VX, "dummy")
    report = OverlayReconciler(k).reconcile(plan())
    assert report.failures == [
        f"{VX} exists, was not created by netagent and differs (it is a dummy link, not vxlan);"
        " delete it so netagent can create its own"
    ]
    assert k.link(VX) is not None and k.link(VX).kind == "dummy"  # type: ignore[union-attr]
    assert "delete_link" not in k.call_names()
    assert k.routes() == set() and k.fdb(VX) == set()


def add_foreign_flannel_1(k: FakeOverlayKernel, *, mtu: int = 1450) -> None:
    """A flannel.1 someone else made, with the settings the default plan wants (except MTU)."""
    k.add_foreign_link(
        VX,
        "vxlan",
        vni=1,
        port=8472,
        local=ip("192.168.1.10"),
        learning=False,
        underlay="eth0",
        mac=LOCAL_MAC,
        mtu=mtu,
    )


def test_unowned_matching_vxlan_device_is_used_and_left_by_remove_all() -> None:
    k = new_kernel()
    add_foreign_flannel_1(k)
    r = OverlayReconciler(k)
    report = r.reconcile(plan())
    assert "created vxlan" not in report.counts and "removed vxlan" not in report.counts
    assert_matches(k, plan())
    remove_all(k, vxlan_name=VX, bridge="cbr0")
    assert k.link(VX) is not None and k.link("cbr0") is None


def test_unowned_misconfigured_vxlan_device_is_not_deleted() -> None:
    k = new_kernel()
    k.add_foreign_link(
        VX, "vxlan", vni=7, port=4789, local=ip("192.168.1.10"), learning=True, underlay="eth0"
    )
    report = OverlayReconciler(k).reconcile(plan())
    assert "delete_link" not in k.call_names() and "create_vxlan" not in k.call_names()
    (failure,) = [f for f in report.failures if VX in f]
    assert "not created by netagent" in failure and "vni 7 != 1" in failure
    # Nothing is attached to a device netagent cannot use: no FDB/neigh, no routes via it.
    assert not k.fdb(VX) and not k.neighbours(VX)
    assert all(r.device != VX for r in k.routes())


def test_unowned_vxlan_device_with_other_mtu_is_not_reconfigured() -> None:
    k = new_kernel()
    add_foreign_flannel_1(k, mtu=1400)
    report = OverlayReconciler(k).reconcile(plan())
    assert "set_link" not in k.call_names() and "delete_link" not in k.call_names()
    link = k.link(VX)
    assert link is not None and link.mtu == 1400
    assert any("mtu 1400 != 1450" in f for f in report.failures)


def test_stale_cluster_address_on_bridge_removed_foreign_address_kept() -> None:
    k, r = built()
    k.add_address("cbr0", iface("10.244.7.1/24"))  # an old pod CIDR
    k.add_address("cbr0", iface("192.168.50.1/24"))  # someone else's
    k.add_address(VX, iface("10.244.7.0/32"))
    k.calls.clear()
    report = r.reconcile(plan())
    assert report.counts == {"removed address": 2}
    assert k.addresses("cbr0") == {iface("10.244.1.1/24"), iface("192.168.50.1/24")}
    assert k.addresses(VX) == {iface("10.244.1.0/32")}
    assert_noop(r, k, plan())


def test_remove_all_removes_owned_devices_and_proto_78_routes_only() -> None:
    k, _ = built()
    k.add_foreign_route(net("10.99.0.0/16"), ip("192.168.1.1"), "eth0")
    k.add_foreign_route(net("10.98.0.0/16"), ip("192.168.1.1"), "eth0", proto=ROUTE_PROTOCOL)
    report = remove_all(k, vxlan_name=VX, bridge="cbr0")
    assert report.failures == []
    assert report.counts == {"removed route": 3, "removed link": 2}
    assert k.link(VX) is None and k.link("cbr0") is None and k.link("eth0") is not None
    assert k.routes() == set()
    assert k.all_routes() == [KernelRoute(net("10.99.0.0/16"), ip("192.168.1.1"), "eth0", 4)]
    # Routes first, then the VXLAN device, then the bridge.
    assert k.call_names() == ["delete_route"] * 3 + ["delete_link", "delete_link"]
    assert k.calls[-2:] == [Call("delete_link", VX), Call("delete_link", "cbr0")]
    assert remove_all(k, vxlan_name=VX, bridge="cbr0").changed is False


def test_remove_all_records_failures_and_goes_on() -> None:
    k, _ = built()
    k.fail(
        "delete_route",
        OSError(errno.EIO, "boom"),
        when=lambda e: e.destination == net("10.244.2.0/24"),
    )
    k.fail("delete_link", OSError(errno.EBUSY, "busy"), when=lambda name: name == VX)
    report = remove_all(k, vxlan_name=VX, bridge="cbr0")
    assert len(report.failures) == 2
    assert "10.244.2.0/24" in report.failures[0] and "boom" in report.failures[0]
    assert VX in report.failures[1] and "busy" in report.failures[1]
    assert k.link("cbr0") is None and k.link(VX) is not None
    assert report.counts == {"removed route": 1, "removed link": 1}


# ------------------------------------------------------------------------- failures


def test_one_failing_route_is_reported_and_the_rest_programmed_then_repaired() -> None:
    k = new_kernel()
    r = OverlayReconciler(k)
    k.fail("replace_route", OSError(errno.EIO, "injected"), when=lambda e: e == vx_route(3))
    report = r.reconcile(plan([B, C, D]))
    assert len(report.failures) == 1
    assert "10.244.3.0/24" in report.failures[0] and "injected" in report.failures[0]
    assert report.failures[0].startswith("added route")
    assert k.routes() == {vx_route(2), vx_route(4)}
    assert len(k.fdb(VX)) == 3 and len(k.neighbours(VX)) == 3  # C's FDB/neigh still programmed
    assert report.counts["added route"] == 2
    k.calls.clear()
    report = r.reconcile(plan([B, C, D]))
    assert report.failures == []
    assert k.calls == [Call("replace_route", vx_route(3))]
    assert_matches(k, plan([B, C, D]))


def test_failing_fdb_add_does_not_stop_the_others() -> None:
    k = new_kernel()
    r = OverlayReconciler(k)
    k.fail("add_fdb", OSError(errno.ENOMEM, "nomem"), when=lambda e: e.mac == "0e:00:00:00:00:0b")
    report = r.reconcile(plan())
    assert report.failures == ["added fdb 0e:00:00:00:00:0b: [Errno 12] nomem"]
    assert k.fdb(VX) == {FdbEntry(VX, "0e:00:00:00:00:0c", ip("10.0.5.3"))}
    assert k.routes() == {vx_route(2), vx_route(3)}
    r.reconcile(plan())
    assert_matches(k, plan())


def test_failed_vxlan_create_skips_its_entries_and_is_retried() -> None:
    k = new_kernel()
    r = OverlayReconciler(k)
    k.fail("create_vxlan", OSError(errno.EPERM, "denied"))
    report = r.reconcile(plan())
    assert len(report.failures) == 1 and VX in report.failures[0]
    # The bridge is still built; nothing is attempted on the missing device.
    assert k.link("cbr0") is not None
    assert not {"add_fdb", "replace_neigh", "replace_route"} & set(k.call_names())
    report = r.reconcile(plan())
    assert report.failures == []
    assert_matches(k, plan())


def test_missing_underlay_is_a_failure_not_an_exception() -> None:
    k = FakeOverlayKernel()
    report = OverlayReconciler(k).reconcile(plan())
    assert any("underlay device eth0 does not exist" in f for f in report.failures)
    assert k.link("cbr0") is not None and k.link(VX) is None


def test_failed_bridge_create_is_reported_with_the_bridge_named() -> None:
    k = new_kernel()
    k.fail("create_bridge", OSError(errno.EPERM, "denied"))
    report = OverlayReconciler(k).reconcile(plan())
    assert report.failures[0] == "created bridge cbr0: [Errno 1] denied"
    assert k.routes() == {vx_route(2), vx_route(3)}  # peers still reachable


# ------------------------------------------------------------------------- ordering


def test_new_peer_fdb_before_neigh_before_route() -> None:
    k = new_kernel()
    OverlayReconciler(k).reconcile(plan([C]))
    names = k.call_names()
    assert names.index("create_bridge") < names.index("create_vxlan") < names.index("add_fdb")
    assert names.index("add_fdb") < names.index("replace_neigh") < names.index("replace_route")


def test_stale_route_removed_before_stale_neigh_and_fdb() -> None:
    k, r = built()
    r.reconcile(plan([B]))
    assert k.calls == [
        Call("delete_route", vx_route(3)),
        Call("delete_neigh", NeighEntry(VX, ip("10.244.3.0"), "0e:00:00:00:00:0c")),
        Call("delete_fdb", FdbEntry(VX, "0e:00:00:00:00:0c", ip("10.0.5.3"))),
    ]


def test_departing_route_goes_before_anything_for_a_joining_peer() -> None:
    k, r = built()
    r.reconcile(plan([B, D]))  # C leaves, D joins
    assert k.call_names() == [
        "delete_route",
        "add_fdb",
        "replace_neigh",
        "replace_route",
        "delete_neigh",
        "delete_fdb",
    ]
    assert k.calls[0].subject == vx_route(3)
    assert k.calls[3].subject == vx_route(4)


# ------------------------------------------------------------------------- backends


def test_host_gw_creates_no_vxlan_and_routes_via_the_underlay() -> None:
    k = new_kernel()
    r = OverlayReconciler(k)
    desired = plan([B, C], HOST_GW)
    report = r.reconcile(desired)
    assert report.failures == []
    assert k.link(VX) is None and "create_vxlan" not in k.call_names()
    assert k.routes() == {RouteEntry(net("10.244.2.0/24"), ip("192.168.1.11"), "eth0")}  # C skipped
    bridge = k.link("cbr0")
    assert bridge is not None and bridge.mtu == 1500
    assert_noop(r, k, desired)


def test_switch_from_vxlan_to_host_gw_removes_owned_vxlan_device() -> None:
    k, r = built()
    desired = plan([B, C], HOST_GW)
    report = r.reconcile(desired)
    assert report.failures == []
    assert report.counts["removed vxlan"] == 1
    assert k.link(VX) is None
    assert k.routes() == {RouteEntry(net("10.244.2.0/24"), ip("192.168.1.11"), "eth0")}
    assert k.link("cbr0").mtu == 1500  # type: ignore[union-attr]
    assert_noop(r, k, desired)


def test_host_gw_leaves_an_unowned_vxlan_device() -> None:
    k = new_kernel()
    k.add_foreign_link(VX, "vxlan", vni=1, port=8472, local=ip("192.168.1.10"), underlay="eth0")
    r = OverlayReconciler(k)
    assert r.reconcile(plan([B], HOST_GW)).failures == []
    assert k.link(VX) is not None
    assert "delete_link" not in k.call_names()


def test_switch_from_host_gw_to_vxlan_replaces_routes() -> None:
    k, r = built(plan([B], HOST_GW))
    report = r.reconcile(plan([B]))
    assert report.failures == []
    assert k.routes() == {vx_route(2)}
    assert "delete_route" not in k.call_names()  # replaced in place, no gap
    assert_matches(k, plan([B]))


def test_direct_routing_programs_both_kinds() -> None:
    k = new_kernel()
    desired = plan([B, C], OverlayConfig(network=NETWORK, direct_routing=True))
    r = OverlayReconciler(k)
    assert r.reconcile(desired).failures == []
    assert k.routes() == {RouteEntry(net("10.244.2.0/24"), ip("192.168.1.11"), "eth0"), vx_route(3)}
    assert k.fdb(VX) == {FdbEntry(VX, "0e:00:00:00:00:0c", ip("10.0.5.3"))}
    assert_noop(r, k, desired)


def test_report_summary_includes_failures() -> None:
    report = ReconcileReport()
    report.note("added", "route")
    report.note("added", "route")
    report.failures.append("x")
    assert report.changed
    assert report.summary() == "added 2 route, 1 failed"


# ------------------------------------------------------------------------- tx checksum offload

NO_CSUM = OverlayConfig(network=NETWORK, vxlan=VxlanSettings(tx_checksum=False))


def test_checksum_offload_is_turned_off_right_after_creation_when_asked() -> None:
    k = new_kernel()
    r = OverlayReconciler(k)
    desired = plan(config=NO_CSUM)
    report = r.reconcile(desired)
    assert report.failures == []
    assert report.counts["cleared tx-checksum"] == 1
    names = k.call_names()
    # Off before any route can send traffic through the device.
    assert names.index("create_vxlan") < names.index("set_tx_checksum")
    assert names.index("set_tx_checksum") < names.index("replace_route")
    assert_matches(k, desired)
    assert_noop(r, k, desired)


def test_default_keeps_checksum_offload_and_writes_nothing_for_it() -> None:
    k = new_kernel()
    r = OverlayReconciler(k)
    assert r.reconcile(plan()).failures == []
    link = k.link(VX)
    assert link is not None and link.tx_checksum is True
    assert "create_vxlan" in k.call_names() and "set_tx_checksum" not in k.call_names()


def test_checksum_offload_turned_back_on_by_hand_is_repaired() -> None:
    desired = plan(config=NO_CSUM)
    k, r = built(desired)
    k.tamper_link(VX, tx_checksum=True)
    report = r.reconcile(desired)
    assert report.counts == {"cleared tx-checksum": 1}
    link = k.link(VX)
    assert link is not None and link.tx_checksum is False
    assert_noop(r, k, desired)


def test_failing_checksum_switch_is_reported_and_peers_still_programmed() -> None:
    k = new_kernel()
    k.fail("set_tx_checksum", OSError(errno.EOPNOTSUPP, "Operation not supported"))
    r = OverlayReconciler(k)
    desired = plan(config=NO_CSUM)
    report = r.reconcile(desired)
    assert [f for f in report.failures if "tx-checksum" in f] == [
        "cleared tx-checksum flannel.1: [Errno 95] Operation not supported"
    ]
    assert k.routes() == set(desired.routes) and k.fdb(VX) == set(desired.fdb)
    assert r.reconcile(desired).failures == []  # retried by the next pass
    link = k.link(VX)
    assert link is not None and link.tx_checksum is False


def test_unowned_vxlan_device_with_other_checksum_setting_is_not_changed() -> None:
    k = new_kernel()
    add_foreign_flannel_1(k)
    report = OverlayReconciler(k).reconcile(plan(config=NO_CSUM))
    assert "set_tx_checksum" not in k.call_names()
    assert any("tx checksum offload True != False" in f for f in report.failures)


def test_foreign_route_to_a_peer_subnet_is_reported_and_left_the_rest_programmed() -> None:
    k = new_kernel()
    static = k.add_foreign_route(net("10.244.3.0/24"), ip("192.168.1.1"), "eth0")
    r = OverlayReconciler(k)
    desired = plan()
    report = r.reconcile(desired)
    (failure,) = report.failures
    assert failure.startswith("added route 10.244.3.0/24: a route to 10.244.3.0/24")
    assert "proto static" in failure and "did not create" in failure
    assert static in k.all_routes()  # untouched
    assert k.routes() == {vx_route(2)}  # the other peer is programmed
    assert k.fdb(VX) == set(desired.fdb)  # and so are C's FDB and neighbour entries
    assert k.neighbours(VX) == set(desired.neigh)
