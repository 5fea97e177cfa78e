"""netagent.observe.metrics: kube-proxy's metric names and their values, and the /metrics server.

Covers: every kube-proxy name appears in the exposition with the right type;
observe_sync feeds the overall and the full/partial histograms and the last
sync timestamp; network programming latency from trigger times; queued
timestamp; restore failures; rule counts per table (from rendered rulesets);
change counts read from a tracker at scrape time; two instances side by side
(separate registries); and the HTTP server on 127.0.0.1 port 0.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from netagent.change_tracker import ChangeTracker
from netagent.model import IPFamily
from netagent.observe.metrics import MetricsServer, ProxyMetrics
from netagent.proxy.iptables.proxier import rule_counts
from netagent.proxy.iptables.rules import JumpRule, RenderedIptables

NAMES = {
    "kubeproxy_sync_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_full_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_network_programming_duration_seconds": "histogram",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds": "gauge",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": "gauge",
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending": "gauge",
    "kubeproxy_sync_proxy_rules_endpoint_changes": "counter",
    "kubeproxy_sync_proxy_rules_service_changes_pending": "gauge",
    "kubeproxy_sync_proxy_rules_service_changes": "counter",
    "kubeproxy_sync_proxy_rules_iptables_restore_failures": "counter",
    "kubeproxy_sync_proxy_rules_iptables_total": "gauge",
}


@dataclass(frozen=True)
class Timing:
    render_seconds: float
    apply_seconds: float


def samples(metrics: ProxyMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: ProxyMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[name, tuple(sorted(labels.items()))]


def test_every_kube_proxy_name_is_exposed_with_its_type() -> None:
    metrics = ProxyMetrics(process_metrics=False)
    metrics.set_rule_counts({"nat": 1})
    families = {
        f.name: f.type for f in text_string_to_metric_families(metrics.exposition().decode())
    }
    for name, kind in NAMES.items():
        assert families.get(name) == kind, name
    text = metrics.exposition().decode()
    assert "kubeproxy_sync_proxy_rules_endpoint_changes_total 0.0" in text
    assert "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 0.0" in text


def test_observe_sync_splits_full_and_partial() -> None:
    metrics = ProxyMetrics(process_metrics=False)
    metrics.observe_sync(Timing(0.010, 0.020), full=True, now=1000.0)
    metrics.observe_sync(0.5, full=False, now=1005.0)
    assert value(metrics, "kubeproxy_sync_proxy_rules_duration_seconds_count") == 2
    assert abs(value(metrics, "kubeproxy_sync_proxy_rules_duration_seconds_sum") - 0.53) < 1e-9
    assert value(metrics, "kubeproxy_sync_full_proxy_rules_duration_seconds_count") == 1
    assert value(metrics, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count") == 1
    assert (
        value(metrics, "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket", le="0.032") == 1
    )
    assert value(metrics, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") == 1005.0


def test_network_programming_queued_and_failures() -> None:
    metrics = ProxyMetrics(process_metrics=False, clock=lambda: 2000.0)
    metrics.observe_network_programming([1998.0, 1700.0, 0.0])  # 0: no trigger time
    assert value(metrics, "kubeproxy_network_programming_duration_seconds_count") == 2
    assert value(metrics, "kubeproxy_network_programming_duration_seconds_sum") == 302.0
    assert value(metrics, "kubeproxy_network_programming_duration_seconds_bucket", le="2.0") == 1
    assert value(metrics, "kubeproxy_network_programming_duration_seconds_bucket", le="240.0") == 1
    assert value(metrics, "kubeproxy_network_programming_duration_seconds_bucket", le="300.0") == 2
    metrics.observe_queued()
    assert value(metrics, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds") == 2000.0
    metrics.restore_failed()
    metrics.restore_failed()
    assert value(metrics, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total") == 2


def test_rule_counts_from_rendered_rulesets() -> None:
    v4 = RenderedIptables(
        family=IPFamily.IPV4,
        tables={
            "nat": {"NETAGENT-SERVICES": ("-A NETAGENT-SERVICES -j RETURN",), "NETAGENT-X": ()},
            "filter": {"NETAGENT-FW": ("-A NETAGENT-FW -j DROP", "-A NETAGENT-FW -j ACCEPT")},
        },
        jumps=(JumpRule("nat", "PREROUTING", "-j NETAGENT-SERVICES"),),
    )
    v6 = RenderedIptables(family=IPFamily.IPV6, tables={"nat": {"NETAGENT-S": ("-A x",)}})
    assert rule_counts(v4) == {"nat": 2, "filter": 2}
    assert rule_counts(v6) == {"nat": 1}
    # Observability sums each family's SyncResult.rule_counts the same way.
    counts = {t: rule_counts(v4).get(t, 0) + rule_counts(v6).get(t, 0) for t in ("nat", "filter")}
    assert counts == {"nat": 3, "filter": 2}
    metrics = ProxyMetrics(process_metrics=False)
    metrics.set_rule_counts(counts)
    assert value(metrics, "kubeproxy_sync_proxy_rules_iptables_total", table="nat") == 3
    assert value(metrics, "kubeproxy_sync_proxy_rules_iptables_total", table="filter") == 2


def test_change_counts_are_read_from_the_tracker_at_scrape_time() -> None:
    tracker = ChangeTracker()
    metrics = ProxyMetrics(process_metrics=False)
    metrics.track_changes(tracker)
    tracker.on_change("Node", "n1", None, None)  # no-op: counts nothing
    assert value(metrics, "kubeproxy_sync_proxy_rules_service_changes_pending") == 0

    class Counts:
        service_changes_pending = 3
        endpoint_changes_pending = 4
        service_changes_total = 30
        endpoint_changes_total = 40

    metrics.track_changes(Counts())
    assert value(metrics, "kubeproxy_sync_proxy_rules_service_changes_pending") == 3
    assert value(metrics, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 4
    assert value(metrics, "kubeproxy_sync_proxy_rules_service_changes_total") == 30
    assert value(metrics, "kubeproxy_sync_proxy_rules_endpoint_changes_total") == 40


def test_instances_have_separate_registries() -> None:
    a, b = ProxyMetrics(), ProxyMetrics()
    a.restore_failed()
    assert value(a, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total") == 1
    assert value(b, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total") == 0
    assert b"process_cpu_seconds_total" in a.exposition()  # process metrics by default


def test_metrics_server_serves_the_exposition() -> None:
    metrics = ProxyMetrics(process_metrics=False)
    metrics.restore_failed()
    server = MetricsServer(metrics, "127.0.0.1:0")
    port = server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        conn.close()
        assert response.status == 200
        assert "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1.0" in body
    finally:
        server.stop()
