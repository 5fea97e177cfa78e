"""The DaemonSet of ``daemonset/``, run as written on the three-node lab, and its RBAC.

Each lab node runs the image scripts/image.sh builds, with the DaemonSet's
command, args, env and volume mounts and its ConfigMap, in a podman container
in the node's network namespace (netnslab.daemonset_lab). Then: ClusterIP
from a pod and NodePort from outside reach backends on all three nodes,
cross-node pod traffic flows over VXLAN, the probes' URLs answer on their
port, and every API request the agents made is allowed by the ClusterRole,
which grants nothing they did not use.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import yaml
from netnslab import rbac
from netnslab.cluster import CLUSTER_CIDR, ClusterLab
from netnslab.daemonset_lab import (
    DAEMONSET_DIR,
    DaemonSetAgents,
    build_image,
    http_get_status,
    podman,
)

pytestmark = pytest.mark.lab

HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}
ALL_NODES = {"node-1", "node-2", "node-3"}


@pytest.fixture(scope="module")
def ds_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterLab, DaemonSetAgents]]:
    built = build_image()
    assert built.startswith("image "), built
    agents = DaemonSetAgents(cluster_cidr=CLUSTER_CIDR)
    overlay = (agents.config.get("overlay") or {}).get("backend", "none")
    assert overlay == "vxlan", "daemonset/configmap.yaml is expected to run the vxlan overlay"
    lab = ClusterLab(
        overlay=overlay,
        workdir=tmp_path_factory.mktemp("dslab") / "lab",
        keep_workdir=True,
        agent_factory=agents,
    )
    try:
        lab.up()
        yield lab, agents
    finally:
        try:
            lab.down()
        finally:
            agents.cleanup()
            left = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
            assert not [n for n in left if n.startswith(f"na-ds-{lab.suffix}")], left


def node_of(pod: str) -> str:
    return f"node-{pod.split('-')[1][0]}"


def answering_nodes(lab: ClusterLab, src: str, ip: str, port: int, count: int = 60) -> Counter[str]:
    results = lab.many_requests("tcp", src, ip, port, count, timeout=1.0)
    return Counter(
        node_of(r.reply.split()[0]) if r.ok and r.reply else f"<{r.error}>" for r in results
    )


def wait_for_nodes(lab: ClusterLab, src: str, ip: str, port: int, timeout: float = 30.0) -> Counter[str]:
    end = time.monotonic() + timeout
    while True:
        got = answering_nodes(lab, src, ip, port)
        if set(got) == ALL_NODES:
            return got
        assert time.monotonic() < end, f"{src} -> {ip}:{port}: answers from {got}"
        time.sleep(0.5)


def test_agents_run_in_containers_from_the_manifest(ds_lab: tuple[ClusterLab, DaemonSetAgents]) -> None:
    lab, agents = ds_lab
    running = podman("ps", "--format", "{{.Names}} {{.Image}}").stdout.splitlines()
    for node in lab.nodes.values():
        name = agents.container_name(lab, node)
        assert f"{name} {agents.spec.image}" in running, running
        # The subnet.env landed in the node's /run/flannel hostPath directory.
        assert node.subnet_file.is_relative_to(node.workdir / "host" / "run" / "flannel")
        assert "FLANNEL_SUBNET=" in node.subnet_file.read_text()
        assert node.cni_file.exists()
    # Every field the lab cannot honour is named, with a reason.
    notes = " ".join(agents.spec.lab_notes)
    for fieldname in ("tolerations", "priorityClassName", "resources", "livenessProbe",
                      "serviceAccountName", "hostPath"):
        assert fieldname in notes


def test_probe_urls_answer_on_the_probe_port(ds_lab: tuple[ClusterLab, DaemonSetAgents]) -> None:
    lab, agents = ds_lab
    assert set(agents.spec.probes) == {"livenessProbe", "readinessProbe"}
    for node in lab.nodes.values():
        for probe in agents.spec.probes.values():
            get = probe["httpGet"]
            url = f"http://{node.ip}:{get['port']}{get['path']}"
            assert http_get_status(lab, "outside", url) == 200, url


def test_clusterip_from_a_pod_reaches_every_node(ds_lab: tuple[ClusterLab, DaemonSetAgents]) -> None:
    lab, _ = ds_lab
    svc = lab.create_service("web-ds", {"app": "echo"}, [HTTP])
    ip = svc["spec"]["clusterIP"]
    got = wait_for_nodes(lab, "client-1", ip, 80)
    assert all(not k.startswith("<") for k in got), got


def test_nodeport_from_outside_reaches_every_node(ds_lab: tuple[ClusterLab, DaemonSetAgents]) -> None:
    lab, _ = ds_lab
    svc = lab.create_service("np-ds", {"app": "echo"}, [HTTP], type="NodePort")
    port = int(svc["spec"]["ports"][0]["nodePort"])
    for node in ("node-1", "node-3"):
        wait_for_nodes(lab, "outside", lab.node(node).ip, port)


def test_cross_node_pod_traffic_uses_vxlan(ds_lab: tuple[ClusterLab, DaemonSetAgents]) -> None:
    lab, _ = ds_lab
    link = lab.ns_exec("node-1", ["ip", "-d", "link", "show", "flannel.1"]).stdout
    assert "vxlan id 1" in link and "dstport 8472" in link, link
    for target in ("echo-2a", "echo-3a"):
        pod = lab.pods[target]
        route = lab.ns_exec("node-1", ["ip", "route", "get", pod.ip]).stdout
        assert "dev flannel.1" in route, route
        assert lab.request("tcp", "client-1", pod.ip, 8080).split()[0] == target


def test_rbac_is_exactly_what_the_agents_call(ds_lab: tuple[ClusterLab, DaemonSetAgents]) -> None:
    lab, _ = ds_lab
    docs = list(yaml.safe_load_all((DAEMONSET_DIR / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    node_ips = {n.ip for n in lab.nodes.values()}
    # The server logs a request when it ends; end the agents' open watches so they show.
    lab.api.close_watches()
    end = time.monotonic() + 15
    while True:
        log = [r for r in lab.api.requests_log() if r.get("client") in node_ips]
        watched = {(r["client"], r["path"]) for r in log if r["watch"]}
        if len(watched) >= 3 * len(node_ips) or time.monotonic() > end:
            break
        time.sleep(0.5)
    # Every node's agent talked to the API, and the overlay's Node writes are in the log.
    assert {r["client"] for r in log} == node_ips
    assert any(r["method"] == "PUT" and r["path"].startswith("/api/v1/nodes/") for r in log)
    assert any(r["method"] == "PATCH" and r["path"].startswith("/api/v1/nodes/") for r in log)
    result = rbac.audit(role["rules"], log)
    assert not result.denied, [f"{a} ({r['method']} {r['path']})" for a, r in result.denied]
    assert not result.unused, sorted(map(str, result.unused))

