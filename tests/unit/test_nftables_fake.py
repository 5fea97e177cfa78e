"""FakeNft's own semantics, and the runner's pure parts (error parsing, timeouts, argv).

Covers: every refusal the fake models (conflicting and duplicate elements,
absent elements, missing sets, chains and tables, dangling jumps and gotos
in rules, anonymous vmaps and map elements, busy chains and sets,
conflicting redeclarations, flush set/map of the other kind) with the line
nft would name and no state change; the block order (chains, sets, rules);
``;``-separated declarations; comments; atomicity of a refused transaction;
flush table keeping elements; handles changing on re-create; fail_next;
the ``list table`` layout, its terse form and the listing accepted back as a
payload; NftError parsing of real nft stderr; SubprocessNft's argv, stdin,
timeouts and its reading of nft's answers with subprocess stubbed out.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

from netagent.proxy.nftables.fake import FakeNft
from netagent.proxy.nftables.runner import NftError, SubprocessNft, nft_error, run_timeout

T = "ip netagent"

# Element continuation lines are tabs then spaces, as nft prints them; the tabs are
# written as \t there so the source never mixes tabs and spaces in one indent.
BASE = """\
add table ip netagent
table ip netagent {
	map svc {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.1 . tcp . 443 : goto sep-a,
\t\t\t     10.96.0.2 . udp . 53 : goto sep-b }
	}
	set aff { type ipv4_addr; flags dynamic,timeout; timeout 10s; }
	set nets {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 192.168.0.0/16 }
	}
	chain sep-a {
		meta l4proto tcp dnat to 10.244.0.1:443
	}
	chain sep-b {
		meta l4proto udp   dnat to 10.244.0.2:53
	}
	chain services {
		ip daddr . meta l4proto . th dport vmap @svc
		numgen random mod 2 vmap { 0 : goto sep-a, 1 : goto sep-b }
	}
	chain only-in-map {
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
add element ip netagent svc { 10.96.0.3 . tcp . 80 : jump only-in-map }
"""


@pytest.fixture
def fake() -> FakeNft:
    nft = FakeNft()
    nft.run(BASE)
    return nft


def listing(nft: FakeNft) -> str | None:
    lists = nft.lists
    text = nft.list_table("ip", "netagent")
    nft.lists = lists
    return text


def test_base_state_as_observed(fake: FakeNft) -> None:
    assert fake.tables() == [T]
    assert fake.set_names() == ["svc", "aff", "nets"]
    assert fake.chains() == {
        "sep-a": ("meta l4proto tcp dnat to 10.244.0.1:443",),
        "sep-b": ("meta l4proto udp dnat to 10.244.0.2:53",),
        "services": (
            "ip daddr . meta l4proto . th dport vmap @svc",
            "numgen random mod 2 vmap { 0 : goto sep-a, 1 : goto sep-b }",
        ),
        "only-in-map": (),
        "pre": ("jump services",),
        "filt": ("ip saddr @aff accept", "ip saddr @nets counter"),
    }
    assert fake.elements("svc") == {
        "10.96.0.1 . tcp . 443": "goto sep-a",
        "10.96.0.2 . udp . 53": "goto sep-b",
        "10.96.0.3 . tcp . 80": "jump only-in-map",
    }
    assert fake.elements("nets") == {"10.0.0.0/8": "", "192.168.0.0/16": ""}
    assert fake.elements("aff") == {}
    with pytest.raises(KeyError):
        fake.elements("nope")
    assert fake.chains("ip6 netagent") == {}
    assert fake.lists == 0


REFUSED: list[tuple[str, str, str]] = [
    # (what, payload, part of nft's message); the refused command is the payload's first line.
    (
        "element, other value",
        f"add element {T} svc {{ 10.96.0.1 . tcp . 443 : goto sep-b }}",
        "File exists",
    ),
    (
        "one key twice in one command, other values",
        f"add element {T} svc {{ 10.9.9.9 . tcp . 1 : goto sep-a, 10.9.9.9 . tcp . 1 : goto sep-b }}",
        "File exists",
    ),
    ("element of a missing set", f"add element {T} nope {{ 1.2.3.4 }}", "No such file"),
    (
        "verdict to a missing chain",
        f"add element {T} svc {{ 10.9.9.9 . tcp . 1 : goto nowhere }}",
        "No such file",
    ),
    ("set element with a value", f"add element {T} nets {{ 172.16.0.0/12 : accept }}", "not a map"),
    (
        "map element without a value",
        f"add element {T} svc {{ 10.9.9.9 . tcp . 1 }}",
        "Invalid argument",
    ),
    ("absent element", f"delete element {T} svc {{ 10.9.9.9 . tcp . 1 }}", "No such file"),
    (
        "one element deleted twice",
        f"delete element {T} svc {{ 10.96.0.1 . tcp . 443, 10.96.0.1 . tcp . 443 }}",
        "No such file",
    ),
    (
        "element of a missing table",
        "add element ip6 netagent svc { ::1 . tcp . 1 : accept }",
        "No such file",
    ),
    ("rule in a missing chain", f"add rule {T} nowhere accept", "No such file"),
    ("rule naming a missing set", f"add rule {T} filt ip saddr @nope accept", "No such file"),
    ("rule jumping to a missing chain", f"add rule {T} filt jump nowhere", "No such file"),
    ("rule going to a missing chain", f"add rule {T} filt goto nowhere", "No such file"),
    (
        "anonymous vmap to a missing chain",
        f"add rule {T} services numgen random mod 2 vmap {{ 0 : goto sep-a, 1 : goto nowhere }}",
        "No such file",
    ),
    (
        "jump to a chain added later",
        f"add rule {T} filt jump later\nadd chain {T} later",
        "No such file",
    ),
    ("chain a rule jumps to", f"delete chain {T} services", "Device or resource busy"),
    ("chain an anonymous vmap names", f"delete chain {T} sep-b", "Device or resource busy"),
    ("chain only a map element names", f"delete chain {T} only-in-map", "Device or resource busy"),
    ("missing chain", f"delete chain {T} nope", "No such file"),
    ("flush of a missing chain", f"flush chain {T} nope", "No such file"),
    ("referenced map", f"delete map {T} svc", "Device or resource busy"),
    ("referenced set", f"delete set {T} nets", "Device or resource busy"),
    ("missing set", f"delete set {T} nope", "No such file"),
    ("flush set on a map", f"flush set {T} svc", "No such file"),
    ("flush map on a set", f"flush map {T} nets", "No such file"),
    (
        "redeclared key type",
        f"add set {T} aff {{ type ipv6_addr; flags dynamic,timeout; }}",
        "File exists",
    ),
    ("redeclared flags", f"add set {T} nets {{ type ipv4_addr; }}", "File exists"),
    ("map redeclared as a set", f"add set {T} svc {{ type ipv4_addr; }}", "File exists"),
    (
        "redeclared element value",
        f"add map {T} svc {{ type ipv4_addr . inet_proto . inet_service : verdict; "
        "elements = { 10.96.0.1 . tcp . 443 : accept }; }",
        "File exists",
    ),
    ("set without a key type", f"add set {T} bare {{ flags interval; }}", "does not specify key"),
    # nft 1.0.6 on kernel 6.18, checked in a namespace: overlapping intervals are refused
    # (by nft in a plain set, by the kernel for one concatenated key); identical and
    # adjacent ones are accepted.
    (
        "interval inside an existing one",
        f"add element {T} nets {{ 10.1.2.0/24 }}",
        "interval overlaps with an existing one",
    ),
    (
        "concatenated intervals overlapping",
        f"add set {T} fw {{ type ipv4_addr . inet_proto . inet_service . ipv4_addr; "
        "flags interval; elements = { 1.1.1.1 . tcp . 80 . 0.0.0.0/0, "
        "1.1.1.1 . tcp . 80 . 10.0.0.0/8 }; }",
        "File exists",
    ),
    (
        "base chain, other hook",
        f"add chain {T} filt {{ type filter hook output priority -10; policy accept; }}",
        "Operation not supported",
    ),
    (
        "base chain, other priority",
        f"add chain {T} filt {{ type filter hook input priority filter; }}",
        "Operation not supported",
    ),
    (
        "base-chain spec on a regular chain",
        f"add chain {T} sep-a {{ type filter hook output priority 0; policy accept; }}",
        "File exists",
    ),
    ("missing table", "delete table ip nope", "No such file"),
    ("flush of a missing table", "flush table ip6 netagent", "No such file"),
    ("unknown command", "list ruleset", "syntax error"),
    (
        "unbalanced braces",
        f"add element {T} svc {{ 10.96.0.1 . tcp . 443 : goto sep-a",
        "syntax error",
    ),
    ("add set without braces", f"add set {T} plain", "syntax error"),
]


@pytest.mark.parametrize(("what", "payload", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refusals_name_the_line_and_change_nothing(
    fake: FakeNft, what: str, payload: str, message: str
) -> None:
    before = listing(fake)
    handle = fake.table_handle("ip", "netagent")
    payload = f"add chain {T} extra\n# a comment\n{payload}\n"
    with pytest.raises(NftError) as info:
        fake.run(payload)
    err = info.value
    assert message in err.message
    assert err.line == 3
    assert err.payload_line == payload.splitlines()[2]
    assert f"line {err.line}" in str(err) and err.message in str(err)
    assert err.stderr.startswith(f"/dev/stdin:{err.line}:")
    assert listing(fake) == before, "a refused transaction changes nothing"
    assert fake.table_handle("ip", "netagent") == handle
    assert fake.runs[-1] == payload


ACCEPTED: list[tuple[str, str]] = [
    ("element again, same value", f"add element {T} svc {{ 10.96.0.1 . tcp . 443 : goto sep-a }}"),
    (
        "one key twice in one command, same value",
        f"add element {T} svc {{ 10.9.9.9 . tcp . 1 : goto sep-a, 10.9.9.9 . tcp . 1 : goto sep-a }}",
    ),
    ("interval again, identical", f"add element {T} nets {{ 10.0.0.0/8 }}"),
    ("adjacent interval", f"add element {T} nets {{ 11.0.0.0/8 }}"),
    (
        "concatenated intervals of different keys",
        f"add set {T} fw {{ type ipv4_addr . inet_proto . inet_service . ipv4_addr; "
        "flags interval; }\n"
        f"add element {T} fw {{ 1.1.1.1 . tcp . 80 . 0.0.0.0/0, 1.1.1.1 . tcp . 81 . 10.0.0.0/8 }}",
    ),
    ("table again", f"add table {T}"),
    ("chain again", f"add chain {T} sep-a"),
    ("plain add of a base chain", f"add chain {T} filt"),
    ("base chain again", f"add chain {T} filt {{ type filter hook input priority filter - 10; }}"),
    ("set again", f"add set {T} nets {{ type ipv4_addr; flags interval; }}"),
    ("flags in another order", f"add set {T} aff {{ type ipv4_addr; flags timeout,dynamic; }}"),
    (
        "delete map on an unreferenced set",
        f"add set {T} spare {{ type ipv4_addr; }}\ndelete map {T} spare",
    ),
    ("jump to a chain added earlier", f"add chain {T} later\nadd rule {T} filt jump later"),
    ("unhook, then delete", f"flush chain {T} pre\ndelete chain {T} services"),
    (
        "element out, then its chain",
        f"delete element {T} svc {{ 10.96.0.3 . tcp . 80 }}\ndelete chain {T} only-in-map",
    ),
    ("unreferenced set", f"flush chain {T} filt\ndelete set {T} nets"),
    ("full replacement", f"add table {T}\ndelete table {T}\n{BASE}"),
    (
        "jump in a comment is no reference",
        f'add rule {T} filt counter comment "jump nowhere @nope"',
    ),
]


@pytest.mark.parametrize(("what", "payload"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(fake: FakeNft, what: str, payload: str) -> None:
    fake.run(payload)


def test_elements_keys_are_whitespace_normalised(fake: FakeNft) -> None:
    fake.run(f"add element {T} svc {{ 10.96.0.1   .  tcp . 443 :   goto  sep-a }}")
    fake.run(f"delete element {T} svc {{ 10.96.0.2 . udp .    53 }}")
    assert "10.96.0.2 . udp . 53" not in fake.elements("svc")
    fake.run(f"add element {T} nets {{ 172.16.0.0/12,\n  100.64.0.0/10 }}")
    assert list(fake.elements("nets")) == [
        "10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12", "100.64.0.0/10",
    ]  # fmt: skip


def test_element_lines_of_a_multi_line_command(fake: FakeNft) -> None:
    payload = (
        f"add element {T} svc {{ 10.9.9.1 . tcp . 1 : goto sep-a,\n"
        "    10.9.9.2 . tcp . 1 : goto nowhere }\n"
    )
    with pytest.raises(NftError) as info:
        fake.run(payload)
    assert info.value.line == 2
    assert info.value.payload_line == "10.9.9.2 . tcp . 1 : goto nowhere }"


def test_block_applies_chains_then_sets_then_rules() -> None:
    nft = FakeNft()
    nft.run(
        "table ip t {\n"
        "  chain a {\n    ip saddr @s jump b\n  }\n"
        "  map m { type ipv4_addr : verdict; elements = { 1.1.1.1 : goto b } }\n"
        "  chain b {\n    accept\n  }\n"
        "  set s { type ipv4_addr; }\n"
        "}\n"
    )
    assert nft.chains("ip t") == {"a": ("ip saddr @s jump b",), "b": ("accept",)}
    assert nft.set_names("ip t") == ["m", "s"]
    assert nft.elements("m", "ip t") == {"1.1.1.1": "goto b"}


def test_a_block_adds_to_what_exists(fake: FakeNft) -> None:
    fake.run(f"table {T} {{\n\tchain filt {{\n\t\tdrop\n\t}}\n\tset nets {{ type ipv4_addr; "
             "flags interval; elements = { 1.2.3.0/24 } }\n}")  # fmt: skip
    assert fake.chains()["filt"][-1] == "drop"
    assert "1.2.3.0/24" in fake.elements("nets")


def test_comments_and_blank_lines_are_ignored() -> None:
    nft = FakeNft()
    nft.run(
        "# netagent\n\nadd table ip netagent   # ours\n"
        'add chain ip netagent c\nadd rule ip netagent c counter comment "# not a comment"\n\n'
    )
    assert nft.chains() == {"c": ('counter comment "# not a comment"',)}


def test_family_defaults_to_ip() -> None:
    nft = FakeNft()
    nft.run("add table netagent\nadd chain netagent c\nadd table ip6 netagent")
    assert nft.tables() == ["ip netagent", "ip6 netagent"]
    assert nft.chains() == {"c": ()}


def test_flush_table_removes_rules_and_keeps_elements(fake: FakeNft) -> None:
    elements = {name: fake.elements(name) for name in fake.set_names()}
    fake.run(f"flush table {T}")
    assert all(rules == () for rules in fake.chains().values())
    assert set(fake.chains()) == {"sep-a", "sep-b", "services", "only-in-map", "pre", "filt"}
    assert {name: fake.elements(name) for name in fake.set_names()} == elements
    with pytest.raises(NftError, match="busy"):
        fake.run(f"delete chain {T} sep-a")  # still named by an element of svc


def test_redeclaration_updates_timeout_and_policy(fake: FakeNft) -> None:
    fake.run(
        f"add set {T} aff {{ type ipv4_addr; flags dynamic,timeout; timeout 30s; size 1000; }}"
    )
    fake.run(f"add chain {T} filt {{ type filter hook input priority filter - 10; policy drop; }}")
    fake.run(f"add chain {T} filt {{ type filter hook input priority -10; }}")
    text = listing(fake)
    assert text is not None
    assert "\t\ttimeout 30s\n" in text and "\t\tsize 1000\n" in text
    assert "\t\ttype filter hook input priority -10; policy drop;\n" in text


def test_delete_table_then_recreate_changes_the_handle(fake: FakeNft) -> None:
    first = fake.table_handle("ip", "netagent")
    fake.run(f"add chain {T} more\nflush table {T}")
    assert fake.table_handle("ip", "netagent") == first
    fake.run(f"delete table {T}")
    assert fake.table_handle("ip", "netagent") is None
    assert fake.list_table("ip", "netagent") is None
    fake.run(f"add table {T}")
    second = fake.table_handle("ip", "netagent")
    assert second is not None and second != first
    assert fake.chains() == {}
    assert fake.lists == 5


def test_fail_next_fails_without_changing_state(fake: FakeNft) -> None:
    before = listing(fake)
    fake.fail_next(2, "Could not process rule: Cannot allocate memory")
    for _ in range(2):
        with pytest.raises(NftError, match="Cannot allocate memory") as info:
            fake.run(f"add chain {T} new")
        assert info.value.line is None
    assert listing(fake) == before
    fake.run(f"add chain {T} new")
    assert "new" in fake.chains()
    assert fake.runs[-3:] == [f"add chain {T} new"] * 3


def test_available_is_settable() -> None:
    nft = FakeNft()
    assert nft.available()
    nft.is_available = False
    assert not nft.available()


# Element continuation lines are tabs then spaces, as nft prints them; the tabs are
# written as \t there so the source never mixes tabs and spaces in one indent.
LISTED = """\
table ip netagent {
	map svc {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.1 . tcp . 443 : goto sep-a,
\t\t\t     10.96.0.2 . udp . 53 : goto sep-b,
\t\t\t     10.96.0.3 . tcp . 80 : jump only-in-map }
	}

	set aff {
		type ipv4_addr
		flags dynamic,timeout
		timeout 10s
	}

	set nets {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/8, 192.168.0.0/16 }
	}

	chain sep-a {
		meta l4proto tcp dnat to 10.244.0.1:443
	}

	chain sep-b {
		meta l4proto udp dnat to 10.244.0.2:53
	}

	chain services {
		ip daddr . meta l4proto . th dport vmap @svc
		numgen random mod 2 vmap { 0 : goto sep-a, 1 : goto sep-b }
	}

	chain only-in-map {
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


def test_list_table_prints_nft_layout(fake: FakeNft) -> None:
    assert fake.list_table("ip", "netagent") == LISTED
    terse = fake.list_table("ip", "netagent", terse=True)
    assert terse == "".join(line for line in LISTED.splitlines(True) if "\t\t\t" not in line
                            and "elements" not in line)  # fmt: skip
    assert fake.lists == 2


@pytest.mark.parametrize(
    ("decl", "elements", "shown"),
    [
        ("type inet_service : verdict", "1 : accept, 2 : drop, 3 : accept, 4 : accept, 5 : drop, 6 : drop",
         "{ 1 : accept, 2 : drop, 3 : accept, 4 : accept, 5 : drop,\n\t\t\t     6 : drop }"),
        ("type ipv4_addr : ipv4_addr", "1.1.1.1 : 2.2.2.1, 1.1.1.2 : 2.2.2.2, 1.1.1.3 : 2.2.2.3",
         "{ 1.1.1.1 : 2.2.2.1, 1.1.1.2 : 2.2.2.2,\n\t\t\t     1.1.1.3 : 2.2.2.3 }"),
        ("typeof th dport : verdict", "80 : accept, 443 : accept, 53 : drop",
         "{ 80 : accept, 443 : accept, 53 : drop }"),
        ("typeof numgen random mod 8 : ip daddr",
         "0 : 10.0.0.1, 1 : 10.0.0.2, 2 : 10.0.0.3, 3 : 10.0.0.4, 4 : 10.0.0.5, 5 : 10.0.0.6",
         "{ 0 : 10.0.0.1, 1 : 10.0.0.2, 2 : 10.0.0.3, 3 : 10.0.0.4, 4 : 10.0.0.5,\n"
         "\t\t\t     5 : 10.0.0.6 }"),
        ("typeof ip daddr", "1.1.1.1, 1.1.1.2, 1.1.1.3", "{ 1.1.1.1, 1.1.1.2,\n\t\t\t     1.1.1.3 }"),
        ("typeof ip daddr . th dport : verdict", "1.1.1.1 . 80 : accept, 1.1.1.2 . 80 : drop",
         "{ 1.1.1.1 . 80 : accept,\n\t\t\t     1.1.1.2 . 80 : drop }"),
    ],
)  # fmt: skip
def test_elements_wrap_like_nft(decl: str, elements: str, shown: str) -> None:
    nft = FakeNft()
    kind = "map" if " : " in decl else "set"
    nft.run(f"add table {T}\nadd {kind} {T} m {{ {decl}; elements = {{ {elements} }}; }}")
    text = nft.list_table("ip", "netagent")
    assert text is not None
    assert f"\t\telements = {shown}\n" in text


def test_listing_round_trips(fake: FakeNft) -> None:
    text = listing(fake)
    assert text is not None
    fresh = FakeNft()
    fresh.run(text)
    assert listing(fresh) == text
    fake.run(f"delete table {T}\n{text}")
    assert listing(fake) == text
    empty = FakeNft()
    empty.run("add table ip e")
    assert empty.list_table("ip", "e") == "table ip e {\n}\n"


# --- the runner's pure parts ------------------------------------------------------------

REAL_STDERR = """\
/dev/stdin:3:26-30: Error: Could not process rule: Device or resource busy
delete chain ip netagent sep-b
                         ^^^^^
/dev/stdin:4:26-30: Error: Could not process rule: Device or resource busy
delete chain ip netagent sep-a
                         ^^^^^
"""


def test_nft_error_names_the_first_refused_line() -> None:
    payload = "add table ip netagent\n\n  delete chain ip netagent sep-b  \ndelete chain ip netagent sep-a\n"
    err = nft_error(REAL_STDERR, payload)
    assert (err.line, err.payload_line) == (3, "delete chain ip netagent sep-b")
    assert err.message == "Could not process rule: Device or resource busy"
    assert err.stderr == REAL_STDERR
    assert str(err) == (
        "nft -f - refused line 3 'delete chain ip netagent sep-b': "
        "Could not process rule: Device or resource busy"
    )
    assert nft_error("/dev/stdin:9:1: Error: syntax error\n", payload).payload_line is None


def test_nft_error_without_a_line() -> None:
    err = nft_error("netlink: Error: set is not a map\n", "add element ip t s { 1 : 2 }")
    assert (err.line, err.payload_line, err.message) == (None, None, "set is not a map")
    assert str(err) == "nft -f -: set is not a map"
    assert nft_error("", None).message == "(no output)"
    assert nft_error("Segmentation fault\n").message == "Segmentation fault"


def test_run_timeout_scales_with_the_payload() -> None:
    assert run_timeout(0) == 60.0
    assert run_timeout(200_000) == pytest.approx(61.0)
    assert run_timeout(20_000_000) == pytest.approx(160.0)


class StubSubprocess:
    """Stands in for subprocess.run: records argv, stdin and timeout; answers from a queue."""

    def __init__(self, *answers: tuple[int, str, str]) -> None:
        self.answers = list(answers)
        self.seen: list[tuple[list[str], str | None, float]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert kwargs["check"] is False and kwargs["capture_output"] and kwargs["text"]
        self.seen.append((list(argv), kwargs.get("input"), kwargs["timeout"]))
        code, out, err = self.answers.pop(0)
        return subprocess.CompletedProcess(list(argv), code, out, err)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> StubSubprocess:
    fake_run = StubSubprocess()
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    return fake_run


def test_subprocess_nft_run_passes_the_payload_on_stdin(stub: StubSubprocess) -> None:
    nft = SubprocessNft(netns="na-x-000000")
    payload = "add table ip netagent\n" + "#" * 400_000 + "\n"
    stub.answers = [
        (0, "", ""),
        (1, "", "/dev/stdin:1:1-5: Error: syntax error, unexpected junk\n"),
    ]
    nft.run(payload)
    argv, stdin, timeout = stub.seen[0]
    assert argv == ["ip", "netns", "exec", "na-x-000000", "nft", "-f", "-"]
    assert stdin == payload
    assert timeout == pytest.approx(62.0, abs=0.01)
    with pytest.raises(NftError) as info:
        nft.run("bogus\n")
    assert (info.value.line, info.value.payload_line) == (1, "bogus")
    assert [c[0] for c in nft.calls] == ["run", "run"]


def test_subprocess_nft_reads_listings_and_handles(stub: StubSubprocess) -> None:
    nft = SubprocessNft(nft="/opt/nft")
    tables = (
        '{"nftables": [{"metainfo": {"version": "1.0.6"}}, '
        '{"table": {"family": "ip6", "name": "netagent", "handle": 4}}, '
        '{"table": {"family": "ip", "name": "netagent", "handle": 7}}]}'
    )
    stub.answers = [
        (0, "table ip netagent {\n}\n", ""),
        (1, "", "Error: No such file or directory\nlist table ip netagent\n"),
        (1, "", "Error: Operation not permitted (you must be root)\n"),
        (0, tables, ""),
        (0, tables, ""),
        (0, "not json", ""),
    ]
    assert nft.list_table("ip", "netagent", terse=True) == "table ip netagent {\n}\n"
    assert nft.list_table("ip", "netagent") is None
    with pytest.raises(NftError, match="Operation not permitted"):
        nft.list_table("ip", "netagent")
    assert nft.table_handle("ip", "netagent") == 7
    assert nft.table_handle("inet", "netagent") is None
    with pytest.raises(NftError, match="unreadable JSON"):
        nft.table_handle("ip", "netagent")
    assert stub.seen[0][0] == ["/opt/nft", "-t", "list", "table", "ip", "netagent"]
    assert stub.seen[3][0] == ["/opt/nft", "-j", "list", "tables"]
    assert [c[0] for c in nft.calls] == ["list", "list", "list", "tables", "tables", "tables"]


def test_subprocess_nft_timeout_and_missing_binary(
    stub: StubSubprocess, monkeypatch: pytest.MonkeyPatch
) -> None:
    def timed_out(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(list(argv), kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", timed_out)
    with pytest.raises(NftError, match="timed out after 60s"):
        SubprocessNft().run("add table ip netagent\n")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    missing = SubprocessNft()
    assert not missing.available()
    with pytest.raises(NftError, match="not found"):
        missing.list_table("ip", "netagent")
