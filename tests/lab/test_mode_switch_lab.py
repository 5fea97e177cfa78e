"""A node restarted in another mode keeps nothing of the first (real kernel, two-node cluster).

Covers, on node-1 of a VXLAN cluster whose agent is restarted with other
flags each time:

* vxlan -> host-gw: the VXLAN device (and with it every FDB and neighbour
  entry) is gone, the routes to the peer are plain host-gw routes, traffic
  still crosses;
* host-gw -> none: no route of protocol 78, no VXLAN device, and no
  ``NETAGENT-OVERLAY-…`` chain or jump rule in iptables-save, while the
  Service chains stay;
* none -> vxlan: the overlay comes back whole;
* proxy mode iptables -> none -> iptables: in ``none`` (overlay only, next
  to another proxy) no Service chain or jump is left, the overlay's chains
  and pod traffic stay, and switching back brings the Service rules back;
* the iptables mode's leftovers cleaner, which the agent runs at start for
  every mode other than the configured one, leaves no ``NETAGENT-`` chain or
  jump on a programmed node: what a switch away from iptables relies on.
  (When IPVS and nftables land, their switches join these.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnslab.cluster import ClusterLab

pytestmark = pytest.mark.lab

SYNC_ARGS = ["--sync-period", "2s", "--min-sync-period", "100ms"]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[ClusterLab]:
    cluster = ClusterLab(
        nodes=2, overlay="vxlan", workdir=tmp_path / "lab", keep_workdir=True, agent_args=SYNC_ARGS
    )
    try:
        cluster.up(pods_per_node=1)
        yield cluster
    finally:
        cluster.down()


def ip_json(lab: ClusterLab, node: str, *args: str) -> Any:
    return json.loads(lab.ns_exec(node, ["ip", "-j", *args]).stdout or "[]")


def owned_routes(lab: ClusterLab, node: str) -> list[dict[str, Any]]:
    return list(ip_json(lab, node, "route", "show", "proto", "78"))


def has_link(lab: ClusterLab, node: str, name: str) -> bool:
    return any(link["ifname"] == name for link in ip_json(lab, node, "link", "show"))


def netagent_lines(lab: ClusterLab, node: str) -> list[str]:
    """Every chain declaration and rule of netagent's in both tables (iptables-save)."""
    return [line for line in lab.iptables_save(node).splitlines() if "NETAGENT-" in line]


def restart(lab: ClusterLab, node: str, *flags: str) -> None:
    assert lab.stop_agent(node) == 0
    agent = lab.start_agent(node, list(flags))
    agent.wait_for_log(r"synced IPv4 \(full\)", timeout=40)


def test_overlay_switches_leave_nothing_of_the_previous_mode(lab: ClusterLab) -> None:
    peer = lab.node("node-2")
    assert has_link(lab, "node-1", "flannel.1")
    assert any(r["dst"] == peer.pod_cidr and r["dev"] == "flannel.1" for r in owned_routes(lab, "node-1"))
    assert any("NETAGENT-OVERLAY-POSTRTG" in line for line in netagent_lines(lab, "node-1"))

    # vxlan -> host-gw: no VXLAN device; the peer's route goes via its underlay IP.
    restart(lab, "node-1", "--overlay", "host-gw")
    assert not has_link(lab, "node-1", "flannel.1")
    routes = owned_routes(lab, "node-1")
    assert [r["dst"] for r in routes] == [peer.pod_cidr]
    assert routes[0]["gateway"] == peer.ip and routes[0]["dev"] != "flannel.1"

    # host-gw -> none: no overlay route, no overlay chain or jump; Service chains stay.
    restart(lab, "node-1", "--overlay", "none")
    assert owned_routes(lab, "node-1") == []
    assert not has_link(lab, "node-1", "flannel.1")
    lines = netagent_lines(lab, "node-1")
    assert not [line for line in lines if "OVERLAY" in line or "netagent overlay" in line]
    assert any(line.startswith(":NETAGENT-SERVICES") for line in lines)
    log = lab.node("node-1").agent.log_text()  # type: ignore[union-attr]
    assert "overlay is off: removed the previous overlay's" in log

    # none -> vxlan: the whole overlay is back.
    restart(lab, "node-1")
    assert has_link(lab, "node-1", "flannel.1")
    assert any(r["dst"] == peer.pod_cidr and r["dev"] == "flannel.1" for r in owned_routes(lab, "node-1"))
    assert any("NETAGENT-OVERLAY-POSTRTG" in line for line in netagent_lines(lab, "node-1"))


def test_leftovers_of_the_iptables_mode_are_removed_for_another_mode(lab: ClusterLab) -> None:
    """What the agent runs at start in any mode but iptables: nothing of iptables stays."""
    assert any(line.startswith(":NETAGENT-SERVICES") for line in netagent_lines(lab, "node-1"))
    foreign = ["iptables", "-t", "nat", "-N", "KUBE-SERVICES"]
    lab.ns_exec("node-1", foreign)  # someone else's chain: must stay
    assert lab.stop_agent("node-1") == 0
    script = (
        "from netagent.proxy.registry import cleanup_other_modes\n"
        "failures = cleanup_other_modes('another-mode')\n"
        "assert not failures, failures\n"
    )
    lab.ns_exec("node-1", [lab.python, "-c", script])
    assert netagent_lines(lab, "node-1") == []
    assert ":KUBE-SERVICES" in lab.iptables_save("node-1", "nat")


def service_lines(lab: ClusterLab, node: str) -> list[str]:
    return [
        line
        for line in netagent_lines(lab, node)
        if "OVERLAY" not in line and "netagent overlay" not in line and "CANARY" not in line
    ]


def test_proxy_mode_none_keeps_no_service_rule_and_the_overlay(lab: ClusterLab) -> None:
    peer_pod = next(p for p in lab.pods.values() if p.node == "node-2")
    assert any(line.startswith(":NETAGENT-SERVICES") for line in service_lines(lab, "node-1"))

    restart(lab, "node-1", "--proxy-mode", "none")
    assert service_lines(lab, "node-1") == []
    lines = netagent_lines(lab, "node-1")
    assert any(line.startswith(":NETAGENT-OVERLAY-POSTRTG") for line in lines)
    assert any("-j NETAGENT-OVERLAY-FWD" in line for line in lines)
    assert has_link(lab, "node-1", "flannel.1")
    local_pod = next(p for p in lab.pods.values() if p.node == "node-1")
    lab.ns_exec(local_pod.name, ["ping", "-c", "1", "-W", "2", peer_pod.ip])

    restart(lab, "node-1", "--proxy-mode", "iptables")
    assert any(line.startswith(":NETAGENT-SERVICES") for line in service_lines(lab, "node-1"))
