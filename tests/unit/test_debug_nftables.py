"""`netagent debug` in nftables mode: services, service, diff and trace on the stateful FakeNft.

The proxy side is a real NftablesProxier that synced the state into FakeNft,
so "the kernel" is exactly what a sync writes, listed back as ``nft list
table`` prints it; hand edits go through the fake as nft commands. The
trace is the nftables tracer over the render of the desired state.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_debug_cli import MANIFESTS, args
from test_debug_reports import CONFIG, ip, snapshot, svc

from netagent.cli import main
from netagent.config import AgentConfig
from netagent.debug.context import DebugContext, DebugError
from netagent.debug.diff import diff_report
from netagent.debug.endpoint import handle
from netagent.debug.output import render
from netagent.debug.reports import build
from netagent.debug.service import service_report
from netagent.debug.services import services_report
from netagent.model import IPFamily, SessionAffinity
from netagent.proxy.nftables.fake import FakeNft
from netagent.proxy.nftables.proxier import NftablesProxier
from netagent.runtime.node_sync import Snapshot, build_states

NFT_CONFIG = replace(CONFIG, proxy_mode="nftables")
TABLE = "ip netagent"


def nft_snapshot() -> Snapshot:
    """The iptables debug tests' cluster, plus a ClientIP-affinity Service."""
    snap = snapshot()
    sticky = svc("sticky", "10.96.0.13", session_affinity=SessionAffinity.CLIENT_IP)
    slices = tuple(snap.slices)
    web = next(s for s in slices if s.service_name == "api")
    slices += (replace(web, name="sticky-abc", service_name="sticky"),)
    return replace(snap, services=(*snap.services, sticky), slices=slices)


def make_context(
    snap: Snapshot | None = None, config: AgentConfig = NFT_CONFIG, *, sync: bool = True
) -> tuple[DebugContext, FakeNft]:
    """A context over ``snap`` whose NftablesProxier synced it into FakeNft (unless not ``sync``)."""
    snap = snap or nft_snapshot()
    states = build_states(config, snap)
    fake = FakeNft()
    proxier = NftablesProxier(runner=fake, conntrack=None)
    if sync:
        proxier.sync(states[0], full=True)
    ctx = DebugContext(
        config=config,
        states=states,
        nodes=dict(snap.nodes),
        proxiers={IPFamily.IPV4: proxier},
        source="test",
        ruleset=None,  # node_kernel gives nftables mode no iptables ruleset
        local_ips=lambda: frozenset({ip("192.0.2.11")}),
    )
    return ctx, fake


def frontend(report: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    port = next(p for p in report["services"] if p["name"] == name)
    return next(f for f in port["frontends"] if f["type"] == kind)


# ---- services -------------------------------------------------------------------------------


def test_services_shows_each_frontends_verdict_and_slots() -> None:
    ctx, _ = make_context(sync=False)
    report = services_report(ctx)
    cluster = frontend(report, "default/web:http", "ClusterIP")["nftables"]
    assert cluster["verdict"] == "goto cluster-tcp-2"
    assert cluster["slots"] == [
        {"map": "service-endpoints-tcp", "slot": 0, "endpoint": "10.244.1.11:8080"},
        {"map": "service-endpoints-tcp", "slot": 1, "endpoint": "10.244.2.11:8080"},
    ]
    assert "service-ips 10.96.0.10 . tcp . 80 : goto cluster-tcp-2" in cluster["elements"]
    nodeport = frontend(report, "default/web:http", "NodePort")["nftables"]
    assert nodeport["claim"] == "node port tcp . 30080"
    assert nodeport["verdict"] == "goto nodeport-local-tcp-2-1"
    assert nodeport["endpoints"] == ["10.244.1.11:8080"]  # externalTrafficPolicy=Local
    assert {s["map"] for s in nodeport["slots"]} == {
        "nodeport-endpoints-tcp",
        "nodeport-local-endpoints-tcp",
    }
    empty = frontend(report, "default/empty:http", "ClusterIP")["nftables"]
    assert empty["verdict"] == "goto reject-chain" and empty["slots"] == []
    assert empty["elements"] == ["no-endpoint-services 10.96.0.12 . tcp . 80 : goto reject-chain"]

    sticky = next(p for p in report["services"] if p["name"] == "default/sticky:http")
    chains = [c["chain"] for c in sticky["nftables"]["chains"]]
    assert chains and all(c.startswith("sticky-") for c in chains)
    assert sticky["frontends"][0]["nftables"]["verdict"].startswith("goto sticky-")
    web = next(p for p in report["services"] if p["name"] == "default/web:http")
    assert web["nftables"]["sharedChains"] == ["cluster-tcp-2", "nodeport-local-tcp-2-1"]

    table = render(report, "table")
    assert "    nftables: 10.96.0.10 . tcp . 80 -> goto cluster-tcp-2" in table
    assert "slots of @service-endpoints-tcp: 0 => 10.244.1.11:8080, 1 => 10.244.2.11:8080" in table
    assert "nftables chains of its own (ClientIP affinity):" in table
    assert "element no-endpoint-services 10.96.0.12 . tcp . 80 : goto reject-chain" in table
    assert max(len(line) for line in table.splitlines()) <= 100
    assert json.loads(render(report, "json")) == report


def test_services_in_iptables_mode_has_no_nftables_details() -> None:
    ctx, _ = make_context(config=CONFIG, sync=False)
    report = services_report(ctx)
    assert all("nftables" not in p for p in report["services"])
    assert all("nftables" not in f for p in report["services"] for f in p["frontends"])


# ---- service --------------------------------------------------------------------------------


def test_service_objects_shared_chains_and_traces() -> None:
    ctx, _ = make_context()
    report = service_report(ctx, "default/web")
    fam = report["families"][0]
    states = {(o["kind"], o["key"]): o["state"] for o in fam["objects"]}
    assert states[("element", "service-ips 10.96.0.10 . tcp . 80")] == "present"
    assert states[("endpoints", "service-endpoints-tcp 10.96.0.10 . 80")] == "present"
    assert states[("element", "service-nodeports tcp . 30080")] == "present"
    assert set(states.values()) == {"present"}
    assert all(o["owner"] == "default/web:http" for o in fam["objects"])
    shared = {(r["chain"], r["state"]) for r in fam["sharedRules"]}
    assert shared == {("cluster-tcp-2", "present"), ("nodeport-local-tcp-2-1", "present")}
    assert fam["ports"][0]["frontends"][0]["nftables"]["verdict"] == "goto cluster-tcp-2"

    traces = {(t["frontend"], t["packet"]["from"]): t for t in fam["traces"]}
    cluster = traces[("ClusterIP 10.96.0.10:80/TCP", "pod")]
    assert cluster["tracer"] == "nftables" and cluster["outcome"] == "DNAT"
    assert {p["endpoint"]: p["probability"] for p in cluster["paths"]} == {
        "10.244.1.11:8080": 0.5,
        "10.244.2.11:8080": 0.5,
    }
    assert traces[("NodePort 192.0.2.11:30080/TCP", "external")]["endpoints"] == [
        "10.244.1.11:8080"
    ]
    table = render(report, "table")
    assert "present  element    service-ips 10.96.0.10 . tcp . 80" in table
    assert "present  cluster-tcp-2: dnat ip to ip daddr . tcp dport" in table
    assert "(traced over netagent's render of the desired state)" in table
    assert (
        "ClusterIP 10.96.0.10:80/TCP from pod 10.244.1.254: ACCEPT -> 10.244.1.11:8080 p=0.5"
        in table
    )


def test_service_marks_hand_edits_missing_and_different() -> None:
    ctx, fake = make_context()
    fake.run(f"delete element {TABLE} service-ips {{ 10.96.0.10 . tcp . 80 }}\n")
    fake.run(f"delete element {TABLE} service-endpoints-tcp {{ 10.96.0.10 . 80 . 1 }}\n")
    fake.run(f"flush chain {TABLE} cluster-tcp-2\n")
    fam = service_report(ctx, "default/web", traces=False)["families"][0]
    objects = {o["key"]: o for o in fam["objects"]}
    assert objects["service-ips 10.96.0.10 . tcp . 80"]["state"] == "missing"
    endpoints = objects["service-endpoints-tcp 10.96.0.10 . 80"]
    assert endpoints["state"] == "different"
    assert endpoints["kernel"] == ["10.244.1.11 . 8080"]
    assert {r["state"] for r in fam["sharedRules"] if r["chain"] == "cluster-tcp-2"} == {"missing"}


def test_service_errors_name_the_nftables_table() -> None:
    ctx, _ = make_context(sync=False)
    with pytest.raises(DebugError, match="no netagent nftables table") as err:
        service_report(ctx, "default/web")
    assert err.value.status == 503


# ---- diff -----------------------------------------------------------------------------------


def test_diff_is_equal_after_a_sync_and_names_each_hand_edit() -> None:
    ctx, fake = make_context()
    assert diff_report(ctx)["equal"] is True

    fake.run(f"delete element {TABLE} service-ips {{ 10.96.0.10 . tcp . 80 }}\n")
    report = diff_report(ctx)
    assert report["equal"] is False
    lines = [d["line"] for d in report["differences"]]
    assert lines == ["missing element service-ips 10.96.0.10 . tcp . 80 (default/web:http)"]
    assert render(report, "table").endswith("1 difference\n")

    fake.run(
        f"add element {TABLE} service-ips {{ 10.96.0.10 . tcp . 80 : goto nodeport-local-tcp-2-1 }}\n"
        f"delete element {TABLE} service-endpoints-tcp {{ 10.96.0.10 . 80 . 0 }}\n"
        f"add element {TABLE} service-ips {{ 10.96.0.99 . tcp . 80 : drop }}\n"
        f"flush chain {TABLE} cluster-tcp-2\n"
    )
    lines = [d["line"] for d in diff_report(ctx)["differences"]]
    assert "different chain cluster-tcp-2 (node): flushed, all 2 rules missing" in lines
    assert (
        "different element service-ips 10.96.0.10 . tcp . 80 (default/web:http):"
        " 'goto nodeport-local-tcp-2-1' in the kernel, 'goto cluster-tcp-2' wanted"
    ) in lines
    assert (
        "different endpoints service-endpoints-tcp 10.96.0.10 . 80 (default/web:http):"
        " 1 endpoints missing, 0 unexpected"
    ) in lines
    assert "unexpected element service-ips 10.96.0.99 . tcp . 80 (node)" in lines


def test_diff_of_an_unprogrammed_node_and_a_deleted_table() -> None:
    ctx, fake = make_context()
    fake.run(f"delete table {TABLE}\n")
    with pytest.raises(DebugError, match=r"no netagent nftables table \(ip netagent"):
        diff_report(ctx)


def test_the_agent_endpoint_serves_the_nftables_reports() -> None:
    ctx, _ = make_context()
    assert json.loads(handle("/debug/diff", {}, ctx)[2])["equal"] is True
    status, _, body = handle("/debug/services", {"name": "default/web"}, ctx)
    assert status == 200
    assert json.loads(body)["services"][0]["frontends"][0]["nftables"]["verdict"] == (
        "goto cluster-tcp-2"
    )
    q = {"src": "203.0.113.7", "dst": "192.0.2.11", "port": "30080", "from": "external"}
    trace = json.loads(handle("/debug/trace", q, ctx)[2])
    assert trace["tracer"] == "nftables" and trace["endpoints"] == ["10.244.1.11:8080"]
    assert trace["service"] == "default/web:http"
    status, _, body = handle("/debug/trace", {**q, "dst": "2001:db8::1"}, ctx)
    assert status == 400 and b"proxies no IPv6 Services" in body


# ---- trace ----------------------------------------------------------------------------------


def test_trace_report_follows_the_render_step_by_step() -> None:
    ctx, _ = make_context(sync=False)  # the trace needs no kernel at all
    report = build("trace", ctx, {"src": "10.244.1.254", "dst": "10.96.0.10", "port": "80"})
    assert report["kind"] == "trace" and report["tracer"] == "nftables"
    assert report["outcome"] == "DNAT" and report["masquerade"] is False
    assert report["endpoints"] == ["10.244.1.11:8080", "10.244.2.11:8080"]
    steps = report["paths"][0]["steps"]
    dispatch = next(s for s in steps if s["chain"] == "services")
    assert dispatch == {
        "chain": "services",
        "rule": "ip daddr . meta l4proto . th dport vmap @service-ips",
        "matched": True,
        "detail": "10.96.0.10 . tcp . 80 in @service-ips",
        "verdict": "goto cluster-tcp-2",
        "owner": "default/web:http",
    }
    table = render(report, "table")
    assert table.startswith("packet tcp 10.244.1.254 -> 10.96.0.10:80 from pod\ntracer: ")
    assert "outcome: DNAT to 10.244.1.11:8080 p=0.5, 10.244.2.11:8080 p=0.5" in table
    assert "  steps of every path:" in table
    assert "    services: 10.96.0.10 . tcp . 80 in @service-ips -> goto cluster-tcp-2" in table
    assert "  path 2: ACCEPT -> 10.244.2.11:8080, source kept (p=0.5)" in table
    assert max(len(line) for line in table.splitlines()) <= 100

    rejected = build("trace", ctx, {"src": "10.244.1.254", "dst": "10.96.0.12", "port": "80"})
    assert rejected["outcome"] == "REJECT" and rejected["endpoints"] == []
    sticky = build("trace", ctx, {"src": "10.244.1.254", "dst": "10.96.0.13", "port": "80"})
    assert "ClientIP affinity first, then random" in sticky["summary"]


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    (tmp_path / "objects.yaml").write_text(MANIFESTS)
    return tmp_path


def test_cli_trace_and_services_in_nftables_mode(
    manifests: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = ["trace", "--src", "10.244.1.9", "--dst", "10.96.0.10", "--port", "80"]
    assert main(["debug", *args(manifests, *trace, "--proxy-mode", "nftables")]) == 0
    out = capsys.readouterr().out
    assert "outcome: DNAT to 10.244.1.11:8080 p=1 [default/web:http], masquerade no" in out
    assert "services: 10.96.0.10 . tcp . 80 in @service-ips -> goto cluster-tcp-1" in out

    # The mode from the config file, --local-ip as an extra node address.
    config = manifests / "netagent.yaml"
    config.write_text("mode: nftables\n")
    nodeport = ["trace", "--src", "203.0.113.7", "--dst", "198.51.100.1", "--port", "80"]
    argv = [*nodeport, "--from", "external", "--local-ip", "198.51.100.1", "-o", "json"]
    assert main(["debug", *args(manifests, *argv, "--config", str(config))]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tracer"] == "nftables" and "198.51.100.1" in report["localIPs"]
    assert report["outcome"] == "ACCEPT"  # a node address, but no node port 80

    assert (
        main(["debug", *args(manifests, *trace, "--proxy-mode", "nftables", "--rules", "x")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --rules is iptables-save text: in nftables mode")

    assert main(["debug", *args(manifests, "services", "--proxy-mode", "nftables")]) == 0
    assert "nftables: 10.96.0.10 . tcp . 80 -> goto cluster-tcp-1" in capsys.readouterr().out
