"""The proxy-mode registry and the Proxier seam: the node sync speaks only the Protocol.

Covers: ``make_proxier`` builds the configured mode and refuses an unknown
one by name; ``cleanup_other_modes`` runs every other mode's cleaner in
every family and never the current one's, reporting (not raising) a
cleaner's failure; the iptables proxier satisfies the Protocol and reports a
backend-neutral SyncResult; and NodeSync drives any Proxier (a recording one
here) with the overlay's intent on IPv4 only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import pytest

from netagent.config import build_config
from netagent.model import IPFamily, NodeInfo, ProxyState
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy import registry
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.proxier import IptablesProxier
from netagent.proxy.proxier import CleanupResult, OwnedObject, Proxier, SyncResult
from netagent.runtime.node_sync import NodeSync, NoOverlay, Snapshot

INTENT = OverlayRules(
    cluster_network=ipaddress.IPv4Network("10.244.0.0/16"),
    local_subnet=ipaddress.IPv4Network("10.244.1.0/24"),
    ip_masq=True,
)


class RecordingProxier:
    """A Proxier that remembers what it was asked to do."""

    mode = "recording"

    def __init__(self, family: IPFamily) -> None:
        self.family = family
        self.calls: list[tuple[int, bool, OverlayRules | None]] = []
        self.needs_full_sync = True

    def sync(
        self, state: ProxyState, *, full: bool = False, overlay: OverlayRules | None = None
    ) -> SyncResult:
        self.calls.append((len(state.services), full, overlay))
        self.needs_full_sync = False
        return SyncResult(
            mode=self.mode, family=self.family, full=full, render_seconds=0.0, apply_seconds=0.0
        )

    def render_objects(
        self, state: ProxyState, overlay: OverlayRules | None = None
    ) -> Sequence[OwnedObject]:
        return ()

    def kernel_objects(self) -> Sequence[OwnedObject]:
        return ()

    def describe(self) -> Sequence[OwnedObject]:
        return ()

    def cleanup(self) -> CleanupResult:
        return CleanupResult(removed=0, summary="nothing")


class Network(NoOverlay):
    def rules_intent(self) -> OverlayRules:
        return INTENT


class Source:
    def __init__(self) -> None:
        self.programmed_count = 0

    def snapshot(self) -> Snapshot:
        return Snapshot()

    def programmed(self, snapshot: Snapshot) -> None:
        self.programmed_count += 1


def test_make_proxier_builds_the_configured_mode_and_refuses_unknown_ones() -> None:
    config = build_config({"node_name": "n1"}, env={})
    assert registry.make_proxier(config, IPFamily.IPV4).mode == "iptables"
    nft_config = build_config({"node_name": "n1", "proxy_mode": "nftables"}, env={})
    assert registry.make_proxier(nft_config, IPFamily.IPV6).mode == "nftables"
    known = "known: iptables, ipvs, nftables, none"
    with pytest.raises(ValueError, match=f"unknown proxy mode 'userspace' \\({known}\\)"):
        registry.mode_named("userspace")


def test_cleanup_other_modes_skips_the_current_one_and_reports_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cleaned: list[tuple[str, IPFamily]] = []

    kept: list[bool] = []

    def cleaner(name: str, fail: bool = False) -> registry.Cleaner:
        def clean(family: IPFamily, keep: Callable[[str], bool]) -> list[CleanupResult]:
            cleaned.append((name, family))
            kept.append(keep("SHARED-BY-A"))
            if fail:
                raise RuntimeError("nft: Operation not permitted")
            return [CleanupResult(removed=2, summary="removed 2")]

        return clean

    def mode(name: str, fail: bool = False) -> registry.ProxyMode:
        return registry.ProxyMode(
            name,
            lambda c, f: RecordingProxier(f),
            cleaner(name, fail),
            "",
            shares=lambda chain: name == "a" and chain == "SHARED-BY-A",
        )

    modes = {"a": mode("a"), "b": mode("b", fail=True), "c": mode("c")}
    monkeypatch.setattr(registry, "MODES", modes)
    failures = registry.cleanup_other_modes("a")
    assert [n for n, _ in cleaned] == ["b", "b", "c", "c"]
    assert {f for _, f in cleaned} == {IPFamily.IPV4, IPFamily.IPV6}
    assert kept == [True] * 4  # the starting mode's shared names are kept by every cleaner
    assert failures == [
        "b IPv4: RuntimeError: nft: Operation not permitted",
        "b IPv6: RuntimeError: nft: Operation not permitted",
    ]


def test_iptables_proxier_is_a_proxier_with_a_neutral_result() -> None:
    proxier: Proxier = IptablesProxier(runner=FakeIptables(), conntrack=None)
    config = build_config({"node_name": "n1", "cluster_cidrs": "10.244.0.0/16"}, env={})
    state = ProxyState(
        services={}, endpoints={}, node=NodeInfo(name="n1"), config=config.proxy_config()
    )
    result = proxier.sync(state, overlay=INTENT)
    assert result.mode == "iptables" and result.family is IPFamily.IPV4 and result.full
    assert result.bytes_written > 0 and result.objects_written > 0
    assert result.rule_counts["nat"] > 0 and "chains written" in result.summary
    assert not proxier.needs_full_sync
    assert proxier.cleanup().removed > 0


def test_node_sync_gives_the_overlay_intent_to_ipv4_only() -> None:
    config = build_config(
        {"node_name": "n1", "cluster_cidrs": "10.244.0.0/16,fd00:10::/48"}, env={}
    )
    made: dict[IPFamily, RecordingProxier] = {}

    def factory(family: IPFamily) -> RecordingProxier:
        made[family] = RecordingProxier(family)
        return made[family]

    source = Source()
    sync = NodeSync(config, source, proxier_factory=factory, network=Network())
    results = sync.sync(full=True)
    assert [r.family for r in results] == [IPFamily.IPV4, IPFamily.IPV6]
    assert made[IPFamily.IPV4].calls == [(0, True, INTENT)]
    assert made[IPFamily.IPV6].calls == [(0, True, None)]
    assert source.programmed_count == 1
    states, last = sync.last_outcome()
    assert [s.family for s in states] == [IPFamily.IPV4, IPFamily.IPV6] and last == results


def test_every_registered_mode_is_a_configurable_mode() -> None:
    from netagent.config import PROXY_MODES

    assert tuple(sorted(registry.MODES)) == tuple(sorted(PROXY_MODES))


def test_none_mode_writes_the_overlay_chains_and_no_service_rule() -> None:
    from netagent.proxy.overlay_only import OverlayOnlyProxier

    fake = FakeIptables()
    config = build_config({"node_name": "n1", "cluster_cidrs": "10.244.0.0/16"}, env={})
    state = ProxyState(
        services={}, endpoints={}, node=NodeInfo(name="n1"), config=config.proxy_config()
    )
    proxier: Proxier = OverlayOnlyProxier(runner=fake)
    result = proxier.sync(state, overlay=INTENT)
    assert result.mode == "none" and result.full
    nat, filt = fake.save("nat"), fake.save("filter")
    assert "-A NETAGENT-OVERLAY-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 " in nat
    assert "-j NETAGENT-OVERLAY-FWD" in filt
    assert "NETAGENT-SERVICES" not in nat + filt
    assert {o.owner for o in proxier.describe()} <= {"overlay", "node"}


def test_iptables_cleanup_keeps_what_the_starting_mode_shares() -> None:
    """iptables -> none: Service chains go, the overlay's chains (written by both) stay."""
    from netagent.proxy.iptables.apply import IptablesApplier

    fake = FakeIptables()
    config = build_config({"node_name": "n1", "cluster_cidrs": "10.244.0.0/16"}, env={})
    svc = {
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.80", "ports": [{"port": 80, "protocol": "TCP"}]},
    }
    from netagent.translate import service_ports

    ports = service_ports(svc)
    state = ProxyState(
        services={p.name: p for p in ports},
        endpoints={},
        node=NodeInfo(name="n1"),
        config=config.proxy_config(),
    )
    IptablesProxier(runner=fake, conntrack=None).sync(state, overlay=INTENT)
    assert "NETAGENT-SERVICES" in fake.save("nat")
    report = IptablesApplier.cleanup(fake, keep=registry.MODES["none"].shares)
    nat, filt = fake.save("nat"), fake.save("filter")
    assert report.chains_deleted and "NETAGENT-SERVICES" not in nat + filt
    assert ":NETAGENT-OVERLAY-POSTRTG" in nat and "-j NETAGENT-OVERLAY-POSTRTG" in nat
    assert ":NETAGENT-OVERLAY-FWD" in filt and "-j NETAGENT-OVERLAY-FWD" in filt
