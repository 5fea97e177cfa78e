"""NodeSync over an ApiSource and the stateful iptables fake: tracked API changes become rules.

Covers: a sync applies the complete tracked state (services, slices, own
node), a deleted Service's chains go, the overlay's backend-neutral rules
intent is rendered by the iptables mode into the same restore, and trigger
times of a failed sync are observed after the next successful one (none
lost, none double-counted).
"""

from __future__ import annotations

import ipaddress

import pytest

from netagent.change_tracker import ChangeTracker
from netagent.config import build_config
from netagent.model import IPFamily, NodeInfo
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.overlay_render import FORWARD_CHAIN, POSTROUTING_CHAIN
from netagent.proxy.iptables.proxier import IptablesProxier
from netagent.runtime.api_source import ApiSource
from netagent.runtime.node_sync import NodeNetwork, NodeSync, NoOverlay
from netagent.translate import endpoint_slice, service_ports


def svc(name: str, ip: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


def eps(name: str, ip: str, trigger: str | None = None) -> dict[str, object]:
    meta: dict[str, object] = {
        "name": f"{name}-1",
        "namespace": "default",
        "labels": {"kubernetes.io/service-name": name},
    }
    if trigger:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger}
    return {
        "metadata": meta,
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "n1"}],
    }


class Harness:
    def __init__(self, network: NodeNetwork | None = None) -> None:
        self.fake = FakeIptables()
        self.tracker = ChangeTracker(start_time=0.0)
        config = build_config({"node_name": "n1", "cluster_cidrs": "10.244.0.0/16"}, env={})
        self.source = ApiSource(self.tracker)
        self.agent = NodeSync(
            config,
            self.source,
            network=network or NoOverlay(),
            proxier_factory=lambda fam: IptablesProxier(
                runner=self.fake, conntrack=None, family=fam
            ),
        )

    def service(self, name: str, ip: str | None) -> None:
        new = service_ports(svc(name, ip)) if ip else None
        self.tracker.on_change("Service", f"default/{name}", None, new)

    def slice(self, name: str, ip: str | None, trigger: str | None = None) -> None:
        new = endpoint_slice(eps(name, ip, trigger)) if ip else None
        self.tracker.on_change("EndpointSlice", f"default/{name}-1", None, new)


def test_sync_applies_tracked_objects_and_deletes_gone_ones() -> None:
    h = Harness()
    h.tracker.on_change(
        "Node", "n1", None, NodeInfo(name="n1", addresses=(ipaddress.ip_address("192.0.2.2"),))
    )
    h.service("web", "10.96.0.80")
    h.slice("web", "10.244.0.11")
    h.agent.sync(full=True)
    nat = h.fake.save("nat")
    assert "10.96.0.80/32" in nat and "10.244.0.11:8080" in nat
    assert h.agent.last_states[0].node.addresses == (ipaddress.ip_address("192.0.2.2"),)

    h.service("web", None)
    h.slice("web", None)
    h.agent.sync(full=False)
    assert "10.96.0.80" not in h.fake.save("nat")


def test_overlay_intent_rides_in_the_same_restore() -> None:
    class Extra(NoOverlay):
        seen: int = 0

        def sync(self, nodes: object) -> None:
            Extra.seen += 1

        def rules_intent(self) -> OverlayRules:
            return OverlayRules(
                cluster_network=ipaddress.IPv4Network("10.244.0.0/16"),
                local_subnet=ipaddress.IPv4Network("10.244.1.0/24"),
                ip_masq=True,
            )

    h = Harness(Extra())
    h.service("web", "10.96.0.80")
    h.slice("web", "10.244.0.11")
    before = len(h.fake.payloads)
    h.agent.sync(full=True)
    assert Extra.seen == 1
    assert len(h.fake.payloads) - before <= 2  # the canary check may add one; rules go in one
    nat = h.fake.save("nat")
    assert f"-A {POSTROUTING_CHAIN} -s 10.244.0.0/16 -d 10.244.0.0/16 " in nat
    assert "! -s 10.244.0.0/16 -d 10.244.1.0/24 " in nat
    assert f'-A POSTROUTING -m comment --comment "netagent overlay" -j {POSTROUTING_CHAIN}' in nat
    assert f"-j {FORWARD_CHAIN}" in h.fake.save("filter")
    assert "10.96.0.80/32" in nat


def test_trigger_times_survive_a_failed_sync() -> None:
    h = Harness()
    h.service("web", "10.96.0.80")
    h.slice("web", "10.244.0.11", trigger="2026-11-22T10:00:00Z")

    def boom(payload: str) -> None:
        raise RuntimeError("restore failed")

    original = h.fake.restore
    h.fake.restore = boom  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        h.agent.sync(full=True)
    assert h.source.take_applied_triggers() == []
    h.fake.restore = original  # type: ignore[method-assign]
    h.agent.sync(full=True)
    applied = h.source.take_applied_triggers()
    assert len(applied) == 1
    assert applied[0] == pytest.approx(1795341600.0)
    assert h.source.take_applied_triggers() == []


def test_families_follow_the_cluster() -> None:
    h = Harness()
    h.service("web", "10.96.0.80")
    h.agent.sync(full=True)
    assert set(h.agent.proxiers) == {IPFamily.IPV4}


def test_own_node_is_reported_before_each_sync_applies() -> None:
    seen: list[NodeInfo | None] = []
    h = Harness()
    h.agent.on_own_node = seen.append
    h.agent.sync(full=True)
    going = NodeInfo(name="n1", taint_keys=("ToBeDeletedByClusterAutoscaler",))
    h.tracker.on_change("Node", "n1", None, going)
    h.tracker.on_change("Node", "n2", None, NodeInfo(name="n2"))
    h.agent.sync(full=False)
    h.tracker.on_change("Node", "n1", going, None)
    h.agent.sync(full=False)
    assert seen == [None, going, None]
