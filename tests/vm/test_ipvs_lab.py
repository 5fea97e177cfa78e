"""IPVS mode end to end: real `netagent run --proxy-mode ipvs` in the lab node, real traffic.

Runs inside the qemu VM (``scripts/ipvs-vm.sh``): this machine's kernel has
no IPVS. The semantic Service cases run in ipvs mode in ``tests/lab``
(``NETAGENT_LAB_PROXY_MODES=ipvs``); these are what only IPVS mode has.
Each test builds its own single-node lab and tears it down in ``finally``.
``ipvsadm`` (in the guest for assertions only) reads back what the agent
programmed over netlink.

* Scheduler from config: ``--ipvs-scheduler sh`` puts ``sh`` on the virtual
  server, and 30 new connections from one client all reach one pod (source
  hashing); with ``wrr`` they spread over all three pods. An unknown
  scheduler makes ``run --once`` fail, naming it, before anything is
  programmed.
* Graceful termination: a long-running agent, a session on pod-b, pod-b
  removed from the endpoints. The session keeps working, pod-b's real server
  stays at weight 0 (through full syncs) and gets no new connection; once
  the session is gone the real server is deleted.
  The session is ended with a reset (``SO_LINGER`` 0): IPVS keeps a closed
  connection as *inactive* for its state's timeout, and the real server goes
  only when active and inactive are both 0 (kube-proxy's rule). After a
  reset that is IPVS's CLOSE timeout (10 s); after an orderly FIN close it
  is TIME_WAIT, 120 s, which this file's time budget does not allow.
* Drift and ownership: a real server deleted with ``ipvsadm`` is back
  within a few sync periods; a foreign virtual server (an address that is
  not the agent's) stays unchanged through syncs and through
  ``netagent cleanup``, which removes every netagent virtual server, the
  ``netagent-ipvs0`` device, the ``NETAGENT-`` ipsets and every
  ``NETAGENT`` iptables chain.
* Mode switch iptables -> ipvs -> iptables on one node: no Service chain of
  iptables mode survives in ipvs mode, no virtual server, device or ipset of
  ipvs mode survives back in iptables mode, and traffic works in each.

The long-running agents (graceful termination, drift) must not log a single
failed sync: the next full sync retries, so traffic would hide a failing
sync, but the log does not.

On failure, the node's IPVS table, ipsets, addresses, iptables (both
backends) and the agents' logs are printed (pytest shows them with the
failure): the guest's files are thrown away when it powers off.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netnslab import (
    POD_IPS,
    AgentHandle,
    LabService,
    LabServicePort,
    ProbeResult,
    SingleNodeLab,
    traffic,
)
from netnslab.netns import exec_argv

pytestmark = pytest.mark.vm

PODS = ("pod-a", "pod-b", "pod-c")
VIP = "10.96.0.10"
HTTP = LabServicePort(name="http", port=80, protocol="TCP", target_port=8080)
WEB = LabService(name="web", cluster_ip=VIP, ports=(HTTP,))
VS_KEY = f"TCP {VIP}:80"
SYNC_ARGS = ["--sync-period", "2s", "--min-sync-period", "100ms"]
#: ``netagent run --once`` under TCG (interpreter start, imports, netlink): generous.
ONCE_TIMEOUT = 180.0
#: A virtual server on an address the agent never binds, on a port outside the node ports.
FOREIGN_KEY = "TCP 192.0.2.77:9999"
DUMMY = "netagent-ipvs0"


def real(pod: str) -> str:
    """``ip:8080`` of a lab pod, as ipvsadm prints a real server."""
    return f"{POD_IPS[pod]}:8080"


# ---- reading ipvsadm -Ln -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RealServerRow:
    """One ``  -> 10.244.0.11:8080  Masq  1  0  0`` line."""

    forward: str
    weight: int
    active: int
    inactive: int


@dataclass(slots=True)
class VirtualServerRow:
    """One ``TCP  10.96.0.10:80 rr [flags]`` line and its real servers."""

    scheduler: str
    flags: str
    reals: dict[str, RealServerRow] = field(default_factory=dict)

    def shape(self) -> tuple[str, str, tuple[tuple[str, str, int], ...]]:
        """What must not change for a foreign virtual server (counters left out)."""
        rows = tuple(sorted((k, r.forward, r.weight) for k, r in self.reals.items()))
        return self.scheduler, self.flags, rows


_VS_LINE = re.compile(r"^(TCP|UDP|SCTP|FWM)\s+(\S+)\s+(\S+)\s*(.*)$")
_RS_LINE = re.compile(r"^\s+->\s+(\d\S*:\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def parse_ipvsadm(text: str) -> dict[str, VirtualServerRow]:
    """``ipvsadm -Ln`` as ``{"TCP 10.96.0.10:80": VirtualServerRow}``."""
    table: dict[str, VirtualServerRow] = {}
    current: VirtualServerRow | None = None
    for line in text.splitlines():
        if m := _VS_LINE.match(line):
            current = VirtualServerRow(scheduler=m[3], flags=m[4].strip())
            table[f"{m[1]} {m[2]}"] = current
        elif (m := _RS_LINE.match(line)) and current is not None:
            current.reals[m[1]] = RealServerRow(m[2], int(m[3]), int(m[4]), int(m[5]))
    return table


def ipvsadm_text(lab: SingleNodeLab) -> str:
    return lab.ns_exec("node", ["ipvsadm", "-Ln"]).stdout


def ipvs_table(lab: SingleNodeLab) -> dict[str, VirtualServerRow]:
    return parse_ipvsadm(ipvsadm_text(lab))


def weights(lab: SingleNodeLab, key: str = VS_KEY) -> dict[str, int]:
    """Real server -> weight of one virtual server ({} when it does not exist)."""
    vs = ipvs_table(lab).get(key)
    return {} if vs is None else {k: r.weight for k, r in vs.reals.items()}


# ---- other kernel state --------------------------------------------------------------------


def has_dummy(lab: SingleNodeLab) -> bool:
    return lab.ns_exec("node", ["ip", "link", "show", DUMMY], check=False).returncode == 0


def netagent_ipsets(lab: SingleNodeLab) -> list[str]:
    names = lab.ns_exec("node", ["ipset", "list", "-n"]).stdout.split()
    return sorted(n for n in names if n.startswith("NETAGENT-"))


def netagent_iptables_lines(lab: SingleNodeLab, *needles: str) -> list[str]:
    """Lines of iptables-save (nft and legacy) that carry any of ``needles``."""
    return [
        line
        for line in lab.iptables_save_all_backends().splitlines()
        if any(n in line for n in needles)
    ]


def diagnostics(lab: SingleNodeLab) -> str:
    """Everything worth seeing when a test failed, from the node namespace."""
    parts: list[str] = []
    commands = (
        ["ipvsadm", "-Ln"],
        ["ipset", "list"],
        ["ip", "-br", "addr"],
        ["iptables-save"],
        ["iptables-legacy-save"],
    )
    for argv in commands:
        try:
            done = lab.ns_exec("node", argv, check=False, timeout=30.0)
            parts.append(f"--- {' '.join(argv)} (exit {done.returncode}) ---")
            parts.append(done.stdout + done.stderr)
        except Exception as exc:  # diagnostics must never hide the real failure
            parts.append(f"--- {' '.join(argv)}: {exc}")
    for log in sorted(lab.workdir.glob("agent-*.log")):
        parts.append(f"--- {log.name} ---")
        parts.append(log.read_text(errors="replace")[-30000:])
    return "\n".join(parts)


@contextmanager
def lab_in(tmp_path: Path, proxy_mode: str = "ipvs") -> Iterator[SingleNodeLab]:
    """A fresh single-node lab, torn down in ``finally``; its kernel state printed on failure."""
    lab = SingleNodeLab(workdir=tmp_path / "lab", keep_workdir=True, proxy_mode=proxy_mode)
    try:
        lab.up()
        try:
            yield lab
        except BaseException:
            print(diagnostics(lab))
            raise
    finally:
        lab.down()


def wait_until(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    """Poll ``predicate`` every 200 ms; the seconds it took, or a failure naming ``what``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


def assert_no_failed_sync(agent: AgentHandle) -> None:
    """Every sync of a long-running agent succeeded (a retry hides a failure from traffic)."""
    failed = [line for line in agent.log_text().splitlines() if "sync failed" in line]
    syncs = agent.log_text().count("synced IPv4")
    assert not failed, f"{len(failed)} syncs failed ({syncs} succeeded), e.g.:\n" + "\n".join(
        failed[:5]
    )


def requests_ok(lab: SingleNodeLab, count: int) -> list[ProbeResult]:
    """``count`` new connections from the client pod to the Service; every one answered."""
    results = lab.many_tcp_requests("client", VIP, 80, count, timeout=5.0)
    failed = [r for r in results if not r.ok]
    assert not failed, f"{len(failed)} of {count} failed, e.g. {failed[:3]}"
    assert len({r.local for r in results}) == count, "each request must be a new connection"
    return results


# ---- a TCP session that can end with a reset -----------------------------------------------

#: Runs in the client namespace: connect, print ``local IP:PORT``; then per stdin line send it
#: and print ``reply ...`` (or ``closed`` / ``error ...``); the line ``RST`` closes with
#: SO_LINGER 0, so the kernel sends a reset instead of a FIN, and prints ``reset``.
SESSION_SCRIPT = r"""
import socket, struct, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    sock = socket.create_connection((host, port), timeout=timeout)
except OSError as exc:
    print("error connect: %s" % exc, flush=True)
    raise SystemExit(0)
print("local %s:%d" % sock.getsockname()[:2], flush=True)
buf = b""
for line in sys.stdin:
    cmd = line.rstrip("\n")
    if cmd == "RST":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        print("reset", flush=True)
        break
    try:
        sock.sendall(cmd.encode() + b"\n")
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError as exc:
        print("error %s" % exc, flush=True)
        break
    if b"\n" not in buf:
        print("closed", flush=True)
        break
    reply, _, buf = buf.partition(b"\n")
    print("reply " + reply.decode(errors="replace"), flush=True)
"""


class ResettableSession:
    """One long-lived TCP connection from the client pod; :meth:`reset` ends it with an RST."""

    def __init__(self, lab: SingleNodeLab, ip: str, port: int, timeout: float = 5.0) -> None:
        argv = [lab.python, "-I", "-S", "-c", SESSION_SCRIPT, ip, str(port), str(timeout)]
        self._proc = subprocess.Popen(
            exec_argv(lab.client_ns, argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._proc.stdout is not None
        self._reader = traffic.LineReader(self._proc.stdout.fileno())
        first = self._line()
        if not first.startswith("local "):
            self.close()
            raise AssertionError(f"session to {ip}:{port}: {first}")
        self.local = first.split()[1]

    def _line(self, timeout: float = 30.0) -> str:
        line = self._reader.readline(timeout)
        return "closed (helper exited)" if line is None else line

    def _send(self, line: str) -> str:
        stdin = self._proc.stdin
        assert stdin is not None and not stdin.closed, "session already closed"
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        return self._line()

    def request(self, text: str) -> str:
        """The reply line on the open connection (``pod-b 10.244.0.20:40112``)."""
        answer = self._send(text)
        if not answer.startswith("reply "):
            raise AssertionError(f"session {self.local}: {answer}")
        return answer.removeprefix("reply ")

    def reset(self) -> None:
        """Close with SO_LINGER 0: the peer (and IPVS) see an RST."""
        answer = self._send("RST")
        assert answer == "reset", f"session {self.local}: {answer}"
        self.close()

    def close(self) -> None:
        """Close (with a FIN if not reset already) and reap the helper; idempotent."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with suppress(BrokenPipeError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5.0)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


# ---- 1. the scheduler ----------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["sh", "wrr"])
def test_scheduler_comes_from_config(tmp_path: Path, scheduler: str) -> None:
    with lab_in(tmp_path) as lab:
        lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
        lab.run_agent(extra=["--ipvs-scheduler", scheduler], timeout=ONCE_TIMEOUT).check()

        text = ipvsadm_text(lab)
        vs = parse_ipvsadm(text).get(VS_KEY)
        assert vs is not None, text
        assert vs.scheduler == scheduler, text
        assert {k: (r.forward, r.weight) for k, r in vs.reals.items()} == {
            real(p): ("Masq", 1) for p in PODS
        }, text

        pods = Counter(r.pod for r in requests_ok(lab, 30))
        if scheduler == "sh":
            # Source hashing: one client address, one real server, whatever the source port.
            assert len(pods) == 1, f"sh spread one client over {pods}"
        else:
            # Equal weights: weighted round robin visits every real server in turn.
            assert set(pods) == set(PODS), pods
            assert min(pods.values()) >= 5, f"wrr: uneven {pods}"


def test_unknown_scheduler_fails_the_run_naming_it(tmp_path: Path) -> None:
    with lab_in(tmp_path) as lab:
        lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
        run = lab.run_agent(extra=["--ipvs-scheduler", "nosuch"], timeout=ONCE_TIMEOUT)
        assert run.returncode != 0, run.log
        named = [line for line in run.log.splitlines() if "nosuch" in line]
        assert named, f"no log line names the scheduler:\n{run.log}"
        # Refused at start: not even the probe virtual server is left.
        assert ipvs_table(lab) == {}, ipvsadm_text(lab)


def test_ipvs_timeouts_come_from_config_and_zero_keeps_the_kernels(tmp_path: Path) -> None:
    with lab_in(tmp_path) as lab:
        lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
        fresh = lab.ns_exec("node", ["ipvsadm", "-L", "--timeout"]).stdout
        assert "Timeout (tcp tcpfin udp): 900 120 300" in fresh, fresh
        run = lab.run_agent(
            extra=["--ipvs-tcp-timeout", "10m", "--ipvs-udp-timeout", "45"], timeout=ONCE_TIMEOUT
        ).check()
        now = lab.ns_exec("node", ["ipvsadm", "-L", "--timeout"]).stdout
        # tcpfin was 0 in the config: the kernel keeps its 120 s.
        assert "Timeout (tcp tcpfin udp): 600 120 45" in now, now
        assert "IPVS timeouts set: tcp 600s, tcpfin 120s, udp 45s" in run.log, run.log


# ---- 2. graceful termination ---------------------------------------------------------------


def test_removed_tcp_endpoint_drains_at_weight_zero_then_goes(tmp_path: Path) -> None:
    with lab_in(tmp_path) as lab:
        lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
        agent = lab.start_agent(extra=SYNC_ARGS)
        all_up = {real(p): 1 for p in PODS}
        wait_until("three real servers at weight 1", lambda: weights(lab) == all_up, 120.0)

        session: ResettableSession | None = None
        tried: list[str] = []
        try:
            for _ in range(12):
                candidate = ResettableSession(lab, VIP, 80)
                answer = candidate.request("first")
                if answer.split()[0] == "pod-b":
                    session = candidate
                    break
                tried.append(answer)
                candidate.close()
            assert session is not None, f"no session reached pod-b: {tried}"

            lab.write_manifests(services=[WEB], endpoints={"web": ["pod-a", "pod-c"]})
            draining = {real("pod-a"): 1, real("pod-b"): 0, real("pod-c"): 1}
            took = wait_until("pod-b at weight 0", lambda: weights(lab) == draining, 60.0)
            print(f"pod-b at weight 0 {took:.1f}s after the endpoint change")

            assert session.request("second").split()[0] == "pod-b", "the session was dropped"
            after = Counter(r.pod for r in requests_ok(lab, 30))
            assert "pod-b" not in after, f"a new connection reached draining pod-b: {after}"
            assert set(after) == {"pod-a", "pod-c"}, after

            # Full syncs (every sync period) keep it while the connection is active.
            offset = len(agent.log_text())
            agent.wait_for_log(r"synced IPv4 \(full\)", timeout=60.0, after=offset)
            rows = ipvs_table(lab)[VS_KEY].reals
            assert real("pod-b") in rows, ipvsadm_text(lab)
            row = rows[real("pod-b")]
            assert (row.weight, row.active) == (0, 1), ipvsadm_text(lab)
            assert session.request("third").split()[0] == "pod-b", "the session was dropped"

            session.reset()
            reset_at = time.monotonic()
            took = wait_until(
                "pod-b's real server to be deleted",
                lambda: real("pod-b") not in weights(lab),
                60.0,
            )
            print(f"pod-b deleted {took:.1f}s after its last connection was reset")
            # The reset connection is inactive for IPVS's CLOSE timeout (10 s); deleting it
            # sooner would break kube-proxy's rule that both counters must reach 0.
            assert time.monotonic() - reset_at >= 5.0, "deleted while a connection remained"
            assert weights(lab) == {real("pod-a"): 1, real("pod-c"): 1}, ipvsadm_text(lab)
        finally:
            if session is not None:
                session.close()
        assert agent.running(), agent.log_text()
        assert agent.stop() == 0, agent.log_text()
        assert_no_failed_sync(agent)


# ---- 3. drift, foreign virtual servers, cleanup --------------------------------------------


def test_drift_is_repaired_and_a_foreign_virtual_server_survives_cleanup(
    tmp_path: Path,
) -> None:
    with lab_in(tmp_path) as lab:
        foreign_vip = FOREIGN_KEY.split()[1]
        lab.ns_exec("node", ["ipvsadm", "-A", "-t", foreign_vip, "-s", "rr"])
        lab.ns_exec("node", ["ipvsadm", "-a", "-t", foreign_vip, "-r", real("pod-c"), "-m"])
        foreign = ipvs_table(lab)[FOREIGN_KEY].shape()

        lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
        agent = lab.start_agent(extra=SYNC_ARGS)
        all_up = {real(p): 1 for p in PODS}
        wait_until("three real servers at weight 1", lambda: weights(lab) == all_up, 120.0)

        lab.ns_exec("node", ["ipvsadm", "-d", "-t", f"{VIP}:80", "-r", real("pod-a")])
        took = wait_until("pod-a's real server back", lambda: weights(lab) == all_up, 60.0)
        print(f"real server deleted by hand was back after {took:.1f}s")
        # Another full sync after the repair, then the foreign server is checked.
        offset = len(agent.log_text())
        agent.wait_for_log(r"synced IPv4 \(full\)", timeout=60.0, after=offset)
        table = ipvs_table(lab)
        assert FOREIGN_KEY in table, ipvsadm_text(lab)
        assert table[FOREIGN_KEY].shape() == foreign, ipvsadm_text(lab)
        assert {r.pod for r in requests_ok(lab, 6)} <= set(PODS)

        assert agent.running(), agent.log_text()
        assert agent.stop() == 0, agent.log_text()
        assert_no_failed_sync(agent)
        # The agent leaves its state in place when it stops: cleanup has something to do.
        assert VS_KEY in ipvs_table(lab)
        assert has_dummy(lab)
        assert netagent_ipsets(lab), "no NETAGENT- ipset before cleanup"
        assert netagent_iptables_lines(lab, "NETAGENT"), "no NETAGENT chain before cleanup"

        cleanup = lab.netagent(["cleanup"], timeout=ONCE_TIMEOUT).check()
        table = ipvs_table(lab)
        assert set(table) == {FOREIGN_KEY}, f"{ipvsadm_text(lab)}\n{cleanup.log}"
        assert table[FOREIGN_KEY].shape() == foreign, ipvsadm_text(lab)
        assert not has_dummy(lab), f"{DUMMY} is left\n{cleanup.log}"
        assert netagent_ipsets(lab) == [], cleanup.log
        assert netagent_iptables_lines(lab, "NETAGENT") == [], cleanup.log


# ---- 4. mode switch ------------------------------------------------------------------------


def test_switch_iptables_ipvs_iptables_leaves_nothing_of_the_other_mode(
    tmp_path: Path,
) -> None:
    with lab_in(tmp_path, proxy_mode="iptables") as lab:
        lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
        iptables_chains = ("NETAGENT-SVC-", "NETAGENT-SEP-")

        lab.run_agent(timeout=ONCE_TIMEOUT).check()
        assert netagent_iptables_lines(lab, *iptables_chains), "iptables mode wrote no chain"
        requests_ok(lab, 6)

        lab.proxy_mode = "ipvs"  # agent_args reads it for every run
        run = lab.run_agent(timeout=ONCE_TIMEOUT).check()
        left = netagent_iptables_lines(lab, *iptables_chains)
        assert left == [], "iptables mode's chains survived the switch:\n" + "\n".join(left)
        assert weights(lab) == {real(p): 1 for p in PODS}, f"{ipvsadm_text(lab)}\n{run.log}"
        assert has_dummy(lab)
        assert len({r.pod for r in requests_ok(lab, 6)}) >= 2

        lab.proxy_mode = "iptables"
        run = lab.run_agent(timeout=ONCE_TIMEOUT).check()
        left_vs = [k for k in ipvs_table(lab) if VIP in k]
        assert left_vs == [], f"{ipvsadm_text(lab)}\n{run.log}"
        assert not has_dummy(lab), f"{DUMMY} survived the switch back\n{run.log}"
        assert netagent_ipsets(lab) == [], run.log
        assert netagent_iptables_lines(lab, *iptables_chains), "no iptables chain after switch"
        requests_ok(lab, 6)
