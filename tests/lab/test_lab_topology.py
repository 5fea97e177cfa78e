"""The netns lab itself, without netagent: wiring, echo replies, error kinds, cleanup.

Covers: pod-to-pod traffic across the cbr0 bridge (TCP and UDP), the client
pod and the outside client reaching pods and the node, echo replies naming
the answering pod and the peer it saw, hairpin and sysctls as the CNI bridge
plugin would set them, refused-versus-timeout reporting, distinct UDP source
ports, nothing configured in the root namespace, teardown (twice, and after
a failed ``up``), the stale-run cleaner and the ``python -m netnslab`` CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netnslab import (
    BRIDGE_IP,
    CLIENT_IP,
    NODE_IP,
    OUTSIDE_IP,
    POD_IPS,
    ProbeRefused,
    ProbeTimeout,
    SingleNodeLab,
    cleanup_stale,
)
from netnslab.names import new_suffix
from netnslab.netns import add_namespace, delete_namespace, list_namespaces
from netnslab.runs import RunRecord

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def test_pod_to_pod_across_the_bridge(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    for src, dst in (("pod-a", "pod-b"), ("pod-b", "pod-c"), ("pod-c", "pod-a")):
        for port in (8080, 5353):
            tcp = lab.tcp_request(src, POD_IPS[dst], port)
            udp = lab.udp_request(src, POD_IPS[dst], port)
            for reply in (tcp, udp):
                pod, peer = reply.split()
                assert pod == dst
                assert peer.rsplit(":", 1)[0] == POD_IPS[src]


def test_client_pod_reaches_every_pod_and_sees_its_own_address(
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
    for pod, ip in POD_IPS.items():
        result = lab.tcp_probe("client", ip, 8080)
        assert result.ok, result
        assert result.pod == pod
        # The server saw exactly the client's socket: no NAT without netagent.
        assert result.peer == result.local
        assert result.peer_ip == CLIENT_IP


def test_outside_client_reaches_the_node_ip(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    lab.start_echo("node", "node-host", tcp_ports=[9000], udp_ports=[9000])
    tcp = lab.tcp_probe("outside", NODE_IP, 9000)
    udp = lab.udp_probe("outside", NODE_IP, 9000)
    for result in (tcp, udp):
        assert result.ok, result
        assert result.pod == "node-host"
        assert result.peer_ip == OUTSIDE_IP


def test_bridge_ports_hairpin_and_node_sysctls(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    links = json.loads(lab.ns_exec("node", ["bridge", "-d", "-j", "link", "show"]).stdout)
    ports = {link["ifname"]: link for link in links}
    expected = {p.host_veth for p in lab.pods.values()}
    assert expected <= set(ports)
    for name in expected:
        assert ports[name].get("hairpin") is True, ports[name]
        assert ports[name]["master"] == "cbr0"
    sysctls = lab.ns_exec(
        "node", ["sysctl", "-n", "net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"]
    ).stdout.split()
    assert sysctls == ["1", "1"]
    addrs = lab.ns_exec("node", ["ip", "-4", "-o", "addr", "show", "dev", "cbr0"]).stdout
    assert f"{BRIDGE_IP}/24" in addrs
    routes = lab.ns_exec("pod-a", ["ip", "route", "show", "default"]).stdout
    assert f"via {BRIDGE_IP}" in routes
    # The outside client doubles as the node's upstream router.
    node_routes = lab.ns_exec("node", ["ip", "route", "show", "default"]).stdout
    assert f"via {OUTSIDE_IP}" in node_routes


def test_names_carry_the_suffix_and_fit_ifnamsiz(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    present = set(list_namespaces())
    for ns in lab.namespaces:
        assert ns in present
        assert ns.startswith("na-") and ns.endswith(f"-{lab.suffix}")
    node_links = lab.ns_exec("node", ["ip", "-o", "link", "show"]).stdout
    for pod in lab.pods.values():
        assert pod.host_veth in node_links
        assert lab.suffix in pod.host_veth and len(pod.host_veth) <= 15


def _root_network_state() -> str:
    """Links, addresses and routes of the root namespace (reading it is harmless)."""
    out = []
    for argv in (["ip", "-o", "link", "show"], ["ip", "-o", "addr", "show"], ["ip", "route"]):
        out.append(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return "".join(out)


def test_nothing_is_configured_in_the_root_namespace(tmp_path: Path) -> None:
    before = _root_network_state()
    with SingleNodeLab(workdir=tmp_path / "lab") as lab:
        during = _root_network_state()
        assert lab.suffix not in during
    assert during == before


def test_refused_is_reported_at_once_and_apart_from_a_timeout(
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
    refused = lab.tcp_probe("client", POD_IPS["pod-a"], 9999)
    assert refused.error == "refused"
    assert refused.elapsed < 0.5
    with pytest.raises(ProbeRefused):
        lab.tcp_request("client", POD_IPS["pod-a"], 9999)
    with pytest.raises(ProbeRefused):
        lab.udp_request("client", POD_IPS["pod-a"], 9999)
    # A silent DROP, inside pod-c's own namespace, must read as a timeout.
    lab.ns_exec("pod-c", ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP"])
    dropped = lab.tcp_probe("client", POD_IPS["pod-c"], 8080, timeout=0.5)
    assert dropped.error == "timeout"
    assert dropped.elapsed >= 0.4
    with pytest.raises(ProbeTimeout):
        lab.tcp_request("client", POD_IPS["pod-c"], 8080, timeout=0.3)


def test_many_requests_use_new_connections_and_source_ports(
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
    for results in (
        lab.many_tcp_requests("client", POD_IPS["pod-b"], 8080, 100),
        lab.many_udp_requests("client", POD_IPS["pod-b"], 5353, 100),
    ):
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        assert {r.pod for r in results} == {"pod-b"}
        assert len({r.local for r in results}) == 100
        assert all(r.peer == r.local for r in results)


def test_session_keeps_one_connection(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    with lab.open_tcp_session("client", POD_IPS["pod-a"], 8080) as session:
        first = session.request("one")
        second = session.request("two")
    assert first == second == f"pod-a {session.local}"


def test_down_twice_and_after_a_failed_up(tmp_path: Path) -> None:
    lab = SingleNodeLab(workdir=tmp_path / "ok")
    lab.up()
    lab.down()
    lab.down()
    assert not set(lab.namespaces) & set(list_namespaces())
    assert RunRecord.load(lab.suffix) is None

    broken = SingleNodeLab(workdir=tmp_path / "broken", python="/nonexistent/python3")
    with pytest.raises(RuntimeError, match="did not start"):
        broken.up()
    assert not set(broken.namespaces) & set(list_namespaces())
    broken.down()


def test_cleanup_stale_removes_only_dead_recorded_runs(tmp_path: Path) -> None:
    dead_suffix, unrecorded_suffix = new_suffix(), new_suffix()
    dead_ns = f"na-stale-{dead_suffix}"
    unrecorded_ns = f"na-stale-{unrecorded_suffix}"
    record = RunRecord.for_this_process(dead_suffix, [dead_ns], str(tmp_path))
    record.owner_pid, record.owner_start = 2**22 + 1, 1  # beyond pid_max: never alive
    try:
        add_namespace(dead_ns)
        add_namespace(unrecorded_ns)
        record.save()
        removed = cleanup_stale()
        present = set(list_namespaces())
        assert dead_ns in removed and dead_ns not in present
        assert unrecorded_ns in present, "a namespace without a run record must be left alone"
        assert RunRecord.load(dead_suffix) is None
    finally:
        delete_namespace(dead_ns)
        delete_namespace(unrecorded_ns)
        record.remove()


def test_cli_up_status_down(tmp_path: Path) -> None:
    env = dict(os.environ, NETNSLAB_STATE_DIR=str(tmp_path / "state"))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "netns-lab"), env.get("PYTHONPATH", "")])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "netnslab", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    up = cli("up", "--json")
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    names = [entry["ns"] for entry in info["namespaces"].values()]
    try:
        assert set(names) <= set(list_namespaces())
        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["suffix"] == info["suffix"]
        # The detached lab's echo servers outlive the `up` command.
        lab = SingleNodeLab(suffix=info["suffix"])  # a handle on the names; never brought up
        assert lab.tcp_request("client", POD_IPS["pod-c"], 8080).startswith("pod-c ")
        again = cli("up")
        assert again.returncode == 1 and "already up" in again.stderr
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert not set(names) & set(list_namespaces())
    assert cli("status").returncode == 1
