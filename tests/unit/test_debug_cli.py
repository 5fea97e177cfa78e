"""`netagent debug …` end to end without root: manifests and the API as inputs, --agent, the
/debug endpoint handler, and every bad input as one line on stderr."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from kubernetes import client
from labapi import LabApiServer

from netagent.cli import main
from netagent.debug.context import DebugContext
from netagent.debug.endpoint import agent_handler, handle

MANIFESTS = """\
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}
status: {addresses: [{type: InternalIP, address: 192.0.2.11}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.11]
  conditions: {ready: true}
  nodeName: node-1
- addresses: [10.244.2.11]
  conditions: {ready: false}
  nodeName: node-2
---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: default}
spec: {clusterIP: 10.96.0.99, ports: [{name: x, port: 99999}]}
"""


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    (tmp_path / "objects.yaml").write_text(MANIFESTS)
    return tmp_path


def args(manifests: Path, *extra: str) -> list[str]:
    return [
        *extra,
        "--manifests",
        str(manifests),
        "--node-name",
        "node-1",
        "--cluster-cidr",
        "10.244.0.0/16",
    ]


def test_services_from_manifests_in_every_format(
    manifests: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["debug", *args(manifests, "services")]) == 0
    out, _ = capsys.readouterr()
    assert "default/web:http  ClusterIP TCP IPv4" in out
    assert "1 => 10.244.1.11:8080  ready" in out and "node-1*" in out
    assert "2 => 10.244.2.11:8080  not-serving  node-2   no    not ready" in out
    assert "Service default/broken" in caplog.text  # the invalid object is named, not fatal
    assert main(["debug", *args(manifests, "services", "default/web", "-o", "json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "services" and len(report["services"]) == 1
    assert main(["debug", *args(manifests, "services", "-o", "yaml")]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["services"] == report["services"]


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["services", "default/nope"], 1, "error: service default/nope not found in manifests "),
        (["services", "a/b/c"], 2, "error: bad service name 'a/b/c': expected NAMESPACE/NAME"),
        (["overlay"], 2, "error: the overlay is off on this node (--overlay none)"),
    ],
)
def test_bad_input_is_one_line_on_stderr(
    manifests: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str,
) -> None:
    assert main(["debug", *args(manifests, *argv)]) == status
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), err
    assert "Traceback" not in err and out == ""


def test_no_node_name_and_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["debug", "services", "--manifests", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: config field nodeName: required (--node-name or $NODE_NAME)"
    )
    assert main(["debug", "services", "--manifests", str(tmp_path / "no"), "--node-name", "n"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_unreachable_api_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["debug", "services", "--master", "http://127.0.0.1:9", "--node-name", "n"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach the API server http://127.0.0.1:9 to list Services:")
    assert "\n" not in err


def test_services_from_the_api_with_one_list_each(
    lab: LabApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    with client.ApiClient(client.Configuration(host=lab.url)) as api:
        core = client.CoreV1Api(api)
        core.create_node(
            {
                "metadata": {"name": "node-1"},
                "spec": {"podCIDR": "10.244.1.0/24"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]},
            }
        )
        core.create_namespaced_service(
            "default",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "type": "NodePort",
                    "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                },
            },
        )
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": "web-1", "labels": {"app": "web"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
                "status": {
                    "phase": "Running",
                    "podIP": "10.244.1.11",
                    "podIPs": [{"ip": "10.244.1.11"}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            },
        )
    deadline = time.monotonic() + 10
    while True:
        argv = [
            "debug",
            "services",
            "default/web",
            "-o",
            "json",
            "--master",
            lab.url,
            "--node-name",
            "node-1",
        ]
        assert main(argv) == 0
        report = json.loads(capsys.readouterr().out)
        backends = report["services"][0]["frontends"][0]["backends"]
        if backends or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert report["source"] == f"API {lab.url}"
    assert [f["type"] for f in report["services"][0]["frontends"]] == ["ClusterIP", "NodePort"]
    assert [(b["address"], b["local"], b["selected"]) for b in backends] == [
        ("10.244.1.11:8080", True, True)
    ]


# ---- the endpoint and --agent ---------------------------------------------------------------


@pytest.fixture
def context() -> DebugContext:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_debug_reports import make_context

    ctx, _ = make_context()
    return ctx


def test_handler_serves_every_report(context: DebugContext) -> None:
    status, kind, body = handle("/debug/services", {"name": "default/web"}, context)
    assert (status, kind) == (200, "application/json")
    assert json.loads(body)["services"][0]["name"] == "default/web:http"
    assert handle("/debug/diff", {}, context)[0] == 200
    assert json.loads(handle("/debug/diff", {}, context)[2])["equal"] is True
    status, kind, body = handle(
        "/debug/service", {"name": "default/web", "format": "table"}, context
    )
    assert status == 200 and kind == "text/plain" and b"objects (kernel against" in body
    q = {"src": "10.244.1.254", "dst": "10.96.0.10", "port": "80"}
    trace = json.loads(handle("/debug/trace", q, context)[2])
    owners = {c["owner"] for p in trace["paths"] for c in p["chains"]}
    assert "default/web:http" in owners and trace["owners_from"] == "desired state"
    assert handle("/debug/overlay", {}, context)[0] == 400  # the overlay is off
    assert handle("/debug/service", {}, context)[0] == 400
    assert handle("/debug/service", {"name": "default/nope"}, context)[:2] == (
        404,
        "text/plain; charset=utf-8",
    )
    assert handle("/debug/nothing", {}, context)[0] == 404
    assert handle("/debug/services", {"format": "xml"}, context)[0] == 400
    assert handle("/debug/trace", {"src": "x"}, context)[0] == 400


def test_agent_handler_before_and_after_a_sync(context: DebugContext) -> None:
    class NodeSyncLike:
        def __init__(self) -> None:
            self.config = context.config
            self.last_states: list[Any] = []
            self.last_snapshot: Any = None
            self.proxiers = dict(context.proxiers)
            self.network = None

    fake = NodeSyncLike()
    handler = agent_handler(fake)  # type: ignore[arg-type]
    status, _, body = handler("/debug/services", {})
    assert status == 503 and b"has not completed a sync" in body
    from netagent.runtime.node_sync import Snapshot

    fake.last_states = list(context.states)
    fake.last_snapshot = Snapshot(nodes=context.nodes)
    status, _, body = handler("/debug/services", {})
    assert status == 200 and json.loads(body)["source"] == "the agent's last sync"


@pytest.fixture
def agent_server(context: DebugContext) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            status, kind, body = handle(url.path, dict(parse_qsl(url.query)), context)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_agent_option_fetches_the_report(
    agent_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["debug", "services", "default/web", "--agent", agent_server]) == 0
    assert "10.96.0.10:80/TCP (ClusterIP)" in capsys.readouterr().out
    assert main(["debug", "diff", "--agent", agent_server]) == 0
    assert "no differences" in capsys.readouterr().out
    assert (
        main(
            [
                "debug",
                "trace",
                "--src",
                "10.244.1.254",
                "--dst",
                "10.96.0.10",
                "--port",
                "80",
                "--agent",
                agent_server,
            ]
        )
        == 0
    )
    assert "[default/web:http]" in capsys.readouterr().out
    assert main(["debug", "service", "default/nope", "--agent", agent_server]) == 1
    assert capsys.readouterr().err.startswith(f"error: agent {agent_server} answered 404: service")
    assert main(["debug", "diff", "--agent", "http://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err.startswith("error: cannot reach the agent at http://127.0.0.1:9")
