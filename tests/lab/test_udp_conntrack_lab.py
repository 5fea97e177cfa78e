"""Stale UDP conntrack entries are deleted after an endpoint goes away (the DNS blackhole fix).

A UDP "connection" is a conntrack entry keyed by the 5-tuple. A client that
keeps its source port (as resolvers do) keeps hitting the entry's DNAT
target even after the endpoint was removed from the rules, until the entry
times out. kube-proxy deletes such entries after each sync; so must
netagent, in every proxy mode. In the lab the removed pod keeps running and
answering, so without the deletion the second query would still be answered
by it.
"""

from __future__ import annotations

import time

import pytest
from netnslab import POD_IPS, LabService, LabServicePort, SingleNodeLab

pytestmark = pytest.mark.lab

DNS = LabService(
    name="dns",
    cluster_ip="10.96.0.53",
    ports=(LabServicePort(name="dns", port=53, protocol="UDP", target_port=5353),),
)
SOURCE_PORT = 40553

QUERY = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    f"s.bind(('0.0.0.0',{SOURCE_PORT}))\n"
    "s.settimeout(2)\n"
    "s.sendto(b'q\\n',('10.96.0.53',53))\n"
    "print(s.recvfrom(200)[0].decode().split()[0])\n"
)


def query(lab: SingleNodeLab) -> str:
    """One DNS-like query from the client pod, always from the same source port."""
    return lab.ns_exec("client", ["python3", "-c", QUERY]).stdout.strip()


def conntrack_dnat_targets(lab: SingleNodeLab) -> set[str]:
    out = lab.ns_exec(
        "node", ["conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.53"], check=False
    ).stdout
    return {
        field.split("=")[1]
        for line in out.splitlines()
        for field in line.split()
        if field.startswith("src=") and not field.endswith("10.244.0.20")
    }


def test_removed_udp_endpoint_flows_are_deleted(proxy_lab: SingleNodeLab) -> None:
    lab = proxy_lab
    lab.write_manifests(services=[DNS], endpoints={"dns": ["pod-b"]})
    agent = lab.start_agent()
    agent.wait_for_log(r"synced IPv4 \(full\)")
    assert query(lab) == "pod-b"
    assert POD_IPS["pod-b"] in conntrack_dnat_targets(lab)

    lab.write_manifests(services=[DNS], endpoints={"dns": ["pod-a"]})
    deadline = time.monotonic() + 15
    while POD_IPS["pod-b"] in conntrack_dnat_targets(lab):
        assert time.monotonic() < deadline, agent.log_text()
        time.sleep(0.2)
    # Same 5-tuple as before: only a fresh conntrack entry can reach pod-a.
    assert query(lab) == "pod-a"
    assert agent.stop() == 0
