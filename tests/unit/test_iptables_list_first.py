"""Large payloads on the nft backend: the ``-S`` listing, and jumps into built-in chains.

The fake models two iptables-nft 1.8.9 facts (pinned against the real tool
in tests/lab/test_iptables_list_first_kernel.py): ``-S`` in a payload only
reads, and after it a rule cannot go into a built-in chain that does not
exist in the kernel yet. The applier must therefore list the tables first in
full syncs and large partial ones, keep everything else in one transaction
per table, and put only the jumps into rule-less built-in chains in a second
transaction. Whatever the payload shape, the kernel must end up exactly as a
plain (unlisted) restore leaves it.
"""

from __future__ import annotations

import pytest

from netagent.model import IPFamily
from netagent.proxy.iptables.apply import (
    LIST_FIRST_MIN_CHAINS,
    IptablesApplier,
    list_first_threshold,
)
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.rules import JumpRule, RenderedIptables
from netagent.proxy.iptables.runner import (
    RESTORE_MIN_BYTES_PER_SECOND,
    RESTORE_TIMEOUT,
    IptablesError,
    SubprocessIptables,
    restore_timeout_for,
)

SERVICES_JUMP = '-m comment --comment "netagent service portals" -j NETAGENT-SERVICES'
FIREWALL_JUMP = '-m comment --comment "netagent firewall" -j NETAGENT-FIREWALL'


def ruleset(services: int, endpoints: int = 2) -> RenderedIptables:
    nat: dict[str, tuple[str, ...]] = {}
    dispatch: list[str] = []
    for i in range(services):
        svc = f"NETAGENT-SVC-{i:05d}"
        dispatch.append(f"-A NETAGENT-SERVICES -d 10.96.{i // 250}.{i % 250 + 1}/32 -j {svc}")
        seps = [f"NETAGENT-SEP-{i:05d}-{j}" for j in range(endpoints)]
        nat[svc] = tuple(f"-A {svc} -j {sep}" for sep in seps)
        for j, sep in enumerate(seps):
            nat[sep] = (f"-A {sep} -p tcp -j DNAT --to-destination 10.244.{j}.{i % 250}:80",)
    return RenderedIptables(
        family=IPFamily.IPV4,
        tables={
            "nat": {"NETAGENT-SERVICES": tuple(dispatch), **nat},
            "filter": {"NETAGENT-FIREWALL": ()},
        },
        jumps=(
            JumpRule("nat", "PREROUTING", SERVICES_JUMP),
            JumpRule("nat", "OUTPUT", SERVICES_JUMP),
            JumpRule("filter", "INPUT", FIREWALL_JUMP),
        ),
    )


def commits(payload: str) -> list[str]:
    """The table of each transaction, in payload order."""
    return [line[1:] for line in payload.splitlines() if line.startswith("*")]


def transactions(payload: str) -> list[list[str]]:
    out: list[list[str]] = []
    for line in payload.splitlines():
        if line.startswith("*"):
            out.append([])
        out[-1].append(line)
    return out


def plain_reference(rendered: RenderedIptables, seed: str = "") -> str:
    """The kernel after one full apply through the legacy model (never lists, never splits)."""
    fake = FakeIptables(backend="legacy")
    if seed:
        fake.restore(seed)
    IptablesApplier(fake).apply(rendered, full=True)
    return fake.save()


# --- the fake's model of the tool --------------------------------------------------------


def test_listing_then_rule_into_a_missing_builtin_chain_fails_like_the_tool() -> None:
    fake = FakeIptables()
    with pytest.raises(IptablesError) as info:
        fake.restore("*filter\n-S\n-A INPUT -j ACCEPT\nCOMMIT\n")
    assert "RULE_APPEND failed (No such file or directory): rule in chain INPUT" in str(info.value)
    assert info.value.line == 3
    assert fake.hooked("filter") == set()
    # Without the listing the rule creates the chain, which stays after its rule is gone.
    fake.restore("*filter\n-A INPUT -j ACCEPT\nCOMMIT\n")
    assert fake.hooked("filter") == {"INPUT"}
    fake.restore("*filter\n-D INPUT -j ACCEPT\nCOMMIT\n")
    fake.restore("*filter\n-S\n-I INPUT 1 -j ACCEPT\nCOMMIT\n")
    assert fake.rules("filter", "INPUT") == ["-A INPUT -j ACCEPT"]


def test_a_failed_transaction_does_not_create_builtin_chains() -> None:
    fake = FakeIptables()
    with pytest.raises(IptablesError):
        fake.restore("*filter\n-A INPUT -j ACCEPT\n-A NOPE -j ACCEPT\nCOMMIT\n")
    assert fake.hooked("filter") == set()


def test_listing_reads_only_and_legacy_has_every_builtin_chain() -> None:
    legacy = FakeIptables(backend="legacy")
    assert not legacy.lists_tables_first
    legacy.restore("*filter\n-S\n-A INPUT -j ACCEPT\nCOMMIT\n")
    assert legacy.rules("filter", "INPUT") == ["-A INPUT -j ACCEPT"]
    nft = FakeIptables()
    before = nft.save()
    nft.restore("*nat\n-S\nCOMMIT\n")
    assert nft.save() == before
    with pytest.raises(IptablesError, match="bad listing"):
        nft.restore("*nat\n-S NETAGENT-MISSING\nCOMMIT\n")


# --- the applier ---------------------------------------------------------------------------


def test_full_sync_on_a_fresh_node_lists_first_and_adds_jumps_in_a_second_transaction() -> None:
    fake = FakeIptables()
    rendered = ruleset(20)
    result = IptablesApplier(fake).apply(rendered, full=True)
    assert result.listed_first and result.full
    # One transaction per table, then the jumps into the (absent) built-in chains.
    assert commits(result.payload) == ["mangle", "filter", "nat", "filter", "nat"]
    assert result.transactions == 5
    for first in transactions(result.payload)[:3]:
        assert first[1] == "-S"
        assert not any(line.startswith("-I ") for line in first)
    late = transactions(result.payload)[3:]
    assert late[0] == ["*filter", f"-I INPUT 1 {FIREWALL_JUMP}", "COMMIT"]
    assert late[1] == [
        "*nat",
        f"-I PREROUTING 1 {SERVICES_JUMP}",
        f"-I OUTPUT 1 {SERVICES_JUMP}",
        "COMMIT",
    ]
    assert fake.save() == plain_reference(rendered)
    assert fake.hooked("nat") == {"PREROUTING", "OUTPUT"}


def test_jumps_being_rewritten_stay_in_the_transaction_with_the_chains() -> None:
    """A built-in chain that holds rules exists, so its jumps change atomically with the chains."""
    fake = FakeIptables()
    seed = "*nat\n-A OUTPUT -d 192.0.2.1/32 -j RETURN\nCOMMIT\n"
    fake.restore(seed)
    applier = IptablesApplier(fake)
    first = ruleset(5)
    applier.apply(first, full=True)
    # Someone deletes our PREROUTING jump and puts a foreign rule above our OUTPUT one.
    fake.restore(
        f"*nat\n-D PREROUTING {SERVICES_JUMP}\n-A PREROUTING -j RETURN\n"
        "-I OUTPUT 1 -s 192.0.2.9/32 -j RETURN\nCOMMIT\n"
    )
    second = ruleset(6)
    result = applier.apply(second, full=True)
    nat = [t for t in transactions(result.payload) if t[0] == "*nat"]
    assert len(nat) == 1, result.payload
    assert nat[0][1] == "-S"
    assert f"-D OUTPUT {SERVICES_JUMP}" in nat[0]
    assert f"-I PREROUTING 1 {SERVICES_JUMP}" in nat[0]
    assert f"-I OUTPUT 1 {SERVICES_JUMP}" in nat[0]
    assert fake.rules("nat", "OUTPUT")[0] == f"-A OUTPUT {SERVICES_JUMP}"
    assert fake.rules("nat", "PREROUTING") == [
        f"-A PREROUTING {SERVICES_JUMP}",
        "-A PREROUTING -j RETURN",
    ]


def test_full_sync_that_deletes_chains_lists_first_and_matches_a_plain_restore() -> None:
    fake = FakeIptables()
    applier = IptablesApplier(fake)
    applier.apply(ruleset(30, endpoints=3), full=True)
    smaller = ruleset(10, endpoints=1)
    result = applier.apply(smaller, full=True)
    assert result.listed_first and result.chains_deleted == 20 * 4 + 10 * 2
    assert commits(result.payload) == ["mangle", "filter", "nat"]
    assert fake.save() == plain_reference(smaller)


def test_small_partial_sync_does_not_list_and_a_large_one_does() -> None:
    fake = FakeIptables()
    applier = IptablesApplier(fake)
    base = ruleset(1000)  # 3 nat chains per service
    applier.apply(base, full=True)
    one_more = ruleset(1001)
    small = applier.apply(one_more, full=False)
    assert not small.full and not small.listed_first
    assert "\n-S\n" not in small.payload
    fewer = ruleset(400)  # deletes 1,803 chains of about 3,000: past the threshold
    assert list_first_threshold(3 * 1001 + 5) <= 3 * 601
    large = applier.apply(fewer, full=False)
    assert not large.full and large.listed_first
    assert commits(large.payload) == ["nat"]
    assert fake.save() == plain_reference(fewer)


def test_the_listing_threshold_grows_with_the_square_root_of_the_tables() -> None:
    assert list_first_threshold(10) == LIST_FIRST_MIN_CHAINS
    # 10,000 services x 10 endpoints: about 110,000 chains; listing costs 3.3 s there,
    # while 3,150 unlisted chains cost 0.7 s (docs/performance.md).
    assert 3150 < list_first_threshold(110_000) < 10_000
    assert list_first_threshold(4 * 110_000) == pytest.approx(2 * list_first_threshold(110_000), rel=0.01)


def test_legacy_backend_never_lists_and_keeps_one_transaction_per_table() -> None:
    fake = FakeIptables(backend="legacy")
    result = IptablesApplier(fake).apply(ruleset(20), full=True)
    assert not result.listed_first
    assert commits(result.payload) == ["mangle", "filter", "nat"]
    assert "\n-S\n" not in result.payload


def test_cleanup_lists_first_and_removes_everything() -> None:
    fake = FakeIptables()
    IptablesApplier(fake).apply(ruleset(10), full=True)
    report = IptablesApplier.cleanup(fake)
    assert "-S" in fake.payloads[-1].splitlines()
    assert report.chains_deleted and "NETAGENT" not in fake.save()


def test_a_failure_in_the_late_jumps_keeps_the_chains_and_forces_a_full_sync() -> None:
    class FailLate(FakeIptables):
        fail = True

        def restore(self, payload: str) -> None:
            if self.fail and payload.count("*nat") > 1:
                cut = payload.rindex("COMMIT\n")
                payload = payload[:cut] + "-A NETAGENT-MISSING -j ACCEPT\n" + payload[cut:]
            super().restore(payload)

    fake = FailLate()
    applier = IptablesApplier(fake)
    rendered = ruleset(5)
    with pytest.raises(IptablesError):
        applier.apply(rendered, full=True)
    assert "NETAGENT-SVC-00004" in fake.chains("nat")  # the first transactions stayed
    assert applier.needs_full_sync
    fake.fail = False
    assert applier.apply(rendered, full=False).full
    assert fake.save() == plain_reference(rendered)


# --- the restore timeout -----------------------------------------------------------------


def test_restore_timeout_grows_with_the_payload() -> None:
    assert restore_timeout_for(0) == RESTORE_TIMEOUT
    big = 48_000_000  # a full sync at 10,000 services x 10 endpoints
    assert restore_timeout_for(big) == RESTORE_TIMEOUT + big / RESTORE_MIN_BYTES_PER_SECOND
    assert restore_timeout_for(big) > 10 * 16.2  # ten times the restore measured here
    assert restore_timeout_for(1000, base=5.0) == pytest.approx(5.01)


def test_only_the_nft_backend_lists_tables_first() -> None:
    assert SubprocessIptables(backend="nft").lists_tables_first
    assert not SubprocessIptables(backend="legacy").lists_tables_first
