"""IptablesApplier on FakeIptables: full, partial and no-op syncs, failures, the canary, cleanup.

Rulesets are built by hand (a services chain, one chain per service, one per
endpoint) so that these tests depend only on the RenderedIptables contract,
not on the renderer. The central property checked throughout: after any
sequence of applies, the fake holds exactly what one full apply of the last
ruleset into an empty kernel produces, and foreign chains and rules are
untouched.
"""

from __future__ import annotations

import logging

import pytest

from netagent.model import IPFamily
from netagent.proxy.iptables.apply import CANARY_CHAIN, CANARY_TABLES, IptablesApplier
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.rules import JumpRule, RenderedIptables
from netagent.proxy.iptables.runner import IptablesError

SERVICES_JUMP = '-m comment --comment "netagent service portals" -j NETAGENT-SERVICES'
FORWARD_JUMP = '-m comment --comment "netagent forward" -j NETAGENT-FORWARD'

FOREIGN = """\
*filter
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -i docker0 -j RETURN
COMMIT
"""


def ruleset(endpoints: dict[str, list[str]], family: IPFamily = IPFamily.IPV4) -> RenderedIptables:
    """nat: services -> svc -> sep chains with DNAT; filter: one forward chain."""
    nat: dict[str, tuple[str, ...]] = {"NETAGENT-SERVICES": ()}
    services: list[str] = []
    for i, (name, ips) in enumerate(sorted(endpoints.items())):
        svc = f"NETAGENT-SVC-{name.upper()}"
        services.append(f"-A NETAGENT-SERVICES -d 10.96.0.{i + 1}/32 -p udp -j {svc}")
        svc_rules = []
        for j, ip in enumerate(ips):
            sep = f"NETAGENT-SEP-{name.upper()}-{j}"
            prob = f"-m statistic --mode random --probability {1 / (len(ips) - j):.5f} "
            svc_rules.append(f"-A {svc} {prob if j < len(ips) - 1 else ''}-j {sep}")
            nat[sep] = (f"-A {sep} -p udp -j DNAT --to-destination {ip}:53",)
        nat[svc] = tuple(svc_rules)
    nat["NETAGENT-SERVICES"] = tuple(services)
    return RenderedIptables(
        family=family,
        tables={
            "filter": {
                "NETAGENT-FORWARD": ("-A NETAGENT-FORWARD -m mark --mark 0x4000 -j ACCEPT",)
            },
            "nat": nat,
        },
        jumps=(
            JumpRule("filter", "FORWARD", FORWARD_JUMP),
            JumpRule("nat", "PREROUTING", SERVICES_JUMP),
            JumpRule("nat", "OUTPUT", SERVICES_JUMP),
        ),
    )


def many(n: int) -> dict[str, list[str]]:
    return {f"s{i:03d}": [f"10.244.{i}.{k}" for k in range(1, 4)] for i in range(n)}


def reference_save(rendered: RenderedIptables, seed: str = "") -> str:
    """What the kernel holds after one full apply of ``rendered`` onto ``seed``."""
    fake = FakeIptables(rendered.family)
    if seed:
        fake.restore(seed)
    IptablesApplier(fake).apply(rendered, full=True)
    return fake.save()


def owned(fake: FakeIptables, table: str) -> list[str]:
    return [c for c in fake.chains(table) if c.startswith("NETAGENT-")]


class BreakingRunner:
    """Wraps a runner; while ``armed``, restores get a bad line appended to the first table."""

    def __init__(self, inner: FakeIptables) -> None:
        self.inner = inner
        self.armed = False

    @property
    def family(self) -> IPFamily:
        return self.inner.family

    @property
    def lists_tables_first(self) -> bool:
        return self.inner.lists_tables_first

    def restore(self, payload: str) -> None:
        if self.armed:
            first_commit = payload.index("COMMIT\n")
            payload = (
                payload[:first_commit] + "-A NETAGENT-NOPE -j ACCEPT\n" + payload[first_commit:]
            )
        self.inner.restore(payload)

    def save(self, table: str | None = None) -> str:
        return self.inner.save(table)

    def chain_exists(self, table: str, chain: str) -> bool:
        return self.inner.chain_exists(table, chain)


@pytest.fixture
def fake() -> FakeIptables:
    return FakeIptables()


def test_first_sync_is_full_and_installs_chains_canaries_and_jumps(fake: FakeIptables) -> None:
    applier = IptablesApplier(fake)
    assert applier.needs_full_sync
    rendered = ruleset({"dns": ["10.244.1.5", "10.244.2.5"]})
    result = applier.apply(rendered, full=False)
    assert result.full and result.reason == "first sync"
    assert not applier.needs_full_sync
    for table in CANARY_TABLES:
        assert fake.chain_exists(table, CANARY_CHAIN)
    assert owned(fake, "nat") == sorted([CANARY_CHAIN, *rendered.tables["nat"]])
    assert fake.rules("nat", "PREROUTING") == [f"-A PREROUTING {SERVICES_JUMP}"]
    assert fake.rules("nat", "OUTPUT") == [f"-A OUTPUT {SERVICES_JUMP}"]
    assert fake.rules("filter", "FORWARD") == [f"-A FORWARD {FORWARD_JUMP}"]
    assert fake.rules("nat", "NETAGENT-SEP-DNS-1") == list(
        rendered.tables["nat"]["NETAGENT-SEP-DNS-1"]
    )
    assert result.chains_written == len(rendered.tables["nat"]) + 1 + len(CANARY_TABLES)
    assert result.jumps_inserted == 3
    assert result.bytes_written == len(result.payload.encode()) == fake.bytes_written


def test_partial_sync_writes_only_the_changed_chain(fake: FakeIptables) -> None:
    applier = IptablesApplier(fake)
    before = many(50)
    full = applier.apply(ruleset(before), full=True)
    after = {**before, "s007": ["10.244.7.1", "10.244.7.2", "10.244.7.99"]}
    saves = fake.save_calls
    partial = applier.apply(ruleset(after), full=False)
    assert not partial.full
    assert partial.chains_written == 1 and partial.chains_deleted == 0
    assert partial.payload == (
        "*nat\n:NETAGENT-SEP-S007-2 - [0:0]\n"
        "-A NETAGENT-SEP-S007-2 -p udp -j DNAT --to-destination 10.244.7.99:53\nCOMMIT\n"
    )
    assert partial.bytes_written * 100 < full.bytes_written
    assert fake.save_calls == saves, "a partial sync must not read the kernel"
    assert fake.save() == reference_save(ruleset(after))


def test_no_op_sync_runs_no_restore(fake: FakeIptables) -> None:
    applier = IptablesApplier(fake)
    applier.apply(ruleset(many(5)), full=True)
    restores, checks = fake.restore_count, fake.check_calls
    result = applier.apply(ruleset(many(5)), full=False)
    assert (result.full, result.bytes_written, result.payload) == (False, 0, "")
    assert fake.restore_count == restores
    assert fake.check_calls == checks + 1, "exactly one canary check"


def test_deleted_service_chains_are_removed(fake: FakeIptables) -> None:
    applier = IptablesApplier(fake)
    endpoints = many(4)
    applier.apply(ruleset(endpoints), full=True)
    del endpoints["s002"]
    result = applier.apply(ruleset(endpoints), full=False)
    assert not result.full
    assert result.chains_deleted == 4  # the service chain and its three endpoint chains
    assert "-X NETAGENT-SVC-S002" in result.payload.splitlines()
    assert not [c for c in owned(fake, "nat") if "S002" in c]
    assert fake.save() == reference_save(ruleset(endpoints))


def test_restore_failure_forces_full_and_keeps_last_applied(
    fake: FakeIptables, caplog: pytest.LogCaptureFixture
) -> None:
    runner = BreakingRunner(fake)
    applier = IptablesApplier(runner)
    first = ruleset({"a": ["10.244.0.1"], "b": ["10.244.0.2"]})
    applier.apply(first, full=True)
    runner.armed = True
    second = ruleset({"a": ["10.244.0.1"], "b": ["10.244.0.3"]})
    with caplog.at_level(logging.ERROR), pytest.raises(IptablesError):
        applier.apply(second, full=False)
    assert "-A NETAGENT-NOPE -j ACCEPT" in caplog.text, "the failing line is logged"
    assert applier.needs_full_sync
    assert fake.save() == reference_save(first), "nothing of the failed payload landed"
    runner.armed = False
    # Had the failed sync been recorded as applied, this would be a no-op.
    retry = applier.apply(second, full=False)
    assert retry.full and retry.reason == "previous sync failed"
    assert fake.save() == reference_save(second)
    assert not applier.needs_full_sync


def test_failed_first_sync_stays_full(fake: FakeIptables) -> None:
    runner = BreakingRunner(fake)
    runner.armed = True
    applier = IptablesApplier(runner)
    with pytest.raises(IptablesError):
        applier.apply(ruleset(many(2)), full=True)
    assert applier.needs_full_sync
    runner.armed = False
    assert applier.apply(ruleset(many(2)), full=False).full


def test_external_flush_is_caught_by_the_canary(fake: FakeIptables) -> None:
    fake.restore(FOREIGN)
    applier = IptablesApplier(fake)
    rendered = ruleset(many(3))
    applier.apply(rendered, full=True)
    # "firewalld reload": every table flushed and its user chains deleted.
    fake.restore("".join(f"*{t}\n-F\n-X\nCOMMIT\n" for t in ("mangle", "nat", "filter")))
    fake.restore(FOREIGN)
    result = applier.apply(rendered, full=False)
    assert result.full and result.reason == "canary missing"
    assert fake.save() == reference_save(rendered, seed=FOREIGN)


def test_full_sync_repairs_jumps_and_removes_leftover_chains(fake: FakeIptables) -> None:
    fake.restore(FOREIGN)
    # A previous run left: a stale chain, a duplicate jump, a jump below a foreign rule.
    fake.restore(
        "*nat\n:NETAGENT-SERVICES - [0:0]\n:NETAGENT-OLD - [0:0]\n"
        "-A NETAGENT-OLD -j RETURN\n"
        f"-A PREROUTING {SERVICES_JUMP}\n-A PREROUTING {SERVICES_JUMP}\n"
        f"-A OUTPUT -j RETURN\n-A OUTPUT {SERVICES_JUMP}\n-A OUTPUT -j NETAGENT-OLD\nCOMMIT\n"
    )
    rendered = ruleset(many(2))
    result = IptablesApplier(fake).apply(rendered, full=False)
    assert result.full
    assert "NETAGENT-OLD" not in fake.chains("nat")
    assert fake.rules("nat", "PREROUTING") == [
        f"-A PREROUTING {SERVICES_JUMP}",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
    ]
    assert fake.rules("nat", "OUTPUT") == [f"-A OUTPUT {SERVICES_JUMP}", "-A OUTPUT -j RETURN"]
    assert result.jumps_deleted == 4
    # The repaired kernel matches a clean install, apart from the foreign OUTPUT rule.
    clean = reference_save(rendered, seed=FOREIGN + "*nat\n-A OUTPUT -j RETURN\nCOMMIT\n")
    assert fake.save() == clean


def test_full_sync_leaves_correct_jumps_alone(fake: FakeIptables) -> None:
    applier = IptablesApplier(fake)
    applier.apply(ruleset(many(2)), full=True)
    again = applier.apply(ruleset(many(2)), full=True)
    assert (again.jumps_inserted, again.jumps_deleted) == (0, 0)
    assert "PREROUTING" not in again.payload


def test_cleanup_removes_only_ours_and_is_idempotent(fake: FakeIptables) -> None:
    fake.restore(FOREIGN)
    untouched = fake.save()
    applier = IptablesApplier(fake)
    applier.apply(ruleset(many(3)), full=True)
    report = IptablesApplier.cleanup(fake)
    assert fake.save() == untouched
    assert "nat/NETAGENT-SERVICES" in report.chains_deleted
    assert f"mangle/{CANARY_CHAIN}" in report.chains_deleted
    assert len(report.jumps_deleted) == 3
    assert str(report) == f"removed {len(report.chains_deleted)} chains and 3 jump rules"
    restores = fake.restore_count
    again = IptablesApplier.cleanup(fake)
    assert (again.chains_deleted, again.jumps_deleted, again.bytes_written) == ((), (), 0)
    assert fake.restore_count == restores


def test_cleanup_when_never_ran(fake: FakeIptables) -> None:
    fake.restore(FOREIGN)
    report = IptablesApplier.cleanup(fake)
    assert report.bytes_written == 0 and fake.restore_count == 1


def test_payloads_are_deterministic() -> None:
    payloads = []
    for _ in range(2):
        fake = FakeIptables()
        fake.restore(FOREIGN)
        payloads.append(IptablesApplier(fake).apply(ruleset(many(10)), full=True).payload)
    assert payloads[0] == payloads[1]
    lines = payloads[0].splitlines()
    tables = [line for line in lines if line.startswith("*")]
    # FOREIGN has a rule in nat PREROUTING but none in nat OUTPUT: the OUTPUT jump
    # goes in a second nat transaction after every table's first one.
    assert tables == ["*mangle", "*filter", "*nat", "*nat"]
    # Each first section lists the table, then declares the canary, then the chains in order.
    for table in tables[:3]:
        start = lines.index(table)
        assert lines[start + 1 : start + 3] == ["-S", f":{CANARY_CHAIN} - [0:0]"]
    last = len(lines) - 1 - lines[::-1].index("*nat")
    assert lines[last:] == ["*nat", f"-I OUTPUT 1 {SERVICES_JUMP}", "COMMIT"]


@pytest.mark.parametrize(
    "bad",
    [
        RenderedIptables(IPFamily.IPV4, {"nat": {"KUBE-SERVICES": ()}}),
        RenderedIptables(IPFamily.IPV4, {"nat": {"NETAGENT-A": ("-A PREROUTING -j ACCEPT",)}}),
        RenderedIptables(IPFamily.IPV4, {"nat": {"NETAGENT-" + "X" * 30: ()}}),
        RenderedIptables(IPFamily.IPV4, {"bogus": {"NETAGENT-A": ()}}),
        RenderedIptables(IPFamily.IPV4, {}, (JumpRule("nat", "PREROUTING", "-j NETAGENT-NONE"),)),
        RenderedIptables(
            IPFamily.IPV4,
            {"nat": {"NETAGENT-A": ()}},
            (JumpRule("nat", "DOCKER", "-j NETAGENT-A"),),
        ),
        RenderedIptables(IPFamily.IPV6, {}),
    ],
)
def test_refuses_rulesets_that_touch_foreign_things(
    fake: FakeIptables, bad: RenderedIptables
) -> None:
    with pytest.raises(ValueError):
        IptablesApplier(fake).apply(bad, full=True)
    assert fake.restore_count == 0


def test_unreadable_kernel_state_is_an_iptables_error(fake: FakeIptables) -> None:
    class GarbledSave(BreakingRunner):
        def save(self, table: str | None = None) -> str:
            return "iptables-save: warning, table `filter' is incompatible\n"

    applier = IptablesApplier(GarbledSave(fake))
    with pytest.raises(IptablesError, match="cannot read iptables-save"):
        applier.apply(ruleset(many(1)), full=True)
    assert applier.needs_full_sync and fake.restore_count == 0


# --- drift: a hand-flushed chain or a deleted jump forces a full sync ------------------------


def test_drift_check_turns_a_partial_sync_full_after_a_hand_flush() -> None:
    fake = FakeIptables()
    applier = IptablesApplier(fake, drift_check_period=0.0)
    rendered = ruleset({"dns": ["10.244.0.5", "10.244.0.6"]})
    applier.apply(rendered, full=True)
    fake.restore("*nat\n:NETAGENT-SVC-DNS - [0:0]\nCOMMIT\n")  # flushes that chain only
    assert "-A NETAGENT-SVC-DNS" not in fake.save("nat")
    result = applier.apply(rendered, full=False)
    assert result.full and result.reason == "drift: chain nat/NETAGENT-SVC-DNS holds 0 rules, not 2"
    assert fake.save("nat").count("-A NETAGENT-SVC-DNS ") == 2  # repaired


def test_drift_check_finds_a_deleted_jump_rule() -> None:
    fake = FakeIptables()
    applier = IptablesApplier(fake, drift_check_period=0.0)
    rendered = ruleset({"dns": ["10.244.0.5"]})
    applier.apply(rendered, full=True)
    fake.restore(f"*nat\n-D OUTPUT {SERVICES_JUMP}\nCOMMIT\n")
    result = applier.apply(rendered, full=False)
    assert result.full and "nat/OUTPUT holds 0 netagent jump rules, not 1" in result.reason
    assert f"-A OUTPUT {SERVICES_JUMP}" in fake.save("nat")


def test_drift_check_runs_at_most_once_per_period() -> None:
    fake = FakeIptables()
    applier = IptablesApplier(fake, drift_check_period=3600.0)
    rendered = ruleset({"dns": ["10.244.0.5", "10.244.0.6"]})
    applier.apply(rendered, full=True)
    applier.apply(rendered, full=False)  # the first partial sync checks (and finds nothing)
    fake.restore("*nat\n:NETAGENT-SVC-DNS - [0:0]\nCOMMIT\n")
    assert not applier.apply(rendered, full=False).full  # the next check is an hour away


def test_without_a_drift_period_the_kernel_is_not_read_on_partial_syncs() -> None:
    fake = FakeIptables()
    applier = IptablesApplier(fake)
    rendered = ruleset({"dns": ["10.244.0.5", "10.244.0.6"]})
    applier.apply(rendered, full=True)
    fake.restore("*nat\n:NETAGENT-SVC-DNS - [0:0]\nCOMMIT\n")
    assert not applier.apply(rendered, full=False).full


def test_no_drift_on_an_untouched_ruleset() -> None:
    fake = FakeIptables()
    applier = IptablesApplier(fake, drift_check_period=0.0)
    rendered = ruleset({"dns": ["10.244.0.5", "10.244.0.6"]})
    applier.apply(rendered, full=True)
    assert not applier.apply(rendered, full=False).full
