"""The iptables seam without root: FakeIptables' restore/save semantics and the runner's pure parts.

The fake must refuse what iptables-restore --noflush refuses (checked against
iptables 1.8.9, nft and legacy backends), otherwise applier tests built on it
prove nothing: create-or-flush declarations, -I/-D/-X/-F rules, jumps to
missing or built-in chains, per-table COMMIT atomicity, error line numbers.
The runner's pure parts are its error-line parsing, iptables-save parsing,
backend detection (with canned command output) and its missing-binary error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from netagent.model import IPFamily
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.runner import (
    CommandOutput,
    IptablesError,
    SubprocessIptables,
    detect_backend,
    failing_line,
    parse_save,
    resolve_backend,
    rule_target,
)


def restore(fake: FakeIptables, *lines: str) -> None:
    fake.restore("\n".join(lines) + "\n")


@pytest.fixture
def fake() -> FakeIptables:
    return FakeIptables()


def test_declaration_creates_then_flushes(fake: FakeIptables) -> None:
    restore(fake, "*nat", ":NA-X - [0:0]", "-A NA-X -j RETURN", "-A NA-X -j ACCEPT", "COMMIT")
    assert fake.rules("nat", "NA-X") == ["-A NA-X -j RETURN", "-A NA-X -j ACCEPT"]
    restore(fake, "*nat", ":NA-X - [0:0]", "COMMIT")
    assert "NA-X" in fake.chains("nat")
    assert fake.rules("nat", "NA-X") == []


def test_builtin_declaration_sets_policy_without_flushing(fake: FakeIptables) -> None:
    restore(fake, "*filter", "-A INPUT -j ACCEPT", "COMMIT")
    restore(fake, "*filter", ":INPUT DROP [0:0]", "COMMIT")
    assert fake.rules("filter", "INPUT") == ["-A INPUT -j ACCEPT"]
    assert ":INPUT DROP [0:0]" in fake.save("filter").splitlines()


@pytest.mark.parametrize(
    ("lines", "complaint"),
    [
        (["-A NOPE -j ACCEPT"], "No chain"),
        ([":NA-A - [0:0]", "-A NA-A -j NA-MISSING"], "does not exist"),
        ([":NA-A - [0:0]", "-A NA-A -j INPUT"], "built-in"),
        ([":NA-A - [0:0]", "-A NA-A -j DNAT --to-destination 10.0.0.1"], "nat table"),
        (["-X INPUT"], "built-in"),
        (["-X NA-NEVER"], "No chain"),
        (["-I INPUT 2 -j ACCEPT"], "Index of insertion"),
        (["-D INPUT -j ACCEPT"], "Bad rule"),
        ([":NA-A - [0:0]", "-N NA-A"], "already exists"),
        (["-Q INPUT"], "unknown command"),
    ],
)
def test_refused_lines(fake: FakeIptables, lines: list[str], complaint: str) -> None:
    before = fake.save()
    with pytest.raises(IptablesError, match=complaint) as info:
        restore(fake, "*filter", *lines, "COMMIT")
    assert info.value.line == 1 + len(lines)
    assert info.value.line_text == lines[-1]
    assert fake.save() == before


def test_nat_refuses_drop(fake: FakeIptables) -> None:
    with pytest.raises(IptablesError, match="not intended for filtering"):
        restore(fake, "*nat", "-A PREROUTING -j DROP", "COMMIT")


def test_delete_chain_refused_while_referenced_or_not_empty(fake: FakeIptables) -> None:
    restore(
        fake,
        "*filter",
        ":NA-A - [0:0]",
        ":NA-B - [0:0]",
        "-A NA-A -j NA-B",
        "-A INPUT -j NA-A",
        "COMMIT",
    )
    with pytest.raises(IptablesError, match="referenced"):
        restore(fake, "*filter", "-X NA-B", "COMMIT")
    with pytest.raises(IptablesError, match="has rules"):
        restore(fake, "*filter", "-D INPUT -j NA-A", "-X NA-A", "COMMIT")
    # Flushing the referrer first (as the applier's payloads do) makes -X legal.
    restore(fake, "*filter", ":NA-A - [0:0]", "-D INPUT -j NA-A", "-X NA-B", "-X NA-A", "COMMIT")
    assert [c for c in fake.chains("filter") if c.startswith("NA-")] == []
    assert fake.rules("filter", "INPUT") == []


def test_insert_positions_and_delete_first_match(fake: FakeIptables) -> None:
    restore(
        fake,
        "*nat",
        ":NA-S - [0:0]",
        "-A PREROUTING -j RETURN",
        '-I PREROUTING 1 -m comment --comment "a b" -j NA-S',
        "-I PREROUTING 2 -j NA-S",
        "-A PREROUTING -j NA-S",
        "COMMIT",
    )
    assert fake.rules("nat", "PREROUTING") == [
        '-A PREROUTING -m comment --comment "a b" -j NA-S',
        "-A PREROUTING -j NA-S",
        "-A PREROUTING -j RETURN",
        "-A PREROUTING -j NA-S",
    ]
    # Quoting differences do not matter to -D, and only the first match goes.
    restore(
        fake,
        "*nat",
        "-D PREROUTING -m comment --comment 'a b' -j NA-S",
        "-D PREROUTING -j NA-S",
        "COMMIT",
    )
    assert fake.rules("nat", "PREROUTING") == ["-A PREROUTING -j RETURN", "-A PREROUTING -j NA-S"]
    restore(fake, "*nat", "-D PREROUTING 2", "COMMIT")
    assert fake.rules("nat", "PREROUTING") == ["-A PREROUTING -j RETURN"]


def test_each_commit_is_atomic_and_a_failure_stops_the_rest(fake: FakeIptables) -> None:
    """Like the real tool: filter (committed) stays, nat (failing) and mangle (after) do not."""
    with pytest.raises(IptablesError) as info:
        restore(
            fake,
            "*filter",
            ":NA-F - [0:0]",
            "COMMIT",
            "*nat",
            ":NA-N - [0:0]",
            "-A NA-N -j NA-GONE",
            "COMMIT",
            "*mangle",
            ":NA-M - [0:0]",
            "COMMIT",
        )
    assert (info.value.line, info.value.line_text) == (6, "-A NA-N -j NA-GONE")
    assert "NA-F" in fake.chains("filter")
    assert "NA-N" not in fake.chains("nat")
    assert "NA-M" not in fake.chains("mangle")


def test_missing_commit_discards_the_table(fake: FakeIptables) -> None:
    with pytest.raises(IptablesError, match="COMMIT expected"):
        restore(fake, "*nat", ":NA-X - [0:0]")
    assert "NA-X" not in fake.chains("nat")


def test_flush_all_and_delete_all_user_chains(fake: FakeIptables) -> None:
    restore(fake, "*nat", ":NA-A - [0:0]", "-A NA-A -j RETURN", "-A OUTPUT -j NA-A", "COMMIT")
    restore(fake, "*nat", "-F", "-X", "COMMIT")
    assert fake.chains("nat") == ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
    assert fake.rules("nat", "OUTPUT") == []


def test_save_round_trips_through_parse_save_and_restore(fake: FakeIptables) -> None:
    restore(
        fake,
        "*nat",
        ":NA-B - [0:0]",
        ":NA-A - [0:0]",
        "-A NA-A -p udp -j DNAT --to-destination 10.0.0.1:53",
        '-A PREROUTING -m comment --comment "x y" -j NA-B',
        "COMMIT",
        "*filter",
        "-A FORWARD -j ACCEPT",
        "COMMIT",
    )
    text = fake.save()
    tables = parse_save(text)
    assert list(tables["nat"].chains) == [
        "PREROUTING",
        "INPUT",
        "OUTPUT",
        "POSTROUTING",
        "NA-A",
        "NA-B",
    ]
    assert tables["nat"].rules["PREROUTING"] == ['-A PREROUTING -m comment --comment "x y" -j NA-B']
    assert tables["filter"].rules["FORWARD"] == ["-A FORWARD -j ACCEPT"]
    # The text is a valid payload: loading it into a fresh fake gives the same state.
    other = FakeIptables()
    other.restore(text)
    assert other.save() == text
    assert list(parse_save(fake.save("nat"))) == ["nat"]


def test_records_payloads_and_reads(fake: FakeIptables) -> None:
    restore(fake, "*filter", ":NA-A - [0:0]", "COMMIT")
    with pytest.raises(IptablesError):
        restore(fake, "*filter", "-X NOPE", "COMMIT")
    fake.save()
    assert fake.chain_exists("filter", "NA-A")
    assert not fake.chain_exists("nat", "NA-A")
    assert fake.restore_count == 2
    assert fake.bytes_written == sum(len(p.encode()) for p in fake.payloads)
    assert (fake.save_calls, fake.check_calls) == (1, 2)


# --- the real runner's pure parts ---------------------------------------------------------


@pytest.mark.parametrize(
    "stderr",
    [
        "iptables-restore v1.8.9 (legacy): unknown option\nError occurred at line: 3\nTry ...",
        "iptables-nft-restore: line 3 failed: Index of insertion too big.",
        "iptables-restore: line 3 failed",
    ],
)
def test_failing_line_from_both_backends(stderr: str) -> None:
    payload = "*nat\n:NA-A - [0:0]\n-A NA-A --bogus\nCOMMIT\n"
    assert failing_line(stderr, payload) == (3, "-A NA-A --bogus")


def test_failing_line_absent() -> None:
    assert failing_line("something else broke", "*nat\n") == (None, None)


def test_rule_target() -> None:
    assert rule_target('-A PREROUTING -m comment --comment "-j X" -j NA-S') == "NA-S"
    assert rule_target("-A NA-S -g NA-T") == "NA-T"
    assert rule_target("-A NA-S -p tcp") is None


def test_parse_save_rejects_stray_lines() -> None:
    with pytest.raises(ValueError, match="outside a table"):
        parse_save("-A INPUT -j ACCEPT\n")


def canned(outputs: dict[str, str | None]) -> tuple[list[list[str]], CommandOutput]:
    """A command runner answering from ``outputs`` keyed by the joined argv."""
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str | None:
        calls.append(list(argv))
        return outputs.get(" ".join(argv))

    return calls, run


def save_with_rules(n: int) -> str:
    return "*filter\n:INPUT ACCEPT [0:0]\n" + "-A INPUT -j ACCEPT\n" * n + "COMMIT\n"


BOTH_INSTALLED = {"iptables-nft --version": "v1.8.9", "iptables-legacy --version": "v1.8.9"}


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        # kubelet's hint chain wins even when legacy shows more rules
        (
            {
                "iptables-nft-save -t mangle": "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n",
                "iptables-legacy-save": save_with_rules(50),
            },
            "nft",
        ),
        ({"ip6tables-legacy-save": "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"}, "legacy"),
        (
            {"iptables-legacy-save": save_with_rules(3), "iptables-nft-save": save_with_rules(2)},
            "legacy",
        ),
        (
            {"iptables-legacy-save": save_with_rules(2), "iptables-nft-save": save_with_rules(2)},
            "nft",
        ),
        ({"iptables-nft-save": save_with_rules(1)}, "nft"),
        ({}, "nft"),
    ],
)
def test_detect_backend(outputs: dict[str, str | None], expected: str) -> None:
    _, run = canned({**BOTH_INSTALLED, **outputs})
    assert detect_backend(run=run) == expected


def test_detect_backend_with_one_backend_installed_does_not_count() -> None:
    calls, run = canned({"iptables-legacy --version": "v1.8.9"})
    assert detect_backend(run=run) == "legacy"
    assert all(not c[0].endswith("-save") for c in calls)
    _, run = canned({})
    with pytest.raises(IptablesError, match="neither"):
        detect_backend(run=run)


def test_resolve_backend_explicit_and_bad() -> None:
    assert resolve_backend("legacy") == "legacy"
    assert resolve_backend("nft") == "nft"
    with pytest.raises(ValueError, match="auto"):
        resolve_backend("iptables")


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    runner = SubprocessIptables(family=IPFamily.IPV6, backend="legacy")
    assert not runner.available()
    with pytest.raises(IptablesError, match="ip6tables-legacy-restore not found"):
        runner.restore("*nat\nCOMMIT\n")
    with pytest.raises(IptablesError, match="ip6tables-legacy-save not found"):
        runner.save("nat")


def test_subprocess_runner_rejects_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        SubprocessIptables(backend="iptables")  # type: ignore[arg-type]
