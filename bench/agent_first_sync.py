"""Benchmark: ``netagent run --manifests DIR --once`` on a fresh node with N Services.

Why the whole agent: the first sync after a restart is what a node in a
large cluster waits for, and it includes reading and translating every
object, rendering, and the restore. Before the restore listed its tables
first (docs/performance.md), this very command at 10,000 services x 10
endpoints hit the 300 s restore timeout and programmed nothing.

The objects are bench/debug_services.py's (Nodes, Services, one
EndpointSlice each, one JSON List file). The agent runs inside a fresh
network namespace this script creates and deletes, with ``--overlay none``
and ``--iptables-backend nft``. After the run, the script counts the nat
rules and runs ``netagent debug diff`` (exit 0: the kernel holds what the
objects ask for).

    .venv/bin/python -m bench.agent_first_sync --services 10000 --endpoints 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.debug_services import objects
from bench.iptables_sync import namespace
from bench.report import emit, machine


def agent_args(directory: Path) -> list[str]:
    return [
        "--manifests",
        str(directory),
        "--node-name",
        "node-1",
        "--cluster-cidr",
        "10.244.0.0/16",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/agent_first_sync.py needs root (it creates namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, namespace("agent") as ns:
        directory = Path(tmp) / "manifests"
        directory.mkdir()
        items = objects(args.services, args.endpoints)
        (directory / "objects.json").write_text(
            json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )
        run = [
            "ip", "netns", "exec", ns, sys.executable, "-m", "netagent", "run", "--once",
            *agent_args(directory), "--overlay", "none", "--iptables-backend", "nft",
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(run, capture_output=True, text=True, timeout=3600, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        saved = subprocess.run(
            ["ip", "netns", "exec", ns, "iptables-nft-save", "-t", "nat"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        diff = subprocess.run(
            [
                "ip", "netns", "exec", ns, sys.executable, "-m", "netagent", "debug", "diff",
                *agent_args(directory),
            ],
            capture_output=True, text=True, timeout=3600, check=False,
        )  # fmt: skip
        sync_lines = [line for line in proc.stderr.splitlines() if "sync" in line.lower()]
    report = {
        "command": " ".join([".venv/bin/python", "-m", "bench.agent_first_sync", *sys.argv[1:]]),
        "machine": machine(),
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "run_once_wall_seconds": round(wall, 2),
        "nat_rules": saved.count("\n-A "),
        "debug_diff_exit": diff.returncode,
        "agent_sync_log": sync_lines[-3:],
    }
    emit(report, args.json)
    return 0 if diff.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
