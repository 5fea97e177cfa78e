"""The IPVS layer's value types: validation, keys, and ipset entries in ``ipset list`` form.

Entry texts are what ``members()`` returns and what diffs compare, so the
canonical forms here are the ones ``ipset list`` printed on a real kernel
(tests/lab/test_ipset_kernel.py checks the same texts against it).
"""

from __future__ import annotations

import ipaddress

import pytest

from netagent.proxy.ipvs.ipsets import check_set_name, ipset_diff
from netagent.proxy.ipvs.model import (
    BITMAP_PORT,
    HASH_IP,
    HASH_IP_PORT,
    HASH_IP_PORT_IP,
    HASH_IP_PORT_NET,
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
    IpsetEntry,
    IpsetEntryError,
    IpsetSpec,
    RealServer,
    RealServerStats,
    VirtualServer,
    canonical_entry,
)

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def test_virtual_server_key_flags_and_text() -> None:
    vs = VirtualServer("TCP", V4("10.96.0.1"), 443, persistent=10800)
    assert vs.key == ("TCP", V4("10.96.0.1"), 443)
    assert vs.kernel_flags == SVC_F_PERSISTENT
    assert vs.prefix_len == 32
    assert str(vs) == "TCP 10.96.0.1:443 rr persistent 10800"
    v6 = VirtualServer("UDP", V6("fd00::1"), 53, "sh", flags=SVC_F_ONEPACKET)
    assert (v6.kernel_flags, v6.prefix_len, str(v6)) == (
        SVC_F_ONEPACKET,
        128,
        "UDP [fd00::1]:53 sh",
    )
    assert vs != VirtualServer("TCP", V4("10.96.0.1"), 443), "persistence is part of the state"
    assert sorted([v6, vs], key=VirtualServer.sort_key) == [vs, v6]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"protocol": "ICMP"},
        {"port": 70000},
        {"scheduler": ""},
        {"scheduler": "x" * 16},
        {"persistent": -1},
        {"netmask": 33},
        {"flags": SVC_F_PERSISTENT},
        {"flags": 0x2},
    ],
)
def test_virtual_server_rejects(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"protocol": "TCP", "address": V4("10.96.0.1"), "port": 80}
    args.update(kwargs)
    with pytest.raises(ValueError):
        VirtualServer(**args)  # type: ignore[arg-type]


def test_real_server_and_stats() -> None:
    rs = RealServer(V4("10.244.0.5"), 8080)
    assert (rs.weight, rs.forward, rs.key) == (1, "masq", (V4("10.244.0.5"), 8080))
    stats = RealServerStats(V4("10.244.0.5"), 8080, 0, "masq", active_conns=2, inactive_conns=3)
    assert stats.connections == 5
    assert stats.server == RealServer(V4("10.244.0.5"), 8080, 0)
    assert stats.key == rs.key
    with pytest.raises(ValueError):
        RealServer(V4("10.244.0.5"), 8080, forward="nat")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RealServer(V4("10.244.0.5"), 8080, weight=-1)


@pytest.mark.parametrize(
    ("set_type", "text", "canonical"),
    [
        (HASH_IP_PORT, "10.96.0.1,tcp:80", "10.96.0.1,tcp:80"),
        (HASH_IP_PORT, "10.96.0.1,UDP:53", "10.96.0.1,udp:53"),
        (HASH_IP_PORT, "fd00:0:0::2,sctp:9", "fd00::2,sctp:9"),
        (HASH_IP_PORT_IP, "10.244.0.5,tcp:8080,10.244.0.5", "10.244.0.5,tcp:8080,10.244.0.5"),
        (HASH_IP_PORT_NET, "192.0.2.1,tcp:80,10.0.0.0/8", "192.0.2.1,tcp:80,10.0.0.0/8"),
        (HASH_IP_PORT_NET, "192.0.2.1,tcp:80,10.1.2.3/8", "192.0.2.1,tcp:80,10.0.0.0/8"),
        (HASH_IP_PORT_NET, "192.0.2.1,tcp:80,10.0.0.1/32", "192.0.2.1,tcp:80,10.0.0.1"),
        (HASH_IP_PORT_NET, "fd00::1,tcp:80,fd00:1::/64", "fd00::1,tcp:80,fd00:1::/64"),
        (BITMAP_PORT, "30080", "30080"),
        (HASH_IP, "10.96.0.1", "10.96.0.1"),
        (HASH_IP, "FD00::A", "fd00::a"),
    ],
)
def test_entries_parse_to_the_ipset_list_form(set_type: str, text: str, canonical: str) -> None:
    assert canonical_entry(set_type, text) == canonical
    entry = IpsetEntry.parse(set_type, canonical)
    assert entry.text() == str(entry) == canonical
    assert IpsetEntry.parse(set_type, entry.text()) == entry


@pytest.mark.parametrize(
    ("set_type", "text"),
    [
        (HASH_IP_PORT, "10.96.0.1"),
        (HASH_IP_PORT, "10.96.0.1,80"),
        (HASH_IP_PORT, "10.96.0.1,icmp:8"),
        (HASH_IP_PORT, "10.96.0.1,tcp:http"),
        (HASH_IP_PORT, "10.96.0.1,tcp:65536"),
        (HASH_IP_PORT_IP, "10.244.0.5,tcp:80,fd00::1"),
        (HASH_IP_PORT_NET, "192.0.2.1,tcp:80"),
        (BITMAP_PORT, "tcp:30080"),
        (HASH_IP, "10.96.0.256"),
        ("hash:net", "10.0.0.0/8"),
    ],
)
def test_malformed_entries_are_refused(set_type: str, text: str) -> None:
    with pytest.raises(IpsetEntryError):
        IpsetEntry.parse(set_type, text)


def test_constructors_match_parsing() -> None:
    a = V4("10.96.0.1")
    assert IpsetEntry.ip(a).text() == "10.96.0.1"
    assert IpsetEntry.ip_port(a, "TCP", 80).text() == "10.96.0.1,tcp:80"
    assert IpsetEntry.ip_port_ip(a, "udp", 53, a).text() == "10.96.0.1,udp:53,10.96.0.1"
    net = ipaddress.IPv4Network("10.0.0.0/8")
    assert IpsetEntry.ip_port_net(a, "tcp", 80, net).text() == "10.96.0.1,tcp:80,10.0.0.0/8"
    assert IpsetEntry.bitmap_port(30080).text() == "30080"
    with pytest.raises(IpsetEntryError):
        IpsetEntry(HASH_IP_PORT, address=a, port=80)  # no protocol


def test_spec_checks_family_and_defaults() -> None:
    spec = IpsetSpec("NETAGENT-CLUSTER-IP", HASH_IP_PORT)
    assert spec.family == "inet" and spec.port_range is None
    assert spec.entry("10.96.0.1,tcp:80").family == "inet"
    with pytest.raises(IpsetEntryError, match="inet6 entry"):
        spec.entry("fd00::1,tcp:80")
    with pytest.raises(IpsetEntryError):
        spec.check(IpsetEntry.ip(V4("10.96.0.1")))
    ports = IpsetSpec("NETAGENT-NODE-PORT-TCP", BITMAP_PORT, family="inet6")
    assert (ports.family, ports.port_range) == (None, (0, 65535))
    assert ports.entry("30080").port == 30080
    # Hints do not take part in equality: a dumped spec equals the wanted one.
    assert IpsetSpec("S", HASH_IP, hashsize=4096, maxelem=10, comment="why") == IpsetSpec(
        "S", HASH_IP
    )
    assert IpsetSpec("S", HASH_IP) != IpsetSpec("S", HASH_IP, family="inet6")
    foreign = IpsetSpec("f2b-sshd", "hash:net", family=None)
    assert not foreign.supported


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "N" * 32},
        {"family": None},
        {"family": "ipv4"},
        {"port_range": (1, 2)},
    ],
)
def test_spec_rejects(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "S", "type": HASH_IP}
    args.update(kwargs)
    with pytest.raises(ValueError):
        IpsetSpec(**args)  # type: ignore[arg-type]


def test_bitmap_spec_rejects_an_inverted_range() -> None:
    with pytest.raises(ValueError):
        IpsetSpec("P", BITMAP_PORT, port_range=(200, 100))


def test_ipset_diff() -> None:
    current = {"10.96.0.1,tcp:80", "10.96.0.2,tcp:80", "10.96.0.3,udp:53"}
    wanted = {"10.96.0.1,tcp:80", "10.96.0.4,tcp:443", "10.96.0.0,tcp:1"}
    assert ipset_diff(current, wanted) == (
        ["10.96.0.0,tcp:1", "10.96.0.4,tcp:443"],
        ["10.96.0.2,tcp:80", "10.96.0.3,udp:53"],
    )
    assert ipset_diff(wanted, wanted) == ([], [])
    assert ipset_diff(set(), set()) == ([], [])


@pytest.mark.parametrize("name", ["", None])
def test_an_empty_set_name_is_refused(name: object) -> None:
    """pyroute2's destroy()/flush() without a name act on every set in the namespace."""
    with pytest.raises(ValueError):
        check_set_name(name)  # type: ignore[arg-type]
