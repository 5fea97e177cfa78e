"""FakeIpvs, FakeIpsets and FakeDummy: the IPVS proxier's tests only prove something if these hold.

Each fake copies the real adapter's kernel answers (errno / IPSET_ERR_*
codes; see the docstrings of netagent.proxy.ipvs.netlink, .ipsets and
.dummy), the state rules (deleting a virtual server deletes its real
servers, counters survive weight changes, referenced sets cannot be
destroyed, swap moves contents but not references) and the shared test
helpers (the ordered call log, failure injection). The ipset fake is also
run against the kernel on the same script in tests/lab/test_ipset_kernel.py.
"""

from __future__ import annotations

import errno
import ipaddress

import pytest

from netagent.proxy.ipvs.dummy import DummyError
from netagent.proxy.ipvs.fake import Call, FakeDummy, FakeIpsets, FakeIpvs
from netagent.proxy.ipvs.ipsets import (
    IPSET_ERR_BUSY,
    IPSET_ERR_EXIST,
    IPSET_ERR_EXIST_SETNAME2,
    IPSET_ERR_FIND_TYPE,
    IPSET_ERR_INVALID_CIDR,
    IPSET_ERR_TYPE_MISMATCH,
    IPSET_ERR_TYPE_SPECIFIC,
    IpsetError,
    ipset_diff,
)
from netagent.proxy.ipvs.model import (
    BITMAP_PORT,
    HASH_IP,
    HASH_IP_PORT,
    HASH_IP_PORT_IP,
    HASH_IP_PORT_NET,
    IpsetEntry,
    IpsetEntryError,
    IpsetSpec,
    RealServer,
    RealServerStats,
    VirtualServer,
)
from netagent.proxy.ipvs.netlink import IpvsError

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
VS = VirtualServer("TCP", V4("10.96.0.1"), 80)
VS6 = VirtualServer("TCP", V6("fd00::1"), 80)
A = RealServer(V4("10.244.0.5"), 8080)
B = RealServer(V4("10.244.1.7"), 8080, weight=2)


def ipvs_code(call: object) -> int:
    assert callable(call)
    with pytest.raises(IpvsError) as info:
        call()
    return info.value.errno


# ---- FakeIpvs -------------------------------------------------------------------------


def test_services_and_dests_round_trip() -> None:
    k = FakeIpvs()
    persistent = VirtualServer("UDP", V4("10.96.0.10"), 53, persistent=10800)
    k.add_service(VS6)
    k.add_service(persistent)
    k.add_service(VS)
    assert k.services() == [VS, persistent, VS6], "sorted: IPv4 first, then by address"
    k.add_dest(VS, B)
    k.add_dest(VS, A)
    assert k.dests(VS) == [
        RealServerStats(A.address, 8080, 1, "masq"),
        RealServerStats(B.address, 8080, 2, "masq"),
    ]
    assert k.dests(persistent) == []


def test_ipvs_errors_copy_the_kernel() -> None:
    k = FakeIpvs(schedulers={"rr", "wrr"})
    k.add_service(VS)
    k.add_dest(VS, A)
    assert ipvs_code(lambda: k.add_service(VS)) == errno.EEXIST
    assert ipvs_code(lambda: k.add_service(VirtualServer("TCP", V4("10.96.0.2"), 80, "mh"))) == (
        errno.ENOENT
    )
    assert ipvs_code(lambda: k.update_service(VirtualServer("TCP", V4("10.96.0.1"), 80, "lc"))) == (
        errno.ENOENT
    )
    assert ipvs_code(lambda: k.update_service(VS6)) == errno.ESRCH
    assert ipvs_code(lambda: k.delete_service(VS6)) == errno.ESRCH
    assert ipvs_code(lambda: k.add_dest(VS6, A)) == errno.ESRCH
    assert ipvs_code(lambda: k.add_dest(VS, A)) == errno.EEXIST
    assert ipvs_code(lambda: k.update_dest(VS, B)) == errno.ENOENT
    assert ipvs_code(lambda: k.delete_dest(VS, B)) == errno.ENOENT
    assert ipvs_code(lambda: k.delete_dest(VS6, A)) == errno.ESRCH
    assert ipvs_code(lambda: k.add_dest(VS, RealServer(V6("fd00::5"), 80))) == errno.EINVAL
    assert k.dests(VS6) == [], "dumping the destinations of a missing service returns nothing"
    assert k.services() == [VS] and [d.server for d in k.dests(VS)] == [A]


def test_update_service_keeps_its_dests() -> None:
    k = FakeIpvs()
    k.add_service(VS)
    k.add_dest(VS, A)
    changed = VirtualServer("TCP", V4("10.96.0.1"), 80, "wrr", persistent=60)
    k.update_service(changed)
    assert k.services() == [changed]
    assert [d.server for d in k.dests(VS)] == [A], "any VirtualServer with the key addresses it"


def test_deleting_a_service_deletes_its_dests() -> None:
    k = FakeIpvs()
    k.add_service(VS)
    k.add_dest(VS, A)
    k.add_dest(VS, B)
    k.delete_service(VS)
    assert k.services() == [] and k.dests(VS) == []
    k.add_service(VS)
    assert k.dests(VS) == [], "a re-created service starts empty"


def test_graceful_termination_counters() -> None:
    k = FakeIpvs()
    k.add_service(VS)
    k.add_dest(VS, A)
    k.set_connections(VS, A, active=3, inactive=1)
    k.update_dest(VS, RealServer(A.address, A.port, weight=0))
    (dest,) = k.dests(VS)
    assert (dest.weight, dest.active_conns, dest.inactive_conns, dest.connections) == (0, 3, 1, 4)
    k.set_connections(VS, dest, active=0, inactive=0)
    (dest,) = k.dests(VS)
    assert dest.connections == 0
    k.delete_dest(VS, dest)
    assert k.dests(VS) == []
    with pytest.raises(KeyError):
        k.set_connections(VS, A, 1)


def test_ipvs_call_log_failure_injection_and_seeding() -> None:
    k = FakeIpvs(schedulers={"rr"}, inventory={"rr", "sh"})
    foreign = VirtualServer("UDP", V4("192.0.2.1"), 53, "wlc")
    k.seed(foreign, A)  # the "kernel" may hold what it cannot create now; unlogged
    assert k.services() == [foreign] and [d.server for d in k.dests(foreign)] == [A]
    assert k.schedulers_available() == {"rr", "sh"}
    k.fail("add_dest", errno.ENOMEM)
    k.add_service(VS)
    assert ipvs_code(lambda: k.add_dest(VS, A)) == errno.ENOMEM
    k.add_dest(VS, A)
    assert k.calls == [
        Call("add_service", (VS,)),
        Call("add_dest", (VS, A)),
        Call("add_dest", (VS, A)),
    ]
    assert [d.server for d in k.dests(VS)] == [A]


# ---- FakeIpsets -----------------------------------------------------------------------

CLUSTER = IpsetSpec("NETAGENT-CLUSTER-IP", HASH_IP_PORT)


def ipset_code(call: object) -> int:
    assert callable(call)
    with pytest.raises(IpsetError) as info:
        call()
    return info.value.code


def test_sets_members_and_diff() -> None:
    s = FakeIpsets()
    s.create(CLUSTER)
    for entry in ("10.96.0.1,tcp:80", "10.96.0.2,TCP:443"):
        s.add(CLUSTER.name, entry)
    s.add(CLUSTER.name, IpsetEntry.ip_port(V4("10.96.0.3"), "udp", 53))
    assert s.list_sets() == {CLUSTER.name: CLUSTER}
    current = s.members(CLUSTER.name)
    assert current == {"10.96.0.1,tcp:80", "10.96.0.2,tcp:443", "10.96.0.3,udp:53"}
    to_add, to_delete = ipset_diff(current, {"10.96.0.1,tcp:80", "10.96.0.9,tcp:80"})
    for entry in to_add:
        s.add(CLUSTER.name, entry)
    for entry in to_delete:
        s.delete(CLUSTER.name, entry)
    assert s.members(CLUSTER.name) == {"10.96.0.1,tcp:80", "10.96.0.9,tcp:80"}


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        (IpsetSpec("HP", HASH_IP_PORT), "10.96.0.1,tcp:80", "10.96.0.1"),
        (
            IpsetSpec("HPI", HASH_IP_PORT_IP),
            "10.244.0.5,tcp:8080,10.244.0.5",
            "10.244.0.5,tcp:8080",
        ),
        (IpsetSpec("HPN", HASH_IP_PORT_NET), "192.0.2.1,tcp:80,10.0.0.0/8", "192.0.2.1,tcp:80,x"),
        (IpsetSpec("BP", BITMAP_PORT), "30080", "10.96.0.1,tcp:80"),
        (IpsetSpec("H", HASH_IP), "10.96.0.1", "10.96.0.1,tcp:80"),
        (IpsetSpec("H6", HASH_IP, family="inet6"), "fd00::1", "10.96.0.1"),
    ],
    ids=lambda v: v.name if isinstance(v, IpsetSpec) else None,
)
def test_entry_shape_is_validated_against_the_set_type(
    spec: IpsetSpec, good: str, bad: str
) -> None:
    s = FakeIpsets()
    s.create(spec)
    s.add(spec.name, good)
    with pytest.raises(IpsetEntryError):
        s.add(spec.name, bad)
    with pytest.raises(IpsetEntryError):
        s.delete(spec.name, bad)
    assert s.members(spec.name) == {IpsetEntry.parse(spec.type, good).text()}


def test_ipset_errors_copy_the_kernel() -> None:
    s = FakeIpsets(kernel_types={HASH_IP_PORT, HASH_IP, BITMAP_PORT})
    s.create(CLUSTER)
    s.add(CLUSTER.name, "10.96.0.1,tcp:80")
    assert ipset_code(lambda: s.create(IpsetSpec(CLUSTER.name, HASH_IP))) == errno.EEXIST
    assert ipset_code(lambda: s.create(IpsetSpec("N", HASH_IP_PORT_NET))) == IPSET_ERR_FIND_TYPE
    assert ipset_code(lambda: s.add(CLUSTER.name, "10.96.0.1,tcp:80")) == IPSET_ERR_EXIST
    assert ipset_code(lambda: s.delete(CLUSTER.name, "10.96.0.2,tcp:80")) == IPSET_ERR_EXIST
    for call in (
        lambda: s.members("MISSING"),
        lambda: s.add("MISSING", "10.96.0.1"),
        lambda: s.delete("MISSING", "10.96.0.1"),
        lambda: s.destroy("MISSING"),
        lambda: s.flush("MISSING"),
        lambda: s.swap("MISSING", CLUSTER.name),
    ):
        assert ipset_code(call) == errno.ENOENT
    s.create(IpsetSpec("R", BITMAP_PORT, port_range=(30000, 32767)))
    assert ipset_code(lambda: s.add("R", "80")) == IPSET_ERR_TYPE_SPECIFIC
    s.create(IpsetSpec("M", HASH_IP, maxelem=2))
    s.add("M", "10.0.0.1")
    s.add("M", "10.0.0.2")
    assert ipset_code(lambda: s.add("M", "10.0.0.3")) == IPSET_ERR_TYPE_SPECIFIC, "hash full"
    nets = FakeIpsets()
    nets.create(IpsetSpec("N", HASH_IP_PORT_NET))
    nets.add("N", "10.0.0.1,tcp:80,10.0.0.0/8")
    every = lambda: nets.add("N", "10.0.0.1,tcp:80,0.0.0.0/0")  # noqa: E731
    assert ipset_code(every) == IPSET_ERR_INVALID_CIDR, "the kernel takes no /0 net"
    with pytest.raises(ValueError):
        s.create(IpsetSpec("F", "hash:net", family=None))
    with pytest.raises(ValueError):
        s.destroy("")


def test_a_referenced_set_is_not_destroyed() -> None:
    s = FakeIpsets()
    s.create(CLUSTER)
    s.add(CLUSTER.name, "10.96.0.1,tcp:80")
    s.referenced.add(CLUSTER.name)
    assert ipset_code(lambda: s.destroy(CLUSTER.name)) == IPSET_ERR_BUSY
    assert s.members(CLUSTER.name) == {"10.96.0.1,tcp:80"}
    s.flush(CLUSTER.name)  # flushing a referenced set is allowed
    assert s.members(CLUSTER.name) == set()
    s.referenced.discard(CLUSTER.name)
    s.destroy(CLUSTER.name)
    assert s.list_sets() == {}


def test_swap_moves_contents_but_not_references() -> None:
    s = FakeIpsets()
    s.create(IpsetSpec("X", HASH_IP, comment="live"))
    s.create(IpsetSpec("Y", HASH_IP, maxelem=10))
    s.create(IpsetSpec("Z", HASH_IP, family="inet6"))
    s.create(IpsetSpec("W", HASH_IP_PORT))
    s.add("X", "10.0.0.1")
    s.add("Y", "10.0.0.2")
    s.add("Y", "10.0.0.3")
    s.referenced.add("X")
    s.swap("X", "Y")
    assert s.members("X") == {"10.0.0.2", "10.0.0.3"} and s.members("Y") == {"10.0.0.1"}
    assert s.list_sets()["X"].maxelem == 10 and s.list_sets()["Y"].comment == "live"
    assert ipset_code(lambda: s.destroy("X")) == IPSET_ERR_BUSY
    s.destroy("Y")
    assert ipset_code(lambda: s.swap("X", "Y")) == IPSET_ERR_EXIST_SETNAME2
    assert ipset_code(lambda: s.swap("X", "Z")) == IPSET_ERR_TYPE_MISMATCH, "family differs"
    assert ipset_code(lambda: s.swap("X", "W")) == IPSET_ERR_TYPE_MISMATCH, "type differs"


def test_ipset_call_log_failure_injection_and_foreign_sets() -> None:
    s = FakeIpsets()
    foreign = IpsetSpec("f2b-sshd", "hash:net", family=None)
    s.seed(foreign, ["203.0.113.0/24"])
    s.fail("create", errno.ENOMEM)
    assert ipset_code(lambda: s.create(CLUSTER)) == errno.ENOMEM
    s.create(CLUSTER)
    s.add(CLUSTER.name, "10.96.0.1,tcp:80")
    assert [c.method for c in s.calls] == ["create", "create", "add"]
    assert s.calls[2] == Call("add", (CLUSTER.name, "10.96.0.1,tcp:80"))
    assert set(s.list_sets()) == {"f2b-sshd", CLUSTER.name}
    with pytest.raises(IpsetEntryError, match="cannot read"):
        s.members("f2b-sshd")  # as PyrouteIpset: listed, never read entry by entry


# ---- FakeDummy ------------------------------------------------------------------------

IP1 = V4("10.96.0.1")
IP6 = V6("fd00::1")


def dummy_code(call: object) -> int:
    assert callable(call)
    with pytest.raises(DummyError) as info:
        call()
    return info.value.code


def test_dummy_ensure_creates_it_down_and_owned() -> None:
    d = FakeDummy()
    assert d.name == "netagent-ipvs0" and not d.exists()
    assert d.ensure() is True
    assert d.ensure() is False
    assert (d.exists(), d.up, d.owned) == (True, False, True)


def test_dummy_addresses_copy_the_kernel() -> None:
    d = FakeDummy()
    assert dummy_code(d.addresses) == errno.ENODEV
    assert dummy_code(lambda: d.add_address(IP1)) == errno.ENODEV
    d.ensure()
    d.add_address(IP1)
    d.add_address(IP6)
    d.other_addresses.add("192.0.2.1/24")
    assert d.addresses() == {IP1, IP6}, "host addresses only"
    assert dummy_code(lambda: d.add_address(IP1)) == errno.EEXIST
    d.delete_address(IP1)
    assert dummy_code(lambda: d.delete_address(IP1)) == errno.EADDRNOTAVAIL
    assert d.addresses() == {IP6}
    d.delete()
    assert not d.exists() and dummy_code(d.delete) == errno.ENODEV
    d.ensure()
    assert d.addresses() == set() and d.other_addresses == set()


def test_dummy_refuses_a_link_of_another_kind_under_its_name() -> None:
    d = FakeDummy()
    d.occupy("veth")
    for call in (d.exists, d.ensure, d.addresses, d.delete, lambda: d.add_address(IP1)):
        assert dummy_code(call) == errno.EEXIST
    assert not d.present


def test_dummy_call_log_and_failure_injection() -> None:
    d = FakeDummy()
    d.fail("add_address", errno.EPERM)
    d.ensure()
    assert dummy_code(lambda: d.add_address(IP1)) == errno.EPERM
    d.add_address(IP1)
    d.addresses()  # reads are not logged
    assert d.calls == [Call("ensure", ()), Call("add_address", (IP1,)), Call("add_address", (IP1,))]
