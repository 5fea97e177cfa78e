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
  jump on a programmed node: what a switch away from iptables relies on;
* proxy mode iptables -> nftables -> iptables: in nftables mode no
  ``NETAGENT-`` chain or jump is left in any iptables backend (nft or legacy,
  IPv4 or IPv6), ``ip netagent`` holds the Service and the overlay's rules,
  and Service, pod-to-pod and pod-to-outside traffic still work; switching
  back deletes the ``netagent`` tables and brings the iptables chains back;
  then ``netagent cleanup`` removes both kinds (the nftables table restored
  from the nftables phase's listing, as a crashed agent would leave it)
  while a foreign nft table and a foreign iptables chain stay.
  (When IPVS lands, its switches join these.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnslab.agent_process import run_netagent
from netnslab.cluster import OUTSIDE_IP, ClusterLab

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
    assert any(
        r["dst"] == peer.pod_cidr and r["dev"] == "flannel.1" for r in owned_routes(lab, "node-1")
    )
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
    assert any(
        r["dst"] == peer.pod_cidr and r["dev"] == "flannel.1" for r in owned_routes(lab, "node-1")
    )
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


# ---- proxy mode iptables -> nftables -> iptables, then cleanup -------------------------------

ECHO_TCP = 8080


def reply(lab: ClusterLab, proto: str, from_: str, ip: str, port: int) -> tuple[str, str]:
    """(who answered, which source address it saw)."""
    name, peer = lab.request(proto, from_, ip, port).split()
    return name, peer.rsplit(":", 1)[0]


def iptables_netagent_lines(lab: ClusterLab, node: str) -> dict[str, list[str]]:
    """netagent's chain declarations and rules in every iptables backend, by save tool."""
    return {
        tool: [line for line in text.splitlines() if "NETAGENT" in line]
        for tool, text in lab.iptables_save_backends(node).items()
    }


def netagent_nft_tables(lab: ClusterLab, node: str) -> list[tuple[str, str]]:
    return [t for t in lab.nft_tables(node) if t[1] == "netagent"]


def assert_traffic(lab: ClusterLab, cluster_ip: str) -> None:
    """Service (local and remote endpoint), pod-to-pod both ways and pod-to-outside from node-1."""
    client = lab.pods["client-1"].ip
    seen = set()
    for _ in range(20):
        name, source = reply(lab, "tcp", "client-1", cluster_ip, 80)
        assert source == client  # pod to pod through a Service: no SNAT
        seen.add(name)
    assert seen == {"echo-1a", "echo-2a"}
    assert reply(lab, "tcp", "client-1", lab.pods["echo-2a"].ip, ECHO_TCP) == ("echo-2a", client)
    assert reply(lab, "udp", "echo-2a", lab.pods["echo-1a"].ip, 5353) == (
        "echo-1a",
        lab.pods["echo-2a"].ip,
    )
    assert reply(lab, "tcp", "client-1", OUTSIDE_IP, ECHO_TCP) == ("outside", lab.node("node-1").ip)


def test_proxy_mode_iptables_nftables_iptables_then_cleanup(lab: ClusterLab) -> None:
    lab.serve_outside()
    svc = lab.create_service(
        "switch", {"app": "echo"}, [{"name": "http", "port": 80, "targetPort": "http"}]
    )
    cluster_ip = svc["spec"]["clusterIP"]
    lab.wait_for_rules("node-1", f"{cluster_ip}/32")
    assert any(line.startswith(":NETAGENT-SERVICES") for line in service_lines(lab, "node-1"))
    assert netagent_nft_tables(lab, "node-1") == []
    assert_traffic(lab, cluster_ip)

    # iptables -> nftables: not one iptables chain or jump of netagent's is left.
    restart(lab, "node-1", "--proxy-mode", "nftables")
    leftovers = iptables_netagent_lines(lab, "node-1")
    assert leftovers == {tool: [] for tool in leftovers}, leftovers
    assert ("ip", "netagent") in netagent_nft_tables(lab, "node-1")
    listing = lab.wait_for_nft("node-1", f"{cluster_ip} . tcp . 80 : goto cluster-tcp-2")
    assert "\tchain overlay-postrouting {" in listing and "\tchain overlay-forward {" in listing
    log = lab.node("node-1").agent.log_text()  # type: ignore[union-attr]
    assert "removed leftovers of proxy mode iptables (IPv4)" in log, log[-3000:]
    assert_traffic(lab, cluster_ip)
    nft_listing = lab.nft_list("node-1", "ip")
    assert nft_listing is not None

    # nftables -> iptables: the netagent tables go, the Service chains come back.
    restart(lab, "node-1", "--proxy-mode", "iptables")
    assert netagent_nft_tables(lab, "node-1") == []
    lab.wait_for_rules("node-1", f"{cluster_ip}/32")
    lines = service_lines(lab, "node-1")
    assert any(line.startswith(":NETAGENT-SERVICES") for line in lines)
    assert any(line.startswith(":NETAGENT-SVC-") for line in lines)
    assert any("NETAGENT-OVERLAY-POSTRTG" in line for line in netagent_lines(lab, "node-1"))
    log = lab.node("node-1").agent.log_text()  # type: ignore[union-attr]
    assert "removed leftovers of proxy mode nftables (IPv4)" in log, log[-3000:]
    assert_traffic(lab, cluster_ip)

    # netagent cleanup removes both kinds: the iptables mode's chains and an nftables
    # table as an agent killed in nftables mode leaves it (its own listing, reloaded).
    node1 = lab.node("node-1")
    assert lab.stop_agent("node-1") == 0
    leftover = node1.workdir / "netagent-table.nft"
    leftover.write_text(nft_listing)
    lab.ns_exec("node-1", ["nft", "-f", str(leftover)])
    lab.ns_exec("node-1", ["nft", "add table inet foreign; add chain inet foreign keep"])
    lab.ns_exec("node-1", ["iptables", "-t", "nat", "-N", "KUBE-SERVICES"])
    assert ("ip", "netagent") in netagent_nft_tables(lab, "node-1")
    assert any(iptables_netagent_lines(lab, "node-1").values())
    result = run_netagent(
        node1.ns,
        lab.python,
        [
            "cleanup",
            "--subnet-file",
            str(node1.subnet_file),
            "--cni-conf-file",
            str(node1.cni_file),
        ],
    )
    assert result.returncode == 0, result
    leftovers = iptables_netagent_lines(lab, "node-1")
    assert leftovers == {tool: [] for tool in leftovers}, leftovers
    assert netagent_nft_tables(lab, "node-1") == []
    assert ("inet", "foreign") in lab.nft_tables("node-1")
    assert "chain keep" in lab.ns_exec("node-1", ["nft", "list", "table", "inet", "foreign"]).stdout
    assert ":KUBE-SERVICES" in lab.iptables_save("node-1", "nat")
