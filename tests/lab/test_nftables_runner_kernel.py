"""SubprocessNft against the real kernel, and FakeNft checked against it step by step.

Covers: one scripted sequence of transactions (including the ones nft must
refuse: conflicting elements, dangling references, busy chains and sets,
conflicting redeclarations, a refused transaction that must change nothing)
run through the real ``nft`` and through FakeNft, agreeing after every step
on success or failure and on the chains, rule counts, base-chain hooks and
policies, set declarations and elements; the fake's ``list table`` layout
matching nft's for a table written in nft's canonical form, and each side
accepting the other's listing as a payload; NftError naming the refused
payload line; list_table None and table_handle None for a missing table; a
new handle after delete and re-create; the runner's recorded calls; one
large transaction through stdin.

Every command runs under ``ip netns exec`` (the runner's ``netns``), so the
host's root namespace is never touched; each test gets a fresh namespace
with a lab suffix, recorded for the stale-run cleaner and deleted in
``finally``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from netnslab.scratch import scratch_namespaces

from netagent.proxy.nftables.fake import FakeNft
from netagent.proxy.nftables.runner import NftError, NftRunner, SubprocessNft

pytestmark = pytest.mark.lab

T = "ip netagent"

# Element continuation lines are tabs then spaces, as nft prints them; the tabs are
# written as \t there so the source never mixes tabs and spaces in one indent.
BLOCK = """\
table ip netagent {
	map svc {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.1 . tcp . 443 : goto sep-a,
\t\t\t     10.96.0.2 . udp . 53 : goto sep-b }
	}
	map lb {
		typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport
		elements = { 10.96.0.3 . tcp . 80 . 0 : 10.244.0.1 . 8080,
\t\t\t     10.96.0.3 . tcp . 80 . 1 : 10.244.0.2 . 8080 }
	}
	set aff { type ipv4_addr; flags dynamic,timeout; timeout 10s; }
	set nets {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 192.168.0.0/16 }
	}
	chain sep-a {
		meta mark set meta mark | 0x00004000
		meta l4proto tcp dnat to 10.244.0.1:443
	}
	chain sep-b {
		meta l4proto udp dnat to 10.244.0.2:53
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @svc
		numgen random mod 2 vmap { 0 : goto sep-a, 1 : goto sep-b }
		meta l4proto tcp dnat ip addr . port to ip daddr . meta l4proto . th dport . numgen random mod 2 map @lb
	}
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		jump services
	}
	chain filt {
		type filter hook input priority -10; policy accept;
		ip saddr @aff accept
		ip saddr @nets counter
	}
}
"""


@dataclass(frozen=True)
class Step:
    name: str
    payload: str
    ok: bool


def step(name: str, payload: str, ok: bool) -> Step:
    return Step(name, payload.strip() + "\n", ok)


SCRIPT: tuple[Step, ...] = (
    step("create", f"add table {T}\n{BLOCK}", True),
    step(
        "same element, same value",
        f"add element {T} svc {{ 10.96.0.1 . tcp . 443 : goto sep-a }}",
        True,
    ),
    step(
        "same element, other value",
        f"add element {T} svc {{ 10.96.0.1 . tcp . 443 : goto sep-b }}",
        False,
    ),
    step(
        "one key twice in one command, other values",
        f"add element {T} svc {{ 10.96.0.4 . tcp . 1 : goto sep-a, 10.96.0.4 . tcp . 1 : goto sep-b }}",
        False,
    ),
    step(
        "one key twice in one command, same value",
        f"add element {T} svc {{ 10.96.0.4 . tcp . 1 : goto sep-a, 10.96.0.4 . tcp . 1 : goto sep-a }}",
        True,
    ),
    step("element of a missing set", f"add element {T} nope {{ 10.1.1.1 }}", False),
    step(
        "verdict to a missing chain",
        f"add element {T} svc {{ 10.96.0.5 . tcp . 1 : goto nowhere }}",
        False,
    ),
    step("set element with a value", f"add element {T} nets {{ 172.16.0.0/12 : accept }}", False),
    step("map element without a value", f"add element {T} svc {{ 10.96.0.5 . tcp . 1 }}", False),
    step("interval element", f"add element {T} nets {{ 172.16.0.0/12 }}", True),
    step("delete an absent element", f"delete element {T} svc {{ 10.96.0.9 . tcp . 9 }}", False),
    step(
        "delete one element twice in one command",
        f"delete element {T} svc {{ 10.96.0.4 . tcp . 1, 10.96.0.4 . tcp . 1 }}",
        False,
    ),
    step("delete an element", f"delete element {T} svc {{ 10.96.0.4 . tcp . 1 }}", True),
    step("rule in a missing chain", f"add rule {T} nowhere accept", False),
    step("rule naming a missing set", f"add rule {T} filt ip saddr @nope accept", False),
    step("rule jumping to a missing chain", f"add rule {T} filt jump nowhere", False),
    step(
        "anonymous vmap to a missing chain",
        f"add rule {T} services numgen random mod 2 vmap {{ 0 : goto sep-a, 1 : goto nowhere }}",
        False,
    ),
    step(
        "jump to a chain added later", f"add rule {T} filt jump later\nadd chain {T} later", False
    ),
    step(
        "jump to a chain added earlier", f"add chain {T} later\nadd rule {T} filt jump later", True
    ),
    step("delete a chain a rule jumps to", f"delete chain {T} later", False),
    step(
        "chain only a map element names",
        f"add chain {T} sep-c\nadd rule {T} sep-c accept\n"
        f"add element {T} svc {{ 10.96.0.6 . tcp . 6 : goto sep-c }}",
        True,
    ),
    step("delete a chain a map element names", f"delete chain {T} sep-c", False),
    step(
        "chain only an anonymous vmap names",
        f"add chain {T} sep-d\nadd rule {T} services numgen random mod 1 vmap {{ 0 : jump sep-d }}",
        True,
    ),
    step("delete a chain an anonymous vmap names", f"delete chain {T} sep-d", False),
    step("delete a referenced map", f"delete map {T} svc", False),
    step("delete a referenced set", f"delete set {T} nets", False),
    step("delete a missing set", f"delete set {T} nope", False),
    step("delete a missing chain", f"delete chain {T} nope", False),
    step("flush a missing chain", f"flush chain {T} nope", False),
    step("flush set on a map", f"flush set {T} svc", False),
    step("flush map on a set", f"flush map {T} nets", False),
    step(
        "delete map on an unreferenced set",
        f"add set {T} spare {{ type ipv4_addr; }}\ndelete map {T} spare",
        True,
    ),
    step(
        "redeclare with another timeout",
        f"add set {T} aff {{ type ipv4_addr; flags dynamic,timeout; timeout 30s; }}",
        True,
    ),
    step(
        "redeclare with another type",
        f"add set {T} aff {{ type ipv6_addr; flags dynamic,timeout; timeout 30s; }}",
        False,
    ),
    step("redeclare with other flags", f"add set {T} nets {{ type ipv4_addr; }}", False),
    step(
        "base chain again",
        f"add chain {T} filt {{ type filter hook input priority -10; policy accept; }}",
        True,
    ),
    step(
        "base chain, other policy",
        f"add chain {T} filt {{ type filter hook input priority filter - 10; policy drop; }}",
        True,
    ),
    step(
        "base chain, other priority",
        f"add chain {T} filt {{ type filter hook input priority 0; policy drop; }}",
        False,
    ),
    step(
        "base-chain spec on a regular chain",
        f"add chain {T} sep-a {{ type filter hook output priority 0; policy accept; }}",
        False,
    ),
    step("plain add of a base chain", f"add chain {T} filt", True),
    step(
        "refused transaction changes nothing",
        f"add chain {T} half\nadd rule {T} half accept\n"
        f"add element {T} svc {{ 10.96.0.7 . tcp . 7 : goto half }}\n"
        f"flush map {T} lb\nflush chain {T} services\nadd rule {T} half jump nowhere",
        False,
    ),
    step("flush table keeps elements", f"flush table {T}", True),
    step("delete a chain a map element still names", f"delete chain {T} sep-a", False),
    step(
        "delete the element, then the chain",
        f"delete element {T} svc {{ 10.96.0.1 . tcp . 443 }}\ndelete chain {T} sep-a",
        True,
    ),
    step(
        "comments and blank lines",
        f"# netagent\n\nadd element {T} nets {{ 100.64.0.0/10 }}  # CGNAT\n\n",
        True,
    ),
    step(
        "a block adds to an existing table",
        f"table {T} {{\n\tchain filt {{\n\t\tip saddr 10.1.2.3 drop\n\t}}\n}}",
        True,
    ),
    step("delete table", f"delete table {T}", True),
    step("delete a missing table", f"delete table {T}", False),
    step("flush a missing table", f"flush table {T}", False),
    step("full replacement", f"add table {T}\ndelete table {T}\n{BLOCK}", True),
    step("full replacement again", f"add table {T}\ndelete table {T}\n{BLOCK}", True),
)


# --- reading nft list table text ------------------------------------------------------


@dataclass
class Snapshot:
    """What a listing says, minimally: enough to compare the kernel and the fake."""

    rules: dict[str, int] = field(default_factory=dict)  # chain -> rule count
    hooks: dict[str, str] = field(default_factory=dict)  # base chain -> "HOOK POLICY"
    decls: dict[str, dict[str, str]] = field(default_factory=dict)  # set -> keyword -> value
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # set -> key -> value


_OBJECT_RE = re.compile(r"^(chain|set|map) (\S+) \{$")
_SPEC_RE = re.compile(r"^type \S+ hook (\S+) .*policy (\w+);$")
_EXPIRES_RE = re.compile(r" (?:expires|timeout) \S+")


def parse_elements(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.strip().removesuffix("}").split(","):
        key, _, value = _EXPIRES_RE.sub("", item).strip().partition(" : ")
        out[" ".join(key.split())] = " ".join(value.split())
    return out


def snapshot(text: str) -> Snapshot:
    snap = Snapshot()
    kind, name = "", ""
    pending: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if pending is not None:
            pending.append(line)
        elif match := _OBJECT_RE.match(line):
            kind, name = match.groups()
            if kind == "chain":
                snap.rules[name] = 0
            else:
                snap.decls[name], snap.elements[name] = {}, {}
            continue
        elif not line or line == "}" or line.startswith("table "):
            continue
        elif kind == "chain":
            if spec := _SPEC_RE.match(line):
                snap.hooks[name] = " ".join(spec.groups())
            else:
                snap.rules[name] += 1
            continue
        elif line.startswith("elements = {"):
            pending = [line.removeprefix("elements = {")]
        else:
            keyword, _, value = line.partition(" ")
            if keyword != "size":  # nft adds "size 65535" to some dynamic sets
                snap.decls[name][keyword] = value
            continue
        if line.endswith("}"):
            snap.elements[name] = parse_elements(" ".join(pending))
            pending = None
    return snap


def fake_snapshot(fake: FakeNft) -> Snapshot:
    """The fake's listing read like the kernel's, checked against its own observers."""
    text = fake.list_table("ip", "netagent")
    assert text is not None
    snap = snapshot(text)
    assert snap.rules == {name: len(rules) for name, rules in fake.chains().items()}
    assert snap.elements == {name: fake.elements(name) for name in fake.set_names()}
    return snap


def outcome(runner: NftRunner, payload: str) -> bool:
    try:
        runner.run(payload)
    except NftError:
        return False
    return True


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace, recorded first and always deleted."""
    with scratch_namespaces("nft") as names:
        yield names[0]


@pytest.fixture
def nft(netns: str) -> SubprocessNft:
    runner = SubprocessNft(netns=netns)
    assert runner.available()
    return runner


# --- tests ------------------------------------------------------------------------------


def test_kernel_and_fake_agree_step_by_step(nft: SubprocessNft) -> None:
    fake = FakeNft()
    for s in SCRIPT:
        real_ok, fake_ok = outcome(nft, s.payload), outcome(fake, s.payload)
        assert (real_ok, fake_ok) == (s.ok, s.ok), (
            f"step {s.name!r}: kernel {real_ok}, fake {fake_ok}"
        )
        real = nft.list_table("ip", "netagent")
        if real is None:
            assert fake.tables() == [], f"step {s.name!r}"
            continue
        assert snapshot(real) == fake_snapshot(fake), f"after step {s.name!r}"


def test_state_checks_are_not_vacuous(nft: SubprocessNft) -> None:
    nft.run(SCRIPT[0].payload)
    text = nft.list_table("ip", "netagent")
    assert text is not None
    snap = snapshot(text)
    assert snap.rules == {"sep-a": 2, "sep-b": 1, "services": 3, "pre": 1, "filt": 2}
    assert snap.hooks == {"pre": "prerouting accept", "filt": "input accept"}
    assert snap.elements["svc"] == {
        "10.96.0.1 . tcp . 443": "goto sep-a",
        "10.96.0.2 . udp . 53": "goto sep-b",
    }
    assert snap.elements["nets"] == {"10.0.0.0/8": "", "192.168.0.0/16": ""}
    assert snap.decls["aff"] == {"type": "ipv4_addr", "flags": "dynamic,timeout", "timeout": "10s"}
    nft.run(f"flush table {T}")
    after = nft.list_table("ip", "netagent")
    assert after is not None
    assert sum(snapshot(after).rules.values()) == 0
    assert snapshot(after).elements == snap.elements


def canonical(text: str) -> str:
    """Listing text with each elements block as its sorted elements plus its row lengths.

    nft prints elements in hash order; the fake in insertion order. How many
    elements share a line is kept, so the wrapping is still compared.
    """
    out: list[str] = []
    rows: list[str] | None = None
    for line in text.splitlines():
        if rows is None and line.strip().startswith("elements = {"):
            rows = []
        if rows is None:
            out.append(line)
            continue
        rows.append(line.strip().removeprefix("elements = {").removesuffix("}"))
        if line.endswith("}"):
            items = sorted(i.strip() for row in rows for i in row.split(",") if i.strip())
            shape = [len([i for i in row.split(",") if i.strip()]) for row in rows]
            out.append(f"\t\telements {items} rows {shape}")
            rows = None
    return "\n".join(out)


# Element continuation lines are tabs then spaces, as nft prints them; the tabs are
# written as \t there so the source never mixes tabs and spaces in one indent.
CANONICAL = """\
table ip netagent {
	map svc {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.1 . tcp . 443 : goto sep-a,
\t\t\t     10.96.0.2 . udp . 53 : goto sep-b }
	}

	map ports {
		type inet_service : verdict
		elements = { 1 : accept, 2 : drop, 3 : accept, 4 : accept, 5 : drop,
\t\t\t     6 : drop, 7 : drop }
	}

	map pods {
		type ipv4_addr : ipv4_addr
		elements = { 10.1.0.1 : 10.244.0.1, 10.1.0.2 : 10.244.0.2,
\t\t\t     10.1.0.3 : 10.244.0.3 }
	}

	set nets {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 172.16.0.0/12,
\t\t\t     192.168.0.0/16 }
	}

	set aff {
		type ipv4_addr
		flags dynamic,timeout
		timeout 10s
	}

	chain sep-a {
		meta mark set meta mark | 0x00004000
		meta l4proto tcp dnat to 10.244.0.1:443
	}

	chain sep-b {
		meta l4proto udp dnat to 10.244.0.2:53
	}

	chain empty {
	}

	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport vmap @svc
		ip saddr @nets counter packets 0 bytes 0
		numgen random mod 2 vmap { 0 : goto sep-a, 1 : goto sep-b }
	}

	chain filt {
		type filter hook input priority filter - 10; policy drop;
		ip saddr @aff accept
	}
}
"""


def test_fake_lists_in_nft_layout_and_each_accepts_the_others_listing(
    nft: SubprocessNft,
) -> None:
    fake = FakeNft()
    nft.run(CANONICAL)
    fake.run(CANONICAL)
    real_text, fake_text = nft.list_table("ip", "netagent"), fake.list_table("ip", "netagent")
    assert real_text is not None and fake_text is not None
    assert canonical(fake_text) == canonical(real_text)
    assert fake_text == CANONICAL
    assert fake.list_table("ip", "netagent", terse=True) == nft.list_table(
        "ip", "netagent", terse=True
    )

    # Each side's listing is a payload the other accepts, giving the same state.
    nft.run(f"delete table {T}\n{fake_text}")
    other = FakeNft()
    other.run(real_text)
    again = nft.list_table("ip", "netagent")
    assert again is not None
    assert snapshot(again) == snapshot(real_text) == fake_snapshot(other)


def test_refused_transaction_names_the_line(nft: SubprocessNft) -> None:
    payload = f"add table {T}\nadd chain {T} a\n\nadd rule {T} a jump nowhere\nadd chain {T} b\n"
    errors: list[NftError] = []
    for runner in (nft, FakeNft()):
        with pytest.raises(NftError) as info:
            runner.run(payload)
        errors.append(info.value)
    for err in errors:
        assert err.line == 4
        assert err.payload_line == f"add rule {T} a jump nowhere"
        assert "No such file or directory" in err.message
        assert "line 4" in str(err) and "jump nowhere" in str(err)
    assert "/dev/stdin:4:" in errors[0].stderr
    assert nft.list_table("ip", "netagent") is None, "the add table of line 1 did not land"


def test_missing_table_and_handles(nft: SubprocessNft) -> None:
    fake = FakeNft()
    for runner in (nft, fake):
        assert runner.list_table("ip", "netagent") is None
        assert runner.list_table("ip", "netagent", terse=True) is None
        assert runner.table_handle("ip", "netagent") is None
        runner.run(f"add table {T}\nadd table ip6 netagent")
        first = runner.table_handle("ip", "netagent")
        assert first is not None
        assert runner.table_handle("ip6", "netagent") not in (None, first)
        runner.run(f"add chain {T} c\nflush table {T}")
        assert runner.table_handle("ip", "netagent") == first, "ordinary transactions keep it"
        runner.run(f"delete table {T}\nadd table {T}")
        assert runner.table_handle("ip", "netagent") not in (None, first)
        assert runner.table_handle("inet", "netagent") is None
    assert fake.lists == 8


def test_calls_are_recorded(netns: str) -> None:
    runner = SubprocessNft(netns=netns)
    runner.run(f"add table {T}")
    runner.list_table("ip", "netagent")
    runner.table_handle("ip", "netagent")
    runner.list_table("ip", "netagent", terse=True)
    prefix = ("ip", "netns", "exec", netns, "nft")
    assert runner.calls == [
        ("run", *prefix, "-f", "-"),
        ("list", *prefix, "list", "table", "ip", "netagent"),
        ("tables", *prefix, "-j", "list", "tables"),
        ("list", *prefix, "-t", "list", "table", "ip", "netagent"),
    ]


def test_large_transaction_through_stdin(nft: SubprocessNft) -> None:
    count = 20_000
    elements = ",\n".join(
        f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255} . tcp . 80 : goto sep" for i in range(count)
    )
    payload = (
        f"add table {T}\nadd chain {T} sep\n"
        f"add map {T} svc {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n"
        f"add element {T} svc {{ {elements} }}\n"
    )
    assert len(payload) > 500_000
    nft.run(payload)
    terse = nft.list_table("ip", "netagent", terse=True)
    assert terse is not None and "elements" not in terse
    full = nft.list_table("ip", "netagent")
    assert full is not None
    assert len(snapshot(full).elements["svc"]) == count
