"""Reliability, case 3: API faults beyond outages and 410s; no rule flap, and the agent converges.

A one-node lab cluster (the lab API server, the real ``netagent run``) with a
Service over node-1's pods and 520 other Services, so that a list of
Services takes two pages (the agent pages at 500). While a poller reads the
node's nat table back to back, the API server:

1. sends a line that is not JSON in front of each of the next watch events
   (a broken proxy in the path); then a pod is added to the Service;
2. after a forced relist (watches dropped, history compacted: 410 Gone),
   fails the relist's *second* page with a 500; meanwhile a Service is added.

Figures: poller readings in which the Service's rules were missing or
different (target 0), and whether each change reached the kernel afterwards
(target: yes). The agent's log must name each fault.

Two more faults, each in its own cluster:

3. every open watch goes silent (a load balancer dropped the connections
   without a reset): no event, no bookmark, no end. The agent runs with
   ``--min-watch-timeout 4s``, so its read timeout gives up on a silent watch
   within 8 + 2 s; a pod added meanwhile must then be programmed, by resuming
   the watch (no relist);
4. the API server restarts onto an etcd restored from a snapshot: objects
   *and* resourceVersion go back. The agent's watches resume from a version
   the server has not reached ("Too large resource version", 504); it must
   relist, program the restored state (a Service created after the snapshot
   disappears, a pod added after it leaves the endpoints) and see the writes
   made after the restore.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnslab.agent_process import AgentHandle
from netnslab.cluster import ClusterLab
from netnslab.patience import patience

pytestmark = pytest.mark.lab

HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}
FILLERS = 520


def _one_node_cluster(tmp_path: Path, mode: str, *extra: str) -> Iterator[ClusterLab]:
    # One node: the injected faults are counted, and another node's agent would
    # take some of them.
    lab = ClusterLab(
        nodes=1,
        overlay="none",
        workdir=tmp_path / "lab",
        keep_workdir=True,
        agent_args=[
            "--min-sync-period", "0.2s", "--sync-period", "5s", "--proxy-mode", mode, *extra,
        ],
    )  # fmt: skip
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture
def cluster(tmp_path: Path, lab_proxy_mode: str) -> Iterator[ClusterLab]:
    yield from _one_node_cluster(tmp_path, lab_proxy_mode)


#: ``--min-watch-timeout``: watches of 4-8 s, a silent one given up after at most 8 + 2 s.
SHORT_WATCH = 4.0


@pytest.fixture
def short_watch_cluster(tmp_path: Path, lab_proxy_mode: str) -> Iterator[ClusterLab]:
    yield from _one_node_cluster(
        tmp_path, lab_proxy_mode, "--min-watch-timeout", f"{SHORT_WATCH:g}s"
    )


def answers(lab: ClusterLab, ip: str, count: int = 40) -> Counter[str]:
    results = lab.many_requests("tcp", "client-1", ip, 80, count, timeout=1.0)
    return Counter(r.reply.split()[0] if r.ok and r.reply else f"<{r.error}>" for r in results)


def wait_for_answers(lab: ClusterLab, ip: str, expected: set[str], timeout: float = 30.0) -> None:
    end = time.monotonic() + patience(timeout)  # stretched in the slow VM
    while set(got := answers(lab, ip)) != expected:
        assert time.monotonic() < end, f"{ip}: wanted answers from {expected}, got {got}"
        time.sleep(0.3)


def web_rules(lab: ClusterLab, ip: str) -> list[str]:
    """What node-1 has programmed for Service web (cluster IP ``ip``), in the mode's own terms.

    iptables: the nat lines whose comment names it; nftables: the set and map
    elements holding its cluster IP; IPVS: its virtual server and real servers.
    """
    text = lab.programmed_text("node-1")
    if lab.proxy_mode == "nftables":
        return sorted(e.strip() for e in re.split(r"[,{}\n]", text) if f"{ip} " in e)
    if lab.proxy_mode == "ipvs":
        # A virtual server's line starts its block; real server lines without the
        # connection counters (traffic changes them, not the programming).
        lines: list[str] = []
        inside = False
        for line in text.splitlines():
            if not line.startswith(" "):
                inside = f" {ip}:80 " in f" {line} "
            if inside:
                lines.append(" ".join(line.split()[:4]))
        return lines
    return sorted(line for line in text.splitlines() if "default/web" in line)


def programmed(lab: ClusterLab, ip: str) -> bool:
    """Whether node-1 has the Service of cluster IP ``ip`` (port 80) programmed at all."""
    if lab.proxy_mode == "iptables":
        # A Service without endpoints is rejected in the filter table, not DNATed.
        return f"{ip}/32" in lab.iptables_save("node-1")
    if lab.proxy_mode == "ipvs":
        return f" {ip}:80 " in lab.programmed_text("node-1")
    return f"{ip} . tcp . 80" in lab.programmed_text("node-1")


def wait_programmed(lab: ClusterLab, ip: str, present: bool = True, timeout: float = 60) -> None:
    timeout = patience(timeout)
    end = time.monotonic() + timeout
    while programmed(lab, ip) != present:
        state = "appear" if present else "go away"
        assert time.monotonic() < end, f"{ip} did not {state} on node-1 in {timeout}s"
        time.sleep(0.3)


def serve_web(lab: ClusterLab) -> str:
    """Create Service web over node-1's two pods; its cluster IP, once both answer."""
    web = lab.create_service("web", {"app": "echo", "node": "node-1"}, [HTTP])
    ip = str(web["spec"]["clusterIP"])
    wait_for_answers(lab, ip, {"echo-1a", "echo-1b"})
    return ip


def node_agent(lab: ClusterLab) -> AgentHandle:
    """node-1's running agent."""
    agent = lab.node("node-1").agent
    assert agent is not None
    return agent


def test_malformed_watch_events_and_a_failed_second_list_page_cause_no_flap(
    cluster: ClusterLab,
) -> None:
    lab = cluster
    ip = serve_web(lab)
    last = None
    for i in range(FILLERS):
        last = lab.create_service(f"filler-{i}", {"app": "nothing-here"}, [HTTP])
    assert last is not None
    wait_programmed(lab, last["spec"]["clusterIP"], timeout=120)
    agent = node_agent(lab)

    stop = threading.Event()
    readings: list[list[str]] = []

    def poll() -> None:
        while not stop.is_set():
            readings.append(web_rules(lab, ip))

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        # 1. Malformed watch events, then a real change.
        mark = len(agent.log_text())
        lab.api.corrupt_events(3)
        lab.add_pod("echo-1c", "node-1", labels={"app": "echo", "node": "node-1"})
        agent.wait_for_log(r"malformed event", after=mark, timeout=30)
        wait_for_answers(lab, ip, {"echo-1a", "echo-1b", "echo-1c"})
        three = web_rules(lab, ip)

        # 2. A relist whose second page fails once; a Service is added meanwhile.
        # The Service watch cannot reconnect for three tries while a Service is added
        # and the history compacted past the agent's version: the watch gets 410 Gone.
        mark = len(agent.log_text())
        lab.api.inject_errors(500, 3, path="/api/v1/services", watch_only=True)
        lab.api.inject_errors(500, 1, path="/api/v1/services", continued_only=True)
        lab.api.close_watches()
        late = lab.create_service("late", {"app": "echo", "node": "node-1"}, [HTTP])
        lab.api.compact()
        agent.wait_for_log(r"Service watch .*410 Gone", after=mark, timeout=40)
        agent.wait_for_log(r"Service list .*(500|Internal)", after=mark, timeout=40)
        agent.wait_for_log(r"Service relisted", after=mark, timeout=40)
        wait_programmed(lab, late["spec"]["clusterIP"], timeout=30)
        wait_for_answers(lab, late["spec"]["clusterIP"], {"echo-1a", "echo-1b", "echo-1c"})
    finally:
        stop.set()
        poller.join(timeout=60)
    two = readings[0]
    flaps = [r for r in readings if r not in (two, three)]
    print(f"{lab.proxy_mode}: {len(readings)} readings, {len(flaps)} with web's rules wrong")
    assert len(readings) >= 10
    assert not flaps, f"{len(flaps)} readings had other rules for web: {flaps[0]}"
    assert three and web_rules(lab, ip) == three


def test_a_silent_watch_is_given_up_and_resumed_without_a_relist(
    short_watch_cluster: ClusterLab,
) -> None:
    lab = short_watch_cluster
    ip = serve_web(lab)
    agent = node_agent(lab)
    mark = len(agent.log_text())
    lab.api.silence_watches()
    silenced = time.monotonic()
    lab.add_pod("echo-1c", "node-1", labels={"app": "echo", "node": "node-1"})
    wait_for_answers(lab, ip, {"echo-1a", "echo-1b", "echo-1c"}, timeout=40.0)
    took = time.monotonic() - silenced
    log = agent.log_text()[mark:]
    print(f"{lab.proxy_mode}: pod added during the silence programmed {took:.1f}s after")
    assert re.search(r"EndpointSlice watch broke: .*[Rr]ead timed out", log), log
    assert "relisted" not in log, log
    # Bounded by the longest watch (2 x 4 s) plus the read margin, plus sync time.
    assert took < 2 * SHORT_WATCH + SHORT_WATCH / 2 + 10, log


def test_an_etcd_restore_with_older_resource_versions_is_relisted_and_followed(
    cluster: ClusterLab,
) -> None:
    lab = cluster
    ip = serve_web(lab)
    saved = lab.api.snapshot()
    lab.add_pod("echo-1c", "node-1", labels={"app": "echo", "node": "node-1"})
    late = lab.create_service("late", {"app": "echo", "node": "node-1"}, [HTTP])
    late_ip = late["spec"]["clusterIP"]
    wait_programmed(lab, late_ip, timeout=30)
    wait_for_answers(lab, ip, {"echo-1a", "echo-1b", "echo-1c"})
    agent = node_agent(lab)

    mark = len(agent.log_text())
    assert lab.api.restore() == saved
    agent.wait_for_log(r"Service watch .*Too large resource version.*relisting", after=mark,
                       timeout=40)
    agent.wait_for_log(r"EndpointSlice relisted", after=mark, timeout=40)
    wait_programmed(lab, late_ip, present=False, timeout=30)
    wait_for_answers(lab, ip, {"echo-1a", "echo-1b"})
    # Writes after the restore reuse versions the agent saw before it; they must arrive.
    after = lab.create_service("after", {"app": "echo", "node": "node-1"}, [HTTP])
    wait_for_answers(lab, after["spec"]["clusterIP"], {"echo-1a", "echo-1b"})
    assert agent.running(), agent.log_text()[mark:]
