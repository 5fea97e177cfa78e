"""netagent.observe.health: the proxy health state machine and the HTTP servers, on 127.0.0.1.

Covers: healthy at start, while a queued change is younger than 2 x
syncPeriod, unhealthy after, healthy again once applied; per-family
tracking; node eligibility affecting /healthz but not /livez; the JSON
bodies; real HTTP on port 0 (200/503, 404, HEAD, bad requests); and the
per-Service healthCheckNodePort servers: 200/503 with kube-proxy's body,
count updates, closing, port changes, and a bind failure on one Service
that leaves the others serving.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from netagent.model import NodeInfo, ServicePortName
from netagent.observe.health import HealthServer, ProxyHealth, ServiceHealthServers, split_host_port

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def get(port: int, path: str = "/", method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- state machine


def test_health_follows_queued_and_applied_updates() -> None:
    clock = Clock()
    health = ProxyHealth(sync_period=30, node_name="n1", clock=clock)
    assert health.is_healthy()  # starting up, nothing queued
    health.queued_update()
    clock.now += 59
    assert health.is_healthy()  # late, but not yet 2 x syncPeriod
    health.queued_update()  # a newer change does not reset the oldest
    clock.now += 1
    assert not health.is_healthy()
    health.updated()
    assert health.is_healthy()
    clock.now += 1000
    assert health.is_healthy()  # idle is healthy


def test_health_is_tracked_per_family() -> None:
    clock = Clock()
    health = ProxyHealth(sync_period=1, clock=clock)
    health.queued_update(family="IPv4")
    health.queued_update(family="IPv6")
    clock.now += 5
    health.updated(family="IPv4")
    assert not health.is_healthy()  # IPv6 is still stuck
    health.updated(family="IPv6")
    assert health.is_healthy()


def test_bodies_and_node_eligibility() -> None:
    clock = Clock()
    health = ProxyHealth(sync_period=30, node_name="n1", clock=clock)
    health.updated()
    clock.now += 10
    status, body = health.healthz()
    assert status == 200
    assert body == {
        "lastUpdated": "2023-11-14T22:13:30.000Z",  # healthy: the current time, as kube-proxy
        "currentTime": "2023-11-14T22:13:30.000Z",
        "nodeName": "n1",
        "nodeHealthy": True,
        "nodeEligible": True,
    }
    health.queued_update()
    clock.now += 61
    status, body = health.livez()
    assert status == 503
    assert body == {
        "lastUpdated": "2023-11-14T22:13:20.000Z",
        "currentTime": "2023-11-14T22:14:31.000Z",
    }
    health.updated()
    health.set_node_eligible(False)
    assert health.livez()[0] == 200
    status, body = health.healthz()
    assert status == 503 and body["nodeHealthy"] is False


def test_sync_node_follows_the_node_going_away_and_leaving() -> None:
    health = ProxyHealth(sync_period=30, node_name="n1", clock=lambda: 1000.0)
    health.sync_node(None)  # not registered yet: a node starting up stays eligible
    assert health.healthz()[0] == 200
    health.sync_node(NodeInfo(name="n1", taint_keys=("node.kubernetes.io/unschedulable",)))
    assert health.healthz()[0] == 200  # cordoned is not going away
    health.sync_node(NodeInfo(name="n1", taint_keys=("ToBeDeletedByClusterAutoscaler",)))
    status, body = health.healthz()
    assert status == 503 and body["nodeEligible"] is False
    assert health.livez()[0] == 200  # /livez ignores the node
    health.sync_node(NodeInfo(name="n1"))
    assert health.healthz()[0] == 200
    health.sync_node(NodeInfo(name="n1", deleting=True))
    assert health.healthz()[0] == 503
    health.sync_node(NodeInfo(name="n1"))
    health.sync_node(None)  # seen before, now gone from the API
    assert health.healthz()[0] == 503


def test_never_synced_and_stuck_is_unhealthy() -> None:
    clock = Clock()
    health = ProxyHealth(sync_period=30, clock=clock)
    health.queued_update()
    clock.now += 60
    status, body = health.livez()
    assert status == 503 and body["lastUpdated"] is None


def test_split_host_port() -> None:
    assert split_host_port("0.0.0.0:10256") == ("0.0.0.0", 10256)
    assert split_host_port("[::]:10256") == ("::", 10256)
    with pytest.raises(ValueError):
        split_host_port("localhost")


# --------------------------------------------------------------------------- HTTP


@pytest.fixture
def health_server() -> Iterator[tuple[HealthServer, Clock]]:
    clock = Clock()
    server = HealthServer(ProxyHealth(sync_period=30, node_name="n1", clock=clock), "127.0.0.1:0")
    server.start()
    try:
        yield server, clock
    finally:
        server.stop()


def test_healthz_and_livez_over_http(health_server: tuple[HealthServer, Clock]) -> None:
    server, clock = health_server
    assert server.port > 0
    status, headers, body = get(server.port, "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert json.loads(body)["nodeName"] == "n1"
    server.health.queued_update()
    clock.now += 61
    assert get(server.port, "/healthz")[0] == 503
    status, _, body = get(server.port, "/livez?verbose=1")
    assert status == 503 and set(json.loads(body)) == {"lastUpdated", "currentTime"}
    server.health.updated()
    assert get(server.port, "/livez")[0] == 200
    assert get(server.port, "/metrics")[0] == 404
    status, headers, body = get(server.port, "/healthz", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert get(server.port, "/healthz", method="POST")[0] == 405


def test_garbage_request_gets_400(health_server: tuple[HealthServer, Clock]) -> None:
    server, _ = health_server
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"hello\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")


def test_health_server_bind_failure_raises() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(ProxyHealth(), f"127.0.0.1:{port}")
        with pytest.raises(OSError):
            server.start()


# --------------------------------------------------------------------------- service health


def test_service_health_servers_answer_200_503_with_the_body() -> None:
    healthy = [True]
    servers = ServiceHealthServers(addresses=("127.0.0.1",), proxy_healthy=lambda: healthy[0])
    web_port, api_port = free_port(), free_port()
    try:
        servers.sync(
            {
                ServicePortName("prod", "web", "http"): (web_port, 2),
                ServicePortName("prod", "web", "https"): (web_port, 1),
                "prod/api": (api_port, 0),
            }
        )
        assert servers.bound_ports() == {"prod/web": [web_port], "prod/api": [api_port]}
        status, headers, body = get(web_port, "/healthz")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == {
            "service": {"namespace": "prod", "name": "web"},
            "localEndpoints": 2,
            "serviceProxyHealthy": True,
        }
        status, _, body = get(api_port, "/")
        assert status == 503 and json.loads(body)["localEndpoints"] == 0

        healthy[0] = False  # an unhealthy proxy fails every check
        status, _, body = get(web_port)
        assert status == 503 and json.loads(body)["serviceProxyHealthy"] is False
        healthy[0] = True

        # Counts update in place; a dropped Service closes its listener.
        servers.sync({"prod/api": (api_port, 3)})
        assert get(api_port)[0] == 200
        with pytest.raises(OSError):
            get(web_port)
        assert servers.bound_ports() == {"prod/api": [api_port]}

        # A port change moves the listener.
        new_port = free_port()
        servers.sync({"prod/api": (new_port, 3)})
        assert get(new_port)[0] == 200
        with pytest.raises(OSError):
            get(api_port)
    finally:
        servers.close()


def test_a_bind_failure_is_logged_per_service_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servers = ServiceHealthServers(addresses=("127.0.0.1",))
    ok_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        caplog.set_level(logging.DEBUG, logger="netagent.observe.health")
        try:
            wanted: dict[Any, tuple[int, int]] = {"prod/busy": (busy, 1), "prod/ok": (ok_port, 1)}
            servers.sync(wanted)
            servers.sync(wanted)  # the retry fails again: logged at debug, not warned again
            assert get(ok_port)[0] == 200
            assert servers.bound_ports() == {"prod/ok": [ok_port]}
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert (
                f"prod/busy: cannot listen on health check port {busy}" in warnings[0].getMessage()
            )
        finally:
            servers.close()
    # Once the port is free, the next sync opens it.
    servers2 = ServiceHealthServers(addresses=("127.0.0.1",))
    try:
        servers2.sync({"prod/busy": (busy, 1)})
        assert get(busy)[0] == 200
    finally:
        servers2.close()
