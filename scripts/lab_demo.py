"""The README's first command: build the lab, run netagent in it, and show it doing its job.

What a newcomer sees: a node namespace running ``netagent run --manifests``
(long-running, watching its manifests directory), three echo pods, a client
pod and an outside client; demo Services shaped like a real cluster's
(kube-dns on UDP and TCP 53, a web ClusterIP, a NodePort on 30505); then real
traffic through each of them, which pod answered and which source address it
saw, and ``netagent debug trace`` for one packet. The lab keeps running so it
can be explored by hand; ``scripts/lab.sh down`` removes all of it.

Everything is built inside network namespaces; nothing touches the host's
root namespace.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab import (  # noqa: E402
    NODE_IP,
    OUTSIDE_IP,
    LabService,
    LabServicePort,
    ProbeResult,
    SingleNodeLab,
)

DEMO_SERVICES = [
    LabService(
        name="kube-dns",
        namespace="kube-system",
        cluster_ip="10.96.0.10",
        ports=(
            LabServicePort(name="dns", port=53, protocol="UDP", target_port=5353),
            LabServicePort(name="dns-tcp", port=53, protocol="TCP", target_port=5353),
        ),
    ),
    LabService(
        name="web",
        cluster_ip="10.96.0.80",
        ports=(LabServicePort(name="http", port=80, target_port=8080),),
    ),
    LabService(
        name="web-nodeport",
        cluster_ip="10.96.0.81",
        type="NodePort",
        ports=(LabServicePort(name="http", port=80, target_port=8080, node_port=30505),),
    ),
]
DEMO_ENDPOINTS = {
    "kube-dns": ["pod-a", "pod-b"],
    "web": ["pod-a", "pod-b", "pod-c"],
    "web-nodeport": ["pod-a", "pod-b", "pod-c"],
}


def say(text: str = "") -> None:
    print(text, flush=True)


def wait_for_rules(lab: SingleNodeLab, services: int, timeout: float = 30.0) -> None:
    """Wait until the agent has programmed every demo service port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = lab.iptables_save("nat")
        if text.count("cluster IP") >= services:
            return
        time.sleep(0.2)
    raise TimeoutError("netagent did not program the demo services in time")


def show(title: str, results: list[ProbeResult]) -> None:
    replies = [r.reply for r in results if r.reply]
    failures = Counter(r.error for r in results if r.error)
    backends = Counter(r.split()[0] for r in replies)
    seen = sorted({r.split()[1].rsplit(":", 1)[0] for r in replies})
    say(f"  {title}")
    say(f"      answered by: {dict(sorted(backends.items()))}; backends saw source {seen}")
    if failures:
        say(f"      FAILED: {dict(failures)}")


def main() -> int:
    lab_cli = str(REPO / "netns-lab" / "lab.sh")
    subprocess.run([lab_cli, "up"], check=True, stdout=subprocess.DEVNULL)
    suffix = (Path("/run/netns-lab") / "current").read_text().strip()
    lab = SingleNodeLab.attach(suffix)
    lab.write_manifests(services=DEMO_SERVICES, endpoints=DEMO_ENDPOINTS)
    log = lab.workdir / "netagent.log"
    argv = ["ip", "netns", "exec", lab.node_ns, sys.executable, "-m", "netagent"]
    argv += lab.agent_args(lab.manifest_dir, once=False)
    with log.open("ab") as fh:
        subprocess.Popen(argv, stdout=fh, stderr=fh, start_new_session=True, cwd=REPO)
    say(f"lab {suffix}: node namespace {lab.node_ns}, node IP {NODE_IP}")
    say(f"netagent is running in the node namespace, watching {lab.manifest_dir}")
    say(f"  log: {log}")
    wait_for_rules(lab, services=4)
    say()
    say("Traffic through the services netagent programmed:")
    show(
        "web ClusterIP 10.96.0.80:80 from the client pod, 30 new TCP connections",
        lab.many_tcp_requests("client", "10.96.0.80", 80, 30),
    )
    show(
        "kube-dns 10.96.0.10:53/UDP from the client pod, 20 queries",
        lab.many_udp_requests("client", "10.96.0.10", 53, 20),
    )
    show(
        "kube-dns 10.96.0.10:53/TCP from the client pod, 10 connections",
        lab.many_tcp_requests("client", "10.96.0.10", 53, 10),
    )
    show(
        f"NodePort {NODE_IP}:30505 from the outside client {OUTSIDE_IP}, 20 connections",
        lab.many_tcp_requests("outside", NODE_IP, 30505, 20),
    )
    say("  (the NodePort uses externalTrafficPolicy=Cluster, so backends see the node's address)")
    say()
    say("netagent debug trace: what happens to a new TCP packet from the outside to the NodePort")
    trace = lab.ns_exec(
        "node",
        [
            sys.executable, "-m", "netagent", "debug", "trace",
            "--src", OUTSIDE_IP, "--dst", NODE_IP, "--proto", "tcp", "--port", "30505",
            "--from", "external",
        ],
    )
    for line in trace.stdout.splitlines():
        say(f"  {line}")
    say()
    say("Cross-node pod traffic (the overlay) is not part of this single-node lab yet.")
    say(f"Explore: ip netns exec {lab.node_ns} iptables-save -t nat | grep NETAGENT")
    say("Tear down: bash scripts/lab.sh down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
