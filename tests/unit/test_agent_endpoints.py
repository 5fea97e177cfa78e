"""The metrics port's other pages: /proxyMode, /configz, and /debug/… for loopback clients only.

Covers: the pages through a real MetricsServer on loopback (every other path
still answers with the metrics), /configz's content, the 503 before the
debug handler is attached, the handler's answer once it is, the 403 for a
client that is not on loopback, and a failing page that must not take
/metrics down.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping

import pytest

from netagent.config import build_config
from netagent.observe.agent_endpoints import AgentEndpoints, is_loopback
from netagent.observe.metrics import MetricsServer, ProxyMetrics


@pytest.fixture
def served() -> Iterator[tuple[str, AgentEndpoints]]:
    config = build_config({"node_name": "n1", "cluster_cidrs": "10.244.0.0/16"}, env={})
    endpoints = AgentEndpoints(config)
    server = MetricsServer(ProxyMetrics(process_metrics=False), "127.0.0.1:0", route=endpoints)
    port = server.start()
    try:
        yield f"http://127.0.0.1:{port}", endpoints
    finally:
        server.stop()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_proxy_mode_configz_and_metrics(served: tuple[str, AgentEndpoints]) -> None:
    base, _ = served
    assert get(f"{base}/proxyMode")[::2] == (200, "iptables")
    status, ctype, body = get(f"{base}/configz")
    assert (status, ctype) == (200, "application/json")
    config = json.loads(body)["netagent"]
    assert config["mode"] == "iptables" and config["nodeName"] == "n1"
    assert config["clusterCIDR"] in ("10.244.0.0/16", ["10.244.0.0/16"])
    for path in ("/metrics", "/anything-else"):
        status, _, text = get(base + path)
        assert status == 200 and "kubeproxy_sync_proxy_rules_duration_seconds" in text


def test_debug_pages_need_a_handler_then_answer_through_it(
    served: tuple[str, AgentEndpoints],
) -> None:
    base, endpoints = served
    assert get(f"{base}/debug/services")[0] == 503
    seen: list[tuple[str, dict[str, str]]] = []

    def handler(path: str, query: Mapping[str, str]) -> tuple[int, str, bytes]:
        seen.append((path, dict(query)))
        return 200, "application/json", b'{"ok": true}'

    endpoints.debug = handler
    assert get(f"{base}/debug/service?name=default/web") == (200, "application/json", '{"ok": true}')
    assert seen == [("/debug/service", {"name": "default/web"})]


def test_debug_pages_refuse_clients_off_loopback() -> None:
    config = build_config({"node_name": "n1"}, env={})
    endpoints = AgentEndpoints(config, debug=lambda p, q: (200, "text/plain", b"secret"))
    status, _, body = endpoints("/debug/diff", {}, "192.0.2.7") or (0, "", b"")
    assert status == 403 and b"loopback" in body
    assert endpoints("/debug/diff", {}, "::ffff:127.0.0.1") == (200, "text/plain", b"secret")
    assert endpoints("/not-ours", {}, "127.0.0.1") is None
    assert is_loopback("127.1.2.3") and is_loopback("::1")
    assert not is_loopback("::ffff:192.0.2.7") and not is_loopback("not-an-ip")


def test_a_failing_page_answers_500_and_metrics_keep_working(
    served: tuple[str, AgentEndpoints],
) -> None:
    base, endpoints = served

    def broken(path: str, query: Mapping[str, str]) -> tuple[int, str, bytes]:
        raise RuntimeError("iptables-save: command not found")

    endpoints.debug = broken
    status, _, body = get(f"{base}/debug/diff")
    assert status == 500 and "iptables-save: command not found" in body
    assert get(f"{base}/metrics")[0] == 200
