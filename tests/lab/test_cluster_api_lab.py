"""netagent in API mode on the three-node lab: real agents, the lab API server, real traffic.

Covers the control-plane issue's lab tests, with the proxy alone (the lab
builds each cbr0 itself, ``overlay="none"``, so these results do not depend
on the overlay): convergence after Service and Pod changes (create, update,
readiness, delete) in kernel rules and in traffic; no rule is written before
the initial lists complete; the API server stopped for 30 s while traffic
keeps flowing, then recovery by itself; dropped watches and 410 Gone relists
without a rule flap; 500 and 429 answered with backoff; /healthz turning
unhealthy while syncs fail and healthy again; /metrics with plausible values.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnslab.cluster import ClusterLab

pytestmark = pytest.mark.lab

HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterLab]:
    lab = ClusterLab(
        overlay="none",
        workdir=tmp_path / "lab",
        keep_workdir=True,
        agent_args=["--min-sync-period", "0.2s", "--sync-period", "5s"],
    )
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def answers(
    lab: ClusterLab, ip: str, port: int, count: int = 60, proto: str = "tcp"
) -> Counter[str]:
    """Which pods answered ``count`` new connections from client-1."""
    results = lab.many_requests(proto, "client-1", ip, port, count, timeout=1.0)
    return Counter(r.reply.split()[0] if r.ok and r.reply else f"<{r.error}>" for r in results)


def wait_for_answers(
    lab: ClusterLab, ip: str, port: int, expected: set[str], timeout: float = 20.0
) -> Counter[str]:
    end = time.monotonic() + timeout
    while True:
        got = answers(lab, ip, port, count=40)
        if set(got) == expected:
            return got
        assert time.monotonic() < end, f"{ip}:{port}: wanted answers from {expected}, got {got}"
        time.sleep(0.3)


def http_get(lab: ClusterLab, node: str, url: str) -> tuple[int, str]:
    script = (
        "import sys,urllib.request,urllib.error\n"
        "try:\n"
        "    r=urllib.request.urlopen(sys.argv[1],timeout=3); print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    out = lab.ns_exec(node, ["python3", "-c", script, url]).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def metrics(lab: ClusterLab, node: str) -> dict[str, float]:
    status, body = http_get(lab, node, "http://127.0.0.1:10249/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def rules(lab: ClusterLab, node: str) -> str:
    """The node's nat table without iptables-save's timestamp comments."""
    text = lab.iptables_save(node, "nat")
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def node1_service(lab: ClusterLab, name: str = "web", **kw: Any) -> dict[str, Any]:
    """A Service over node-1's echo pods (same node as client-1: no overlay needed)."""
    return lab.create_service(name, {"app": "echo", "node": "node-1"}, [HTTP], **kw)


def test_agents_converge_on_service_and_pod_changes(cluster: ClusterLab) -> None:
    lab = cluster
    svc = node1_service(lab, type="NodePort")
    ip = svc["spec"]["clusterIP"]
    node_port = svc["spec"]["ports"][0]["nodePort"]
    # Every node programs every Service.
    for node in lab.nodes:
        lab.wait_for_rules(node, f"{ip}/32")
    got = wait_for_answers(lab, ip, 80, {"echo-1a", "echo-1b"})
    assert sum(got.values()) == 40

    # NodePort from outside the cluster, on node-1's underlay IP.
    reply = lab.request("tcp", "outside", lab.node("node-1").ip, node_port)
    assert reply.split()[0] in {"echo-1a", "echo-1b"}

    # A new pod joins the Service; a pod that turns NotReady leaves it.
    lab.add_pod("echo-1c", "node-1", labels={"app": "echo", "node": "node-1"})
    wait_for_answers(lab, ip, 80, {"echo-1a", "echo-1b", "echo-1c"})
    lab.set_pod_ready("echo-1a", False)
    wait_for_answers(lab, ip, 80, {"echo-1b", "echo-1c"})
    lab.delete_pod("echo-1b")
    wait_for_answers(lab, ip, 80, {"echo-1c"})

    # An update: the Service port changes from 80 to 8081.
    lab.api.merge_patch(
        "/api/v1/namespaces/default/services/web",
        {"spec": {"ports": [{**HTTP, "port": 8081, "nodePort": node_port}]}},
    )
    lab.wait_for_rules("node-1", "--dport 8081")
    wait_for_answers(lab, ip, 8081, {"echo-1c"})
    old = answers(lab, ip, 80, count=5)
    assert not any(k.startswith("echo") for k in old), old

    # Deletion removes the rules on every node, and the traffic stops.
    lab.delete_service("web")
    for node in lab.nodes:
        lab.wait_for_rules(node, f"{ip}/32", present=False)
    gone = answers(lab, ip, 8081, count=5)
    assert not any(k.startswith("echo") for k in gone), gone


def test_no_rules_before_the_initial_lists_complete(cluster: ClusterLab) -> None:
    lab = cluster
    svc = node1_service(lab)
    ip = svc["spec"]["clusterIP"]
    lab.wait_for_rules("node-2", f"{ip}/32")
    lab.stop_agent("node-2")
    before = rules(lab, "node-2")

    # The restarted agent gets Services but every EndpointSlice list fails.
    lab.api.inject_errors(500, 1000, path="/apis/discovery.k8s.io")
    agent = lab.start_agent("node-2")
    agent.wait_for_log(r"not writing rules yet: waiting for the first list of .*EndpointSlice")
    agent.wait_for_log(r"EndpointSlice.*(500|Internal)")
    time.sleep(2.0)
    assert rules(lab, "node-2") == before, "rules changed before the lists completed"
    assert "synced IPv4" not in agent.log_text()

    lab.api.clear_faults()
    agent.wait_for_log(r"synced IPv4", timeout=40)
    assert f"{ip}/32" in lab.iptables_save("node-2", "nat")


def test_api_server_outage_keeps_rules_and_recovers(cluster: ClusterLab) -> None:
    lab = cluster
    ip = node1_service(lab)["spec"]["clusterIP"]
    wait_for_answers(lab, ip, 80, {"echo-1a", "echo-1b"})
    rules_before = rules(lab, "node-1")

    lab.stop_api()
    outage_end = time.monotonic() + 30.0
    while time.monotonic() < outage_end:
        got = answers(lab, ip, 80, count=10)
        assert set(got) <= {"echo-1a", "echo-1b"} and sum(got.values()) == 10, got
        time.sleep(5.0)
    assert rules(lab, "node-1") == rules_before
    agent_log = lab.node("node-1").agent.log_text()  # type: ignore[union-attr]
    assert re.search(r"(Service|EndpointSlice|Node).*(refused|failed|error)", agent_log, re.I)

    lab.start_api()
    # The agent recovers on its own: a change made after the outage reaches the kernel.
    lab.add_pod("echo-1c", "node-1", labels={"app": "echo", "node": "node-1"})
    wait_for_answers(lab, ip, 80, {"echo-1a", "echo-1b", "echo-1c"}, timeout=60)


def _restores(lab: ClusterLab, node: str) -> int:
    return len(re.findall(r"synced IPv4", lab.node(node).agent.log_text()))  # type: ignore[union-attr]


def test_dropped_watches_and_410_relist_without_flap(cluster: ClusterLab) -> None:
    lab = cluster
    ip = node1_service(lab)["spec"]["clusterIP"]
    wait_for_answers(lab, ip, 80, {"echo-1a", "echo-1b"})
    agent = lab.node("node-1").agent
    assert agent is not None
    rules_before = rules(lab, "node-1")
    mark = len(agent.log_text())

    # Dropped watches: each reflector resumes from where it was, with no relist.
    lab.api.close_watches()
    time.sleep(3.0)
    assert "relisted" not in agent.log_text()[mark:]
    assert rules(lab, "node-1") == rules_before

    # 410 Gone: the EndpointSlice watch cannot reconnect while a second Service
    # is created; then the history is compacted past the agent's version.
    lab.api.inject_errors(500, 10000, path="/apis/discovery.k8s.io")
    lab.api.close_watches()
    other = lab.create_service("other", {"app": "echo", "node": "node-1"}, [HTTP])
    time.sleep(1.0)
    lab.api.compact()
    lab.api.clear_faults()
    agent.wait_for_log(r"EndpointSlice watch .*410 Gone.*relisting", after=mark, timeout=40)
    line = agent.wait_for_log(r"EndpointSlice relisted", after=mark, timeout=30)
    # Only the real difference is emitted: the new Service's slice, not a delete+add of all.
    assert re.search(r": 2 objects .* 1 changes", line), line
    lab.wait_for_rules("node-1", f"{other['spec']['clusterIP']}/32")
    web_rules = [r for r in rules_before.splitlines() if "default/web" in r]
    assert web_rules and all(r in rules(lab, "node-1").splitlines() for r in web_rules)
    assert set(answers(lab, ip, 80, count=20)) == {"echo-1a", "echo-1b"}

    # Still live after the relist: a new pod shows up.
    lab.add_pod("echo-1c", "node-1", labels={"app": "echo", "node": "node-1"})
    wait_for_answers(lab, ip, 80, {"echo-1a", "echo-1b", "echo-1c"})


def _service_requests(lab: ClusterLab, since: float = 0.0) -> list[dict[str, Any]]:
    """Requests for Services that arrived at ``since`` or later, in arrival order.

    The server logs a request when it ends, with its arrival time: a watch
    of an agent stopped just before the log was cleared can still be logged
    after, so callers pass the time they cleared the log at.
    """
    log = [
        r
        for r in lab.api.requests_log()
        if r["path"].startswith("/api/v1/services") and float(r["time"]) >= since
    ]
    return sorted(log, key=lambda r: float(r["time"]))


def test_errors_and_429_lead_to_backoff(cluster: ClusterLab) -> None:
    lab = cluster
    # One agent only, so that the server's request log is that agent's requests.
    lab.stop_agent("node-2")
    lab.stop_agent("node-3")
    cleared = time.time()
    lab.api.clear_requests_log()
    lab.api.inject_errors(500, 4, path="/api/v1/services")
    lab.api.close_watches()
    time.sleep(8.0)
    failed = [r for r in _service_requests(lab, since=cleared) if r["status"] == 500]
    assert len(failed) == 4, _service_requests(lab, since=cleared)
    times = [float(r["time"]) for r in failed]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Exponential backoff with jitter from the upper half: 0.4-0.8 s, then 0.8-1.6, 1.6-3.2.
    assert gaps[0] >= 0.35, gaps
    assert all(later >= earlier * 0.95 for earlier, later in itertools.pairwise(gaps)), gaps
    assert gaps[-1] >= 1.5, gaps

    # 429 with Retry-After, on a restarted agent (whose backoff starts small again):
    # its first lists are throttled and it waits at least Retry-After each time.
    lab.stop_agent("node-1")
    cleared = time.time()
    lab.api.clear_requests_log()
    lab.api.inject_errors(429, 2, retry_after=3, path="/api/v1/services")
    lab.start_agent("node-1")
    time.sleep(9.0)
    log = _service_requests(lab, since=cleared)
    statuses = [r["status"] for r in log]
    assert statuses[:2] == [429, 429], log
    # Retry-After: 3 is honoured: each retry comes at least 3 s after a 429.
    assert float(log[1]["time"]) - float(log[0]["time"]) >= 2.9, log
    assert len(log) >= 3 and float(log[2]["time"]) - float(log[1]["time"]) >= 2.9, log
    # Watches are back: a new Service reaches the kernel.
    ip = node1_service(lab, name="late")["spec"]["clusterIP"]
    lab.wait_for_rules("node-1", f"{ip}/32", timeout=30)


def test_healthz_follows_sync_failures_and_metrics_are_plausible(cluster: ClusterLab) -> None:
    lab = cluster
    svc = node1_service(lab)
    ip = svc["spec"]["clusterIP"]
    wait_for_answers(lab, ip, 80, {"echo-1a", "echo-1b"})
    status, body = http_get(lab, "node-1", "http://127.0.0.1:10256/healthz")
    assert status == 200, body

    m = metrics(lab, "node-1")
    assert m["kubeproxy_sync_proxy_rules_duration_seconds_count"] >= 1
    assert m["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > time.time() - 60
    assert m["kubeproxy_sync_proxy_rules_endpoint_changes_total"] >= 1
    assert m["kubeproxy_sync_proxy_rules_service_changes_total"] >= 1
    assert m["kubeproxy_network_programming_duration_seconds_count"] >= 1
    total = m["kubeproxy_network_programming_duration_seconds_sum"]
    assert 0 <= total / m["kubeproxy_network_programming_duration_seconds_count"] < 10

    lab.fail_restores("node-1", True)
    try:
        lab.add_pod("echo-1c", "node-1", labels={"app": "echo", "node": "node-1"})
        # syncPeriod is 5 s: a queued change unapplied for 2 x 5 s makes the node unhealthy.
        end = time.monotonic() + 30
        while True:
            status, body = http_get(lab, "node-1", "http://127.0.0.1:10256/healthz")
            if status == 503:
                break
            assert time.monotonic() < end, f"/healthz stayed {status}: {body}"
            time.sleep(0.5)
        assert json.loads(body)["lastUpdated"]
        assert (
            metrics(lab, "node-1")["kubeproxy_sync_proxy_rules_iptables_restore_failures_total"]
            >= 1
        )
    finally:
        lab.fail_restores("node-1", False)
    end = time.monotonic() + 30
    while http_get(lab, "node-1", "http://127.0.0.1:10256/healthz")[0] != 200:
        assert time.monotonic() < end, "/healthz did not recover"
        time.sleep(0.5)
    wait_for_answers(lab, ip, 80, {"echo-1a", "echo-1b", "echo-1c"})


def test_healthz_is_503_while_the_node_is_tainted_for_removal(cluster: ClusterLab) -> None:
    """kube-proxy's node eligibility: the autoscaler's taint drains /healthz, not /livez."""
    lab = cluster
    taint = {"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}

    def set_taints(taints: list[dict[str, str]]) -> None:
        lab.api.request(
            "PATCH",
            "/api/v1/nodes/node-1",
            {"spec": {"taints": taints}},
            content_type="application/merge-patch+json",
        )

    def wait_healthz(want: int) -> dict[str, object]:
        end = time.monotonic() + 20
        while True:
            status, body = http_get(lab, "node-1", "http://127.0.0.1:10256/healthz")
            if status == want:
                parsed: dict[str, object] = json.loads(body)
                return parsed
            assert time.monotonic() < end, f"/healthz stayed {status}: {body}"
            time.sleep(0.3)

    assert wait_healthz(200)["nodeEligible"] is True
    set_taints([taint])
    try:
        body = wait_healthz(503)
        assert body["nodeEligible"] is False and body["nodeName"] == "node-1"
        status, _ = http_get(lab, "node-1", "http://127.0.0.1:10256/livez")
        assert status == 200  # the agent itself is fine: kubelet must not restart it
        # Another node is unaffected.
        assert http_get(lab, "node-2", "http://127.0.0.1:10256/healthz")[0] == 200
    finally:
        set_taints([])
    assert wait_healthz(200)["nodeEligible"] is True
