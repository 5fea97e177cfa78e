"""A one-node Kubernetes dataplane in network namespaces, for end-to-end proxy tests.

Why namespaces and not containers or VMs: the tests need a real kernel
(netfilter, conntrack, the bridge and br_netfilter) but must not touch the
shared host. Everything is built inside namespaces this lab creates; the
root namespace is never configured, not even to hold one end of a veth.

The topology mirrors a node running the CNI bridge plugin::

    na-outside-S (192.0.2.100/24, default via 192.0.2.2)
        | eth0 <-veth-> eth0 (192.0.2.2/24)
    na-node-S  ip_forward=1, bridge-nf-call-iptables=1, default via 192.0.2.100,
               netagent runs here
        cbr0 10.244.0.1/24 ── vpa-S ─ eth0 na-pod-a-S 10.244.0.11  (echo server)
                            ── vpb-S ─ eth0 na-pod-b-S 10.244.0.12  (echo server)
                            ── vpc-S ─ eth0 na-pod-c-S 10.244.0.13  (echo server)
                            ── vcl-S ─ eth0 na-client-S 10.244.0.20 (no server)

Every bridge port has hairpin on, as the bridge plugin sets it: a pod that
reaches itself through its Service gets its own packet back on the port it
came from. bridge-nf-call-iptables matters for the same reason it does on a
real node: a pod's reply to a pod on the same bridge is bridged, not routed,
and only br_netfilter lets conntrack undo the DNAT on it.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from netnslab import agent_process, manifests, traffic
from netnslab.names import LabNames, is_suffix, link_name, new_suffix, remember_suffix
from netnslab.netns import add_namespace, delete_namespace, exec_argv, ip_batch, ns_exec
from netnslab.patience import patience
from netnslab.runs import STATE_DIR, RunRecord

log = logging.getLogger(__name__)

POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
BRIDGE = "cbr0"
BRIDGE_IP = "10.244.0.1"
POD_IPS: Mapping[str, str] = {
    "pod-a": "10.244.0.11",
    "pod-b": "10.244.0.12",
    "pod-c": "10.244.0.13",
}
CLIENT_IP = "10.244.0.20"
NODE_IP = "192.0.2.2"
OUTSIDE_IP = "192.0.2.100"
UPLINK_PREFIX = 24
#: externalIPs of lab Services come from here; the outside client routes them to the node.
EXTERNAL_IP_RANGE = "198.51.100.0/24"
#: Ports every echo server listens on, TCP and UDP.
ECHO_PORTS = (8080, 5353)
#: Proxy modes whose programmed state the lab can read back (:meth:`SingleNodeLab.programmed_text`).
#: The modes the lab can run; ``proxy_lab`` runs those in ``$NETAGENT_LAB_PROXY_MODES``.
PROXY_MODES = ("iptables", "nftables", "ipvs")

ECHO_SCRIPT = Path(__file__).with_name("echo_server.py")
SERVER_READY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class LabPod:
    """A server pod of the lab."""

    name: str
    ns: str
    ip: str
    host_veth: str


class SingleNodeLab:
    """The single-node lab; use as a context manager or call :meth:`up` / :meth:`down`.

    ``down`` is safe to call twice and after an ``up`` that failed halfway.
    ``proxy_mode`` is passed to every agent it starts (``--proxy-mode``), and
    decides how :meth:`programmed_text` and the ``rules_mention_*`` helpers
    read back what the agent wrote, so one test can run against every mode.
    """

    def __init__(
        self,
        *,
        suffix: str | None = None,
        python: str | None = None,
        workdir: Path | None = None,
        detached: bool = False,
        keep_workdir: bool = False,
        proxy_mode: str = "iptables",
    ) -> None:
        if proxy_mode not in PROXY_MODES:
            raise ValueError(f"proxy mode {proxy_mode!r} is not one of {', '.join(PROXY_MODES)}")
        self.proxy_mode = proxy_mode
        self.names = LabNames(suffix or new_suffix())
        if not is_suffix(self.names.suffix):
            raise ValueError(f"bad run suffix {self.names.suffix!r}: six lowercase hex digits")
        remember_suffix(self.names.suffix)
        self.python = python or sys.executable
        self.workdir = workdir or STATE_DIR / self.names.suffix
        self.detached = detached
        self.keep_workdir = keep_workdir
        self.pods: dict[str, LabPod] = {
            pod: LabPod(
                name=pod,
                ns=self.names.pod_ns(pod),
                ip=ip,
                host_veth=link_name("vp" + pod[-1], self.names.suffix),
            )
            for pod, ip in POD_IPS.items()
        }
        self._servers: dict[str, subprocess.Popen[bytes]] = {}
        self._agents: list[agent_process.AgentHandle] = []
        self._sessions: list[traffic.TcpSession] = []
        self._record: RunRecord | None = None

    # ---- names -----------------------------------------------------------------------------

    @property
    def suffix(self) -> str:
        """The run suffix in every name of this lab."""
        return self.names.suffix

    @property
    def node_ns(self) -> str:
        """The node namespace (where netagent and iptables live)."""
        return self.names.node_ns

    @property
    def client_ns(self) -> str:
        """The client pod's namespace (10.244.0.20)."""
        return self.names.client_ns

    @property
    def outside_ns(self) -> str:
        """The outside client's namespace (192.0.2.100)."""
        return self.names.outside_ns

    @property
    def node_name(self) -> str:
        """The Kubernetes Node name of the lab node."""
        return self.names.node_name

    @property
    def pod_ips(self) -> dict[str, str]:
        """Pod name -> IP."""
        return {p.name: p.ip for p in self.pods.values()}

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab creates, in creation order."""
        return [
            self.node_ns,
            *(p.ns for p in self.pods.values()),
            self.client_ns,
            self.outside_ns,
        ]

    @property
    def manifest_dir(self) -> Path:
        """A default manifests directory inside the lab's workdir."""
        return self.workdir / "manifests"

    def ns(self, name_or_role: str) -> str:
        """A namespace name from itself or a role: ``node``, ``client``, ``outside``, ``pod-a``."""
        if name_or_role in self.namespaces:
            return name_or_role
        roles = {"node": self.node_ns, "client": self.client_ns, "outside": self.outside_ns}
        roles.update({p.name: p.ns for p in self.pods.values()})
        try:
            return roles[name_or_role]
        except KeyError:
            raise KeyError(
                f"{name_or_role!r} is neither a namespace of this lab nor a role"
            ) from None

    # ---- lifecycle -------------------------------------------------------------------------

    def up(self) -> SingleNodeLab:
        """Build the topology and start the echo servers; on any failure, undo and re-raise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        record = RunRecord.for_this_process(self.suffix, self.namespaces, str(self.workdir))
        record.detached = self.detached
        if self.detached:
            record.owner_pid, record.owner_start = 0, None
        record.save()  # before creating anything, so a killed run is found later
        self._record = record
        try:
            for ns in self.namespaces:
                add_namespace(ns)
            self._wire()
            self._start_servers()
        except BaseException:
            self.down()
            raise
        record.pids = [p.pid for p in self._servers.values()]
        record.save()
        log.info("lab %s is up", self.suffix)
        return self

    def _wire(self) -> None:
        node = ["link set lo up", f"link add {BRIDGE} type bridge"]
        ports = [(p.host_veth, p.ns) for p in self.pods.values()]
        ports.append((link_name("vcl", self.suffix), self.client_ns))
        for host_veth, peer_ns in ports:
            node += [
                f"link add {host_veth} type veth peer name eth0 netns {peer_ns}",
                f"link set {host_veth} master {BRIDGE}",
                f"link set dev {host_veth} type bridge_slave hairpin on",
                f"link set {host_veth} up",
            ]
        node += [
            f"addr add {BRIDGE_IP}/24 dev {BRIDGE}",
            f"link set {BRIDGE} up",
            f"link add eth0 type veth peer name eth0 netns {self.outside_ns}",
            f"addr add {NODE_IP}/{UPLINK_PREFIX} dev eth0",
            "link set eth0 up",
            # The node's upstream router is the outside client. Without a default
            # route, a packet to a Service IP that no rule DNATs (a Service with no
            # endpoints) fails the route lookup before netfilter's FORWARD hook, so
            # the REJECT a proxy installs there would never be reached.
            f"route add default via {OUTSIDE_IP}",
        ]
        ip_batch(self.node_ns, node)
        ns_exec(
            self.node_ns,
            [
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.bridge.bridge-nf-call-iptables=1",
            ],
        )
        endpoints = [(p.ns, p.ip, BRIDGE_IP) for p in self.pods.values()]
        endpoints.append((self.client_ns, CLIENT_IP, BRIDGE_IP))
        endpoints.append((self.outside_ns, OUTSIDE_IP, NODE_IP))
        for ns, ip, gateway in endpoints:
            prefix = UPLINK_PREFIX if ns == self.outside_ns else 24
            ip_batch(
                ns,
                [
                    "link set lo up",
                    f"addr add {ip}/{prefix} dev eth0",
                    "link set eth0 up",
                    f"route add default via {gateway}",
                ],
            )

    def _spawn_echo(
        self, ns: str, name: str, tcp_ports: Sequence[int], udp_ports: Sequence[int]
    ) -> None:
        if name in self._servers:
            raise ValueError(f"an echo server named {name!r} is already running")
        argv = [self.python, "-I", "-S", str(ECHO_SCRIPT), "--name", name]
        argv += ["--tcp", ",".join(map(str, tcp_ports)), "--udp", ",".join(map(str, udp_ports))]
        with open(self.workdir / f"echo-{name}.log", "wb") as err:
            self._servers[name] = subprocess.Popen(
                exec_argv(ns, argv),
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started a demo lab
            )

    def _await_ready(self, name: str) -> None:
        proc = self._servers[name]
        if proc.stdout is None or proc.stdout.closed:
            return
        try:
            line = traffic.LineReader(proc.stdout.fileno()).readline(
                patience(SERVER_READY_TIMEOUT)
            )
        except TimeoutError:
            line = "(no READY within the timeout)"
        finally:
            proc.stdout.close()
        if line != "READY":
            log_text = (self.workdir / f"echo-{name}.log").read_text(errors="replace")
            raise RuntimeError(f"echo server {name} did not start: {line!r}\n{log_text}")

    def _start_servers(self) -> None:
        for pod in self.pods.values():
            self._spawn_echo(pod.ns, pod.name, ECHO_PORTS, ECHO_PORTS)
        for pod in self.pods.values():
            self._await_ready(pod.name)
        traffic.wait_tcp(
            self.node_ns,
            [f"{p.ip}:{port}" for p in self.pods.values() for port in ECHO_PORTS],
            python=self.python,
        )

    def start_echo(
        self,
        ns: str,
        name: str,
        tcp_ports: Sequence[int] = ECHO_PORTS,
        udp_ports: Sequence[int] = ECHO_PORTS,
    ) -> None:
        """Start one more echo server (e.g. a host-network server in ``node``); stopped by down."""
        self._spawn_echo(self.ns(ns), name, tcp_ports, udp_ports)
        self._await_ready(name)

    def down(self) -> None:
        """Stop every process and delete every namespace of this lab (idempotent)."""
        errors: list[str] = []
        for session in self._sessions:
            try:
                session.close()
            except Exception as exc:
                errors.append(f"session {session.target}: {exc}")
        self._sessions.clear()
        for agent in self._agents:
            try:
                agent.stop()
            except Exception as exc:
                errors.append(f"agent {agent.pid}: {exc}")
        self._agents.clear()
        for name, proc in self._servers.items():
            try:
                proc.terminate()
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
            except Exception as exc:
                errors.append(f"echo server {name}: {exc}")
        self._servers.clear()
        for ns in reversed(self.namespaces):
            try:
                delete_namespace(ns)
            except Exception as exc:
                errors.append(f"namespace {ns}: {exc}")
        if not errors:
            if not self.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            record = self._record or RunRecord.load(self.suffix)
            if record is not None:
                record.remove()
            self._record = None
        if errors:
            raise RuntimeError(f"lab {self.suffix} teardown failed: " + "; ".join(errors))

    def __enter__(self) -> SingleNodeLab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    @staticmethod
    def attach(suffix: str) -> SingleNodeLab:
        """A handle on a lab made by another process (the CLI's ``down``)."""
        record = RunRecord.load(suffix)
        if record is None:
            raise LookupError(f"no run record for lab {suffix}")
        lab = SingleNodeLab(suffix=suffix, workdir=Path(record.workdir) if record.workdir else None)
        lab._record = record
        return lab

    # ---- commands and traffic --------------------------------------------------------------

    def ns_exec(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 10.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in one of this lab's namespaces (name or role)."""
        return ns_exec(self.ns(ns), argv, check=check, timeout=timeout, input=input)

    def iptables_save(self, table: str | None = None) -> str:
        """``iptables-save`` in the node namespace (one table, or all)."""
        argv = ["iptables-save", *(["-t", table] if table else [])]
        return self.ns_exec(self.node_ns, argv).stdout

    def iptables_save_all_backends(self) -> str:
        """``iptables-save`` of the nft backend, then of the legacy one (empty if not installed).

        The agent auto-detects its backend, so a check that nothing (or something)
        was written must read both.
        """
        legacy = self.ns_exec(self.node_ns, ["iptables-legacy-save"], check=False).stdout
        return self.iptables_save() + legacy

    def nft_ruleset(self) -> str:
        """``nft list ruleset`` in the node namespace (iptables-nft's tables included)."""
        return self.ns_exec(self.node_ns, ["nft", "list", "ruleset"]).stdout

    # ---- what the agent programmed, in the lab's proxy mode -------------------------------

    def programmed_text(self) -> str:
        """What the agent programmed in the node's kernel, as the lab's proxy mode spells it.

        iptables: ``iptables-save`` of both backends; nftables: ``nft list ruleset``.
        """
        if self.proxy_mode == "nftables":
            return self.nft_ruleset()
        if self.proxy_mode == "ipvs":
            ipvs = self.ns_exec("node", ["ipvsadm", "-Ln"], check=False).stdout
            return ipvs + self.iptables_save_all_backends()
        return self.iptables_save_all_backends()

    def rules_mention_endpoint(self, ip: str, port: int, text: str | None = None) -> bool:
        """Whether traffic can be sent to endpoint ``ip:port`` by the programmed rules.

        iptables: a DNAT rule to ``IP:PORT``; nftables: a map element whose
        value is ``IP . PORT`` (``10.96.0.10 . 80 . 0 : 10.244.0.3 . 8080`` in
        ``service-endpoints-tcp``; the key's spelling does not matter here).
        ``text`` is a :meth:`programmed_text` read earlier (read now when None).
        """
        text = self.programmed_text() if text is None else text
        addr = re.escape(ip)
        if self.proxy_mode == "nftables":
            return re.search(rf"(?<![\d.]){addr} \. {port}(?!\d)", text) is not None
        if self.proxy_mode == "ipvs":  # ipvsadm -Ln: "  -> 10.244.0.3:8080  Masq  1  0  0"
            real = re.compile(rf"->\s+{addr}:{port}\s+Masq\s+[1-9]")
            return real.search(text) is not None
        spelled = re.compile(rf"(?<![\d.]){addr}:{port}(?!\d)")
        return any("DNAT" in line and spelled.search(line) for line in text.splitlines())

    def rules_mention_address(self, ip: str, text: str | None = None) -> bool:
        """Whether ``ip`` appears anywhere in the programmed rules, in either mode."""
        text = self.programmed_text() if text is None else text
        return re.search(rf"(?<![\d.]){re.escape(ip)}(?![\d]|\.\d)", text) is not None

    def tcp_probe(
        self, from_ns: str, ip: str, port: int, payload: str = "hello\n", timeout: float = 2.0
    ) -> traffic.ProbeResult:
        """One new TCP connection; the typed result (never raises for network errors)."""
        return self.many_tcp_requests(from_ns, ip, port, 1, payload=payload, timeout=timeout)[0]

    def udp_probe(
        self, from_ns: str, ip: str, port: int, payload: str = "hello\n", timeout: float = 2.0
    ) -> traffic.ProbeResult:
        """One datagram from a new source port; the typed result."""
        return self.many_udp_requests(from_ns, ip, port, 1, payload=payload, timeout=timeout)[0]

    def tcp_request(
        self, from_ns: str, ip: str, port: int, payload: str = "hello\n", timeout: float = 2.0
    ) -> str:
        """The reply line, or ProbeRefused / ProbeTimeout / ProbeError."""
        result = self.tcp_probe(from_ns, ip, port, payload, timeout)
        return result.raise_for_error(f"TCP {ip}:{port} from {from_ns}")

    def udp_request(
        self, from_ns: str, ip: str, port: int, payload: str = "hello\n", timeout: float = 2.0
    ) -> str:
        """The reply datagram, or ProbeRefused / ProbeTimeout / ProbeError."""
        result = self.udp_probe(from_ns, ip, port, payload, timeout)
        return result.raise_for_error(f"UDP {ip}:{port} from {from_ns}")

    def many_tcp_requests(
        self, from_ns: str, ip: str, port: int, count: int, **options: Any
    ) -> list[traffic.ProbeResult]:
        """``count`` new TCP connections from one helper process in ``from_ns``."""
        return self._many("tcp", from_ns, ip, port, count, **options)

    def many_udp_requests(
        self, from_ns: str, ip: str, port: int, count: int, **options: Any
    ) -> list[traffic.ProbeResult]:
        """``count`` datagrams, each from its own source port, from one helper process."""
        return self._many("udp", from_ns, ip, port, count, **options)

    def _many(
        self,
        proto: str,
        from_ns: str,
        ip: str,
        port: int,
        count: int,
        *,
        payload: str = "hello\n",
        timeout: float = 1.0,
        deadline: float = 60.0,
    ) -> list[traffic.ProbeResult]:
        return traffic.many_requests(
            self.ns(from_ns),
            proto,
            ip,
            port,
            count,
            python=self.python,
            payload=payload,
            timeout=timeout,
            deadline=deadline,
        )

    def open_tcp_session(
        self, from_ns: str, ip: str, port: int, timeout: float = 2.0
    ) -> traffic.TcpSession:
        """A long-lived TCP connection (closed by :meth:`down` if the test does not)."""
        session = traffic.TcpSession(
            self.ns(from_ns), ip, port, python=self.python, timeout=timeout
        )
        self._sessions.append(session)
        return session

    # ---- manifests and the agent -----------------------------------------------------------

    def node_manifest(self) -> manifests.Manifest:
        """This lab's Node object."""
        return manifests.node_manifest(self.node_name, NODE_IP, POD_CIDR)

    def write_manifests(
        self,
        directory: Path | None = None,
        *,
        services: Sequence[manifests.LabService] = (),
        endpoints: Mapping[str, Sequence[str | manifests.LabEndpoint]] | None = None,
        extra_files: Mapping[str, str] | None = None,
    ) -> list[Path]:
        """Write the Node, ``services`` and their slices (see :func:`manifests.write_manifests`)."""
        return manifests.write_manifests(
            directory or self.manifest_dir,
            node=self.node_manifest(),
            services=services,
            endpoints=endpoints or {},
            pod_ips=self.pod_ips,
            node_name=self.node_name,
            extra_files=extra_files,
        )

    def agent_args(self, manifest_dir: Path, *, once: bool, extra: Sequence[str] = ()) -> list[str]:
        """``run --manifests DIR [--once] --node-name N --cluster-cidr C --proxy-mode M EXTRA``."""
        return [
            "run",
            "--manifests",
            str(manifest_dir),
            *(["--once"] if once else []),
            "--node-name",
            self.node_name,
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--proxy-mode",
            self.proxy_mode,
            *extra,
        ]

    def run_agent(
        self, manifest_dir: Path | None = None, extra: Sequence[str] = (), timeout: float = 60.0
    ) -> agent_process.AgentRun:
        """``netagent run --once`` in the node namespace; returns its exit status and log."""
        args = self.agent_args(manifest_dir or self.manifest_dir, once=True, extra=extra)
        return agent_process.run_netagent(self.node_ns, self.python, args, timeout=timeout)

    def start_agent(
        self,
        manifest_dir: Path | None = None,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> agent_process.AgentHandle:
        """A long-running ``netagent run`` in the node namespace (stopped by :meth:`down`).

        ``env`` adds to the agent's environment (a fault-injecting ``PATH``, say).
        """
        args = self.agent_args(manifest_dir or self.manifest_dir, once=False, extra=extra)
        log_path = self.workdir / f"agent-{len(self._agents)}.log"
        handle = agent_process.AgentHandle(self.node_ns, self.python, args, log_path, env=env)
        self._agents.append(handle)
        return handle

    def netagent(self, args: Sequence[str], timeout: float = 60.0) -> agent_process.AgentRun:
        """Any netagent command (e.g. ``["cleanup"]``) in the node namespace."""
        return agent_process.run_netagent(self.node_ns, self.python, args, timeout=timeout)
