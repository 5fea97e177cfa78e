"""OverlayNetwork.sync with fake kernel and fake API: start-up, publishing, and the CNI hand-off.

The CNI files (subnet.env and the conflist) are the container runtime's
signal that pods can be attached, so they must only appear once cbr0 exists
as a bridge and holds its address. These tests drive the real OverlayNetwork
with FakeOverlayKernel and FakeNodeApi; only the underlay discovery and the
sysctl writes (host I/O) are replaced.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from netagent.config import AgentConfig
from netagent.model import NodeInfo
from netagent.overlay import agent as overlay_agent
from netagent.overlay.agent import OverlayNetwork
from netagent.overlay.kernel_fake import FakeOverlayKernel
from netagent.overlay.model import OverlayConfig
from netagent.overlay.node_api_fake import FakeNodeApi
from netagent.overlay.underlay import Underlay
from netagent.proxy.iptables.overlay_render import render_overlay_rules

NET = ipaddress.IPv4Network("10.244.0.0/16")
PUBLIC = ipaddress.IPv4Address("192.0.2.11")


class RecordingPatcher:
    """Stands in for NodePatcher: keeps every annotation patch."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def patch_annotations(self, name: str, patch: Any) -> None:
        self.patches.append((name, dict(patch)))


@pytest.fixture(autouse=True)
def no_host_io(monkeypatch: pytest.MonkeyPatch) -> None:
    underlay = Underlay(
        device="eth0", address=PUBLIC, mtu=1500, subnets=(ipaddress.IPv4Network("192.0.2.0/24"),)
    )
    monkeypatch.setattr(overlay_agent, "find_underlay", lambda **_: underlay)
    monkeypatch.setattr(overlay_agent, "ensure_overlay_sysctls", lambda _cfg: None)


def network(tmp_path: Path) -> tuple[OverlayNetwork, FakeOverlayKernel, RecordingPatcher]:
    kernel = FakeOverlayKernel()
    kernel.add_foreign_link("eth0", mtu=1500)
    api = FakeNodeApi()
    api.add_node("node-1", pod_cidr="10.244.1.0/24")
    patcher = RecordingPatcher()
    config = AgentConfig(
        node_name="node-1",
        cluster_cidrs=(NET,),
        overlay_backend="vxlan",
        subnet_file=tmp_path / "subnet.env",
        cni_conf_file=tmp_path / "10-netagent.conflist",
    )
    net = OverlayNetwork(
        config, OverlayConfig(network=NET), node_api=api, patcher=patcher, kernel=kernel
    )
    return net, kernel, patcher


NODES = {"node-1": NodeInfo(name="node-1")}


def test_first_sync_builds_devices_publishes_and_writes_cni_files(tmp_path: Path) -> None:
    net, kernel, patcher = network(tmp_path)
    net.sync(NODES)
    cbr0 = kernel.link("cbr0")
    assert cbr0 is not None and cbr0.kind == "bridge"
    assert ipaddress.IPv4Interface("10.244.1.1/24") in kernel.addresses("cbr0")
    env = (tmp_path / "subnet.env").read_text()
    assert "FLANNEL_SUBNET=10.244.1.1/24" in env and "FLANNEL_MTU=1450" in env
    conflist = json.loads((tmp_path / "10-netagent.conflist").read_text())
    assert conflist["plugins"][0]["bridge"] == "cbr0"
    ((name, patch),) = patcher.patches
    annotations = patch["metadata"]["annotations"]
    assert name == "node-1"
    assert annotations["flannel.alpha.coreos.com/public-ip"] == str(PUBLIC)


def test_cbr0_that_is_not_a_bridge_keeps_the_cni_files_unwritten(tmp_path: Path) -> None:
    net, kernel, _ = network(tmp_path)
    kernel.add_foreign_link("cbr0", "veth")
    net.sync(NODES)
    assert not (tmp_path / "subnet.env").exists()
    assert not (tmp_path / "10-netagent.conflist").exists()
    link = kernel.link("cbr0")
    assert link is not None and link.kind == "veth"  # someone else's link is left alone


def test_failed_bridge_address_keeps_cni_files_until_a_later_sync_succeeds(
    tmp_path: Path,
) -> None:
    net, kernel, _ = network(tmp_path)
    kernel.fail(
        "add_address",
        OSError(errno.EPERM, "Operation not permitted"),
        when=lambda subject: subject[0] == "cbr0",
    )
    net.sync(NODES)
    assert kernel.link("cbr0") is not None
    assert not (tmp_path / "subnet.env").exists()
    assert not (tmp_path / "10-netagent.conflist").exists()
    net.sync(NODES)  # the fault fired once; the retry succeeds
    assert ipaddress.IPv4Interface("10.244.1.1/24") in kernel.addresses("cbr0")
    assert (tmp_path / "subnet.env").exists() and (tmp_path / "10-netagent.conflist").exists()


def test_failed_bridge_creation_keeps_cni_files_unwritten(tmp_path: Path) -> None:
    net, kernel, _ = network(tmp_path)
    kernel.fail("create_bridge", OSError(errno.ENOMEM, "Cannot allocate memory"))
    net.sync(NODES)
    assert kernel.link("cbr0") is None
    assert not (tmp_path / "subnet.env").exists()


@pytest.mark.parametrize("ip_masq", [True, False])
def test_from_config_carries_ip_masq_to_rules_and_subnet_env(
    ip_masq: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes.client import ApiClient

    kernel = FakeOverlayKernel()
    kernel.add_foreign_link("eth0", mtu=1500)
    monkeypatch.setattr(overlay_agent, "PyrouteOverlayKernel", lambda: kernel)
    api = FakeNodeApi()
    api.add_node("node-1", pod_cidr="10.244.1.0/24")
    monkeypatch.setattr(overlay_agent, "KubernetesNodeApi", lambda _client: api)
    config = AgentConfig(
        node_name="node-1",
        cluster_cidrs=(NET,),
        overlay_backend="vxlan",
        overlay_ip_masq=ip_masq,
        subnet_file=tmp_path / "subnet.env",
        cni_conf_file=None,
    )
    net = OverlayNetwork.from_config(config, ApiClient())
    net._patcher = RecordingPatcher()  # type: ignore[assignment]
    net.sync(NODES)
    env = (tmp_path / "subnet.env").read_text()
    assert f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}" in env
    intent = net.rules_intent()
    assert intent is not None
    assert intent.ip_masq is ip_masq
    assert str(intent.cluster_network) == str(NET) and intent.local_subnet is not None
    # What the iptables mode makes of it: masquerade rules exactly when ip_masq is on.
    nat = render_overlay_rules(intent).tables["nat"]["NETAGENT-OVERLAY-POSTRTG"]
    assert any("MASQUERADE" in r for r in nat) is ip_masq


def test_a_persisting_failure_is_warned_once_and_its_end_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    net, kernel, _ = network(tmp_path)
    kernel.add_foreign_link("cbr0", "veth")  # in the way: cbr0 cannot be built
    caplog.set_level(logging.DEBUG, logger="netagent.overlay.agent")
    for _ in range(3):
        net.sync(NODES)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["overlay: cbr0 exists and is a veth link"]
    repeats = [r for r in caplog.records if r.levelno == logging.DEBUG and "cbr0 exists" in r.getMessage()]
    assert len(repeats) == 2
    kernel.delete_link("cbr0")
    caplog.clear()
    net.sync(NODES)
    assert "overlay: resolved: cbr0 exists and is a veth link" in caplog.text
    assert (tmp_path / "subnet.env").exists()
