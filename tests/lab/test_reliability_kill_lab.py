"""Reliability, case 1: the agent is killed with SIGKILL under load, five times; no connection fails.

What a node promises while its agent crashes: the rules already in the kernel
keep serving, and the restarted agent converges without ever writing an
empty or partial ruleset. The test holds the agent to that with traffic and
with a poller:

- two clients open new TCP connections back to back for the whole test (a
  pod to a ClusterIP, an outside host to a NodePort); every one must get a
  reply from one of the Service's three pods;
- a poller reads the programmed rules (``iptables-save`` of both backends,
  ``nft list ruleset``, or in IPVS mode ``ipvsadm -Ln``) as fast as it can;
  every reading must still send traffic to all three endpoints (a reading
  without them is a rule flap);
- the agent is killed (SIGKILL, no cleanup of any kind) and restarted five
  times, each time waiting for the restarted agent's first full sync.

Figures (printed, and in docs/reliability.md): connections made, failed,
wrong backend; rule readings taken, readings missing an endpoint. Targets:
0, 0, 0. Load is bounded: batches of 20 connections (100 in the VM), at most
400 batches.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from netnslab import NODE_IP, POD_IPS, LabService, LabServicePort, SingleNodeLab
from netnslab.patience import patience_factor

pytestmark = pytest.mark.lab

PODS = ("pod-a", "pod-b", "pod-c")
CLUSTER_IP = "10.96.0.80"
NODE_PORT = 30080
WEB = LabService(
    name="web",
    cluster_ip=CLUSTER_IP,
    ports=(LabServicePort(name="http", port=80, target_port=8080, node_port=NODE_PORT),),
    type="NodePort",
)
KILLS = 5
MAX_BATCHES = 400
#: Connections per client process. In the slow VM (patience above 1) a process start costs
#: about a second of its one CPU, so each process makes more connections, back to back.
BATCH = 20 if patience_factor() == 1 else 100


def endpoints_text(lab: SingleNodeLab) -> str:
    """What holds the Service's endpoints: the rules, or in IPVS mode the IPVS table.

    IPVS mode's iptables rules are the same whatever the endpoints, so the
    poller reads ``ipvsadm -Ln`` alone there (one process per reading, which
    matters in the slow VM).
    """
    if lab.proxy_mode == "ipvs":
        return lab.ns_exec("node", ["ipvsadm", "-Ln"]).stdout
    return lab.programmed_text()


def test_sigkill_under_load_fails_no_connection_and_never_flaps_the_rules(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
    agent = lab.start_agent()
    agent.wait_for_log(r"synced IPv4 \(full\)", timeout=30)
    assert lab.tcp_request("client", CLUSTER_IP, 80).split()[0] in PODS

    stop = threading.Event()
    outcomes: dict[str, list[tuple[str | None, str | None]]] = {"clusterip": [], "nodeport": []}
    readings: list[bool] = []
    errors: list[BaseException] = []

    def client(kind: str, src: str, ip: str, port: int) -> None:
        try:
            for _ in range(MAX_BATCHES):
                if stop.is_set():
                    return
                for r in lab.many_tcp_requests(src, ip, port, BATCH, timeout=2.0):
                    outcomes[kind].append((r.reply, r.error))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def poller() -> None:
        try:
            while not stop.is_set():
                text = endpoints_text(lab)
                readings.append(
                    all(lab.rules_mention_endpoint(POD_IPS[p], 8080, text) for p in PODS)
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=client, args=("clusterip", "client", CLUSTER_IP, 80)),
        threading.Thread(target=client, args=("nodeport", "outside", NODE_IP, NODE_PORT)),
        threading.Thread(target=poller),
    ]
    for t in threads:
        t.start()
    restarts: list[float] = []
    try:
        time.sleep(1.0)
        for _ in range(KILLS):
            os.kill(agent.pid, signal.SIGKILL)
            agent.proc.wait(timeout=10)
            assert agent.proc.returncode == -signal.SIGKILL
            time.sleep(0.5)  # the node runs without an agent for a moment
            started = time.monotonic()
            agent = lab.start_agent()
            agent.wait_for_log(r"synced IPv4 \(full\)", timeout=60)
            restarts.append(time.monotonic() - started)
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)

    summary = []
    for kind, got in outcomes.items():
        failed = [e for _, e in got if e is not None]
        wrong = [r for r, e in got if e is None and (r is None or r.split()[0] not in PODS)]
        summary.append(f"{kind}: {len(got)} connections, {len(failed)} failed, {len(wrong)} wrong")
        assert len(got) >= 100, f"{kind}: only {len(got)} connections overlapped the kills"
        assert not failed, f"{kind}: {len(failed)} of {len(got)} failed: {failed[:5]}"
        assert not wrong, f"{kind}: {len(wrong)} replies from no pod of the Service: {wrong[:5]}"
    flaps = readings.count(False)
    summary.append(f"rule readings {len(readings)}, missing an endpoint {flaps}")
    summary.append("restart to first full sync: " + ", ".join(f"{s:.2f}s" for s in restarts))
    print("; ".join(summary))
    assert len(readings) >= 20
    assert flaps == 0, f"{flaps} of {len(readings)} rule readings lacked an endpoint"
