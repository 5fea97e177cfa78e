"""Security cases of issue 14, with real traffic in the lab's kernel.

* **CVE-2020-8554.** A Service that claims someone else's address as an
  externalIP captures traffic to it: that is kube-proxy's behaviour, and
  netagent's default. With ``--external-ip-allow-cidrs`` set to a range that
  does not hold the address, the same connection from a pod, and from the
  node itself, reaches the address's real owner (an echo server in the
  outside namespace, which owns 192.0.2.100); the Service keeps its cluster
  IP and its allowed externalIP, and the agent logs one warning naming the
  Service, the address and the reason.
* **The agent's HTTP endpoints, seen from another namespace.** With the
  defaults, the metrics port (and with it /configz and the /debug pages) is
  bound to loopback: a pod connecting to the node's addresses on it is
  refused. The healthz port answers only /healthz and /livez, whose bodies
  hold health and nothing else (no Service, no configuration), and 404 for
  /debug, /configz and /metrics. Bound to every address on purpose, the
  metrics port still answers /debug only to loopback clients (403).
* **loadBalancerSourceRanges cannot be bypassed** from a pod or from the
  node: both are refused when outside the ranges and admitted when listed
  (the control, so that a refusal means the range and not broken routing).
  As in kube-proxy, when a node address is inside the ranges the node may
  also reach an LB address that is local to it (the connection's source is
  then the LB address itself), and may not when no node address is listed.

Each case runs in every proxy mode of ``proxy_lab`` (iptables, nftables).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from netnslab import (
    BRIDGE_IP,
    CLIENT_IP,
    NODE_IP,
    OUTSIDE_IP,
    LabService,
    LabServicePort,
    SingleNodeLab,
)

pytestmark = pytest.mark.lab

PODS = ("pod-a", "pod-b", "pod-c")
HTTP = LabServicePort(name="http", port=80, protocol="TCP", target_port=8080)
OWNER = "outside-owner"
ALLOWED_EXTERNAL_IP = "198.51.100.30"


def who(reply: str | None) -> str:
    """The name of the echo server that answered (``pod-a 10.244.0.20:4711`` -> ``pod-a``)."""
    return (reply or "").split()[0] if reply else ""


# ---- CVE-2020-8554 --------------------------------------------------------------------------------


def test_an_external_ip_outside_the_allow_list_reaches_its_real_owner(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    # 192.0.2.100 is the outside namespace's own address; a server there listens on :80.
    lab.start_echo("outside", OWNER, tcp_ports=(80,), udp_ports=())
    claim = LabService(
        name="claim",
        cluster_ip="10.96.0.30",
        external_ips=(OUTSIDE_IP, ALLOWED_EXTERNAL_IP),
        ports=(HTTP,),
    )
    lab.write_manifests(services=[claim], endpoints={"claim": list(PODS)})

    # The control: kube-proxy's default, and netagent's. The Service captures the address.
    open_run = lab.run_agent().check()
    assert "externalIP" not in open_run.log
    captured = lab.many_tcp_requests("client", OUTSIDE_IP, 80, 10)
    assert all(r.ok for r in captured), [r for r in captured if not r.ok][:3]
    assert {who(r.reply) for r in captured} <= set(PODS), captured[:3]
    from_node = lab.tcp_probe("node", OUTSIDE_IP, 80)
    assert who(from_node.reply) in PODS, from_node

    # With the allow-list, the same traffic goes to whoever really owns the address.
    run = lab.run_agent(extra=["--external-ip-allow-cidrs", "198.51.100.0/24"]).check()
    owner = lab.many_tcp_requests("client", OUTSIDE_IP, 80, 10)
    assert all(r.ok for r in owner), [r for r in owner if not r.ok][:3]
    assert {who(r.reply) for r in owner} == {OWNER}, owner[:3]
    # The owner sees the pod's own address: nothing translated the connection.
    assert {r.reply.split()[1].rpartition(":")[0] for r in owner if r.reply} == {CLIENT_IP}
    from_node = lab.tcp_probe("node", OUTSIDE_IP, 80)
    assert who(from_node.reply) == OWNER, from_node
    assert not lab.rules_mention_address(OUTSIDE_IP)

    # The rest of the Service keeps working: its cluster IP and its allowed externalIP.
    inside = lab.many_tcp_requests("client", "10.96.0.30", 80, 10)
    assert all(r.ok and who(r.reply) in PODS for r in inside), inside[:3]
    allowed = lab.tcp_probe("outside", ALLOWED_EXTERNAL_IP, 80)
    assert who(allowed.reply) in PODS, allowed

    warnings = [line for line in run.log.splitlines() if "externalIPAllowCIDRs" in line]
    assert len(warnings) == 1, warnings
    for needle in ("WARNING", "default/claim", OUTSIDE_IP, "198.51.100.0/24", "CVE-2020-8554"):
        assert needle in warnings[0], warnings[0]


def test_the_long_running_agent_warns_once_and_exports_the_gauge(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    claim = LabService(
        name="claim", cluster_ip="10.96.0.30", external_ips=(OUTSIDE_IP,), ports=(HTTP,)
    )
    lab.write_manifests(services=[claim], endpoints={"claim": list(PODS)})
    agent = lab.start_agent(
        extra=["--external-ip-allow-cidrs", "198.51.100.0/24", "--sync-period", "1s",
               "--min-sync-period", "100ms"]
    )  # fmt: skip
    agent.wait_for_log("synced IPv4")
    # Several periodic syncs later, still one warning.
    for _ in range(3):
        offset = len(agent.log_text())
        agent.wait_for_log("synced IPv4", after=offset, timeout=10)
    text = agent.log_text()
    assert sum("externalIPAllowCIDRs" in line for line in text.splitlines()) == 1, text
    metrics = http_get(lab, "node", "http://127.0.0.1:10249/metrics")
    assert metrics["status"] == 200, metrics
    assert "netagent_external_ips_rejected 1.0" in metrics["body"]


# ---- the agent's HTTP endpoints from another namespace --------------------------------------------

#: GET one URL; print {"status", "body"} or {"error"} as JSON. Standard library only.
HTTP_GET = r"""
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode(errors="replace")}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode(errors="replace")}))
except OSError as e:
    reason = getattr(e, "reason", e)
    print(json.dumps({"error": f"{type(reason).__name__}: {reason}"}))
"""


def http_get(lab: SingleNodeLab, ns: str, url: str) -> dict[str, Any]:
    """One GET from namespace ``ns`` (a role or name); the answer or the connection error."""
    done = lab.ns_exec(ns, [lab.python, "-I", "-S", "-c", HTTP_GET, url], timeout=15)
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


#: Everything /healthz may say: health, and which node it is about.
HEALTH_KEYS = {"lastUpdated", "currentTime", "nodeName", "nodeHealthy", "nodeEligible"}


def test_debug_and_metrics_are_unreachable_from_another_namespace_by_default(
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
    web = LabService(name="secret-web", cluster_ip="10.96.0.44", ports=(HTTP,))
    lab.write_manifests(services=[web], endpoints={"secret-web": list(PODS)})
    agent = lab.start_agent()  # every HTTP setting at its default
    agent.wait_for_log("synced IPv4")

    # The control: on loopback inside the node, the pages exist and hold the Service.
    local = http_get(lab, "node", "http://127.0.0.1:10249/debug/services")
    assert local["status"] == 200 and "secret-web" in local["body"], local

    for ns in ("client", "outside"):
        for host in (NODE_IP, BRIDGE_IP):
            for path in ("/metrics", "/configz", "/debug/services"):
                answer = http_get(lab, ns, f"http://{host}:10249{path}")
                assert "error" in answer, f"{ns} reached {host}:10249{path}: {answer}"
                assert "ConnectionRefused" in answer["error"], answer

    for ns in ("client", "outside"):
        health = http_get(lab, ns, f"http://{NODE_IP}:10256/healthz")
        assert health["status"] == 200, health
        body = json.loads(health["body"])
        assert set(body) <= HEALTH_KEYS, body
        assert body["nodeName"] == lab.node_name
        for secret in ("secret-web", "10.96.0.44", "10.244.0.0/16", "manifests"):
            assert secret not in health["body"], health
        livez = http_get(lab, ns, f"http://{NODE_IP}:10256/livez")
        assert livez["status"] == 200 and set(json.loads(livez["body"])) <= HEALTH_KEYS, livez
        for path in ("/debug/services", "/debug/diff", "/configz", "/metrics", "/proxyMode"):
            answer = http_get(lab, ns, f"http://{NODE_IP}:10256{path}")
            assert answer.get("status") == 404, answer
            assert "secret-web" not in answer["body"] and "10.96.0.44" not in answer["body"]


def test_debug_pages_refuse_remote_clients_even_on_a_public_metrics_address(
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
    web = LabService(name="secret-web", cluster_ip="10.96.0.44", ports=(HTTP,))
    lab.write_manifests(services=[web], endpoints={"secret-web": list(PODS)})
    agent = lab.start_agent(extra=["--metrics-bind-address", "0.0.0.0:10249"])
    agent.wait_for_log("synced IPv4")
    metrics = http_get(lab, "client", f"http://{NODE_IP}:10249/metrics")
    assert metrics.get("status") == 200, metrics  # the operator asked for a public /metrics
    for path in ("/debug/services", "/debug/diff", "/debug/overlay", "/debug"):
        answer = http_get(lab, "client", f"http://{NODE_IP}:10249{path}")
        assert answer.get("status") == 403, answer
        assert "secret-web" not in answer["body"], answer


# ---- loadBalancerSourceRanges from a pod and from the node ---------------------------------------

LB_IP = "198.51.100.20"


def lb(ranges: tuple[str, ...]) -> LabService:
    return LabService(
        name="lb",
        cluster_ip="10.96.0.100",
        type="LoadBalancer",
        ports=(LabServicePort(name="http", port=80, target_port=8080, node_port=30090),),
        load_balancer_ips=(LB_IP,),
        source_ranges=ranges,
    )


def test_load_balancer_source_ranges_hold_for_pods_and_for_the_node(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    # Only the outside client is listed: a pod and the node itself are not.
    lab.write_manifests(services=[lb((f"{OUTSIDE_IP}/32",))], endpoints={"lb": list(PODS)})
    lab.run_agent().check()
    admitted = lab.many_tcp_requests("outside", LB_IP, 80, 5)
    assert all(r.ok for r in admitted), admitted
    for ns in ("client", "node"):
        refused = lab.many_tcp_requests(ns, LB_IP, 80, 3, timeout=1.5)
        assert not any(r.ok for r in refused), f"{ns} bypassed the source ranges: {refused}"
        assert {r.error for r in refused} <= {"timeout", "refused", "unreachable"}, refused
    # Not via the cluster IP's rules either: the ranges guard the LB address only.
    assert lab.tcp_probe("client", "10.96.0.100", 80).ok

    # The control: listed, the pod and the node get in over the very same path.
    ranges = (f"{OUTSIDE_IP}/32", f"{CLIENT_IP}/32", f"{NODE_IP}/32")
    lab.write_manifests(services=[lb(ranges)], endpoints={"lb": list(PODS)})
    lab.run_agent().check()
    for ns in ("client", "node", "outside"):
        results = lab.many_tcp_requests(ns, LB_IP, 80, 5)
        assert all(r.ok and who(r.reply) in PODS for r in results), (ns, results)


def test_a_load_balancer_ip_local_to_the_node_follows_the_node_ips_range(
    proxy_lab: SingleNodeLab,
) -> None:
    """A VIP-style LB address on the node: the node's connection has the VIP as source."""
    lab = proxy_lab
    lab.ns_exec("node", ["ip", "addr", "add", f"{LB_IP}/32", "dev", "lo"])

    lab.write_manifests(services=[lb((f"{OUTSIDE_IP}/32",))], endpoints={"lb": list(PODS)})
    lab.run_agent().check()
    refused = lab.many_tcp_requests("node", LB_IP, 80, 3, timeout=1.5)
    assert not any(r.ok for r in refused), f"the node bypassed the source ranges: {refused}"
    assert lab.tcp_probe("outside", LB_IP, 80).ok

    # A node address in the ranges admits the node, whose source here is the VIP.
    lab.write_manifests(
        services=[lb((f"{OUTSIDE_IP}/32", f"{NODE_IP}/32"))], endpoints={"lb": list(PODS)}
    )
    lab.run_agent().check()
    admitted = lab.many_tcp_requests("node", LB_IP, 80, 5)
    assert all(r.ok and who(r.reply) in PODS for r in admitted), admitted
    # Still no way in for an unlisted pod.
    assert not lab.tcp_probe("client", LB_IP, 80, timeout=1.5).ok


def test_overlapping_source_ranges_are_programmed_and_still_filter(
    proxy_lab: SingleNodeLab,
) -> None:
    """Ranges that overlap (legal in the API) used to fail the whole nftables sync (fuzz find).

    nft refuses overlapping intervals of one key in a concatenated interval set;
    the render now collapses them, and the union is what filters.
    """
    lab = proxy_lab
    ranges = (f"{OUTSIDE_IP}/32", "192.0.2.0/24", "192.0.2.0/25", "192.0.0.0/16")
    lab.write_manifests(services=[lb(ranges)], endpoints={"lb": list(PODS)})
    lab.run_agent().check()
    admitted = lab.many_tcp_requests("outside", LB_IP, 80, 5)
    assert all(r.ok and who(r.reply) in PODS for r in admitted), admitted
    assert not lab.tcp_probe("client", LB_IP, 80, timeout=1.5).ok


def test_a_range_of_every_address_admits_everyone_and_leaves_no_drift(
    proxy_lab: SingleNodeLab,
) -> None:
    """``0.0.0.0/0`` among the ranges: iptables-save omits ``-s 0.0.0.0/0`` (fuzz find).

    Rendered with ``-s``, the rule read back from the kernel never matched the
    desired text, so ``netagent debug diff`` reported a difference forever.
    """
    lab = proxy_lab
    lab.write_manifests(services=[lb(("10.0.0.0/8", "0.0.0.0/0"))], endpoints={"lb": list(PODS)})
    lab.run_agent().check()
    for ns in ("outside", "client"):
        results = lab.many_tcp_requests(ns, LB_IP, 80, 3)
        assert all(r.ok and who(r.reply) in PODS for r in results), (ns, results)
    diff = lab.netagent(["debug", "diff", *lab.agent_args(lab.manifest_dir, once=False)[1:]])
    assert diff.returncode == 0, diff.log
