"""The README's first command: a three-node cluster in network namespaces, netagent on every node.

What a newcomer sees: the lab API server in its control-plane namespace,
three node namespaces on an underlay switch, each running ``netagent run``
against the API (the proxy, and the VXLAN overlay that gives each node a pod
CIDR and routes to the others), echo pods attached to each node's cbr0, and
demo Services created through the API (kube-dns on UDP and TCP 53, a web
ClusterIP, a NodePort on 30505). Then real traffic: which pod answered, on
which node, and which source address it saw. The lab keeps running so it can
be explored (kubectl works against it); ``scripts/lab.sh down`` removes it.

Everything lives inside the lab's network namespaces; the host's namespace
only gets a loopback port that forwards to the API server.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab.agent_process import run_netagent  # noqa: E402
from netnslab.cluster import CLUSTER_CIDR, CURRENT_CLUSTER, ClusterLab  # noqa: E402
from netnslab.traffic import ProbeResult  # noqa: E402

DNS_PORTS = [
    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": "dns-tcp"},
]
HTTP = [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]


def say(text: str = "") -> None:
    print(text, flush=True)


def show(title: str, results: list[ProbeResult], lab: ClusterLab) -> None:
    replies = [r.reply for r in results if r.reply]
    failures = Counter(r.error for r in results if r.error)
    where = {p.name: p.node for p in lab.pods.values()}
    backends = Counter(f"{r.split()[0]}@{where.get(r.split()[0], '?')}" for r in replies)
    seen = sorted({r.split()[1].rsplit(":", 1)[0] for r in replies})
    say(f"  {title}")
    say(f"      answered by: {dict(sorted(backends.items()))}")
    say(f"      backends saw source {seen}")
    if failures:
        say(f"      FAILED: {dict(failures)}")


def main() -> int:
    overlay = os.environ.get("NETAGENT_LAB_OVERLAY", "vxlan")
    factory = None
    if os.environ.get("NETAGENT_LAB_AGENTS") == "daemonset":
        # The agents run as the DaemonSet says: its image, command, args, env and mounts,
        # one podman container per lab node, in that node's namespace.
        from netnslab.daemonset_lab import DaemonSetAgents, build_image

        say(f"building the image (scripts/image.sh, cached): {build_image()}")
        factory = DaemonSetAgents(cluster_cidr=CLUSTER_CIDR)
        overlay = (factory.config.get("overlay") or {}).get("backend", "none")
        for note in factory.spec.lab_notes:
            say(f"  lab note: {note}")
    proxy_mode = os.environ.get("NETAGENT_LAB_PROXY_MODE", "iptables")
    agent_args = ["--proxy-mode", proxy_mode] if factory is None else []
    lab = ClusterLab(
        overlay=overlay, detached=True, agent_factory=factory, agent_args=agent_args
    )
    lab.up()
    CURRENT_CLUSTER.write_text(lab.suffix + "\n")
    say(f"cluster lab {lab.suffix}: 3 nodes, overlay {overlay}, proxy mode {proxy_mode}")
    say(
        f"  API server: {lab.api_url}  (kubectl --kubeconfig {lab.kubeconfig} get nodes -o json)"
    )
    for node in lab.nodes.values():
        say(f"  {node.name}: namespace {node.ns}, IP {node.ip}, pod CIDR {node.pod_cidr}")
        say(f"      netagent log: {node.agent.log_path if node.agent else '-'}")
    lab.create_service("kube-dns", {"app": "echo"}, DNS_PORTS, cluster_ip="10.96.0.10")
    web = lab.create_service("web", {"app": "echo"}, HTTP, cluster_ip="10.96.0.80")
    lab.create_service(
        "web-nodeport",
        {"app": "echo"},
        [{**HTTP[0], "nodePort": 30505}],
        type="NodePort",
        cluster_ip="10.96.0.81",
    )
    for node in lab.nodes:
        if proxy_mode == "nftables":
            lab.wait_for_nft(node, "tcp . 30505 : goto nodeport-tcp-")
        else:
            lab.wait_for_rules(node, "30505")
    say()
    say(
        f"Services created through the API, on every node (web: {web['spec']['clusterIP']})"
    )
    say("Traffic from client-1 (a pod on node-1):")
    show(
        "web ClusterIP 10.96.0.80:80, 60 new TCP connections",
        lab.many_requests("tcp", "client-1", "10.96.0.80", 80, 60),
        lab,
    )
    show(
        "kube-dns 10.96.0.10:53/UDP, 30 queries",
        lab.many_requests("udp", "client-1", "10.96.0.10", 53, 30),
        lab,
    )
    show(
        "kube-dns 10.96.0.10:53/TCP, 20 connections",
        lab.many_requests("tcp", "client-1", "10.96.0.10", 53, 20),
        lab,
    )
    node2 = lab.node("node-2").ip
    show(
        f"NodePort {node2}:30505 from the outside host, 30 connections",
        lab.many_requests("tcp", "outside", node2, 30505, 30),
        lab,
    )
    if overlay == "none":
        say()
        say("overlay=none: pods on other nodes are not reachable (no routes between nodes).")
    else:
        say()
        say(f"Pods on node-2 and node-3 answered across the {overlay} overlay; pod-to-pod keeps")
        say("the client pod's own address, NodePort traffic from outside is masqueraded.")
    node1 = lab.node("node-1")
    flags = lab.agent_argv(node1)[1:]  # the agent's own flags, without "run"
    say()
    say("What node-1's agent programmed for default/web (netagent debug services default/web):")
    report = run_netagent(node1.ns, lab.python, ["debug", "services", "default/web", *flags])
    say(report.stdout.rstrip() or report.stderr.rstrip())
    diff = run_netagent(node1.ns, lab.python, ["debug", "diff", *flags])
    last = (diff.stdout.strip().splitlines() or [diff.stderr.strip()])[-1]
    say(f"netagent debug diff on node-1 (kernel against desired): exit {diff.returncode}, {last}")
    say()
    say(f"Explore: ip netns exec {node1.ns} ip route; bridge fdb show dev flannel.1")
    say(
        f"  ip netns exec {node1.ns} {lab.python} -m netagent debug overlay "
        + " ".join(flags)
    )
    say("Tear down: bash scripts/lab.sh down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
