"""`netagent debug` on the real kernel: a programmed three-node VXLAN cluster, and one bare netns.

One cluster serves every command's check (they only read, except the two
drift checks, which the agent repairs): ``services`` and ``service`` name a
Service's backends and their kernel objects, ``overlay`` a peer's FDB,
neighbour and route entries, ``trace`` the owner of each chain, ``diff``
exits 0 on a fresh sync, 1 naming the object after a chain is flushed or an
overlay route deleted by hand in node-1's namespace, and 0 again after the
agent's next sync. ``--agent`` asks the running agent's /debug pages. The
normalisation of ``iptables-save`` output is also checked on its own, with
both iptables backends and both families, in one throwaway namespace.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from netnslab.agent_process import AgentRun, run_netagent
from netnslab.cluster import CLUSTER_CIDR, ClusterLab

from netagent.model import (
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ProxyConfig,
    ProxyState,
    ServicePort,
    ServicePortName,
    SessionAffinity,
    TrafficPolicy,
)
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.iptables import inspect
from netagent.proxy.iptables.apply import IptablesApplier
from netagent.proxy.iptables.proxier import render_with_overlay
from netagent.proxy.iptables.render import render_iptables
from netagent.proxy.iptables.runner import SubprocessIptables

pytestmark = pytest.mark.lab
ip = ipaddress.ip_address
SYNC_PERIOD = 6.0
HTTP = {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    lab = ClusterLab(
        overlay="vxlan",
        workdir=tmp_path_factory.mktemp("debug") / "lab",
        keep_workdir=True,
        agent_args=["--min-sync-period", "0.2s", "--sync-period", f"{SYNC_PERIOD}s"],
    )
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def debug(lab: ClusterLab, node: str, *args: str) -> AgentRun:
    """``netagent debug ARGS`` in ``node``'s namespace, with that agent's own flags."""
    agent_flags = lab.agent_argv(lab.node(node))[1:]  # without "run"
    return run_netagent(lab.ns(node), lab.python, ["debug", *args, *agent_flags], timeout=60)


def debug_json(lab: ClusterLab, node: str, *args: str) -> dict[str, Any]:
    run = debug(lab, node, *args, "-o", "json").check()
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def after_a_sync(lab: ClusterLab, node: str, *, full: bool = True) -> None:
    """Return just after ``node``'s agent logged a sync: the next is a sync period away."""
    agent = lab.node(node).agent
    assert agent is not None
    mark = len(agent.log_text())
    pattern = r"synced IPv4 \(full\)" if full else r"synced IPv4"
    agent.wait_for_log(pattern, after=mark, timeout=3 * SYNC_PERIOD)


def test_debug_commands_on_a_programmed_node(cluster: ClusterLab) -> None:
    lab = cluster
    svc = lab.create_service("web", {"app": "echo"}, [HTTP], type="NodePort")
    vip = svc["spec"]["clusterIP"]
    node_port = svc["spec"]["ports"][0]["nodePort"]
    lab.wait_for_rules("node-1", f"{vip}/32")
    echo_ips = {p.ip: p.node for p in lab.pods.values() if p.name.startswith("echo-")}
    assert len(echo_ips) == 6
    lab.wait_for_rules("node-1", max(echo_ips, key=lambda a: ip(a)))

    # services: every backend, its node, local or not, selected.
    report = debug_json(lab, "node-1", "services", "default/web")
    (port,) = report["services"]
    kinds = [f["type"] for f in port["frontends"]]
    assert kinds == ["ClusterIP", "NodePort"]
    backends = {b["address"]: b for b in port["frontends"][0]["backends"]}
    assert set(backends) == {f"{a}:8080" for a in echo_ips}
    for addr, node in echo_ips.items():
        row = backends[f"{addr}:8080"]
        assert row["node"] == node and row["local"] == (node == "node-1") and row["selected"]
        assert row["state"] == "ready"
    table = debug(lab, "node-1", "services", "default/web").check().stdout
    assert f"{vip}:80/TCP (ClusterIP)" in table and f"0.0.0.0:{node_port}/TCP (NodePort)" in table

    # service: the kernel's objects match the render, and a packet spreads over all six.
    report = debug_json(lab, "node-1", "service", "default/web")
    (fam,) = report["families"]
    assert fam["objects"] and {o["state"] for o in fam["objects"]} == {"present"}
    assert sum(o["key"].startswith("nat NETAGENT-SEP-") for o in fam["objects"]) == 6
    cluster_trace = next(
        t
        for t in fam["traces"]
        if t["frontend"].startswith("ClusterIP") and t["packet"]["from"] == "pod"
    )
    shares = {p["endpoint"]: p["probability"] for p in cluster_trace["paths"]}
    assert set(shares) == {f"{a}:8080" for a in echo_ips}
    assert all(abs(s - 1 / 6) < 1e-3 for s in shares.values()), shares
    svc_chain = next(o["key"] for o in fam["objects"] if o["key"].startswith("nat NETAGENT-SVC-"))

    # overlay: node-2 as a peer, with its three entries present.
    report = debug_json(lab, "node-1", "overlay")
    assert report["vtep"]["state"] == "present" and report["vtep"]["device"] == "flannel.1"
    assert report["subnet"] == lab.node("node-1").pod_cidr
    node2 = next(p for p in report["peers"] if p["name"] == "node-2")
    assert node2["subnet"] == lab.node("node-2").pod_cidr
    assert node2["publicIP"] == lab.node("node-2").ip
    entries = {e["kind"]: e for e in node2["entries"]}
    assert set(entries) == {"fdb", "neigh", "route"}
    assert {e["state"] for e in entries.values()} == {"present"}
    assert f"dst {lab.node('node-2').ip} dev flannel.1" in entries["fdb"]["entry"]
    assert report["files"]["subnetEnv"]["state"] == "present"
    assert report["files"]["cniConflist"]["state"] == "present"

    # trace: chain owners from the desired state, and from the comments without one.
    client = lab.pods["client-1"].ip
    out = debug(lab, "node-1", "trace", "--src", client, "--dst", vip, "--port", "80")
    text = out.check().stdout
    assert "[default/web:http]" in text and "p=0.1667" in text
    bare = run_netagent(
        lab.ns("node-1"),
        lab.python,
        ["debug", "trace", "--src", client, "--dst", vip, "--port", "80"],
    ).check()
    assert "NETAGENT-SVC-" in bare.stdout and "[default/web:http]" in bare.stdout

    # --agent: the running agent answers the same report from its last sync.
    remote = run_netagent(
        lab.ns("node-1"),
        lab.python,
        ["debug", "services", "default/web", "-o", "json", "--agent", "http://127.0.0.1:10249"],
    ).check()
    served = json.loads(remote.stdout)
    assert served["source"] == "the agent's last sync"
    assert {b["address"] for b in served["services"][0]["frontends"][0]["backends"]} == set(
        backends
    )

    # Errors: one line on stderr, non-zero.
    missing = debug(lab, "node-1", "service", "default/nope")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: service default/nope not found in API http://192.0.2.10:6443"
        " (or it has no cluster IP: headless Services are not proxied)"
    ]
    bare_node = run_netagent(
        lab.ns("outside"),
        lab.python,
        ["debug", "diff", "--master", lab.agent_api_url, "--node-name", "node-1"],
    )
    assert bare_node.returncode == 1
    assert re.fullmatch(r"error: .*no netagent rules.*\n", bare_node.stderr), bare_node.stderr

    # diff: 0 on the fresh sync; a hand-flushed chain is named until the agent's next sync,
    # whose drift check (every syncPeriod) finds it and makes that sync full.
    assert debug(lab, "node-1", "diff").check().stdout.strip().endswith("no differences")
    after_a_sync(lab, "node-1", full=False)
    chain = svc_chain.split()[1]
    lab.ns_exec("node-1", ["iptables", "-t", "nat", "-F", chain])
    drift = debug(lab, "node-1", "diff")
    assert drift.returncode == 1, drift.log
    assert f"different chain nat {chain} (default/web:http): flushed" in drift.stdout
    agent = lab.node("node-1").agent
    assert agent is not None
    after_a_sync(lab, "node-1", full=True)
    assert "netagent's rules were changed by hand (chain nat/" in agent.log_text()
    assert debug(lab, "node-1", "diff").returncode == 0

    # ... and so is a hand-deleted overlay route (every sync reconciles the overlay).
    subnet2 = lab.node("node-2").pod_cidr
    gateway2 = subnet2.split("/")[0]
    after_a_sync(lab, "node-1", full=False)
    lab.ns_exec("node-1", ["ip", "route", "del", subnet2])
    drift = debug(lab, "node-1", "diff")
    assert drift.returncode == 1, drift.log
    assert (
        f"missing route {subnet2} via {gateway2} dev flannel.1 onlink (peer node-2)" in drift.stdout
    )
    after_a_sync(lab, "node-1", full=False)
    assert debug(lab, "node-1", "diff").returncode == 0


def _state(family: IPFamily) -> ProxyState:
    v6 = family is IPFamily.IPV6

    def addr(v4: str, v6_: str) -> Any:
        return ip(v6_ if v6 else v4)

    def svc(name: str, vip: tuple[str, str], **kw: Any) -> ServicePort:
        return ServicePort(
            ServicePortName("default", name, "p"), Protocol.TCP, 80, cluster_ips=(addr(*vip),), **kw
        )

    def ep(a: tuple[str, str], local: bool = False) -> Endpoint:
        return Endpoint(ip=addr(*a), port=8080, node_name="n1" if local else "n2", is_local=local)

    services = [
        (
            svc("web", ("10.96.0.10", "fd00:96::10"), node_port=30080),
            (ep(("10.244.1.5", "fd00:244:1::5")), ep(("10.244.0.5", "fd00:244::5"), True)),
        ),
        (
            svc(
                "sticky", ("10.96.0.11", "fd00:96::11"), session_affinity=SessionAffinity.CLIENT_IP
            ),
            tuple(ep((f"10.244.1.{i}", f"fd00:244:1::{i}")) for i in (6, 7, 8)),
        ),
        (
            svc(
                "local",
                ("10.96.0.12", "fd00:96::12"),
                node_port=30081,
                external_traffic_policy=TrafficPolicy.LOCAL,
            ),
            (ep(("10.244.1.9", "fd00:244:1::9")), ep(("10.244.0.9", "fd00:244::9"), True)),
        ),
        (svc("empty", ("10.96.0.14", "fd00:96::14"), node_port=30082), ()),
    ]
    cidr = ipaddress.ip_network("fd00:244::/48" if v6 else CLUSTER_CIDR)
    return ProxyState(
        services={s.name: s for s, _ in services},
        endpoints={s.name: e for s, e in services if e},
        node=NodeInfo(name="n1", addresses=(addr("192.0.2.2", "2001:db8::2"),)),
        config=ProxyConfig(cluster_cidrs=(cidr,)),
        family=family,
    )


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"na-dbg-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_kernel_objects_of_a_fresh_apply_equal_the_rendered_ones(netns: str) -> None:
    overlay = OverlayRules(
        ipaddress.IPv4Network(CLUSTER_CIDR), ipaddress.IPv4Network("10.244.0.0/24"), True
    )
    checked = []
    for backend in ("nft", "legacy"):
        for family in (IPFamily.IPV4, IPFamily.IPV6):
            runner = SubprocessIptables(family=family, backend=backend, netns=netns)
            if not runner.available():
                continue
            state = _state(family)
            rendered = render_iptables(state)
            if family is IPFamily.IPV4:
                rendered = render_with_overlay(rendered, overlay, 14)
            IptablesApplier(runner).apply(rendered, full=True)
            saved = runner.save()
            want = inspect.owned_objects(rendered, inspect.chain_owners(state))
            got = inspect.kernel_owned_objects(saved)
            assert {(o.kind, o.key) for o in got} == {(o.kind, o.key) for o in want}
            assert got == want, f"{backend} {family.value}"
            IptablesApplier.cleanup(runner)
            checked.append((backend, family))
    assert ("nft", IPFamily.IPV4) in checked or ("legacy", IPFamily.IPV4) in checked
