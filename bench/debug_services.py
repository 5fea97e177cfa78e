"""Benchmark: ``netagent debug services -o json`` over 10,000 Services, wall time and peak RSS.

Why as a subprocess over manifests: what an operator waits for is the whole
command — interpreter start, reading and translating every object,
building the state, explaining every backend, dumping the JSON — so the
benchmark runs exactly that command and times it from outside. The objects
are one JSON ``List`` file (Services, their EndpointSlices, the Nodes),
the shape ``kubectl get -o json`` gives, so the number includes the same
translation an API LIST goes through. Peak RSS is the child's
``ru_maxrss`` from ``wait4``.

Usage::

    .venv/bin/python -m bench.debug_services [--services 10000] [--endpoints 3] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NODES = ("node-1", "node-2", "node-3")


def objects(services: int, endpoints: int) -> list[dict[str, Any]]:
    """Nodes, then per service a Service (some NodePort) and one EndpointSlice."""
    items: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name},
            "spec": {"podCIDR": f"10.244.{i + 1}.0/24", "podCIDRs": [f"10.244.{i + 1}.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{11 + i}"}]},
        }
        for i, name in enumerate(NODES)
    ]
    for i in range(services):
        vip = f"10.{96 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        spec: dict[str, Any] = {
            "type": "NodePort" if i % 10 == 0 else "ClusterIP",
            "clusterIP": vip,
            "clusterIPs": [vip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        }
        if i % 10 == 0:
            spec["ports"][0]["nodePort"] = 30000 + (i // 10) % 2768
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"svc-{i}", "namespace": "bench"},
                "spec": spec,
            }
        )
        eps = []
        for j in range(endpoints):
            n = i * endpoints + j
            eps.append(
                {
                    "addresses": [f"10.244.{1 + n % 3}.{(n // 3) % 250 + 2}"],
                    "conditions": {"ready": j != endpoints - 1 or i % 7 != 0},
                    "nodeName": NODES[n % 3],
                }
            )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"svc-{i}-abc",
                    "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": f"svc-{i}"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps,
            }
        )
    return items


def command(directory: Path) -> list[str]:
    """The measured command."""
    return [
        sys.executable,
        "-m",
        "netagent",
        "debug",
        "services",
        "-o",
        "json",
        "--manifests",
        str(directory),
        "--node-name",
        "node-1",
        "--cluster-cidr",
        "10.244.0.0/16",
    ]


def run_once(argv: list[str], out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one run; the JSON goes to ``out``."""
    with out.open("wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {err}")
    return wall, usage.ru_maxrss / 1024


def phases(directory: Path) -> dict[str, float]:
    """One in-process run split into its phases (seconds), to show where the time goes."""
    import ipaddress

    from netagent.config import AgentConfig
    from netagent.debug.context import DebugContext
    from netagent.debug.output import render
    from netagent.debug.services import services_report
    from netagent.runtime.node_sync import Snapshot, build_states
    from netagent.sources.manifests import load_manifests

    config = AgentConfig(node_name="node-1", cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    t0 = time.perf_counter()
    loaded = load_manifests(directory)
    t1 = time.perf_counter()
    snapshot = Snapshot(loaded.services, loaded.slices, {n.name: n for n in loaded.nodes})
    states = build_states(config, snapshot)
    t2 = time.perf_counter()
    context = DebugContext(config=config, states=states, nodes=snapshot.nodes, proxiers={})
    report = services_report(context)
    t3 = time.perf_counter()
    render(report, "json")
    t4 = time.perf_counter()
    return {
        "read and translate the manifests": t1 - t0,
        "desired state (build_states)": t2 - t1,
        "services report": t3 - t2,
        "JSON": t4 - t3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="netagent-bench-") as tmp:
        directory = Path(tmp) / "manifests"
        directory.mkdir()
        (directory / "objects.json").write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": objects(args.services, args.endpoints),
                }
            )
        )
        argv = command(directory)
        out = Path(tmp) / "report.json"
        results = [run_once(argv, out) for _ in range(args.runs)]
        report = json.loads(out.read_text())
        ports = len(report["services"])
        backends = sum(len(f["backends"]) for p in report["services"] for f in p["frontends"])
        split = phases(directory)
    walls = [w for w, _ in results]
    rss = [r for _, r in results]
    shown = ["python", *argv[1:8], "DIR", *argv[9:]]
    print("command: " + " ".join(shown))
    print(
        f"{args.services} services x {args.endpoints} endpoints: {ports} service ports, "
        f"{backends} backend rows in the report"
    )
    print(
        f"wall time: median {statistics.median(walls):.2f} s "
        f"(min {min(walls):.2f}, max {max(walls):.2f}, {args.runs} runs)"
    )
    print(f"peak RSS: median {statistics.median(rss):.0f} MiB (max {max(rss):.0f})")
    print("one in-process run, by phase:")
    for name, seconds in split.items():
        print(f"  {name:<34} {seconds:.2f} s")
    in_memory = sum(v for k, v in split.items() if not k.startswith("read"))
    print(f"  {'from in-memory objects (no read)':<34} {in_memory:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
