"""Prometheus metrics under kube-proxy's names, and the /metrics server.

Why kube-proxy's names (prefix ``kubeproxy_``): clusters already have
dashboards and alerts on them (sync latency, network programming latency,
pending changes, restore failures). An agent that replaces kube-proxy should
light those up unchanged, so the names, types and units match; the help texts
and bucket layouts are our own.

Why a dedicated :class:`prometheus_client.CollectorRegistry` per
:class:`ProxyMetrics` instead of the library's global one: metrics are
registered once per registry, so with the global registry a second agent in
the same process (every test) would fail with a duplicate-name error, and
the exposition would mix in whatever else the process registered.

The daemon calls small functions at the points kube-proxy measures:

* :meth:`ProxyMetrics.observe_queued` when a change is queued,
* :meth:`ProxyMetrics.observe_sync` after each successful sync,
* :meth:`ProxyMetrics.observe_network_programming` with the drained trigger
  times once the rules are in the kernel,
* :meth:`ProxyMetrics.restore_failed` when iptables-restore fails,
* :meth:`ProxyMetrics.set_rule_counts` with the rule count per table.
* :meth:`ProxyMetrics.set_external_ips_rejected` with the externalIPs that
  ``externalIPAllowCIDRs`` keeps out (netagent's own metric, prefix ``netagent_``).

Pending and total change counts are read at scrape time from the change
tracker (:meth:`ProxyMetrics.track_changes`), so they are never stale.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

PREFIX = "kubeproxy_"
DEFAULT_METRICS_BIND_ADDRESS = "127.0.0.1:10249"

#: Sync durations: 1 ms to ~16 s, doubling (a sync beyond that is an incident anyway).
SYNC_BUCKETS = tuple(0.001 * 2**i for i in range(15))
#: Network programming latency: sub-second to 5 minutes, the range users see.
PROGRAMMING_BUCKETS = (
    0.25, 0.5, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300,
)  # fmt: skip


class SyncTiming(Protocol):
    """What one sync reports (``netagent.proxy.proxier.SyncResult`` fits)."""

    @property
    def render_seconds(self) -> float: ...

    @property
    def apply_seconds(self) -> float: ...


class ChangeCounts(Protocol):
    """Where pending/total change counts come from (``ChangeTracker`` fits)."""

    @property
    def service_changes_pending(self) -> int: ...

    @property
    def endpoint_changes_pending(self) -> int: ...

    @property
    def service_changes_total(self) -> int: ...

    @property
    def endpoint_changes_total(self) -> int: ...


class _ChangeCollector:
    """Reads the change counts at scrape time (zero until a source is tracked)."""

    def __init__(self) -> None:
        self.source: ChangeCounts | None = None

    def collect(self) -> Iterator[Metric]:
        source = self.source
        for kind in ("endpoint", "service"):
            pending = getattr(source, f"{kind}_changes_pending", 0) if source else 0
            total = getattr(source, f"{kind}_changes_total", 0) if source else 0
            yield GaugeMetricFamily(
                f"{PREFIX}sync_proxy_rules_{kind}_changes_pending",
                f"{kind.capitalize()} changes received and not yet applied to the rules",
                value=pending,
            )
            yield CounterMetricFamily(
                f"{PREFIX}sync_proxy_rules_{kind}_changes_total",
                f"{kind.capitalize()} changes received since the agent started",
                value=total,
            )


class ProxyMetrics:
    """The proxy's metrics in their own registry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        process_metrics: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock or time.time
        reg = self.registry
        self.sync_duration = Histogram(
            f"{PREFIX}sync_proxy_rules_duration_seconds",
            "Time taken by one sync of the proxy rules (render and apply)",
            buckets=SYNC_BUCKETS,
            registry=reg,
        )
        self.full_sync_duration = Histogram(
            f"{PREFIX}sync_full_proxy_rules_duration_seconds",
            "Time taken by one full sync of the proxy rules",
            buckets=SYNC_BUCKETS,
            registry=reg,
        )
        self.partial_sync_duration = Histogram(
            f"{PREFIX}sync_partial_proxy_rules_duration_seconds",
            "Time taken by one partial sync of the proxy rules",
            buckets=SYNC_BUCKETS,
            registry=reg,
        )
        self.network_programming = Histogram(
            f"{PREFIX}network_programming_duration_seconds",
            "Time from an endpoints change (its trigger time) to the rules being in place",
            buckets=PROGRAMMING_BUCKETS,
            registry=reg,
        )
        self.last_sync = Gauge(
            f"{PREFIX}sync_proxy_rules_last_timestamp_seconds",
            "Unix time of the last successful sync of the proxy rules",
            registry=reg,
        )
        self.last_queued = Gauge(
            f"{PREFIX}sync_proxy_rules_last_queued_timestamp_seconds",
            "Unix time of the last change queued for a sync",
            registry=reg,
        )
        self.restore_failures = Counter(
            f"{PREFIX}sync_proxy_rules_iptables_restore_failures_total",
            "iptables-restore runs that failed",
            registry=reg,
        )
        self.nft_failures = Counter(
            f"{PREFIX}sync_proxy_rules_nftables_sync_failures_total",
            "nft transactions of the nftables mode that failed",
            registry=reg,
        )
        self.nft_objects = Gauge(
            f"{PREFIX}sync_proxy_rules_nftables_objects_total",
            "Chains, rules and set or map elements in netagent's nftables tables",
            ["kind"],
            registry=reg,
        )
        self.rule_count = Gauge(
            f"{PREFIX}sync_proxy_rules_iptables_total",
            "Rules the proxy has programmed, per table",
            ["table"],
            registry=reg,
        )
        self.external_ips_rejected = Gauge(
            "netagent_external_ips_rejected",
            "Service externalIPs not programmed because externalIPAllowCIDRs does not allow them",
            registry=reg,
        )
        self._changes = _ChangeCollector()
        reg.register(self._changes)
        if process_metrics:
            ProcessCollector(registry=reg)

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def observe_sync(
        self, result: SyncTiming | float, *, full: bool, now: float | None = None
    ) -> None:
        """A successful sync: its duration (render + apply, or seconds) and its time."""
        if isinstance(result, int | float):
            seconds = float(result)
        else:
            seconds = result.render_seconds + result.apply_seconds
        self.sync_duration.observe(seconds)
        (self.full_sync_duration if full else self.partial_sync_duration).observe(seconds)
        self.last_sync.set(self._now(now))

    def observe_queued(self, now: float | None = None) -> None:
        """A change was queued for the next sync."""
        self.last_queued.set(self._now(now))

    def observe_network_programming(
        self, trigger_times: Iterable[float], now: float | None = None
    ) -> None:
        """The rules for changes triggered at ``trigger_times`` (epoch seconds) are in place."""
        current = self._now(now)
        for trigger in trigger_times:
            if trigger > 0:
                self.network_programming.observe(max(0.0, current - trigger))

    def restore_failed(self) -> None:
        """An iptables-restore run failed."""
        self.restore_failures.inc()

    def sync_failed(self, mode: str) -> None:
        """A sync of ``mode`` failed: counted under that mode's failure counter."""
        if mode == "nftables":
            self.nft_failures.inc()
        else:
            self.restore_failures.inc()

    def set_nftables_counts(self, counts: Mapping[str, int]) -> None:
        """Chains, rules and elements of the nftables mode's tables."""
        for kind, count in counts.items():
            self.nft_objects.labels(kind=kind).set(count)

    def set_rule_counts(self, counts: Mapping[str, int]) -> None:
        """Rules programmed per table (``sync_proxy_rules_iptables_total{table}``)."""
        for table, count in counts.items():
            self.rule_count.labels(table=table).set(count)

    def set_external_ips_rejected(self, count: int) -> None:
        """(Service, externalIP) pairs the allow-list currently keeps out of the rules."""
        self.external_ips_rejected.set(count)

    def track_changes(self, source: ChangeCounts) -> None:
        """Report ``source``'s pending/total change counts at every scrape."""
        self._changes.source = source

    def exposition(self) -> bytes:
        """The text exposition of every metric (what /metrics serves)."""
        return generate_latest(self.registry)


#: Answers one request for a path other than /metrics: (path, query, client address) ->
#: (status, content type, body), or None when the path is not its own.
Route = Callable[[str, Mapping[str, str], str], "tuple[int, str, bytes] | None"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        log.debug("metrics server: " + format, *args)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServerV6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves /metrics, and the agent's other loopback endpoints through ``route``.

    Every path that ``route`` does not claim answers with the metrics, as
    before (Prometheus scrapers are configured with any path).
    """

    def __init__(
        self,
        metrics: ProxyMetrics,
        bind_address: str = DEFAULT_METRICS_BIND_ADDRESS,
        *,
        route: Route | None = None,
    ) -> None:
        host, sep, port = bind_address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"metrics bind address {bind_address!r} is not host:port")
        self.host = host.strip("[]") or "127.0.0.1"
        ipaddress.ip_address(self.host)  # raises ValueError for a name
        self._port = int(port)
        self.metrics = metrics
        self._route = route
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        return self._port

    def _app(self) -> Callable[..., Iterable[bytes]]:
        metrics_app = make_wsgi_app(self.metrics.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if self._route is not None and path != "/metrics":
                query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
                try:
                    answer = self._route(path, query, environ.get("REMOTE_ADDR", ""))
                except Exception as exc:  # a debug page must never take /metrics down
                    log.warning("metrics server: %s failed: %s", path, exc)
                    answer = (500, "text/plain", f"error: {exc}\n".encode())
                if answer is not None:
                    status, ctype, body = answer
                    reason = HTTPStatus(status).phrase
                    start_response(
                        f"{status} {reason}",
                        [("Content-Type", ctype), ("Content-Length", str(len(body)))],
                    )
                    return [body]
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result

        return app

    def start(self) -> int:
        """Serve in a daemon thread; returns the port. Raises OSError if it cannot bind."""
        if self._server is None:
            server_class: type[WSGIServer] = _ThreadingWSGIServer
            if ":" in self.host:
                server_class = _ThreadingWSGIServerV6
            server = make_server(
                self.host, self._port, self._app(), server_class, handler_class=_QuietHandler
            )
            thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
            thread.start()
            self._server, self._thread = server, thread
            self._port = server.server_address[1]
            log.info("serving /metrics on %s:%d", self.host, self._port)
        return self._port

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
