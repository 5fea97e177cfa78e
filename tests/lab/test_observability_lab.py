"""The running agent's /healthz, /metrics and healthCheckNodePort listeners, on the lab node.

An externalTrafficPolicy=Local LoadBalancer Service gets a health-check port
that answers 200 while this node has a local endpoint and 503 when it has
none (so the load balancer stops sending traffic here), with kube-proxy's
JSON body. /healthz answers on the node IP, /metrics on loopback with
kube-proxy's metric names and values from the syncs that happened.
"""

from __future__ import annotations

import json
import time

import pytest
from netnslab import NODE_IP, LabEndpoint, LabService, LabServicePort, SingleNodeLab

pytestmark = pytest.mark.lab

HC_PORT = 32100
LOCAL_LB = LabService(
    name="edge",
    cluster_ip="10.96.0.90",
    type="LoadBalancer",
    external_traffic_policy="Local",
    ports=(LabServicePort(name="http", port=80, target_port=8080, node_port=30590),),
    extra_spec={"healthCheckNodePort": HC_PORT},
)

GET = (
    "import sys,urllib.request,urllib.error\n"
    "try:\n"
    "    r=urllib.request.urlopen(sys.argv[1],timeout=3); print(r.status); print(r.read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code); print(e.read().decode())\n"
)


def http_get(lab: SingleNodeLab, ns: str, url: str) -> tuple[int, str]:
    out = lab.ns_exec(ns, ["python3", "-c", GET, url]).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def wait_for_status(lab: SingleNodeLab, url: str, status: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, body = http_get(lab, "outside", url)
        except Exception as exc:  # not listening yet
            got, body = -1, str(exc)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{url}: wanted {status}, last {got} {body[:200]}"
        time.sleep(0.2)


def test_health_check_node_port_healthz_and_metrics(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    lab.write_manifests(services=[LOCAL_LB], endpoints={"edge": ["pod-a"]})
    agent = lab.start_agent()
    agent.wait_for_log(r"synced IPv4 \(full\)")

    hc_url = f"http://{NODE_IP}:{HC_PORT}/"
    body = json.loads(wait_for_status(lab, hc_url, 200))
    assert body["service"] == {"namespace": "default", "name": "edge"}
    assert body["localEndpoints"] == 1
    assert body["serviceProxyHealthy"] is True

    # The only endpoint moves to another node: this node must fail the LB's health check.
    lab.write_manifests(
        services=[LOCAL_LB], endpoints={"edge": [LabEndpoint(pod="pod-a", node_name="elsewhere")]}
    )
    body = json.loads(wait_for_status(lab, hc_url, 503))
    assert body["localEndpoints"] == 0

    healthz = json.loads(wait_for_status(lab, f"http://{NODE_IP}:10256/healthz", 200))
    assert healthz["nodeName"] == lab.node_name
    assert healthz["lastUpdated"]

    status, text = http_get(lab, "node", "http://127.0.0.1:10249/metrics")
    assert status == 200
    metrics = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert metrics["kubeproxy_sync_proxy_rules_duration_seconds_count"] >= 2
    assert metrics["kubeproxy_sync_full_proxy_rules_duration_seconds_count"] >= 1
    assert metrics["kubeproxy_sync_partial_proxy_rules_duration_seconds_count"] >= 1
    assert metrics["kubeproxy_sync_proxy_rules_last_timestamp_seconds"] > time.time() - 120
    assert metrics["kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"] > 0
    assert metrics['kubeproxy_sync_proxy_rules_iptables_total{table="nat"}'] > 5
    assert metrics["kubeproxy_sync_proxy_rules_iptables_restore_failures_total"] == 0
    assert agent.stop() == 0
