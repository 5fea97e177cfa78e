"""The IPVS mode's ipset and dummy-device adapters against the real kernel, in fresh namespaces.

Covers: ipsets being per network namespace (so nothing here ever lands in
the host's root namespace) and PyrouteIpset refusing, not creating, a
missing namespace; PyrouteIpset create / add / members / delete / destroy
for every set type the IPVS mode uses, with ``ipset list`` (the CLI, inside
the namespace) showing exactly the members ``members()`` returns and
``list_sets()`` reading back the created spec; FakeIpsets giving the same
answers as the kernel, step by step, on one scripted sequence (duplicates,
missing members and sets, a bitmap's range, a full hash, swap with and
without a type match, a set referenced by an iptables rule refusing to be
destroyed); PyrouteDummy creating ``netagent-ipvs0`` DOWN with the owner
alias, binding and unbinding host addresses that get local routes (IPv6
too, thanks to NODAD), leaving non-host addresses, foreign devices and a
foreign link of its name alone.

The dummy tests run with the link kinds named in ``NETAGENT_LINK_KINDS``
(comma-separated; default ``bridge``). This machine's kernel is built
without CONFIG_DUMMY, so the host run uses a bridge, which exercises the same
code; a run on a kernel with dummy devices (the qemu VM with Debian's
kernel) sets ``NETAGENT_LINK_KINDS=dummy,bridge``. A kind the kernel lacks
fails: nothing here skips.

The adapters run in this process with ``netns=`` (pyroute2 opens their
sockets inside the namespace from a forked helper; this process never
changes namespace); CLI checks run under ``ip netns exec``. Namespaces carry
a fresh lab suffix, are recorded for the stale-run cleaner first and are
deleted in ``finally``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from collections.abc import Callable, Iterator

import pytest
from netnslab.names import link_name, namespace_name, new_suffix
from netnslab.netns import list_namespaces, ns_exec, run
from netnslab.scratch import scratch_namespaces

from netagent.proxy.ipvs.dummy import DEVICE_NAME, OWNER_ALIAS, DummyError, PyrouteDummy
from netagent.proxy.ipvs.fake import FakeIpsets
from netagent.proxy.ipvs.ipsets import (
    IPSET_ERR_BUSY,
    IPSET_ERR_EXIST,
    IpsetError,
    IpsetKernel,
    PyrouteIpset,
)
from netagent.proxy.ipvs.model import (
    BITMAP_PORT,
    HASH_IP,
    HASH_IP_PORT,
    HASH_IP_PORT_IP,
    HASH_IP_PORT_NET,
    IpsetEntryError,
    IpsetSpec,
)

pytestmark = pytest.mark.lab


namespaces = scratch_namespaces


@pytest.fixture
def netns() -> Iterator[str]:
    with namespaces("ipset") as names:
        yield names[0]


@pytest.fixture
def ipsets(netns: str) -> Iterator[PyrouteIpset]:
    kernel = PyrouteIpset(netns)
    try:
        yield kernel
    finally:
        kernel.close()


def cli_members(netns: str, name: str) -> set[str]:
    """The members ``ipset list NAME`` prints inside ``netns`` (comments stripped)."""
    out = ns_exec(netns, ["ipset", "list", name]).stdout
    members = out.split("Members:\n", 1)[1]
    return {re.sub(r' comment ".*"$', "", line) for line in members.splitlines() if line.strip()}


def cli_set_names(netns: str | None) -> set[str]:
    argv = ["ipset", "list", "-n"]
    return set((ns_exec(netns, argv) if netns else run(argv)).stdout.split())


# ---- namespaces -----------------------------------------------------------------------


def test_ipsets_are_per_network_namespace() -> None:
    with namespaces("seta", "setb") as (a, b):
        name = f"NETAGENT-T-{a.rsplit('-', 1)[1]}"
        with PyrouteIpset(a) as kernel:
            kernel.create(IpsetSpec(name, HASH_IP))
            kernel.add(name, "10.96.0.1")
            assert name in kernel.list_sets()
        assert cli_set_names(a) == {name}
        assert cli_set_names(b) == set(), "another namespace does not see it"
        assert name not in cli_set_names(None), "the host's namespace (read only) does not either"
        with PyrouteIpset(b) as other:
            assert other.list_sets() == {}


def test_a_missing_namespace_is_refused_not_created() -> None:
    missing = namespace_name("nosuch", new_suffix())
    with pytest.raises(IpsetError) as info:
        PyrouteIpset(missing)
    assert info.value.code == errno.ENOENT
    with pytest.raises(DummyError):
        PyrouteDummy(missing)
    assert missing not in list_namespaces()


# ---- every set type -------------------------------------------------------------------

TYPES = [
    (
        IpsetSpec("NETAGENT-CLUSTER-IP", HASH_IP_PORT),
        ["10.96.0.1,tcp:80", "10.96.0.1,UDP:53", "10.96.0.2,sctp:9"],
        {"10.96.0.1,tcp:80", "10.96.0.1,udp:53", "10.96.0.2,sctp:9"},
    ),
    (
        IpsetSpec("NETAGENT-LOOP-BACK", HASH_IP_PORT_IP),
        ["10.244.0.5,tcp:8080,10.244.0.5", "10.244.0.6,udp:53,10.244.0.6"],
        {"10.244.0.5,tcp:8080,10.244.0.5", "10.244.0.6,udp:53,10.244.0.6"},
    ),
    (
        IpsetSpec("NETAGENT-LB-SOURCE-CIDR", HASH_IP_PORT_NET),
        [
            "192.0.2.1,tcp:80,10.0.0.0/8",
            "192.0.2.1,tcp:80,10.9.9.9/32",
            "192.0.2.2,tcp:80,172.16.5.0/20",
        ],
        {
            "192.0.2.1,tcp:80,10.0.0.0/8",
            "192.0.2.1,tcp:80,10.9.9.9",
            "192.0.2.2,tcp:80,172.16.0.0/20",
        },
    ),
    (
        IpsetSpec("NETAGENT-NODE-PORT-TCP", BITMAP_PORT),
        ["30080", "32767", "0"],
        {"30080", "32767", "0"},
    ),
    (
        IpsetSpec("NETAGENT-NODE-PORT-R", BITMAP_PORT, port_range=(30000, 32767)),
        ["30000", "31000"],
        {"30000", "31000"},
    ),
    (
        IpsetSpec("NETAGENT-BOUND-ADDRS", HASH_IP),
        ["10.96.0.1", "10.96.0.10", "192.0.2.1"],
        {"10.96.0.1", "10.96.0.10", "192.0.2.1"},
    ),
    (
        IpsetSpec("NETAGENT-6-CLUSTER-IP", HASH_IP_PORT, family="inet6"),
        ["fd00::1,tcp:80", "FD00:0:0::A,udp:53"],
        {"fd00::1,tcp:80", "fd00::a,udp:53"},
    ),
    (
        IpsetSpec("NETAGENT-6-LB-SOURCE-CIDR", HASH_IP_PORT_NET, family="inet6"),
        ["fd00::1,tcp:80,fd00:1::/64", "fd00::1,tcp:80,2001:db8::1/128"],
        {"fd00::1,tcp:80,fd00:1::/64", "fd00::1,tcp:80,2001:db8::1"},
    ),
    (
        IpsetSpec("NETAGENT-6-LOOP-BACK", HASH_IP_PORT_IP, family="inet6"),
        ["fd00:10::5,tcp:8080,fd00:10::5"],
        {"fd00:10::5,tcp:8080,fd00:10::5"},
    ),
]


@pytest.mark.parametrize(("spec", "added", "listed"), TYPES, ids=[t[0].name for t in TYPES])
def test_each_set_type_round_trips_and_matches_the_cli(
    netns: str, ipsets: PyrouteIpset, spec: IpsetSpec, added: list[str], listed: set[str]
) -> None:
    ipsets.create(spec)
    assert ipsets.list_sets() == {spec.name: spec}
    assert ipsets.members(spec.name) == set() == cli_members(netns, spec.name)
    for entry in added:
        ipsets.add(spec.name, entry)
    assert ipsets.members(spec.name) == listed
    assert cli_members(netns, spec.name) == listed, "the canonical text is what ipset prints"

    # A fresh adapter (no cached spec) reads the type from the kernel.
    with PyrouteIpset(netns) as fresh:
        assert fresh.members(spec.name) == listed
        gone = sorted(listed)[0]
        fresh.delete(spec.name, gone)
    assert cli_members(netns, spec.name) == listed - {gone}
    assert ipsets.members(spec.name) == listed - {gone}

    ipsets.destroy(spec.name)
    assert ipsets.list_sets() == {}
    assert cli_set_names(netns) == set()


def test_many_members_come_back_from_a_multi_message_dump(netns: str, ipsets: PyrouteIpset) -> None:
    spec = IpsetSpec("NETAGENT-CLUSTER-IP", HASH_IP_PORT)
    ipsets.create(spec)
    wanted = {f"10.96.{i // 250}.{i % 250 + 1},tcp:{80 + i % 3}" for i in range(3000)}
    for entry in wanted:
        ipsets.add(spec.name, entry)
    assert ipsets.members(spec.name) == wanted == cli_members(netns, spec.name)


# ---- the fake agrees with the kernel --------------------------------------------------

Step = Callable[[IpsetKernel, Callable[[str], None]], object]

SCRIPT: list[tuple[str, Step]] = [
    ("create X", lambda k, ref: k.create(IpsetSpec("X", HASH_IP_PORT))),
    ("create X again", lambda k, ref: k.create(IpsetSpec("X", HASH_IP))),
    ("add", lambda k, ref: k.add("X", "10.96.0.1,tcp:80")),
    ("add same", lambda k, ref: k.add("X", "10.96.0.1,TCP:80")),
    ("add v6 to inet", lambda k, ref: k.add("X", "fd00::1,tcp:80")),
    ("add wrong shape", lambda k, ref: k.add("X", "10.96.0.1")),
    ("add to missing", lambda k, ref: k.add("NOPE", "10.96.0.1")),
    ("delete missing member", lambda k, ref: k.delete("X", "10.96.0.9,tcp:80")),
    ("members", lambda k, ref: sorted(k.members("X"))),
    ("members of missing", lambda k, ref: k.members("NOPE")),
    ("create R", lambda k, ref: k.create(IpsetSpec("R", BITMAP_PORT, port_range=(30000, 32767)))),
    ("port in range", lambda k, ref: k.add("R", "30001")),
    ("port out of range", lambda k, ref: k.add("R", "80")),
    ("create M", lambda k, ref: k.create(IpsetSpec("M", HASH_IP, maxelem=2))),
    ("fill 1", lambda k, ref: k.add("M", "10.0.0.1")),
    ("fill 2", lambda k, ref: k.add("M", "10.0.0.2")),
    ("hash full", lambda k, ref: k.add("M", "10.0.0.3")),
    ("create Y", lambda k, ref: k.create(IpsetSpec("Y", HASH_IP_PORT))),
    ("add Y", lambda k, ref: k.add("Y", "10.96.0.2,udp:53")),
    ("reference X", lambda k, ref: ref("X")),
    ("destroy referenced", lambda k, ref: k.destroy("X")),
    ("swap X Y", lambda k, ref: k.swap("X", "Y")),
    ("members X after swap", lambda k, ref: sorted(k.members("X"))),
    ("members Y after swap", lambda k, ref: sorted(k.members("Y"))),
    ("destroy Y", lambda k, ref: k.destroy("Y")),
    ("swap with missing", lambda k, ref: k.swap("X", "Y")),
    ("swap type mismatch", lambda k, ref: k.swap("X", "M")),
    ("flush referenced", lambda k, ref: k.flush("X")),
    ("members after flush", lambda k, ref: sorted(k.members("X"))),
    ("destroy referenced again", lambda k, ref: k.destroy("X")),
    ("destroy missing", lambda k, ref: k.destroy("NOPE")),
    ("flush missing", lambda k, ref: k.flush("NOPE")),
    ("sets", lambda k, ref: sorted(k.list_sets().items())),
]


def outcomes(kernel: IpsetKernel, reference: Callable[[str], None]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for label, step in SCRIPT:
        try:
            out.append((label, ("ok", step(kernel, reference))))
        except IpsetError as exc:
            out.append((label, ("IpsetError", exc.op, exc.code)))
        except IpsetEntryError:
            out.append((label, ("IpsetEntryError",)))
    return out


def test_fake_ipsets_agree_with_the_kernel(netns: str, ipsets: PyrouteIpset) -> None:
    def reference_in_kernel(name: str) -> None:
        rule = ["iptables", "-A", "INPUT", "-m", "set", "--match-set", name, "dst", "-j", "ACCEPT"]
        ns_exec(netns, rule)

    fake = FakeIpsets()
    expected = outcomes(fake, fake.referenced.add)
    actual = outcomes(ipsets, reference_in_kernel)
    assert actual == expected
    by_label = dict(actual)
    assert by_label["add same"] == ("IpsetError", "add", IPSET_ERR_EXIST)
    assert by_label["destroy referenced"] == ("IpsetError", "destroy", IPSET_ERR_BUSY)
    assert by_label["members X after swap"] == ("ok", ["10.96.0.2,udp:53"])


# ---- the dummy device -----------------------------------------------------------------

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def link_kind_available(netns: str, kind: str) -> bool:
    probe = "na-kind-probe"
    proc = ns_exec(netns, ["ip", "link", "add", probe, "type", kind], check=False)
    if proc.returncode == 0:
        ns_exec(netns, ["ip", "link", "del", probe])
        return True
    if "Unknown device type" in proc.stderr:
        return False
    raise AssertionError(f"ip link add type {kind}: {proc.stderr}")


LINK_KINDS = os.environ.get("NETAGENT_LINK_KINDS", "bridge").split(",")


@pytest.fixture(params=LINK_KINDS)
def device(request: pytest.FixtureRequest, netns: str) -> Iterator[PyrouteDummy]:
    kind = str(request.param)
    assert link_kind_available(netns, kind), f"this kernel has no {kind} link type"
    dev = PyrouteDummy(netns, link_kind=kind)
    try:
        yield dev
    finally:
        dev.close()


def addr_lines(netns: str, dev: str) -> list[str]:
    out = ns_exec(netns, ["ip", "-o", "addr", "show", "dev", dev]).stdout
    return sorted(" ".join(line.split()[1:]) for line in out.splitlines())


def test_device_is_created_down_and_marked(netns: str, device: PyrouteDummy) -> None:
    assert not device.exists()
    assert device.ensure() is True
    assert device.ensure() is False
    assert device.exists()
    shown = ns_exec(netns, ["ip", "-d", "link", "show", DEVICE_NAME]).stdout
    assert "state DOWN" in shown and f"alias {OWNER_ALIAS}" in shown
    assert f" {device.link_kind} " in shown or f"\n    {device.link_kind}" in shown
    device.delete()
    assert not device.exists()
    with pytest.raises(DummyError) as info:
        device.delete()
    assert info.value.code == errno.ENODEV


def test_addresses_are_bound_with_local_routes(netns: str, device: PyrouteDummy) -> None:
    with pytest.raises(DummyError) as info:
        device.addresses()
    assert info.value.code == errno.ENODEV
    device.ensure()
    ns_exec(netns, ["ip", "addr", "add", "192.0.2.1/24", "dev", DEVICE_NAME])  # not a host address
    v4, v4b, v6 = V4("10.96.0.1"), V4("10.96.0.10"), V6("fd00::a")
    for address in (v4, v4b, v6):
        device.add_address(address)
    assert device.addresses() == {v4, v4b, v6}, "host addresses only"
    local4 = ns_exec(netns, ["ip", "route", "show", "table", "local", "dev", DEVICE_NAME]).stdout
    local6 = ns_exec(
        netns, ["ip", "-6", "route", "show", "table", "local", "dev", DEVICE_NAME]
    ).stdout
    assert "local 10.96.0.1 " in local4 and "local 10.96.0.10 " in local4
    assert "local fd00::a " in local6, "NODAD: no tentative address on a DOWN device"
    assert (
        "tentative" not in ns_exec(netns, ["ip", "-6", "addr", "show", "dev", DEVICE_NAME]).stdout
    )

    with pytest.raises(DummyError) as info:
        device.add_address(v4)
    assert info.value.code == errno.EEXIST
    device.delete_address(v4)
    with pytest.raises(DummyError) as info:
        device.delete_address(v4)
    assert info.value.code == errno.EADDRNOTAVAIL
    device.delete_address(v6)
    assert device.addresses() == {v4b}
    assert any("192.0.2.1/24" in line for line in addr_lines(netns, DEVICE_NAME))
    assert "DOWN" in ns_exec(netns, ["ip", "link", "show", DEVICE_NAME]).stdout


def test_foreign_devices_are_left_alone(netns: str, device: PyrouteDummy) -> None:
    suffix = netns.rsplit("-", 1)[1]
    foreign, peer = link_name("vfor", suffix), link_name("vfop", suffix)
    ns_exec(netns, ["ip", "link", "add", foreign, "type", "veth", "peer", "name", peer])
    ns_exec(netns, ["ip", "addr", "add", "10.96.0.1/32", "dev", foreign])
    ns_exec(netns, ["ip", "link", "set", foreign, "up"])
    before = (addr_lines(netns, foreign), addr_lines(netns, peer))
    device.ensure()
    device.add_address(V4("10.96.0.2"))
    assert device.addresses() == {V4("10.96.0.2")}
    device.delete_address(V4("10.96.0.2"))
    device.delete()
    assert (addr_lines(netns, foreign), addr_lines(netns, peer)) == before


def test_a_link_of_another_kind_under_the_name_is_refused(netns: str, device: PyrouteDummy) -> None:
    ns_exec(netns, ["ip", "link", "add", DEVICE_NAME, "type", "veth", "peer", "name", "na-peer0"])
    ns_exec(netns, ["ip", "addr", "add", "10.96.0.1/32", "dev", DEVICE_NAME])
    before = addr_lines(netns, DEVICE_NAME)
    for call in (
        device.exists,
        device.ensure,
        device.addresses,
        device.delete,
        lambda: device.add_address(V4("10.96.0.2")),
        lambda: device.delete_address(V4("10.96.0.1")),
    ):
        with pytest.raises(DummyError, match="leaving it alone") as info:
            call()
        assert info.value.code == errno.EEXIST
    assert addr_lines(netns, DEVICE_NAME) == before
