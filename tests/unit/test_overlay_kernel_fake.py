"""FakeOverlayKernel's own semantics: the reconciler tests only prove something if these hold.

The fake copies PyrouteOverlayKernel: idempotent adds and deletes, owned
links, the cascade when a link is deleted (addresses, FDB, neighbours,
routes, VXLAN devices bound to it), the protocol/table filter on routes,
permanent-only FDB and neighbour dumps, errors on missing devices, plus the
test helpers (failure injection and the ordered call log).
"""

from __future__ import annotations

import errno
import ipaddress

import pytest

from netagent.overlay.kernel import MAIN_TABLE, ForeignRouteError
from netagent.overlay.kernel_fake import PROTO_KERNEL, Call, FakeOverlayKernel, KernelRoute
from netagent.overlay.model import ROUTE_PROTOCOL, FdbEntry, NeighEntry, RouteEntry

VX = "flannel.1"
MAC_A = "0a:00:00:00:00:0a"
IP_A = ipaddress.IPv4Address("192.168.1.11")


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def iface(text: str) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(text)


def kernel_with_vxlan() -> FakeOverlayKernel:
    k = FakeOverlayKernel()
    k.add_foreign_link("eth0", addresses=(iface("192.168.1.10/24"),))
    k.create_vxlan(
        VX,
        vni=1,
        port=8472,
        local=ip("192.168.1.10"),
        underlay_device="eth0",
        mtu=1450,
        mac="0E:00:00:00:00:01",
    )
    return k


def test_create_vxlan_sets_attributes_marks_owned_and_up() -> None:
    k = kernel_with_vxlan()
    link = k.link(VX)
    assert link is not None
    assert (link.kind, link.vni, link.port, link.local, link.learning) == (
        "vxlan",
        1,
        8472,
        ip("192.168.1.10"),
        False,
    )
    assert link.mtu == 1450
    assert link.mac == "0e:00:00:00:00:01"  # the kernel prints MACs in lowercase
    assert link.owned and link.up
    assert link.underlay_index == k.link_index("eth0")
    assert k.link_index(VX) == link.index
    assert k.link("nope") is None and k.link_index("nope") is None


def test_create_vxlan_refuses_missing_underlay_and_existing_name() -> None:
    k = kernel_with_vxlan()
    with pytest.raises(LookupError, match="eth9"):
        k.create_vxlan(
            "flannel.2", vni=2, port=8472, local=IP_A, underlay_device="eth9", mtu=1450, mac=None
        )
    assert k.link("flannel.2") is None
    with pytest.raises(FileExistsError) as info:
        k.create_vxlan(VX, vni=1, port=8472, local=IP_A, underlay_device="eth0", mtu=1450, mac=None)
    assert info.value.errno == errno.EEXIST


def test_create_vxlan_without_mac_gets_a_unicast_lowercase_one() -> None:
    k = FakeOverlayKernel()
    k.add_foreign_link("eth0")
    k.create_vxlan(VX, vni=1, port=8472, local=IP_A, underlay_device="eth0", mtu=1450, mac=None)
    link = k.link(VX)
    assert link is not None
    assert link.mac == link.mac.lower() and len(link.mac.split(":")) == 6
    assert not int(link.mac[:2], 16) & 1


def test_create_bridge_is_idempotent_and_adopts_an_existing_name() -> None:
    k = FakeOverlayKernel()
    k.create_bridge("cbr0", 1450)
    first = k.link("cbr0")
    k.create_bridge("cbr0", 9000)
    second = k.link("cbr0")
    assert first == second  # EEXIST ignored: nothing changed, same index and MTU
    assert first is not None and first.kind == "bridge" and first.owned and first.up
    # Like the real implementation, the alias is (re)set on a pre-existing device.
    k.add_foreign_link("br-x", "bridge", up=False)
    k.create_bridge("br-x", 1500)
    adopted = k.link("br-x")
    assert adopted is not None and adopted.owned and adopted.up


def test_foreign_link_is_not_owned_and_carries_vxlan_attributes() -> None:
    k = FakeOverlayKernel()
    k.add_foreign_link("eth0")
    k.add_foreign_link(
        "vx", "vxlan", vni=7, port=4789, local=ip("10.0.0.1"), learning=True, underlay="eth0"
    )
    link = k.link("vx")
    assert link is not None and not link.owned
    assert (link.vni, link.port, link.learning) == (7, 4789, True)
    assert link.underlay_index == k.link_index("eth0")
    with pytest.raises(FileExistsError):
        k.add_foreign_link("vx", "vxlan")


def test_set_link_changes_mtu_and_mac_and_brings_up() -> None:
    k = kernel_with_vxlan()
    k.tamper_link(VX, up=False)
    assert k.link(VX).up is False  # type: ignore[union-attr]
    k.set_link(VX, mtu=1400, mac="0E:00:00:00:00:99")
    link = k.link(VX)
    assert link is not None
    assert (link.mtu, link.mac, link.up) == (1400, "0e:00:00:00:00:99", True)
    k.set_link(VX)
    assert k.link(VX) == link  # nothing asked, nothing changed
    with pytest.raises(LookupError):
        k.set_link("missing", mtu=1500)


def test_addresses_are_idempotent_and_keyed_by_prefix() -> None:
    k = FakeOverlayKernel()
    k.create_bridge("cbr0", 1500)
    k.add_address("cbr0", iface("10.244.1.1/24"))
    k.add_address("cbr0", iface("10.244.1.1/24"))
    k.add_address("cbr0", iface("10.244.1.1/16"))  # same IP, other prefix: a second address
    assert k.addresses("cbr0") == {iface("10.244.1.1/24"), iface("10.244.1.1/16")}
    k.delete_address("cbr0", iface("10.244.1.1/16"))
    k.delete_address("cbr0", iface("10.244.1.1/16"))
    k.delete_address("missing", iface("10.244.1.1/16"))  # no-op
    assert k.addresses("cbr0") == {iface("10.244.1.1/24")}
    assert k.addresses("missing") == set()
    with pytest.raises(LookupError):
        k.add_address("missing", iface("10.0.0.1/24"))


def test_fdb_is_idempotent_permanent_only_and_needs_the_device() -> None:
    k = kernel_with_vxlan()
    entry = FdbEntry(VX, MAC_A, IP_A)
    k.add_fdb(entry)
    k.add_fdb(entry)
    k.add_fdb(FdbEntry(VX, MAC_A, ip("192.168.1.12")))  # append: one MAC, two remotes
    k.add_foreign_fdb(FdbEntry(VX, "0a:00:00:00:00:99", ip("192.168.1.99")))  # learned
    assert k.fdb(VX) == {entry, FdbEntry(VX, MAC_A, ip("192.168.1.12"))}
    assert len(k.all_fdb(VX)) == 3
    k.delete_fdb(entry)
    k.delete_fdb(entry)
    k.delete_fdb(FdbEntry("missing", MAC_A, IP_A))
    assert k.fdb(VX) == {FdbEntry(VX, MAC_A, ip("192.168.1.12"))}
    assert k.fdb("missing") == set()
    with pytest.raises(LookupError):
        k.add_fdb(FdbEntry("missing", MAC_A, IP_A))
    k.create_bridge("cbr0", 1500)
    with pytest.raises(OSError) as info:
        k.add_fdb(FdbEntry("cbr0", MAC_A, IP_A))
    assert info.value.errno == errno.EOPNOTSUPP


def test_fdb_macs_are_stored_lowercase() -> None:
    k = kernel_with_vxlan()
    k.add_fdb(FdbEntry(VX, MAC_A.upper(), IP_A))
    assert k.fdb(VX) == {FdbEntry(VX, MAC_A, IP_A)}
    k.delete_fdb(FdbEntry(VX, MAC_A.upper(), IP_A))
    assert k.fdb(VX) == set()


def test_neighbours_replace_by_address_and_hide_dynamic_entries() -> None:
    k = kernel_with_vxlan()
    gw = ip("10.244.2.0")
    k.replace_neigh(NeighEntry(VX, gw, MAC_A))
    k.replace_neigh(NeighEntry(VX, gw, "0a:00:00:00:00:0b"))
    assert k.neighbours(VX) == {NeighEntry(VX, gw, "0a:00:00:00:00:0b")}
    k.add_foreign_neigh(NeighEntry(VX, ip("10.244.3.0"), MAC_A))  # dynamic
    assert k.neighbours(VX) == {NeighEntry(VX, gw, "0a:00:00:00:00:0b")}
    assert ip("10.244.3.0") in k.all_neighbours(VX)
    # Deleted by address, whatever MAC the caller names.
    k.delete_neigh(NeighEntry(VX, gw, "ff:ff:ff:ff:ff:ff"))
    k.delete_neigh(NeighEntry(VX, gw, MAC_A))
    k.delete_neigh(NeighEntry("missing", gw, MAC_A))
    assert k.neighbours(VX) == set()
    assert k.neighbours("missing") == set()
    with pytest.raises(LookupError):
        k.replace_neigh(NeighEntry("missing", gw, MAC_A))


def test_routes_returns_only_main_table_proto_78_with_gateway_and_device() -> None:
    k = kernel_with_vxlan()
    ours = RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True)
    k.replace_route(ours)
    k.add_foreign_route(net("10.99.0.0/16"), ip("192.168.1.1"), "eth0")  # proto static
    k.add_foreign_route(net("192.168.1.0/24"), None, "eth0", proto=PROTO_KERNEL)
    k.add_foreign_route(
        net("10.98.0.0/16"), ip("192.168.1.1"), "eth0", proto=ROUTE_PROTOCOL, table=100
    )
    k.add_foreign_route(net("10.97.0.0/16"), None, "eth0", proto=ROUTE_PROTOCOL)  # no gateway
    assert k.routes() == {ours}
    assert len(k.all_routes()) == 5


def test_replace_route_is_idempotent_and_replaces_by_destination() -> None:
    k = kernel_with_vxlan()
    vx_route = RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True)
    k.replace_route(vx_route)
    k.replace_route(vx_route)
    assert k.routes() == {vx_route}
    gw_route = RouteEntry(net("10.244.2.0/24"), IP_A, "eth0")
    k.replace_route(gw_route)
    assert k.routes() == {gw_route}
    assert len(k.all_routes()) == 1


def test_replace_route_refuses_a_foreign_route_with_the_same_key() -> None:
    k = kernel_with_vxlan()
    static = k.add_foreign_route(net("10.244.2.0/24"), ip("192.168.1.1"), "eth0")
    other_metric = k.add_foreign_route(
        net("10.244.2.0/24"), ip("192.168.1.1"), "eth0", metric=100
    )
    route = RouteEntry(net("10.244.2.0/24"), IP_A, "eth0")
    with pytest.raises(ForeignRouteError, match=r"10\.244\.2\.0/24 \(via 192\.168\.1\.1 dev eth0, "
                       r"proto static\) exists that netagent did not create"):
        k.replace_route(route)
    assert k.all_routes() == sorted([static, other_metric], key=lambda r: r.metric)
    # Another metric is another key: without the metric-0 route, netagent's goes in.
    k2 = kernel_with_vxlan()
    other_metric = k2.add_foreign_route(
        net("10.244.2.0/24"), ip("192.168.1.1"), "eth0", metric=100
    )
    k2.replace_route(route)
    assert k2.all_routes() == [
        KernelRoute(net("10.244.2.0/24"), IP_A, "eth0", ROUTE_PROTOCOL, MAIN_TABLE, 0),
        other_metric,
    ]


def test_replace_route_errors() -> None:
    k = kernel_with_vxlan()
    with pytest.raises(LookupError, match=r"flannel\.9"):
        k.replace_route(
            RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), "flannel.9", onlink=True)
        )
    with pytest.raises(OSError) as info:  # gateway on no subnet of eth0, and not onlink
        k.replace_route(RouteEntry(net("10.244.2.0/24"), ip("172.16.0.1"), "eth0"))
    assert info.value.errno == errno.ENETUNREACH
    k.tamper_link(VX, up=False)
    with pytest.raises(OSError) as info:
        k.replace_route(RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True))
    assert info.value.errno == errno.ENETDOWN
    assert k.routes() == set()


def test_delete_route_only_removes_proto_78_by_destination() -> None:
    k = kernel_with_vxlan()
    k.add_foreign_route(net("10.99.0.0/16"), ip("192.168.1.1"), "eth0")
    ours = RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True)
    k.replace_route(ours)
    k.delete_route(RouteEntry(net("10.99.0.0/16"), ip("192.168.1.1"), "eth0"))  # foreign: kept
    # Gateway and device are not part of the delete (as in the real implementation).
    k.delete_route(RouteEntry(net("10.244.2.0/24"), ip("1.2.3.4"), "eth0"))
    k.delete_route(ours)  # already gone: no-op
    assert k.routes() == set()
    assert [r.destination for r in k.all_routes()] == [net("10.99.0.0/16")]


def test_deleting_a_link_cascades_to_its_entries_and_routes() -> None:
    k = kernel_with_vxlan()
    k.add_address(VX, iface("10.244.1.0/32"))
    k.add_fdb(FdbEntry(VX, MAC_A, IP_A))
    k.replace_neigh(NeighEntry(VX, ip("10.244.2.0"), MAC_A))
    k.replace_route(RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True))
    k.replace_route(RouteEntry(net("10.244.3.0/24"), IP_A, "eth0"))
    old_index = k.link_index(VX)
    k.delete_link(VX)
    k.delete_link(VX)  # no-op
    assert k.link(VX) is None
    assert k.addresses(VX) == set() and k.fdb(VX) == set() and k.neighbours(VX) == set()
    assert k.routes() == {RouteEntry(net("10.244.3.0/24"), IP_A, "eth0")}
    # Recreated: empty, with a new index.
    k.create_vxlan(VX, vni=1, port=8472, local=IP_A, underlay_device="eth0", mtu=1450, mac=None)
    assert k.link_index(VX) != old_index
    assert k.fdb(VX) == set() and k.neighbours(VX) == set() and k.addresses(VX) == set()


def test_deleting_the_underlay_removes_vxlan_devices_bound_to_it() -> None:
    k = kernel_with_vxlan()
    k.replace_route(RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True))
    k.delete_link("eth0")
    assert k.link_names() == []
    assert k.all_routes() == []


def test_setting_a_link_down_flushes_its_routes() -> None:
    k = kernel_with_vxlan()
    k.replace_route(RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True))
    k.add_fdb(FdbEntry(VX, MAC_A, IP_A))
    k.set_link_down(VX)
    assert k.routes() == set()
    assert k.fdb(VX) == {FdbEntry(VX, MAC_A, IP_A)}  # FDB entries survive a down/up


def test_tamper_link_changes_attributes_without_logging() -> None:
    k = kernel_with_vxlan()
    k.calls.clear()
    k.tamper_link(VX, vni=9, port=4789, local=ip("10.0.0.9"), learning=True, mtu=1000, owned=False)
    link = k.link(VX)
    assert link is not None
    assert (link.vni, link.port, link.local, link.learning, link.mtu, link.owned) == (
        9,
        4789,
        ip("10.0.0.9"),
        True,
        1000,
        False,
    )
    assert k.calls == []


def test_calls_log_writes_in_order_but_not_reads() -> None:
    k = kernel_with_vxlan()
    entry = FdbEntry(VX, MAC_A, IP_A)
    route = RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True)
    k.calls.clear()
    k.link(VX)
    k.routes()
    k.fdb(VX)
    k.add_fdb(entry)
    k.replace_route(route)
    k.delete_link(VX)
    assert k.calls == [
        Call("add_fdb", entry),
        Call("replace_route", route),
        Call("delete_link", VX),
    ]
    assert k.call_names() == ["add_fdb", "replace_route", "delete_link"]


def test_calls_log_includes_writes_that_raised() -> None:
    k = FakeOverlayKernel()
    with pytest.raises(LookupError):
        k.add_address("missing", iface("10.0.0.1/24"))
    assert k.calls == [Call("add_address", ("missing", iface("10.0.0.1/24")))]


def test_fail_raises_for_the_next_n_calls_then_stops() -> None:
    k = kernel_with_vxlan()
    route = RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True)
    boom = OSError(errno.EIO, "boom")
    k.fail("replace_route", boom, count=2)
    assert k.pending_faults == 2
    for _ in range(2):
        with pytest.raises(OSError) as info:
            k.replace_route(route)
        assert info.value is boom
    assert k.routes() == set()  # a failed call changes nothing
    assert k.pending_faults == 0
    k.replace_route(route)
    assert k.routes() == {route}


def test_fail_with_when_only_hits_matching_calls() -> None:
    k = kernel_with_vxlan()
    a = RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), VX, onlink=True)
    b = RouteEntry(net("10.244.3.0/24"), ip("10.244.3.0"), VX, onlink=True)
    k.fail("replace_route", RuntimeError("no b"), when=lambda r: r.destination == b.destination)
    k.replace_route(a)
    with pytest.raises(RuntimeError, match="no b"):
        k.replace_route(b)
    k.replace_route(b)
    assert k.routes() == {a, b}


def test_fail_applies_to_reads_too_and_rejects_unknown_methods() -> None:
    k = kernel_with_vxlan()
    k.fail("routes", OSError(errno.ENOBUFS, "dump interrupted"))
    with pytest.raises(OSError):
        k.routes()
    assert k.routes() == set()
    with pytest.raises(ValueError, match="replace_routes"):
        k.fail("replace_routes", OSError())
    with pytest.raises(ValueError, match="count"):
        k.fail("routes", OSError(), count=0)


def test_tx_checksum_offload_is_on_for_new_vxlan_devices_and_switchable() -> None:
    k = kernel_with_vxlan()
    link = k.link(VX)
    assert link is not None and link.tx_checksum is True
    k.set_tx_checksum(VX, False)
    link = k.link(VX)
    assert link is not None and link.tx_checksum is False
    assert k.calls[-1] == Call("set_tx_checksum", VX)
    eth0 = k.link("eth0")
    assert eth0 is not None and eth0.tx_checksum is None  # only VXLAN devices report it
    with pytest.raises(LookupError):
        k.set_tx_checksum("eth0", False)
    with pytest.raises(LookupError):
        k.set_tx_checksum("nope", False)
