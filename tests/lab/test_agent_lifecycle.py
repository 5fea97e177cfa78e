"""The agent's lifecycle on the real kernel: SIGTERM leaves the rules serving, a restart converges.

kube-proxy leaves its rules in place when it exits so that a restart or an
upgrade does not interrupt traffic; netagent must do the same, and the first
sync of the next run must be a full one that adopts the node as it is.
"""

from __future__ import annotations

import pytest
from netnslab import LabService, LabServicePort, SingleNodeLab

pytestmark = pytest.mark.lab

WEB = LabService(
    name="web",
    cluster_ip="10.96.0.10",
    ports=(LabServicePort(name="http", port=80, target_port=8080),),
)


def backends(lab: SingleNodeLab, count: int = 30) -> set[str]:
    results = lab.many_tcp_requests("client", "10.96.0.10", 80, count)
    failures = [r for r in results if r.reply is None]
    assert not failures, failures[:3]
    return {r.reply.split()[0] for r in results if r.reply}


def test_sigterm_leaves_rules_serving_and_restart_converges(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    lab.write_manifests(services=[WEB], endpoints={"web": ["pod-a", "pod-b"]})
    agent = lab.start_agent()
    agent.wait_for_log(r"synced IPv4 \(full\)")
    assert backends(lab) == {"pod-a", "pod-b"}

    assert agent.stop() == 0
    assert "rules are left in place" in agent.log_text()
    saved = lab.iptables_save()
    assert "NETAGENT-SERVICES" in saved and "default/web:http" in saved
    assert backends(lab) == {"pod-a", "pod-b"}  # still served with no agent running

    # While the agent is down, the endpoints change; the next run picks that up
    # with a full sync and drops the stale endpoint chain.
    lab.write_manifests(services=[WEB], endpoints={"web": ["pod-c"]})
    second = lab.start_agent()
    second.wait_for_log(r"synced IPv4 \(full\)")
    assert backends(lab) == {"pod-c"}
    assert second.stop() == 0
