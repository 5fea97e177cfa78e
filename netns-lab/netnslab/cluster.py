"""A three-node Kubernetes dataplane in network namespaces, driven by the lab API server.

Why: the single-node lab proves the proxy's rules against the kernel; this
one proves the whole system the way a cluster runs it. A lab API server holds
Nodes, Services and Pods, its EndpointSlice controller derives slices, and a
real ``netagent run`` per node watches it and programs its node: the proxy
and (unless ``overlay="none"``) the overlay, which gives each node its pod
CIDR, cbr0 and the VXLAN or host-gw routes to the other nodes.

Topology (every namespace is the lab's own; the host's namespace only ever
holds a loopback listener, see :mod:`netnslab.port_forward`)::

    na-ul-S   the underlay switch: bridge ul0, no address
      ├─ na-cp-S      192.0.2.10   lab API server on :6443
      ├─ na-out-S     192.0.2.100  "outside": the nodes' default gateway
      ├─ na-n1-S      192.0.2.11   node-1: netagent, cbr0, pods na-n1a-S, na-n1b-S, ...
      ├─ na-n2-S      192.0.2.12   node-2
      └─ na-n3-S      192.0.2.13   node-3

Pods are attached as the CNI bridge plugin attaches them: a veth whose host
end is a cbr0 port with hairpin on, the pod end ``eth0`` with the next
address of the node's pod CIDR (read from the agent's ``subnet.env``, with
its MTU) and a default route via the bridge IP. The lab then registers the
Pod in the API with its IP, node and a Ready condition (there is no
kubelet), and the API server's controller turns it into EndpointSlices.

With ``overlay="none"`` the lab assigns pod CIDRs itself and creates each
cbr0; the proxy works but cross-node pod traffic does not (no routes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from netnslab import agent_process, traffic
from netnslab.api_http import ApiError, LabApiClient
from netnslab.names import is_suffix, link_name, namespace_name, new_suffix, remember_suffix
from netnslab.netns import (
    LabCommandError,
    add_namespace,
    delete_namespace,
    exec_argv,
    ip_batch,
    ns_exec,
)
from netnslab.runs import STATE_DIR, RunRecord

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "netns-lab"
ECHO_SCRIPT = Path(__file__).with_name("echo_server.py")

UNDERLAY_PREFIX = 24
CONTROL_PLANE_IP = "192.0.2.10"
OUTSIDE_IP = "192.0.2.100"
API_PORT = 6443
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
ECHO_PORTS = (8080, 5353)
OVERLAYS = ("vxlan", "host-gw", "none")
READY_TIMEOUT = 30.0

AgentFactory = Callable[["ClusterLab", "ClusterNode", Sequence[str]], agent_process.AgentHandle]


def node_ip(index: int) -> str:
    """The underlay address of node ``index`` (1-based)."""
    return f"192.0.2.{10 + index}"


@dataclass
class ClusterNode:
    """One lab node."""

    index: int
    name: str
    ns: str
    ip: str
    workdir: Path
    pod_cidr: str = ""
    bridge_ip: str = ""
    pod_mtu: int = 1500
    next_host: int = 11
    agent: agent_process.AgentHandle | None = None
    # Set by an agent factory whose agent writes elsewhere (netnslab.daemonset_lab).
    subnet_path: Path | None = None
    cni_path: Path | None = None

    @property
    def subnet_file(self) -> Path:
        """Where this node's agent writes subnet.env."""
        return self.subnet_path or self.workdir / "subnet.env"

    @property
    def cni_file(self) -> Path:
        """Where this node's agent writes its CNI conflist."""
        return self.cni_path or self.workdir / "10-netagent.conflist"


@dataclass
class ClusterPod:
    """A pod namespace attached to a node's cbr0."""

    name: str
    node: str
    ns: str
    ip: str
    host_veth: str
    labels: dict[str, str] = field(default_factory=dict)
    server: bool = True


def _wait_for_text(
    read: Callable[[], str], needle: str, present: bool, timeout: float, where: str
) -> str:
    """Poll ``read()`` until it does (or does not) contain ``needle``; the last text read."""
    end = time.monotonic() + timeout
    while True:
        text = read()
        if (needle in text) == present:
            return text
        if time.monotonic() > end:
            state = "appear" if present else "go away"
            raise TimeoutError(f"{needle!r} did not {state} {where} in {timeout}s")
        time.sleep(0.1)


class ClusterLab:
    """The multi-node lab; a context manager, or :meth:`up` / :meth:`down`."""

    def __init__(
        self,
        *,
        nodes: int = 3,
        overlay: str = "vxlan",
        suffix: str | None = None,
        python: str | None = None,
        workdir: Path | None = None,
        detached: bool = False,
        agent_args: Sequence[str] = (),
        start_agents: bool = True,
        keep_workdir: bool = False,
        agent_factory: AgentFactory | None = None,
    ) -> None:
        if overlay not in OVERLAYS:
            raise ValueError(f"overlay must be one of {', '.join(OVERLAYS)}, got {overlay!r}")
        if not 1 <= nodes <= 8:
            raise ValueError("the lab supports 1 to 8 nodes")
        self.suffix = suffix or new_suffix()
        if not is_suffix(self.suffix):
            raise ValueError(f"bad run suffix {self.suffix!r}")
        remember_suffix(self.suffix)
        self.overlay = overlay
        self.python = python or sys.executable
        self.workdir = workdir or STATE_DIR / self.suffix
        self.detached = detached
        self.agent_args = list(agent_args)
        self.start_agents = start_agents
        self.keep_workdir = keep_workdir
        # None: ``python -m netagent`` per node; else e.g. netnslab.daemonset_lab's containers.
        self.agent_factory = agent_factory
        self.underlay_ns = namespace_name("ul", self.suffix)
        self.cp_ns = namespace_name("cp", self.suffix)
        self.outside_ns = namespace_name("out", self.suffix)
        self.nodes: dict[str, ClusterNode] = {}
        for i in range(1, nodes + 1):
            name = f"node-{i}"
            self.nodes[name] = ClusterNode(
                index=i,
                name=name,
                ns=namespace_name(f"n{i}", self.suffix),
                ip=node_ip(i),
                workdir=self.workdir / name,
            )
        self.pods: dict[str, ClusterPod] = {}
        self._servers: dict[str, subprocess.Popen[bytes]] = {}
        self._api_proc: subprocess.Popen[bytes] | None = None
        self._forward_proc: subprocess.Popen[bytes] | None = None
        self._sessions: list[traffic.TcpSession] = []
        self._record: RunRecord | None = None
        self.api_port = 0
        self.api = LabApiClient("http://127.0.0.1:0")

    # ---- names -----------------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this lab (created in this order, deleted in reverse)."""
        return [
            self.underlay_ns,
            self.cp_ns,
            self.outside_ns,
            *(n.ns for n in self.nodes.values()),
            *(p.ns for p in self.pods.values()),
        ]

    @property
    def api_url(self) -> str:
        """The API server as the host's processes (tests, kubectl) reach it."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def agent_api_url(self) -> str:
        """The API server as the node agents reach it, over the underlay."""
        return f"http://{CONTROL_PLANE_IP}:{API_PORT}"

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig for the host side (kubectl, the kubernetes client)."""
        return self.workdir / "kubeconfig"

    def node(self, name: str) -> ClusterNode:
        """A node by name (``node-1``)."""
        return self.nodes[name]

    def ns(self, name: str) -> str:
        """The namespace of a node or pod name, or ``outside`` / ``cp``, or a namespace."""
        if name in self.nodes:
            return self.nodes[name].ns
        if name in self.pods:
            return self.pods[name].ns
        roles = {"outside": self.outside_ns, "cp": self.cp_ns, "underlay": self.underlay_ns}
        if name in roles:
            return roles[name]
        if name in self.namespaces:
            return name
        raise KeyError(f"{name!r} is not a node, pod or namespace of lab {self.suffix}")

    # ---- lifecycle -------------------------------------------------------------------------

    def _save_record(self) -> None:
        record = self._record
        if record is None:
            record = RunRecord.for_this_process(self.suffix, self.namespaces, str(self.workdir))
            record.detached = self.detached
            if self.detached:
                record.owner_pid, record.owner_start = 0, None
            record.extra = {"kind": "cluster", "overlay": self.overlay}
            self._record = record
        record.namespaces = self.namespaces
        record.extra["api_url"] = self.api_url
        record.extra["nodes"] = list(self.nodes)
        record.extra["pods"] = {
            p.name: {"node": p.node, "ns": p.ns, "ip": p.ip} for p in self.pods.values()
        }
        record.save()

    def up(self, *, pods_per_node: int = 2, client: bool = True) -> ClusterLab:
        """Build everything, start the agents, attach pods; undo all of it on failure."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes.values():
            node.workdir.mkdir(parents=True, exist_ok=True)
        self._save_record()  # before creating anything, so a killed run is found later
        try:
            for ns in self.namespaces:
                add_namespace(ns)
            self._wire_underlay()
            self.start_api()
            self._register_nodes()
            if self.overlay == "none":
                self._static_pod_networks()
            if self.start_agents:
                for node in self.nodes.values():
                    self.start_agent(node.name)
                for node in self.nodes.values():
                    assert node.agent is not None
                    if self.overlay == "none":
                        node.agent.wait_for_log(r"synced IPv4", timeout=READY_TIMEOUT)
                if self.overlay != "none":
                    self.wait_for_pod_networks()
                for node in self.nodes.values():
                    for k in range(pods_per_node):
                        self.add_pod(
                            f"echo-{node.index}{'abcdefgh'[k]}",
                            node.name,
                            labels={"app": "echo", "node": node.name},
                        )
                    if client and node.index == 1:
                        self.add_pod("client-1", node.name, labels={"app": "client"}, server=False)
        except BaseException:
            self.down()
            raise
        log.info("cluster lab %s is up (%d nodes, %s)", self.suffix, len(self.nodes), self.overlay)
        return self

    def _wire_underlay(self) -> None:
        ul = ["link set lo up", "link add ul0 type bridge", "link set ul0 up"]
        members = [("cp", self.cp_ns, CONTROL_PLANE_IP), ("out", self.outside_ns, OUTSIDE_IP)]
        members += [(f"u{n.index}", n.ns, n.ip) for n in self.nodes.values()]
        for stem, ns, _ in members:
            port = link_name(stem, self.suffix)
            ul += [
                f"link add {port} type veth peer name eth0 netns {ns}",
                f"link set {port} master ul0",
                f"link set {port} up",
            ]
        ip_batch(self.underlay_ns, ul)
        for _, ns, ip in members:
            cmds = [
                "link set lo up",
                f"addr add {ip}/{UNDERLAY_PREFIX} dev eth0",
                "link set eth0 up",
            ]
            if ns != self.outside_ns:
                # The outside host is every node's upstream router, as in the single-node
                # lab: the overlay finds its underlay by the default route, and the
                # proxy's REJECT for endpoint-less Services needs a route to exist.
                cmds.append(f"route add default via {OUTSIDE_IP}")
            ip_batch(ns, cmds)
        for node in self.nodes.values():
            ns_exec(node.ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    # ---- the API server --------------------------------------------------------------------

    def start_api(self) -> None:
        """Start the API server in the control-plane namespace and its host-side forwarder."""
        env = dict(os.environ, PYTHONPATH=str(LAB_DIR), PYTHONUNBUFFERED="1")
        argv = [
            self.python,
            "-m",
            "labapi",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(API_PORT),
            "--service-cidr",
            SERVICE_CIDR,
            # Objects survive stop_api()/start_api(), as they survive in etcd.
            "--state-file",
            str(self.workdir / "labapi-state.json"),
        ]
        with open(self.workdir / "labapi.log", "ab") as out:
            self._api_proc = subprocess.Popen(
                exec_argv(self.cp_ns, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        if self._forward_proc is None or self._forward_proc.poll() is not None:
            fwd = [
                self.python,
                "-m",
                "netnslab.port_forward",
                "--listen-netns-of",
                str(os.getpid()),
                "--to",
                f"127.0.0.1:{API_PORT}",
            ]
            if self.api_port:
                fwd += ["--listen-port", str(self.api_port)]
            self._forward_proc = subprocess.Popen(
                exec_argv(self.cp_ns, fwd),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            assert self._forward_proc.stdout is not None
            line = traffic.LineReader(self._forward_proc.stdout.fileno()).readline(15.0) or ""
            self._forward_proc.stdout.close()
            if not line.startswith("forwarding 127.0.0.1:"):
                raise RuntimeError(f"API port forwarder did not start: {line!r}")
            self.api_port = int(line.rsplit(":", 1)[1])
            self.api = LabApiClient(self.api_url)
            self._write_kubeconfig()
        self.api.wait_ready(READY_TIMEOUT)
        self._save_record()

    def stop_api(self) -> None:
        """Stop the API server (the forwarder stays; connections to it then fail)."""
        proc = self._api_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._api_proc = None

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(kubeconfig_text(self.api_url))

    def _register_nodes(self) -> None:
        for node in self.nodes.values():
            self.api.create(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": node.name,
                        "labels": {
                            "kubernetes.io/hostname": node.name,
                            "topology.kubernetes.io/zone": f"zone-{node.index}",
                        },
                    },
                    "spec": {},
                    "status": {
                        "addresses": [
                            {"type": "InternalIP", "address": node.ip},
                            {"type": "Hostname", "address": node.name},
                        ],
                        "conditions": [{"type": "Ready", "status": "True"}],
                    },
                },
            )

    def _static_pod_networks(self) -> None:
        for node in self.nodes.values():
            node.pod_cidr = f"10.244.{node.index}.0/24"
            node.bridge_ip = f"10.244.{node.index}.1"
            self.api.merge_patch(
                f"/api/v1/nodes/{node.name}",
                {"spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}},
            )
            ip_batch(
                node.ns,
                [
                    "link add cbr0 type bridge",
                    f"addr add {node.bridge_ip}/24 dev cbr0",
                    "link set cbr0 up",
                ],
            )

    def wait_for_pod_networks(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait for every agent's subnet.env and read each node's subnet and MTU from it."""
        for node in self.nodes.values():
            env = wait_for_subnet_env(node.subnet_file, timeout, node.agent)
            bridge_cidr = env["FLANNEL_SUBNET"]
            node.bridge_ip = bridge_cidr.split("/")[0]
            base = node.bridge_ip.rsplit(".", 1)[0]
            node.pod_cidr = f"{base}.0/{bridge_cidr.split('/')[1]}"
            node.pod_mtu = int(env.get("FLANNEL_MTU", "1500"))

    # ---- agents ----------------------------------------------------------------------------

    def agent_argv(self, node: ClusterNode, extra: Sequence[str] = ()) -> list[str]:
        """The ``netagent run`` arguments of one node."""
        args = [
            "run",
            "--master",
            self.agent_api_url,
            "--node-name",
            node.name,
            "--cluster-cidr",
            CLUSTER_CIDR,
            "--overlay",
            self.overlay,
            "--subnet-file",
            str(node.subnet_file),
            "--cni-conf-file",
            str(node.cni_file),
        ]
        return [*args, *self.agent_args, *extra]

    def start_agent(self, name: str, extra: Sequence[str] = ()) -> agent_process.AgentHandle:
        """Start (or restart) the agent of node ``name``."""
        node = self.nodes[name]
        if node.agent is not None and node.agent.running():
            raise RuntimeError(f"the agent of {name} is already running")
        if self.agent_factory is not None:
            node.agent = self.agent_factory(self, node, extra)
            return node.agent
        count = len(list(node.workdir.glob("agent-*.log")))
        bin_dir = self._restore_fault_wrappers(node)
        handle = agent_process.AgentHandle(
            node.ns,
            self.python,
            self.agent_argv(node, extra),
            node.workdir / f"agent-{count}.log",
            env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"},
        )
        node.agent = handle
        return handle

    def _restore_fault_wrappers(self, node: ClusterNode) -> Path:
        """A PATH directory whose iptables restore tools fail while a flag file exists.

        The wrappers run the real tools otherwise, so the agent programs the
        real kernel; :meth:`fail_restores` turns failures on and off. This is
        how the health tests make syncs fail without touching the agent.
        """
        bin_dir = node.workdir / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        flag = node.workdir / "fail-restore"
        for tool in ("iptables-nft-restore", "iptables-legacy-restore", "iptables-restore"):
            real = shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
            if real is None:
                continue
            wrapper = bin_dir / tool
            wrapper.write_text(
                "#!/bin/sh\n"
                f"if [ -e '{flag}' ]; then\n"
                "  cat >/dev/null\n"
                "  echo 'iptables-restore: failure injected by the lab' >&2\n"
                "  exit 1\n"
                "fi\n"
                f'exec {real} "$@"\n'
            )
            wrapper.chmod(0o755)
        return bin_dir

    def fail_restores(self, name: str, fail: bool) -> None:
        """Make node ``name``'s iptables-restore runs fail (True) or work again (False)."""
        flag = self.nodes[name].workdir / "fail-restore"
        if fail:
            flag.write_text("lab fault injection\n")
        else:
            flag.unlink(missing_ok=True)

    def stop_agent(self, name: str) -> int:
        """SIGTERM the agent of ``name``; its exit status."""
        agent = self.nodes[name].agent
        return agent.stop() if agent is not None else 0

    @property
    def proxy_mode(self) -> str:
        """The agents' proxy mode: the last ``--proxy-mode`` of ``agent_args``, else iptables."""
        mode = "iptables"
        for flag, value in zip(self.agent_args, self.agent_args[1:], strict=False):
            if flag == "--proxy-mode":
                mode = value
        for arg in self.agent_args:
            if arg.startswith("--proxy-mode="):
                mode = arg.split("=", 1)[1]
        return mode

    def programmed_text(self, name: str) -> str:
        """Node ``name``'s Service programming as the proxy mode's own tool prints it.

        iptables mode: ``iptables-save -t nat``; nftables mode: ``nft list table
        ip netagent`` (empty when the table is not there yet); IPVS mode:
        ``ipvsadm -Ln``. :meth:`endpoint_needle` gives what an endpoint looks
        like in it.
        """
        mode = self.proxy_mode
        if mode == "nftables":
            argv = ["nft", "list", "table", "ip", "netagent"]
            return self.ns_exec(name, argv, check=False).stdout
        if mode == "ipvs":
            return self.ns_exec(name, ["ipvsadm", "-Ln"]).stdout
        return self.iptables_save(name, "nat")

    def endpoint_needle(self, ip: str, port: int) -> str:
        """How endpoint ``ip``:``port`` appears in :meth:`programmed_text`."""
        return f"{ip} . {port}" if self.proxy_mode == "nftables" else f"{ip}:{port}"

    def wait_for_rules(
        self, name: str, needle: str, *, present: bool = True, timeout: float = 20.0
    ) -> str:
        """Wait until node ``name``'s nat table does (or does not) contain ``needle``."""
        return _wait_for_text(
            lambda: self.iptables_save(name, "nat"), needle, present, timeout, f"on {name}"
        )

    def wait_for_programmed(
        self, name: str, needle: str, *, present: bool = True, timeout: float = 20.0
    ) -> str:
        """Wait until :meth:`programmed_text` of ``name`` does (or does not) contain ``needle``."""
        where = f"on {name} ({self.proxy_mode} mode)"
        return _wait_for_text(lambda: self.programmed_text(name), needle, present, timeout, where)

    # ---- pods ------------------------------------------------------------------------------

    def add_pod(
        self,
        name: str,
        node_name: str,
        *,
        labels: Mapping[str, str] | None = None,
        server: bool = True,
        ready: bool = True,
        register: bool = True,
    ) -> ClusterPod:
        """Attach a pod to ``node_name``'s cbr0, start its echo server, and register it."""
        node = self.nodes[node_name]
        if not node.pod_cidr:
            raise RuntimeError(f"{node_name} has no pod network yet")
        base = node.bridge_ip.rsplit(".", 1)[0]
        ip = f"{base}.{node.next_host}"
        node.next_host += 1
        short = name.replace("echo-", "").replace("client-", "c").replace("-", "")[:4]
        pod = ClusterPod(
            name=name,
            node=node_name,
            ns=namespace_name(f"p{short}", self.suffix),
            ip=ip,
            host_veth=link_name(f"v{short}", self.suffix),
            labels=dict(labels or {}),
            server=server,
        )
        self.pods[name] = pod
        self._save_record()  # the namespace is recorded before it exists
        add_namespace(pod.ns)
        mtu = node.pod_mtu
        ip_batch(
            node.ns,
            [
                f"link add {pod.host_veth} mtu {mtu} type veth peer name eth0 netns {pod.ns}",
                f"link set {pod.host_veth} master cbr0",
                f"link set dev {pod.host_veth} type bridge_slave hairpin on",
                f"link set {pod.host_veth} up",
            ],
        )
        ip_batch(
            pod.ns,
            [
                "link set lo up",
                f"link set eth0 mtu {mtu}",
                f"addr add {ip}/{node.pod_cidr.split('/')[1]} dev eth0",
                "link set eth0 up",
                f"route add default via {node.bridge_ip}",
            ],
        )
        if server:
            self._spawn_echo(pod)
        if register:
            self.register_pod(pod, ready=ready)
        return pod

    def register_pod(self, pod: ClusterPod, *, ready: bool = True) -> None:
        """Create the Pod object, with status, as a kubelet would report it."""
        self.api.create(
            "/api/v1/namespaces/default/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod.name, "namespace": "default", "labels": pod.labels},
                "spec": {
                    "nodeName": pod.node,
                    "containers": [
                        {
                            "name": "echo",
                            "image": "netnslab/echo",
                            "ports": [
                                {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 5353, "protocol": "TCP"},
                            ],
                        }
                    ],
                },
                "status": pod_status(pod.ip, ready),
            },
        )

    def set_pod_ready(self, name: str, ready: bool) -> None:
        """Flip a pod's Ready condition in the API (what a failing readiness probe does)."""
        pod = self.pods[name]
        self.api.request(
            "PUT",
            f"/api/v1/namespaces/default/pods/{name}/status",
            {
                **self.api.get(f"/api/v1/namespaces/default/pods/{name}"),
                "status": pod_status(pod.ip, ready),
            },
        )

    def serve_outside(self) -> None:
        """Run an echo server in the outside namespace (to see what source a pod's traffic has)."""
        if "outside" not in self._servers:
            self._spawn_echo_in("outside", self.outside_ns)

    def _spawn_echo(self, pod: ClusterPod) -> None:
        self._spawn_echo_in(pod.name, pod.ns)

    def _spawn_echo_in(self, name: str, ns: str) -> None:
        argv = [self.python, "-I", "-S", str(ECHO_SCRIPT), "--name", name]
        argv += ["--tcp", ",".join(map(str, ECHO_PORTS)), "--udp", ",".join(map(str, ECHO_PORTS))]
        with open(self.workdir / f"echo-{name}.log", "wb") as err:
            proc = subprocess.Popen(
                exec_argv(ns, argv),
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._servers[name] = proc
        assert proc.stdout is not None
        try:
            line = traffic.LineReader(proc.stdout.fileno()).readline(10.0)
        except TimeoutError:
            line = None
        finally:
            proc.stdout.close()
        if line != "READY":
            raise RuntimeError(f"echo server {name} in {ns} did not start: {line!r}")

    # ---- services --------------------------------------------------------------------------

    def create_service(
        self,
        name: str,
        selector: Mapping[str, str],
        ports: Sequence[Mapping[str, Any]],
        *,
        type: str = "ClusterIP",
        cluster_ip: str | None = None,
        extra_spec: Mapping[str, Any] | None = None,
        namespace: str = "default",
    ) -> dict[str, Any]:
        """Create a Service; returns it as stored (with its allocated IP and NodePorts)."""
        spec: dict[str, Any] = {"type": type, "selector": dict(selector), "ports": list(ports)}
        if cluster_ip:
            spec["clusterIP"] = cluster_ip
        spec.update(extra_spec or {})
        obj = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        result: dict[str, Any] = self.api.create(f"/api/v1/namespaces/{namespace}/services", obj)
        return result

    def delete_service(self, name: str, namespace: str = "default") -> None:
        """Delete a Service (its slices go with it)."""
        self.api.delete(f"/api/v1/namespaces/{namespace}/services/{name}", missing_ok=True)

    def delete_pod(self, name: str) -> None:
        """Delete the Pod object (the namespace and server stay until down)."""
        self.api.delete(f"/api/v1/namespaces/default/pods/{name}", missing_ok=True)

    # ---- commands and traffic --------------------------------------------------------------

    def ns_exec(
        self, where: str, argv: Sequence[str], *, check: bool = True, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in a node, pod or role namespace."""
        return ns_exec(self.ns(where), argv, check=check, timeout=timeout)

    def iptables_save(self, node: str, table: str | None = None) -> str:
        """``iptables-save`` on a node."""
        argv = ["iptables-save", *(["-t", table] if table else [])]
        return self.ns_exec(node, argv).stdout

    def iptables_save_backends(self, node: str) -> dict[str, str]:
        """Every iptables backend's save on a node, by tool name (both families, nft and legacy).

        The nftables mode must leave no rule of netagent's in any of them, and
        a proxy-mode switch must clean up whichever backend the previous mode
        used, so a check reads all four rather than whatever ``iptables``
        points at.
        """
        tools = (
            "iptables-nft-save",
            "iptables-legacy-save",
            "ip6tables-nft-save",
            "ip6tables-legacy-save",
        )
        return {tool: self.ns_exec(node, [tool]).stdout for tool in tools}

    def nft_list(self, node: str, family: str = "ip", table: str = "netagent") -> str | None:
        """``nft list table FAMILY TABLE`` on a node; None when the table does not exist."""
        argv = ["nft", "list", "table", family, table]
        proc = self.ns_exec(node, argv, check=False)
        if proc.returncode == 0:
            return proc.stdout
        if "No such file or directory" in proc.stderr:
            return None
        raise LabCommandError(argv, proc.returncode, proc.stdout, proc.stderr)

    def nft_tables(self, node: str) -> list[tuple[str, str]]:
        """``nft list tables`` on a node, as ``(family, name)`` pairs."""
        out = self.ns_exec(node, ["nft", "list", "tables"]).stdout
        return [
            (words[1], words[2])
            for words in (line.split() for line in out.splitlines())
            if len(words) == 3 and words[0] == "table"
        ]

    def wait_for_nft(
        self,
        name: str,
        needle: str,
        *,
        present: bool = True,
        timeout: float = 20.0,
        family: str = "ip",
    ) -> str:
        """Wait until node ``name``'s ``FAMILY netagent`` table does (or does not) hold ``needle``.

        A missing table counts as not containing it. Returns the last listing ("" if none).
        """
        return _wait_for_text(
            lambda: self.nft_list(name, family) or "",
            needle,
            present,
            timeout,
            f"in {family} netagent on {name}",
        )

    def many_requests(
        self, proto: str, from_: str, ip: str, port: int, count: int, **options: Any
    ) -> list[traffic.ProbeResult]:
        """``count`` new TCP connections or UDP source ports from one namespace."""
        return traffic.many_requests(
            self.ns(from_), proto, ip, port, count, python=self.python, **options
        )

    def request(self, proto: str, from_: str, ip: str, port: int, timeout: float = 2.0) -> str:
        """One request; the reply line, or a ProbeError."""
        result = self.many_requests(proto, from_, ip, port, 1, timeout=timeout)[0]
        return result.raise_for_error(f"{proto.upper()} {ip}:{port} from {from_}")

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl --kubeconfig <lab> ARGS`` from the host side."""
        exe = shutil.which("kubectl")
        if exe is None:
            raise FileNotFoundError(
                "kubectl is not installed (scripts/install-deps.sh installs it)"
            )
        return subprocess.run(
            [exe, "--kubeconfig", str(self.kubeconfig), "--request-timeout=10s", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    # ---- teardown --------------------------------------------------------------------------

    def down(self) -> None:
        """Stop every process and delete every namespace of this lab (idempotent)."""
        errors: list[str] = []
        for session in self._sessions:
            try:
                session.close()
            except Exception as exc:
                errors.append(f"session: {exc}")
        self._sessions.clear()
        for node in self.nodes.values():
            if node.agent is not None:
                try:
                    node.agent.stop()
                except Exception as exc:
                    errors.append(f"agent {node.name}: {exc}")
        for proc in [*self._servers.values(), self._api_proc, self._forward_proc]:
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._servers.clear()
        self._api_proc = self._forward_proc = None
        for ns in reversed(self.namespaces):
            try:
                delete_namespace(ns)
            except Exception as exc:
                errors.append(f"namespace {ns}: {exc}")
        if errors:
            raise RuntimeError(f"lab {self.suffix} teardown failed: " + "; ".join(errors))
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        record = self._record or RunRecord.load(self.suffix)
        if record is not None:
            record.remove()
        self._record = None

    def __enter__(self) -> ClusterLab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()


CURRENT_CLUSTER = STATE_DIR / "current-cluster"


def down_detached(suffix: str) -> list[str]:
    """Remove a detached cluster lab made by another process; the namespaces removed.

    Every process of the lab (API server, forwarder, agents, echo servers)
    lives in one of its namespaces, so deleting them stops everything.
    """
    record = RunRecord.load(suffix)
    if record is None:
        raise LookupError(f"no run record for lab {suffix}")
    removed = [ns for ns in reversed(record.namespaces) if delete_namespace(ns)]
    if shutil.which("podman") is not None:  # agents started from the DaemonSet, if any
        from netnslab.daemonset_lab import remove_containers

        removed += remove_containers(suffix)
    if record.workdir:
        shutil.rmtree(record.workdir, ignore_errors=True)
    record.remove()
    return removed


def pod_status(ip: str, ready: bool) -> dict[str, Any]:
    """A Running pod's status as a kubelet reports it."""
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }


def kubeconfig_text(url: str) -> str:
    """A kubeconfig for ``url``: plain HTTP, no credentials (the lab has none)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "netns-lab", "cluster": {"server": url}}],
        "users": [{"name": "netns-lab", "user": {}}],
        "contexts": [
            {"name": "netns-lab", "context": {"cluster": "netns-lab", "user": "netns-lab"}}
        ],
        "current-context": "netns-lab",
    }
    return json.dumps(config, indent=2) + "\n"


def read_subnet_env(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a subnet.env."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def wait_for_subnet_env(
    path: Path, timeout: float, agent: agent_process.AgentHandle | None
) -> dict[str, str]:
    """Wait for an agent's subnet.env (the CNI's "network ready" signal)."""
    end = time.monotonic() + timeout
    while True:
        if path.exists():
            env = read_subnet_env(path)
            if "FLANNEL_SUBNET" in env:
                return env
        if agent is not None and not agent.running():
            raise RuntimeError(f"agent exited before writing {path}:\n{agent.log_text()}")
        if time.monotonic() > end:
            tail = agent.log_text()[-3000:] if agent is not None else ""
            raise TimeoutError(f"{path} did not appear within {timeout}s\n{tail}")
        time.sleep(0.1)


__all__ = ["ApiError", "ClusterLab", "ClusterNode", "ClusterPod", "kubeconfig_text"]
