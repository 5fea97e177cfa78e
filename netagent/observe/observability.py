"""What the running agent reports: /healthz, /metrics and healthCheckNodePort listeners.

Why one object: the sync loop has three moments that matter to operators —
a change was queued, a sync succeeded, a sync failed — and each of them
updates the health state machine, the Prometheus metrics and the per-service
health-check listeners together. Keeping that fan-out here keeps
:mod:`netagent.runtime.manifest_agent` a loop that only decides when to sync.

The servers come from :mod:`netagent.observe.health` and :mod:`netagent.observe.metrics`.
A port that cannot be bound is logged and the agent keeps programming
rules: a missing /metrics must never take a node's Services down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from netagent.config import AgentConfig
from netagent.model import ProxyState, ServicePortName
from netagent.observe.agent_endpoints import AgentEndpoints, DebugHandler
from netagent.observe.health import HealthServer, ProxyHealth, ServiceHealthServers
from netagent.observe.metrics import MetricsServer, ProxyMetrics
from netagent.proxy.endpoint_selection import select_endpoints
from netagent.proxy.proxier import SyncResult

log = logging.getLogger(__name__)


def health_check_ports(
    states: Sequence[ProxyState],
) -> dict[ServicePortName | str, tuple[int, int]]:
    """service port -> (healthCheckNodePort, local endpoints) for Local-policy services."""
    wanted: dict[ServicePortName | str, tuple[int, int]] = {}
    for state in states:
        for name, svc in state.services.items():
            if not svc.health_check_node_port or not svc.external_policy_local:
                continue
            selection = select_endpoints(svc, state.endpoints.get(name, ()), state.node)
            port, count = wanted.get(name, (svc.health_check_node_port, 0))
            wanted[name] = (port, count + len(selection.local))
    return wanted


class Observability:
    """Health, metrics and health-check listeners of one agent process."""

    def __init__(self, config: AgentConfig) -> None:
        self.health = ProxyHealth(sync_period=config.sync_period, node_name=config.node_name)
        self.metrics = ProxyMetrics()
        self._mode = config.proxy_mode
        self._health_server = HealthServer(self.health, config.healthz_bind_address)
        self.endpoints = AgentEndpoints(config)
        self._metrics_server = MetricsServer(
            self.metrics, config.metrics_bind_address, route=self.endpoints
        )
        self.service_health = ServiceHealthServers(proxy_healthy=self.health.is_healthy)

    def attach_debug(self, handler: DebugHandler) -> None:
        """Serve ``/debug/…`` on the metrics port through ``handler`` (loopback clients only)."""
        self.endpoints.debug = handler

    def start(self) -> None:
        """Bind the servers; a bind failure is logged, not fatal."""
        for name, server in (("healthz", self._health_server), ("metrics", self._metrics_server)):
            try:
                server.start()
            except OSError as exc:
                log.error("cannot serve %s on %s:%s: %s", name, server.host, server.port, exc)

    def stop(self) -> None:
        """Close every listener."""
        self.service_health.close()
        self._health_server.stop()
        self._metrics_server.stop()

    def queued(self) -> None:
        """A change arrived; the next sync must apply it within 2 x syncPeriod."""
        self.health.queued_update()
        self.metrics.observe_queued()

    def synced(self, results: Sequence[SyncResult], states: Sequence[ProxyState]) -> None:
        """Every family was applied."""
        counts: dict[str, int] = {}
        nft_counts: dict[str, int] = {}
        for result in results:
            self.metrics.observe_sync(result, full=result.full)
            target = nft_counts if result.mode == "nftables" else counts
            for table, count in result.rule_counts.items():
                target[table] = target.get(table, 0) + count
        if counts:
            self.metrics.set_rule_counts(counts)
        if nft_counts:
            self.metrics.set_nftables_counts(nft_counts)
        self.metrics.set_external_ips_rejected(
            len({r for state in states for r in state.rejected_external_ips})
        )
        self.health.updated()
        self.service_health.sync(health_check_ports(states))

    def failed(self) -> None:
        """A sync failed (the kernel kept its previous rules)."""
        self.metrics.sync_failed(self._mode)
