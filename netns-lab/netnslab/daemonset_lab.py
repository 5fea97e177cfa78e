"""Run netagent in the lab the way ``daemonset/`` says, as a container per node.

Why: manifests that are only schema-valid can still be wrong: a mount path the
agent does not write to, an argument it refuses, a missing tool in the image.
Here the lab reads the DaemonSet's container (image, command, args, env,
volume mounts) and its ConfigMap from ``daemonset/``, and runs that image with
podman in each lab node's network namespace (``--network ns:/run/netns/…``,
the lab's own namespace, never the host's). Every hostPath is mapped into a
per-node directory, so three "nodes" on one machine do not share
``/run/flannel`` or ``/etc/cni/net.d``.

What a kubelet would do and the lab cannot, and what it does instead, is in
:attr:`DaemonSetSpec.lab_notes`: the lab lists each such field and why.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from netnslab import agent_process

if TYPE_CHECKING:
    from netnslab.cluster import ClusterLab, ClusterNode

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DAEMONSET_DIR = REPO / "daemonset"
CONTAINERS_CONF = REPO / "scripts" / "containers.conf"
IMAGE_SCRIPT = REPO / "scripts" / "image.sh"
LAB_KUBECONFIG_DIR = "/var/run/netagent-lab"
# hostPaths that hold the host's kernel, not node state: bound read-only from the real
# host, since every lab node runs on the host's kernel.
HOST_KERNEL_PATHS = ("/lib/modules",)


def load_documents(directory: Path = DAEMONSET_DIR) -> list[dict[str, Any]]:
    """Every object of the ``*.yaml`` files of ``directory`` (what ``kubectl apply -f`` reads)."""
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                docs.append(doc)
    return docs


def find(docs: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``)."""
    hits = [
        d
        for d in docs
        if d.get("kind") == kind and (name is None or d.get("metadata", {}).get("name") == name)
    ]
    if len(hits) != 1:
        raise LookupError(f"expected one {kind} {name or ''} in daemonset/, found {len(hits)}")
    return hits[0]


@dataclass
class DaemonSetSpec:
    """The parts of the DaemonSet's pod the lab runs, read from ``daemonset/``."""

    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    node_name_env: list[str]
    mounts: list[dict[str, Any]]
    volumes: dict[str, dict[str, Any]]
    configmaps: dict[str, dict[str, str]]
    privileged: bool
    capabilities: list[str]
    probes: dict[str, dict[str, Any]]
    lab_notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path = DAEMONSET_DIR) -> DaemonSetSpec:
        """Read the DaemonSet and the ConfigMaps it mounts."""
        docs = load_documents(directory)
        ds = find(docs, "DaemonSet")
        pod = ds["spec"]["template"]["spec"]
        containers = pod["containers"]
        if len(containers) != 1 or pod.get("initContainers"):
            raise ValueError("the lab runs a DaemonSet with exactly one container")
        c = containers[0]
        env: dict[str, str] = {}
        node_name_env: list[str] = []
        notes: list[str] = []
        for var in c.get("env", []):
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                node_name_env.append(var["name"])
            else:
                raise ValueError(f"the lab cannot fill env {var['name']}: {var.get('valueFrom')}")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        configmaps: dict[str, dict[str, str]] = {}
        for vol in volumes.values():
            if "configMap" in vol:
                cm = find(docs, "ConfigMap", vol["configMap"]["name"])
                configmaps[vol["name"]] = dict(cm.get("data") or {})
        sc = c.get("securityContext") or {}
        probes = {k: c[k] for k in ("livenessProbe", "readinessProbe") if k in c}
        if not pod.get("hostNetwork"):
            raise ValueError("the lab runs netagent with hostNetwork, as the node's agent")
        notes += [
            "hostNetwork: the container joins the lab node's network namespace "
            "(podman --network ns:/run/netns/<node>), the lab's 'host' network",
            "nodeSelector, tolerations, priorityClassName, updateStrategy: scheduling; "
            "the lab starts one container on every lab node itself",
            "resources.requests: not enforced (podman runs without a scheduler; "
            "cgroupfs limits are not what is under test)",
            "livenessProbe/readinessProbe: no kubelet runs them; the lab test sends the "
            "same HTTP GETs to the node's address instead",
            "serviceAccountName: the lab API server is plain HTTP without authentication, "
            "and the in-cluster loader needs HTTPS, a CA and a token; the lab mounts a "
            f"kubeconfig at {LAB_KUBECONFIG_DIR}/kubeconfig and sets KUBECONFIG instead "
            "(RBAC is checked against the request log, tests/lab/test_daemonset_lab.py)",
            "hostPath volumes: mapped into a per-node directory (three lab nodes share one "
            f"machine); {', '.join(HOST_KERNEL_PATHS)} is bound read-only from the real "
            "host, whose kernel every lab node runs on",
        ]
        return cls(
            image=str(c["image"]),
            command=list(c.get("command") or []),
            args=list(c.get("args") or []),
            env=env,
            node_name_env=node_name_env,
            mounts=list(c.get("volumeMounts") or []),
            volumes=volumes,
            configmaps=configmaps,
            privileged=bool(sc.get("privileged", False)),
            capabilities=list((sc.get("capabilities") or {}).get("add") or []),
            probes=probes,
            lab_notes=notes,
        )

    def config_file(self) -> tuple[str, dict[str, Any]]:
        """The container path of netagent's ``--config`` file and its parsed content."""
        if "--config" not in self.args:
            raise ValueError("the DaemonSet's args have no --config")
        path = self.args[self.args.index("--config") + 1]
        for mount in self.mounts:
            vol = mount["name"]
            prefix = mount["mountPath"].rstrip("/") + "/"
            if vol in self.configmaps and path.startswith(prefix):
                data = yaml.safe_load(self.configmaps[vol][path[len(prefix) :]])
                if not isinstance(data, dict):
                    raise ValueError(f"{path} in ConfigMap volume {vol} is not a mapping")
                return path, data
        raise ValueError(f"--config {path} is not in a mounted ConfigMap")

    def host_path_of(self, container_path: str, node_root: Path) -> Path:
        """Where a file the agent writes at ``container_path`` lands on the lab's disk."""
        best: tuple[int, Path] | None = None
        for mount in self.mounts:
            vol = self.volumes[mount["name"]]
            mp = mount["mountPath"].rstrip("/")
            if "hostPath" in vol and (container_path == mp or container_path.startswith(mp + "/")):
                rest = container_path[len(mp) :].lstrip("/")
                where = node_root / vol["hostPath"]["path"].lstrip("/") / rest
                if best is None or len(mp) > best[0]:
                    best = (len(mp), where)
        if best is None:
            raise ValueError(f"{container_path} is not under a hostPath mount of the DaemonSet")
        return best[1]


def podman_env() -> dict[str, str]:
    """The environment podman needs on these machines (see scripts/containers.conf)."""
    return dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))


def podman(
    *args: str, check: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``podman --runtime runc ARGS``."""
    exe = shutil.which("podman")
    if exe is None:
        raise FileNotFoundError("podman is not installed (scripts/install-deps.sh installs it)")
    return subprocess.run(
        [exe, "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env=podman_env(),
    )


def build_image(timeout: float = 900.0) -> str:
    """Run scripts/image.sh (cached when nothing changed); its last line."""
    proc = subprocess.run(
        ["bash", str(IMAGE_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=podman_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/image.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


class ContainerAgentHandle(agent_process.AgentHandle):
    """One node's netagent as a podman container; same interface as a process handle."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=podman_env(),
            )
        log.debug("started container %s: %s", name, " ".join(argv))

    def stop(self, timeout: float = 10.0) -> int:
        """``podman stop`` (SIGTERM, then SIGKILL), then remove the container (idempotent)."""
        if self.proc.poll() is None:
            podman("stop", "--ignore", "-t", str(int(timeout)), self.name, check=False,
                   timeout=timeout + 20)
            try:
                self.proc.wait(timeout=timeout + 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5.0)
        podman("rm", "--force", "--ignore", self.name, check=False)
        return self.proc.returncode


class DaemonSetAgents:
    """An agent factory for :class:`~netnslab.cluster.ClusterLab`: containers per the DaemonSet."""

    def __init__(self, spec: DaemonSetSpec | None = None, *, cluster_cidr: str) -> None:
        self.spec = spec or DaemonSetSpec.load()
        self.cluster_cidr = cluster_cidr
        self.config_path, self.config = self.spec.config_file()
        if self.config.get("clusterCIDR") != cluster_cidr:
            self.spec.lab_notes.append(
                f"ConfigMap clusterCIDR {self.config.get('clusterCIDR')!r} (the placeholder) "
                f"is set to the lab's {cluster_cidr}"
            )
        self.containers: list[str] = []

    def node_root(self, node: ClusterNode) -> Path:
        """The directory that stands in for this node's ``/`` for hostPath volumes."""
        return node.workdir / "host"

    def prepare(self, lab: ClusterLab, node: ClusterNode) -> None:
        """Point the lab at where this node's agent writes subnet.env and the conflist."""
        overlay = self.config.get("overlay") or {}
        root = self.node_root(node)
        subnet = overlay.get("subnetFile", "/run/flannel/subnet.env")
        node.subnet_path = self.spec.host_path_of(str(subnet), root)
        cni = overlay.get("cniConfFile", "/etc/cni/net.d/10-netagent.conflist")
        if cni:
            node.cni_path = self.spec.host_path_of(str(cni), root)

    def container_name(self, lab: ClusterLab, node: ClusterNode) -> str:
        """A per-run unique container name."""
        return f"na-ds-{lab.suffix}-{node.name}"

    def podman_argv(self, lab: ClusterLab, node: ClusterNode, extra: Sequence[str]) -> list[str]:
        """The ``podman run`` command line for ``node``, from the DaemonSet's container."""
        spec = self.spec
        root = self.node_root(node)
        self.prepare(lab, node)
        name = self.container_name(lab, node)
        exe = shutil.which("podman") or "podman"
        argv = [exe, "--runtime", "runc", "run", "--rm", "--replace", "--name", name]
        argv += ["--pull", "never", "--network", f"ns:/run/netns/{node.ns}"]
        if spec.privileged:
            argv.append("--privileged")
        for cap in spec.capabilities:
            argv += ["--cap-add", cap]
        env = dict(spec.env)
        env.update({var: node.name for var in spec.node_name_env})
        env["KUBECONFIG"] = f"{LAB_KUBECONFIG_DIR}/kubeconfig"
        for key, value in sorted(env.items()):
            argv += ["--env", f"{key}={value}"]
        lab_dir = node.workdir / "lab-kubeconfig"
        lab_dir.mkdir(parents=True, exist_ok=True)
        (lab_dir / "kubeconfig").write_text(kubeconfig_for(lab.agent_api_url))
        argv += ["--volume", f"{lab_dir}:{LAB_KUBECONFIG_DIR}:ro"]
        for mount in spec.mounts:
            argv += ["--volume", self._volume(node, root, mount)]
        if spec.command:
            argv += ["--entrypoint", json.dumps(spec.command)]
        argv.append(spec.image)
        argv += [*spec.args, *lab.agent_args, *extra]
        return argv

    def _volume(self, node: ClusterNode, root: Path, mount: dict[str, Any]) -> str:
        vol = self.spec.volumes[mount["name"]]
        ro = bool(mount.get("readOnly"))
        target = mount["mountPath"]
        if "configMap" in vol:
            src = node.workdir / f"configmap-{mount['name']}"
            src.mkdir(parents=True, exist_ok=True)
            for key, text in self.spec.configmaps[mount["name"]].items():
                if key == Path(self.config_path).name:
                    data = dict(self.config, clusterCIDR=self.cluster_cidr)
                    text = yaml.safe_dump(data, sort_keys=False)
                (src / key).write_text(text)
            return f"{src}:{target}:ro"
        if "hostPath" not in vol:
            raise ValueError(f"volume {mount['name']}: the lab maps configMap and hostPath only")
        path = vol["hostPath"]["path"]
        kind = vol["hostPath"].get("type", "")
        if path in HOST_KERNEL_PATHS:
            if not ro:
                raise ValueError(f"hostPath {path} must be mounted readOnly")
            if Path(path).is_dir():
                return f"{path}:{target}:ro"
            note = f"hostPath {path}: this host has none (a kernel without modules); empty"
            if note not in self.spec.lab_notes:
                self.spec.lab_notes.append(note)
        src = root / path.lstrip("/")
        if kind == "FileOrCreate":
            src.parent.mkdir(parents=True, exist_ok=True)
            src.touch()
        elif kind in ("DirectoryOrCreate", "Directory", ""):
            src.mkdir(parents=True, exist_ok=True)
        else:
            raise ValueError(f"hostPath {path}: type {kind} is not handled by the lab")
        return f"{src}:{target}" + (":ro" if ro else "")

    def __call__(
        self, lab: ClusterLab, node: ClusterNode, extra: Sequence[str]
    ) -> agent_process.AgentHandle:
        """Start ``node``'s agent container."""
        argv = self.podman_argv(lab, node, extra)
        count = len(list(node.workdir.glob("agent-*.log")))
        name = self.container_name(lab, node)
        if name not in self.containers:
            self.containers.append(name)
        return ContainerAgentHandle(name, argv, node.workdir / f"agent-{count}.log")

    def cleanup(self) -> None:
        """Remove every container this factory started (after a failure too)."""
        for name in self.containers:
            podman("rm", "--force", "--ignore", "-t", "5", name, check=False)
        self.containers.clear()


def remove_containers(suffix: str) -> list[str]:
    """Remove every agent container of lab run ``suffix`` (``lab.sh down``); their names."""
    prefix = f"na-ds-{suffix}-"
    names = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
    ours = [n for n in names if n.startswith(prefix)]
    for name in ours:
        podman("rm", "--force", "--ignore", "-t", "5", name, check=False)
    return ours


def kubeconfig_for(url: str) -> str:
    """The lab's kubeconfig (plain HTTP, no credentials) for ``url``."""
    from netnslab.cluster import kubeconfig_text

    return kubeconfig_text(url)


def http_get_status(lab: ClusterLab, where: str, url: str, timeout: float = 3.0) -> int:
    """The HTTP status of GET ``url`` from namespace ``where`` (0 when it did not answer)."""
    code = (
        "import sys,urllib.request,urllib.error\n"
        "try:\n"
        f"    print(urllib.request.urlopen(sys.argv[1], timeout={timeout}).status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
        "except OSError:\n"
        "    print(0)\n"
    )
    out = lab.ns_exec(where, [lab.python, "-I", "-S", "-c", code, url], timeout=timeout + 5)
    return int(out.stdout.strip() or 0)


def wait_http_ok(lab: ClusterLab, where: str, url: str, timeout: float = 30.0) -> int:
    """Wait until GET ``url`` answers 200; the last status seen."""
    end = time.monotonic() + timeout
    status = 0
    while time.monotonic() < end:
        status = http_get_status(lab, where, url)
        if status == 200:
            return status
        time.sleep(0.5)
    return status


__all__ = ["DaemonSetAgents", "DaemonSetSpec", "build_image", "load_documents"]
