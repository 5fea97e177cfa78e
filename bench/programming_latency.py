"""Benchmark: network programming latency, from an EndpointSlice change in the API to the kernel.

What it measures (target in ../shared/PERF.md: p99 <= 1 s at 1,000 services under
10 changes/s): a lab cluster (netns-lab, one node by default, ``overlay=none``)
runs the real ``netagent run`` against the lab API server. The benchmark
creates N selector-less Services with one hand-managed EndpointSlice each
(the way a custom endpoints controller does), waits until the node has them
all, then changes one slice at a time at a fixed rate for a fixed duration:
each change gives a random Service's slice a fresh endpoint IP.

Two measurements, side by side:

* **observed in the kernel** (the headline): a poller in the node's
  namespace reads the proxy mode's programming back to back (``iptables-save
  -t nat``; ``nft list table ip netagent`` with ``--proxy-mode nftables``;
  ``ipvsadm -Ln`` with ``--proxy-mode ipvs``, which needs an IPVS kernel: the
  VM of scripts/ipvs-vm.sh) and records when each new endpoint IP first
  appears. Latency = that time - the time just before
  the API write. The poller's own period (reported) bounds the resolution.
* **the agent's own metric**: ``kubeproxy_network_programming_duration_seconds``
  from /metrics, measured from the slice's ``last-change-trigger-time``
  annotation (set by this benchmark to the write time) to the end of the
  restore. Reported as bucket-interpolated quantiles.

A change that is overwritten by the next change to the same Service before
it reached the kernel is never programmed (correctly: the agent syncs the
latest state), so it is counted as ``superseded``, not as a sample or a miss.
The agent's sync duration histogram is reported too: the latency of a change
is bounded by the wait for the next allowed sync (up to ``minSyncPeriod``)
plus one sync.

With ``--churn F``, a share F of the changes instead deletes a Service (and
its slice) and creates a new one with a fresh endpoint; the new endpoint's
appearance is the sample. This is the long-churn run of the reliability
suite (docs/reliability.md): it also reports the agent's RSS before and
after the changes and runs ``netagent debug diff`` at the end (exit 0: the
kernel holds exactly the desired state).

Everything runs inside the lab's namespaces, deleted at the end even on
failure. Run as root:

    .venv/bin/python bench/programming_latency.py --services 1000 --rate 10 --duration 60
    .venv/bin/python bench/programming_latency.py --services 10000 --rate 10 --duration 600 \
        --churn 0.2 --out bench/out/long-churn.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab.agent_process import run_netagent  # noqa: E402
from netnslab.api_http import LabApiClient  # noqa: E402
from netnslab.cluster import ClusterLab  # noqa: E402
from netnslab.netns import exec_argv  # noqa: E402

SYNC_METRIC = "kubeproxy_sync_proxy_rules_duration_seconds"
#: Each proxy mode's dump of the node's programming (as ``ClusterLab.programmed_text``).
POLL_ARGV = {
    "iptables": ["iptables-save", "-t", "nat"],
    "nftables": ["nft", "list", "table", "ip", "netagent"],
    "ipvs": ["ipvsadm", "-Ln"],
}


def rfc3339(epoch: float) -> str:
    """``2026-11-22T10:11:12.123456Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint_ip(n: int) -> str:
    """The n-th benchmark endpoint address (10.250.0.0/15: never a lab pod)."""
    return f"10.{250 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def slice_body(i: int, ip: str, trigger: float) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"bench-{i}-manual",
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": f"bench-{i}",
                "endpointslice.kubernetes.io/managed-by": "bench.netagent.example",
            },
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": rfc3339(trigger)},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "node-1"}],
    }


def create_service(api: LabApiClient, i: int, ip: str, trigger: float) -> None:
    api.create(
        "/api/v1/namespaces/default/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"bench-{i}", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
    )
    api.create(
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        slice_body(i, ip, trigger),
    )


SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"


def delete_service(api: LabApiClient, i: int) -> None:
    api.request("DELETE", f"{SLICES}/bench-{i}-manual")
    api.request("DELETE", f"/api/v1/namespaces/default/services/bench-{i}")


def create_objects(api: LabApiClient, services: int) -> None:
    for i in range(services):
        create_service(api, i, endpoint_ip(i), time.time())


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class KernelPoller(threading.Thread):
    """Reads the node's programming back to back; records first sightings of endpoints.

    ``argv`` is the proxy mode's dump (``ClusterLab.programmed_text``'s tool) and
    ``needle(ip)`` what an endpoint at port 8080 looks like in it.
    """

    def __init__(self, ns: str, argv: list[str], needle: Callable[[str], str]) -> None:
        super().__init__(daemon=True, name="kernel-poller")
        self.ns = ns
        self.argv = argv
        self.needle = needle
        self.pending: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.periods: list[float] = []

    def expect(self, ip: str, replaces: str | None = None) -> bool:
        """Watch for ``ip``; True when ``replaces`` was still pending (it never will appear)."""
        with self.lock:
            self.pending[ip] = time.time()
            return replaces is not None and self.pending.pop(replaces, None) is not None

    def run(self) -> None:
        argv = exec_argv(self.ns, self.argv)
        while not self.stopping.is_set():
            started = time.time()
            text = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
            done = time.time()
            self.periods.append(done - started)
            with self.lock:
                for ip in list(self.pending):
                    if self.needle(ip) in text:
                        # The rule was in the kernel by the time the dump finished;
                        # crediting the dump's start would be optimistic by up to one period.
                        self.seen[ip] = done
                        del self.pending[ip]


def histogram_quantile(metrics_text: str, name: str, q: float) -> float | None:
    """A quantile interpolated from a Prometheus histogram's cumulative buckets."""
    buckets: list[tuple[float, float]] = []
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    buckets.sort()
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            frac = (rank - prev_count) / span if span else 1.0
            return prev_bound + (bound - prev_bound) * frac
        prev_bound, prev_count = bound, count
    return None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="changes per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of changes")
    parser.add_argument("--min-sync-period", default="1s")
    parser.add_argument("--proxy-mode", default="iptables", choices=sorted(POLL_ARGV))
    parser.add_argument(
        "--settle", type=float, default=3.0,
        help="seconds between the initial load and the start RSS (and the changes)",
    )  # fmt: skip
    parser.add_argument(
        "--churn", type=float, default=0.0,
        help="share of changes that delete a Service and create a new one",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "out" / "programming_latency.json"
    )
    args = parser.parse_args()

    lab = ClusterLab(
        nodes=1,
        overlay="none",
        agent_args=["--min-sync-period", args.min_sync_period, "--proxy-mode", args.proxy_mode],
    )
    try:
        lab.up(pods_per_node=0, client=False)
        node = lab.node("node-1")
        started = time.monotonic()
        create_objects(lab.api, args.services)
        created = time.monotonic() - started
        last = endpoint_ip(args.services - 1)
        lab.wait_for_programmed("node-1", lab.endpoint_needle(last, 8080), timeout=3600)
        loaded = time.monotonic() - started
        print(
            f"{args.services} services created in {created:.1f}s, in the kernel after {loaded:.1f}s"
        )
        time.sleep(args.settle)  # let the initial syncs settle before the RSS baseline
        assert node.agent is not None
        rss_start = rss_mib(node.agent.pid)

        poller = KernelPoller(node.ns, POLL_ARGV[args.proxy_mode],
                              lambda ip: lab.endpoint_needle(ip, 8080))  # fmt: skip
        poller.start()
        rng = random.Random(1)
        interval = 1.0 / args.rate
        changes = int(args.duration * args.rate)
        write_times: dict[str, float] = {}
        current: dict[int, str] = {}
        last_ip: dict[int, str] = {}
        live = list(range(args.services))
        next_index = args.services
        churned = 0
        superseded: set[str] = set()
        next_at = time.monotonic()
        for n in range(changes):
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            i = rng.choice(live)
            ip = endpoint_ip(args.services + n)
            now = time.time()
            # A Service changed again before its previous change reached the kernel:
            # that earlier endpoint is never programmed (correctly), so it is not a sample.
            if poller.expect(ip, replaces=current.pop(i, None)):
                superseded.add(last_ip[i])
            write_times[ip] = now
            if rng.random() < args.churn:
                delete_service(lab.api, i)
                live.remove(i)
                i = next_index
                next_index += 1
                live.append(i)
                create_service(lab.api, i, ip, now)
                churned += 1
            else:
                lab.api.request("PUT", f"{SLICES}/bench-{i}-manual", slice_body(i, ip, now))
            current[i] = ip
            last_ip[i] = ip
        deadline = time.time() + 30
        while poller.pending and time.time() < deadline:
            time.sleep(0.1)
        poller.stopping.set()
        poller.join(timeout=30)
        latencies = [poller.seen[ip] - write_times[ip] for ip in poller.seen]
        time.sleep(3.0)
        rss_end = rss_mib(node.agent.pid)
        agent_flags = lab.agent_argv(node)[1:]
        diff = run_netagent(node.ns, lab.python, ["debug", "diff", *agent_flags], timeout=600)
        missing = len(write_times) - len(latencies) - len(superseded)
        metrics_text = lab.ns_exec(
            "node-1",
            [
                "python3",
                "-c",
                "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:10249/metrics').read().decode())",
            ],
        ).stdout
        metric = "kubeproxy_network_programming_duration_seconds"
        agent_log = node.agent.log_text() if node.agent else ""
        syncs = agent_log.count("synced IPv4")
        result = {
            "command": " ".join(sys.argv),
            "machine": {"kernel": platform.release(), "python": platform.python_version()},
            "proxy_mode": args.proxy_mode,
            "services": args.services,
            "rate_per_s": args.rate,
            "duration_s": args.duration,
            "min_sync_period": args.min_sync_period,
            "changes": len(write_times),
            "services_deleted_and_created": churned,
            "agent_rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1),
                              "growth_percent": round(100 * (rss_end / rss_start - 1), 1)},
            "debug_diff_exit": diff.returncode,
            "superseded": len(superseded),
            "missing": missing,
            "initial_load_s": round(loaded, 2),
            "kernel_observed": {
                "p50_s": round(statistics.median(latencies), 3),
                "p90_s": round(percentile(latencies, 0.90), 3),
                "p99_s": round(percentile(latencies, 0.99), 3),
                "max_s": round(max(latencies), 3),
                "poll_period_median_s": round(statistics.median(poller.periods), 3),
            },
            "agent_metric": {
                "p50_s": histogram_quantile(metrics_text, metric, 0.5),
                "p99_s": histogram_quantile(metrics_text, metric, 0.99),
            },
            "agent_syncs_total": syncs,
            "agent_sync_duration": {
                "p50_s": histogram_quantile(metrics_text, SYNC_METRIC, 0.5),
                "p99_s": histogram_quantile(metrics_text, SYNC_METRIC, 0.99),
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        if diff.returncode != 0:
            print(diff.log[-3000:], file=sys.stderr)
        return 0 if missing == 0 and diff.returncode == 0 else 1
    finally:
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
