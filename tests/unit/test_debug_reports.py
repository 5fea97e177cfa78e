"""The debug reports on fakes: services, service, diff, overlay, their output formats and errors.

The proxy side runs a real IptablesProxier on FakeIptables (applied by a real
sync, so "the kernel" is exactly what netagent writes), the overlay side
plans against FakeOverlayKernel programmed by the real reconciler.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from netagent.config import AgentConfig
from netagent.debug.context import DebugContext, DebugError
from netagent.debug.diff import diff_report
from netagent.debug.output import render
from netagent.debug.overlay import overlay_report, plan_for
from netagent.debug.service import service_report
from netagent.debug.services import services_report
from netagent.model import (
    EndpointSliceInfo,
    IPFamily,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    SliceEndpoint,
    SlicePort,
    TrafficPolicy,
)
from netagent.overlay import annotations as ann
from netagent.overlay.cni_files import cni_conflist_text, subnet_env_text
from netagent.overlay.kernel_fake import FakeOverlayKernel
from netagent.overlay.model import BackendType, RouteEntry
from netagent.overlay.reconcile import OverlayReconciler
from netagent.overlay.rules_intent import OverlayRules
from netagent.overlay.underlay import Underlay
from netagent.proxy.iptables.chain_names import endpoint_chain
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.proxier import IptablesProxier
from netagent.runtime.node_sync import Snapshot, build_states

ip = ipaddress.ip_address
net = ipaddress.ip_network
CLUSTER = net("10.244.0.0/16")
NODE_IP = {"node-1": "192.0.2.11", "node-2": "192.0.2.12", "node-3": "192.0.2.13"}
PREFIX = "flannel.alpha.coreos.com"


def node(name: str, zone: str = "", *, overlay: bool = True) -> NodeInfo:
    index = int(name[-1])
    annotations: tuple[tuple[str, str], ...] = ()
    if overlay:
        annotations = tuple(
            sorted(
                ann.node_annotations(
                    PREFIX,
                    BackendType.VXLAN,
                    ip(NODE_IP[name]),  # type: ignore[arg-type]
                    ann.vtep_mac_for(name),
                    1,
                ).items()
            )
        )
    return NodeInfo(
        name=name,
        addresses=(ip(NODE_IP[name]),),
        pod_cidrs=(net(f"10.244.{index}.0/24"),),
        zone=zone,
        annotations=annotations,
    )


def svc(name: str, vip: str, **kw: Any) -> ServicePort:
    return ServicePort(
        name=ServicePortName("default", name, "http"),
        protocol=Protocol.TCP,
        port=80,
        cluster_ips=(ip(vip),),
        **kw,
    )


def ep(
    addr: str,
    node_name: str,
    *,
    ready: bool = True,
    serving: bool = True,
    terminating: bool = False,
    hints: Sequence[str] = (),
) -> SliceEndpoint:
    return SliceEndpoint(
        addresses=(ip(addr),),
        ready=ready,
        serving=serving,
        terminating=terminating,
        node_name=node_name,
        zone_hints=frozenset(hints),
    )


def slice_of(service: str, *endpoints: SliceEndpoint) -> EndpointSliceInfo:
    return EndpointSliceInfo(
        namespace="default",
        name=f"{service}-abc",
        service_name=service,
        address_type=IPFamily.IPV4,
        ports=(SlicePort("http", 8080, Protocol.TCP),),
        endpoints=endpoints,
    )


def snapshot() -> Snapshot:
    services = (
        svc(
            "web",
            "10.96.0.10",
            node_port=30080,
            type="NodePort",
            external_traffic_policy=TrafficPolicy.LOCAL,
        ),
        svc("api", "10.96.0.11", load_balancer_ips=(ip("203.0.113.50"),), type="LoadBalancer"),
        svc("empty", "10.96.0.12"),
    )
    slices = (
        slice_of(
            "web",
            ep("10.244.1.11", "node-1"),
            ep("10.244.2.11", "node-2"),
            ep("10.244.2.12", "node-2", ready=False, terminating=True),
            ep("10.244.3.13", "node-3", ready=False, serving=False),
        ),
        slice_of("api", ep("10.244.2.20", "node-2"), ep("10.244.3.20", "node-3")),
    )
    nodes = {n: node(n) for n in NODE_IP}
    return Snapshot(services=services, slices=slices, nodes=nodes)


CONFIG = AgentConfig(node_name="node-1", cluster_cidrs=(CLUSTER,))


def make_context(
    snap: Snapshot | None = None,
    config: AgentConfig = CONFIG,
    *,
    sync: bool = True,
    overlay_kernel: FakeOverlayKernel | None = None,
) -> tuple[DebugContext, FakeIptables]:
    """A context over ``snap`` whose proxier has synced it into FakeIptables (unless not ``sync``)."""
    snap = snap or snapshot()
    states = build_states(config, snap)
    fake = FakeIptables()
    proxier = IptablesProxier(runner=fake, conntrack=None)
    own = snap.nodes.get(config.node_name)
    intent = None
    if config.overlay_backend != "none" and own is not None and own.pod_cidrs:
        intent = OverlayRules(CLUSTER, own.pod_cidrs[0], True)  # type: ignore[arg-type]
    if sync:
        proxier.sync(states[0], full=True, overlay=intent)
    underlay = Underlay("eth0", ip("192.0.2.11"), 1500, (net("192.0.2.0/24"),))  # type: ignore[arg-type]
    ctx = DebugContext(
        config=config,
        states=states,
        nodes=dict(snap.nodes),
        proxiers={IPFamily.IPV4: proxier},
        source="test",
        overlay_rules=intent,
        overlay_kernel=(lambda: overlay_kernel) if overlay_kernel is not None else None,
        underlay=lambda: underlay,
        ruleset=lambda family: fake.save(),
        local_ips=lambda: frozenset({ip("192.0.2.11")}),
    )
    return ctx, fake


# ---- services ------------------------------------------------------------------------------


def backends(report: dict[str, Any], name: str, frontend_type: str) -> dict[str, dict[str, Any]]:
    port = next(p for p in report["services"] if p["name"] == name)
    fe = next(f for f in port["frontends"] if f["type"] == frontend_type)
    return {b["address"]: b for b in fe["backends"]}


def test_services_lists_every_frontend_with_backend_state_and_reason() -> None:
    ctx, _ = make_context(sync=False)
    report = services_report(ctx)
    names = [p["name"] for p in report["services"]]
    assert names == ["default/api:http", "default/empty:http", "default/web:http"]
    web = next(p for p in report["services"] if p["name"] == "default/web:http")
    assert [f["frontend"] for f in web["frontends"]] == ["10.96.0.10:80/TCP", "0.0.0.0:30080/TCP"]
    assert web["externalTrafficPolicy"] == "Local"

    cluster = backends(report, "default/web:http", "ClusterIP")
    assert cluster["10.244.1.11:8080"]["local"] is True
    assert cluster["10.244.1.11:8080"]["selected"] is True
    assert cluster["10.244.2.11:8080"]["selected"] is True
    assert cluster["10.244.2.12:8080"]["state"] == "serving-terminating"
    assert cluster["10.244.2.12:8080"]["reason"] == "terminating; others are ready"
    assert cluster["10.244.3.13:8080"]["state"] == "not-serving"
    assert cluster["10.244.3.13:8080"]["selected"] is False

    nodeport = backends(report, "default/web:http", "NodePort")
    assert nodeport["10.244.1.11:8080"]["selected"] is True
    assert nodeport["10.244.2.11:8080"]["selected"] is False
    assert nodeport["10.244.2.11:8080"]["reason"] == "not local (externalTrafficPolicy=Local)"
    # Pods and the host are not subject to the Local policy.
    assert nodeport["10.244.2.11:8080"]["selectedFromCluster"] is True

    lb = backends(report, "default/api:http", "LoadBalancer")
    assert (
        all(b["selected"] for b in lb.values())
        and "selectedFromCluster" not in lb["10.244.2.20:8080"]
    )
    empty = next(p for p in report["services"] if p["name"] == "default/empty:http")
    assert empty["frontends"][0]["backends"] == []


def test_services_by_name_and_unknown_name() -> None:
    ctx, _ = make_context(sync=False)
    report = services_report(ctx, "default/web")
    assert [p["name"] for p in report["services"]] == ["default/web:http"]
    assert services_report(ctx, "web")["services"] == report["services"]  # namespace default
    with pytest.raises(DebugError, match="service default/nope not found in test") as err:
        services_report(ctx, "default/nope")
    assert err.value.status == 404
    with pytest.raises(DebugError, match="bad service name"):
        services_report(ctx, "a/b/c")


def test_topology_hints_explain_the_other_zone() -> None:
    snap = snapshot()
    snap = replace(
        snap,
        slices=(
            slice_of(
                "web",
                ep("10.244.1.11", "node-1", hints=["zone-a"]),
                ep("10.244.2.11", "node-2", hints=["zone-b"]),
            ),
        ),
        nodes={**snap.nodes, "node-1": replace(snap.nodes["node-1"], zone="zone-a")},
    )
    ctx, _ = make_context(snap, sync=False)
    cluster = backends(services_report(ctx), "default/web:http", "ClusterIP")
    assert cluster["10.244.1.11:8080"]["reason"] == "ready, hinted for zone zone-a"
    assert cluster["10.244.2.11:8080"]["selected"] is False
    assert cluster["10.244.2.11:8080"]["reason"] == "hints for zone zone-b, node in zone-a"


def test_services_table_fits_100_columns_and_formats_round_trip() -> None:
    ctx, _ = make_context(sync=False)
    report = services_report(ctx)
    table = render(report, "table")
    assert "10.96.0.10:80/TCP (ClusterIP)" in table
    assert "1 => 10.244.1.11:8080  ready" in table
    assert "not local (eTP=Local); pods/host: yes" in table
    assert "no endpoints: traffic is rejected" in table
    assert max(len(line) for line in table.splitlines()) <= 100
    assert json.loads(render(report, "json")) == report
    assert yaml.safe_load(render(report, "yaml")) == report
    with pytest.raises(ValueError, match="unknown output format"):
        render(report, "xml")


# ---- service -------------------------------------------------------------------------------


def test_service_objects_present_after_a_sync_and_traces_per_frontend() -> None:
    ctx, _ = make_context()
    report = service_report(ctx, "default/web")
    fam = report["families"][0]
    assert fam["family"] == "IPv4"
    states = {o["key"]: o["state"] for o in fam["objects"]}
    assert states and set(states.values()) == {"present"}
    assert any(k.startswith("nat NETAGENT-SVC-") for k in states)
    assert any(k.startswith("nat NETAGENT-SEP-") for k in states)
    assert all(o["owner"] == "default/web:http" for o in fam["objects"])
    shared = {r["chain"] for r in fam["sharedRules"]}
    assert {"nat NETAGENT-SERVICES", "nat NETAGENT-NODEPORTS"} <= shared
    assert all(r["state"] == "present" for r in fam["sharedRules"])

    traces = {(t["frontend"], t["packet"]["from"]): t for t in fam["traces"]}
    cluster = traces[("ClusterIP 10.96.0.10:80/TCP", "pod")]
    shares = {p["endpoint"]: p["probability"] for p in cluster["paths"]}
    assert shares == {"10.244.1.11:8080": 0.5, "10.244.2.11:8080": 0.5}
    owners = {c["owner"] for p in cluster["paths"] for c in p["chains"]}
    assert "default/web:http" in owners
    external = traces[("NodePort 192.0.2.11:30080/TCP", "external")]
    assert external["endpoints"] == ["10.244.1.11:8080"]  # externalTrafficPolicy=Local
    assert ("NodePort 192.0.2.11:30080/TCP", "pod") in traces
    assert ("ClusterIP 10.96.0.10:80/TCP", "external") not in traces

    table = render(report, "table")
    assert re.search(r"present +chain +nat NETAGENT-SVC-\w+ +default/web:http", table)
    assert (
        "ClusterIP 10.96.0.10:80/TCP from pod 10.244.1.254: ACCEPT -> 10.244.1.11:8080 p=0.5"
        in table
    )


def test_service_marks_a_flushed_chain_different_and_a_deleted_one_missing() -> None:
    ctx, fake = make_context()
    report = service_report(ctx, "default/web", traces=False)
    svc_key = next(o["key"] for o in report["families"][0]["objects"] if "SVC-" in o["key"])
    svc_chain = svc_key.split()[1]
    # The remote endpoint's chain: only the (flushed) SVC chain jumps to it.
    sep_chain = endpoint_chain(
        ServicePortName("default", "web", "http"), Protocol.TCP, "10.244.2.11:8080"
    )
    sep_key = f"nat {sep_chain}"
    fake.restore(f"*nat\n:{svc_chain} - [0:0]\nCOMMIT\n")  # flush
    fake.restore(f"*nat\n:{sep_chain} - [0:0]\n-X {sep_chain}\nCOMMIT\n")  # delete
    objects = {o["key"]: o for o in service_report(ctx, "default/web")["families"][0]["objects"]}
    assert objects[svc_key]["state"] == "different" and objects[svc_key]["kernel"] == []
    assert objects[sep_key]["state"] == "missing" and objects[sep_key]["kernel"] is None
    table = render(service_report(ctx, "default/web"), "table")
    assert re.search(rf"different +chain +{svc_key}", table)
    assert f"- -A {svc_chain}" in table


def test_service_errors_are_one_line() -> None:
    ctx, _ = make_context(sync=False)
    with pytest.raises(DebugError, match="holds no netagent rules") as err:
        service_report(ctx, "default/web")
    assert err.value.status == 503
    ctx, _ = make_context()
    with pytest.raises(DebugError, match="service default/nope not found"):
        service_report(ctx, "default/nope")


# ---- diff ----------------------------------------------------------------------------------


def test_diff_is_equal_after_a_sync_and_names_each_difference() -> None:
    ctx, fake = make_context()
    assert diff_report(ctx)["equal"] is True
    assert "no differences" in render(diff_report(ctx), "table")

    chains = [c for c in fake.chains("nat") if c.startswith("NETAGENT-SVC-")]
    fake.restore(f"*nat\n:{chains[0]} - [0:0]\nCOMMIT\n")
    fake.restore("*filter\n-D" + fake.rules("filter", "INPUT")[0][2:] + "\nCOMMIT\n")
    report = diff_report(ctx)
    assert report["equal"] is False
    lines = [d["line"] for d in report["differences"]]
    assert any(
        line.startswith(f"different chain nat {chains[0]} (default/") and "flushed, all" in line
        for line in lines
    ), lines
    assert any(
        line.startswith("missing jump filter INPUT -> NETAGENT-FIREWALL (node)") for line in lines
    ), lines
    fake.restore("*nat\n:NETAGENT-SVC-STRAY - [0:0]\nCOMMIT\n")
    assert "unexpected chain nat NETAGENT-SVC-STRAY (unknown)" in [
        d["line"] for d in diff_report(ctx)["differences"]
    ]


def test_diff_on_a_node_without_netagent_rules_is_one_error() -> None:
    ctx, _ = make_context(sync=False)
    with pytest.raises(DebugError, match="no NETAGENT- chains"):
        diff_report(ctx)


# ---- overlay -------------------------------------------------------------------------------

OVERLAY_CONFIG = replace(CONFIG, overlay_backend="vxlan", overlay_vxlan_tx_checksum="on")


def programmed_overlay(tmp_path: Path) -> tuple[DebugContext, FakeOverlayKernel]:
    kernel = FakeOverlayKernel()
    kernel.add_foreign_link("eth0", mtu=1500, addresses=(ipaddress.IPv4Interface("192.0.2.11/24"),))
    config = replace(
        OVERLAY_CONFIG,
        subnet_file=tmp_path / "subnet.env",
        cni_conf_file=tmp_path / "10-netagent.conflist",
    )
    ctx, _ = make_context(config=config, overlay_kernel=kernel)
    plan = plan_for(ctx)
    report = OverlayReconciler(kernel).reconcile(plan.desired)
    assert not report.failures
    subnet = plan.local.subnet
    (tmp_path / "subnet.env").write_text(subnet_env_text(CLUSTER, subnet, 1450, True))  # type: ignore[arg-type]
    (tmp_path / "10-netagent.conflist").write_text(cni_conflist_text(subnet, 1450))
    return ctx, kernel


def test_overlay_report_shows_vtep_peers_and_files(tmp_path: Path) -> None:
    ctx, _ = programmed_overlay(tmp_path)
    report = overlay_report(ctx)
    assert report["subnet"] == "10.244.1.0/24"
    assert report["vtep"]["device"] == "flannel.1" and report["vtep"]["state"] == "present"
    assert report["vtep"]["mac"] == ann.vtep_mac_for("node-1")
    assert report["vtep"]["mtu"] == 1450 and report["podMTU"] == 1450
    assert report["bridge"]["state"] == "present"
    peers = {p["name"]: p for p in report["peers"]}
    assert set(peers) == {"node-2", "node-3"}
    entries = {(e["kind"], e["entry"]): e["state"] for e in peers["node-2"]["entries"]}
    mac2 = ann.vtep_mac_for("node-2")
    assert entries == {
        ("fdb", f"{mac2} dst 192.0.2.12 dev flannel.1"): "present",
        ("neigh", f"10.244.2.0 lladdr {mac2} dev flannel.1"): "present",
        ("route", "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"): "present",
    }
    assert report["files"]["subnetEnv"]["state"] == "present"
    assert report["files"]["cniConflist"]["state"] == "present"
    table = render(report, "table")
    assert "VTEP   present  flannel.1  vni 1" in table
    assert "present  route  10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink" in table
    assert max(len(line) for line in table.splitlines() if str(tmp_path) not in line) <= 100
    assert diff_report(ctx)["equal"] is True


def test_overlay_missing_and_foreign_entries_reach_the_diff(tmp_path: Path) -> None:
    ctx, kernel = programmed_overlay(tmp_path)
    route = RouteEntry(net("10.244.2.0/24"), ip("10.244.2.0"), "flannel.1", onlink=True)  # type: ignore[arg-type]
    kernel.delete_route(route)
    stray = RouteEntry(net("10.244.9.0/24"), ip("10.244.9.0"), "flannel.1", onlink=True)  # type: ignore[arg-type]
    kernel.replace_route(stray)
    (tmp_path / "subnet.env").write_text("FLANNEL_SUBNET=10.244.77.1/24\n")
    report = overlay_report(ctx)
    node2 = next(p for p in report["peers"] if p["name"] == "node-2")
    assert {
        "kind": "route",
        "state": "missing",
        "entry": "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink",
    } in node2["entries"]
    assert report["foreign"] == [
        {
            "kind": "route",
            "entry": "10.244.9.0/24 via 10.244.9.0 dev flannel.1 onlink",
            "state": "foreign",
        }
    ]
    assert report["files"]["subnetEnv"]["state"] == "different"
    lines = [d["line"] for d in diff_report(ctx)["differences"]]
    assert "missing route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink (peer node-2)" in lines
    assert "foreign route 10.244.9.0/24 via 10.244.9.0 dev flannel.1 onlink (no peer)" in lines
    assert any(line.startswith("different file ") and "subnetEnv" in line for line in lines)


def test_overlay_errors_are_one_line(tmp_path: Path) -> None:
    ctx, _ = make_context(sync=False)
    with pytest.raises(DebugError, match="overlay is off"):
        overlay_report(ctx)
    empty = FakeOverlayKernel()
    ctx, _ = make_context(config=OVERLAY_CONFIG, overlay_kernel=empty)
    with pytest.raises(DebugError, match=r"no overlay device flannel\.1 and no netagent routes"):
        overlay_report(ctx)
    snap = snapshot()
    bare = replace(
        snap, nodes={**snap.nodes, "node-1": replace(snap.nodes["node-1"], pod_cidrs=())}
    )
    ctx, _ = make_context(bare, config=OVERLAY_CONFIG, overlay_kernel=empty)
    with pytest.raises(DebugError, match="Node node-1 has no IPv4 pod CIDR yet"):
        overlay_report(ctx)
    gone = replace(snap, nodes={k: v for k, v in snap.nodes.items() if k != "node-1"})
    ctx, _ = make_context(gone, config=OVERLAY_CONFIG, overlay_kernel=empty, sync=False)
    with pytest.raises(DebugError, match="Node node-1 is not in test"):
        overlay_report(ctx)
