"""Health endpoints: the proxy's /healthz and /livez, and per-Service health-check node ports.

Why: load balancers and kubelet decide from these answers whether to send
traffic to the node and whether to restart the agent, so they must mean
exactly what kube-proxy's mean.

* **/healthz and /livez** (default ``0.0.0.0:10256``). The proxy is healthy
  unless a change was queued (:meth:`ProxyHealth.queued_update`) and not
  applied (:meth:`ProxyHealth.updated`) within ``2 x syncPeriod``: a sync loop
  that is stuck or failing over and over turns the node unhealthy, an idle
  one does not. ``/healthz`` is also 503 while the node is being removed
  (:meth:`ProxyHealth.sync_node`: a deletionTimestamp, the cluster
  autoscaler's ToBeDeletedByClusterAutoscaler taint, or the Node gone from
  the API), so load balancers drain it;
  ``/livez`` ignores the node, so kubelet does not restart a healthy agent on
  a node that is going away. Health is tracked per address family; one
  family stuck makes the whole proxy unhealthy. The JSON body carries
  ``lastUpdated`` (the current time while healthy, as kube-proxy reports it
  for compatibility; the last successful update otherwise), ``currentTime``,
  and on /healthz ``nodeName``, ``nodeHealthy`` and its newer name
  ``nodeEligible``.

  One difference from kube-proxy, on purpose: kube-proxy ignores a family
  that has never completed a sync, so an agent that cannot program anything
  from the start stays "healthy" forever. Here a queued change that is not
  applied within the timeout is unhealthy whether or not a sync ever
  succeeded.

* **healthCheckNodePort servers** (:class:`ServiceHealthServers`), one per
  ``externalTrafficPolicy: Local`` LoadBalancer Service, answer 200 when the
  node has a local endpoint for the Service and the proxy is healthy, else
  503, with ``{"service": {"namespace", "name"}, "localEndpoints": N,
  "serviceProxyHealthy": bool}``. A port that cannot be bound (taken by
  something else) is logged for that Service and retried on the next sync;
  the other Services are not affected.

How: the standard library only. All listeners of one object share a single
background thread running its own asyncio loop, so a thousand Local
Services cost a thousand sockets, not a thousand threads, and the servers keep
answering while the agent's own loop is busy in a sync. Every public method
is thread-safe; :meth:`ServiceHealthServers.sync` blocks briefly (binding
sockets) and is meant to be called from the sync, which runs in a worker
thread.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from netagent.model import NodeInfo, ServicePortName

log = logging.getLogger(__name__)

DEFAULT_HEALTHZ_BIND_ADDRESS = "0.0.0.0:10256"

#: ``(method, path) -> (HTTP status, JSON body)``; called on the listener thread.
Responder = Callable[[str, str], tuple[int, Mapping[str, Any]]]

_REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request head
_MAX_REQUEST_HEAD = 8192
_CALL_TIMEOUT = 10.0  # seconds a blocking call into the listener loop may take


def _rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    when = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def split_host_port(address: str) -> tuple[str, int]:
    """``"0.0.0.0:10256"`` or ``"[::]:10256"`` -> (host, port); raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


class _HttpHost:
    """Serves tiny JSON-over-HTTP/1.1 endpoints from one background asyncio loop thread."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._closed = False
        self._servers: set[asyncio.Server] = set()  # touched on the loop thread only

    def listen(self, host: str, port: int, responder: Responder) -> asyncio.Server:
        """Bind and serve; raises OSError when the address cannot be bound."""
        if self._closed:
            raise RuntimeError("listener host is shut down")
        future = asyncio.run_coroutine_threadsafe(self._listen(host, port, responder), self._loop)
        return future.result(_CALL_TIMEOUT)

    async def _listen(self, host: str, port: int, responder: Responder) -> asyncio.Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(reader, writer, responder)

        server = await asyncio.start_server(
            serve, host, port, reuse_address=True, limit=_MAX_REQUEST_HEAD
        )
        self._servers.add(server)
        return server

    def _close_now(self, server: asyncio.Server) -> None:
        self._servers.discard(server)
        server.close()

    def close(self, server: asyncio.Server) -> None:
        """Stop accepting on ``server`` (requests in flight finish on their own)."""
        if self._closed:
            return
        self._loop.call_soon_threadsafe(self._close_now, server)

    def shutdown(self) -> None:
        """Close every listener and stop the thread."""
        if self._closed:
            return
        self._closed = True

        async def stop() -> None:
            for server in list(self._servers):
                self._close_now(server)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(_CALL_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CALL_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()

    @staticmethod
    async def _serve(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, responder: Responder
    ) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method = parts[0] if parts else ""
            status: int
            body: Mapping[str, Any]
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, body = 400, {"error": "bad request"}
            elif method not in ("GET", "HEAD"):
                status, body = 405, {"error": f"method {method} not allowed"}
            else:
                try:
                    status, body = responder(method, parts[1].split("?", 1)[0])
                except Exception:
                    log.exception("health responder failed")
                    status, body = 500, {"error": "internal error"}
            payload = json.dumps(body).encode()
            head_out = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
                "Content-Type: application/json\r\n"
                "X-Content-Type-Options: nosniff\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head_out if method == "HEAD" else head_out + payload)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to tell it
        finally:
            writer.close()


# --------------------------------------------------------------------------- proxy health


class ProxyHealth:
    """The /healthz and /livez state machine (thread-safe; wall-clock epoch seconds).

    ``now`` arguments default to ``clock()``; tests pass a fake clock or
    explicit times.
    """

    def __init__(
        self,
        *,
        sync_period: float = 30.0,
        node_name: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.health_timeout = 2 * sync_period
        self.node_name = node_name
        self._clock = clock
        self._lock = threading.Lock()
        self._last_updated: dict[str, float] = {}
        self._oldest_queued: dict[str, float] = {}
        self._node_eligible = True  # until told otherwise (the node is starting up)
        self._node_seen = False

    def queued_update(self, now: float | None = None, family: str = "") -> None:
        """A change arrived that the next sync of ``family`` must apply."""
        when = self._clock() if now is None else now
        with self._lock:
            self._oldest_queued.setdefault(family, when)

    def updated(self, now: float | None = None, family: str = "") -> None:
        """A sync of ``family`` succeeded: everything queued so far is applied."""
        when = self._clock() if now is None else now
        with self._lock:
            self._oldest_queued.pop(family, None)
            self._last_updated[family] = when

    def set_node_eligible(self, eligible: bool) -> None:
        """False while the node is being deleted (tainted or with a deletionTimestamp)."""
        with self._lock:
            self._node_eligible = eligible

    def sync_node(self, node: NodeInfo | None) -> None:
        """Follow this node's Node object (None: not in the API).

        Not eligible while it is going away (deletionTimestamp, or the cluster
        autoscaler's ToBeDeletedByClusterAutoscaler taint) and once it has left
        the API; a Node not seen yet counts as a node starting up (eligible).
        """
        with self._lock:
            if node is not None:
                self._node_seen = True
                self._node_eligible = not node.going_away
            elif self._node_seen:
                self._node_eligible = False

    def _state(self, now: float) -> tuple[bool, float | None]:
        with self._lock:
            last = max(self._last_updated.values(), default=None)
            late = [
                family
                for family, queued in self._oldest_queued.items()
                if now - queued >= self.health_timeout
            ]
        if late:
            return False, self._last_updated.get(late[0])
        return True, last

    def is_healthy(self, now: float | None = None) -> bool:
        """The proxy's own health, ignoring the node (what /livez reports)."""
        return self._state(self._clock() if now is None else now)[0]

    def livez(self, now: float | None = None) -> tuple[int, dict[str, Any]]:
        """Status and body of /livez."""
        current = self._clock() if now is None else now
        healthy, last = self._state(current)
        body = {
            "lastUpdated": _rfc3339(current if healthy else last),
            "currentTime": _rfc3339(current),
        }
        return (200 if healthy else 503), body

    def healthz(self, now: float | None = None) -> tuple[int, dict[str, Any]]:
        """Status and body of /healthz: /livez's, and 503 too while the node is going away."""
        current = self._clock() if now is None else now
        healthy, last = self._state(current)
        with self._lock:
            eligible = self._node_eligible
        ok = healthy and eligible
        body = {
            "lastUpdated": _rfc3339(current if ok else last),
            "currentTime": _rfc3339(current),
            "nodeName": self.node_name,
            "nodeHealthy": eligible,
            "nodeEligible": eligible,
        }
        return (200 if ok else 503), body


class HealthServer:
    """Serves a :class:`ProxyHealth` on ``/healthz`` and ``/livez``."""

    def __init__(
        self, health: ProxyHealth, bind_address: str = DEFAULT_HEALTHZ_BIND_ADDRESS
    ) -> None:
        self.health = health
        self.host, self._port = split_host_port(bind_address)
        self._http: _HttpHost | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        return self._port

    def _respond(self, method: str, path: str) -> tuple[int, Mapping[str, Any]]:
        del method
        if path == "/healthz":
            return self.health.healthz()
        if path == "/livez":
            return self.health.livez()
        return 404, {"error": f"{path} not found; try /healthz or /livez"}

    def start(self) -> int:
        """Bind and serve in the background; returns the port. Raises OSError if it cannot bind."""
        if self._http is not None:
            return self._port
        http = _HttpHost("healthz")
        try:
            server = http.listen(self.host, self._port, self._respond)
        except BaseException:
            http.shutdown()
            raise
        self._http = http
        self._port = server.sockets[0].getsockname()[1]
        log.info("serving /healthz and /livez on %s:%d", self.host, self._port)
        return self._port

    def stop(self) -> None:
        """Stop serving."""
        if self._http is not None:
            self._http.shutdown()
            self._http = None


# --------------------------------------------------------------------------- service health


@dataclass
class _ServiceListener:
    namespace: str
    name: str
    port: int
    servers: list[asyncio.Server] = field(default_factory=list)
    local_endpoints: int = 0

    @property
    def bound_ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.servers if s.sockets]


def _service_of(key: ServicePortName | str) -> tuple[str, str]:
    if isinstance(key, ServicePortName):
        return key.namespace, key.name
    namespace, sep, name = key.partition("/")
    if not sep or not namespace or not name:
        raise ValueError(f"service key {key!r} is not namespace/name")
    return namespace, name.split(":", 1)[0]


class ServiceHealthServers:
    """healthCheckNodePort listeners for externalTrafficPolicy=Local Services.

    ``addresses`` are the local IPs to listen on (kube-proxy listens on every
    address, or on the nodePortAddresses); ``proxy_healthy`` reports the
    proxy's own health (usually ``ProxyHealth.is_healthy``).
    """

    def __init__(
        self,
        *,
        addresses: Sequence[str] = ("0.0.0.0",),
        proxy_healthy: Callable[[], bool] = lambda: True,
    ) -> None:
        if not addresses:
            raise ValueError("ServiceHealthServers needs at least one address")
        self.addresses = tuple(addresses)
        self._proxy_healthy = proxy_healthy
        self._lock = threading.Lock()
        self._services: dict[tuple[str, str], _ServiceListener] = {}
        self._failures: dict[tuple[str, str], str] = {}  # last bind error logged per service
        self._http: _HttpHost | None = None

    def sync(self, wanted: Mapping[ServicePortName | str, tuple[int, int]]) -> None:
        """Make the listeners match ``wanted``: service port -> (health port, local endpoints).

        All ports of one Service share its health port; its local endpoint
        count is the largest of its ports'. Listeners of Services no longer
        wanted, or whose port changed, are closed; new ones are opened.
        """
        desired: dict[tuple[str, str], tuple[int, int]] = {}
        for key, (port, count) in sorted(wanted.items(), key=lambda kv: str(kv[0])):
            service = _service_of(key)
            if service in desired and desired[service][0] != port:
                log.warning(
                    "service %s/%s: ports disagree on the health check port (%d, %d); using %d",
                    *service,
                    desired[service][0],
                    port,
                    desired[service][0],
                )
            previous = desired.get(service)
            desired[service] = (
                previous[0] if previous else port,
                max(count, previous[1] if previous else 0),
            )

        with self._lock:
            stale = [
                listener
                for service, listener in self._services.items()
                if service not in desired or desired[service][0] != listener.port
            ]
            for listener in stale:
                del self._services[listener.namespace, listener.name]
            for service, (_, count) in desired.items():
                if service in self._services:
                    self._services[service].local_endpoints = count
            to_open = [(s, p, c) for s, (p, c) in desired.items() if s not in self._services]
        for listener in stale:
            log.info(
                "closing health check for %s/%s on port %d",
                listener.namespace,
                listener.name,
                listener.port,
            )
            self._close_listener(listener)
        for service in list(self._failures):
            if service not in desired:
                del self._failures[service]
        for service, port, count in to_open:
            listener = _ServiceListener(service[0], service[1], port, local_endpoints=count)
            if self._open(listener):
                with self._lock:
                    self._services[service] = listener

    def _open(self, listener: _ServiceListener) -> bool:
        service = (listener.namespace, listener.name)
        if self._http is None:
            self._http = _HttpHost("service-health")
        responder = self._responder(service)
        try:
            for address in self.addresses:
                listener.servers.append(self._http.listen(address, listener.port, responder))
        except OSError as exc:
            self._close_listener(listener)
            message = f"{exc.strerror or exc}"
            level = logging.DEBUG if self._failures.get(service) == message else logging.WARNING
            self._failures[service] = message
            log.log(
                level,
                "service %s/%s: cannot listen on health check port %d: %s",
                listener.namespace,
                listener.name,
                listener.port,
                message,
            )
            return False
        self._failures.pop(service, None)
        log.info(
            "serving health check for %s/%s on port %d",
            listener.namespace,
            listener.name,
            listener.port,
        )
        return True

    def _close_listener(self, listener: _ServiceListener) -> None:
        if self._http is not None:
            for server in listener.servers:
                self._http.close(server)
        listener.servers.clear()

    def _responder(self, service: tuple[str, str]) -> Responder:
        namespace, name = service

        def respond(method: str, path: str) -> tuple[int, Mapping[str, Any]]:
            del method, path  # every path answers, as load balancers probe various ones
            with self._lock:
                listener = self._services.get(service)
                count = listener.local_endpoints if listener is not None else 0
            healthy = bool(self._proxy_healthy())
            body = {
                "service": {"namespace": namespace, "name": name},
                "localEndpoints": count,
                "serviceProxyHealthy": healthy,
            }
            return (200 if count > 0 and healthy else 503), body

        return respond

    def bound_ports(self) -> dict[str, list[int]]:
        """``namespace/name`` -> the ports actually listening (for tests and debug dumps)."""
        with self._lock:
            return {f"{ns}/{name}": li.bound_ports for (ns, name), li in self._services.items()}

    def close(self) -> None:
        """Close every listener and stop the thread."""
        with self._lock:
            self._services.clear()
        if self._http is not None:
            self._http.shutdown()
            self._http = None
