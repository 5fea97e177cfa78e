"""Benchmark: iptables render vs restore at scale, and the cost of a one-endpoint partial sync.

What it measures (see ../shared/PERF.md for targets and floors):

1. Render time of N services x K endpoints (cold: the renderer's memo cache is
   cleared before each run) versus the iptables-restore time of the *same
   payload* loaded into a fresh network namespace. Target: render <= 10% of
   restore. The restore is timed twice: as a flushing restore (the floor
   PERF.md lists) and, at smaller N, with ``--noflush`` as the agent applies
   it, because ``iptables-nft-restore --noflush`` (1.8.9) grows
   quadratically with the number of chains.
2. With N services in the kernel, one endpoint of one service changes: the
   bytes the partial sync writes (vs the full payload) and the wall time of
   that sync (render + apply through netagent's applier). Targets: <= 1% of
   the full payload, <= 1 s. The ruleset is preloaded with a flushing restore
   (into an otherwise empty namespace) and adopted by the applier, since a
   --noflush full load at 10k would take many minutes (point 1).

Everything happens inside namespaces this script creates (name carries a
per-run suffix) and deletes, even on failure. Run as root:

    .venv/bin/python bench/iptables_sync.py --services 10000 --endpoints 10 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic import build_state, with_one_endpoint_changed
from netagent.model import IPFamily
from netagent.proxy.iptables.apply import CANARY_CHAIN, IptablesApplier
from netagent.proxy.iptables.render import render_iptables
from netagent.proxy.iptables.runner import SubprocessIptables


@contextlib.contextmanager
def namespace(tag: str) -> Iterator[str]:
    """A fresh network namespace, always deleted afterwards."""
    name = f"na-bench-{tag}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def timed_restore(ns: str, payload: str, tool: str, *, noflush: bool) -> float:
    """Seconds for one whole ``iptables-restore [--noflush]`` process on ``payload``."""
    t0 = time.perf_counter()
    subprocess.run(
        ["ip", "netns", "exec", ns, tool, *(["--noflush"] if noflush else [])],
        input=payload,
        text=True,
        check=True,
    )
    return time.perf_counter() - t0


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max, rounded for the report."""
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each timing")
    parser.add_argument("--partial-runs", type=int, default=5)
    parser.add_argument("--backend", default="nft", choices=("nft", "legacy"))
    parser.add_argument(
        "--noflush-sizes",
        type=int,
        nargs="*",
        default=[500, 1000, 2000],
        help="service counts at which to time a --noflush restore of the full payload",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/iptables_sync.py needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    tool = f"iptables-{args.backend}-restore"

    state = build_state(args.services, args.endpoints)
    render_times: list[float] = []
    rendered = render_iptables(state)
    for _ in range(args.runs):
        t0 = time.perf_counter()
        rendered = render_iptables(state)
        payload = rendered.restore_text()
        render_times.append(time.perf_counter() - t0)
    rules = payload.count("\n-A ")

    restore_times: list[float] = []
    for i in range(args.runs):
        with namespace(f"r{i}") as ns:
            restore_times.append(timed_restore(ns, payload, tool, noflush=False))

    noflush: dict[str, float] = {}
    for n in args.noflush_sizes:
        small = render_iptables(build_state(n, args.endpoints)).restore_text()
        with namespace(f"n{n}") as ns:
            noflush[str(n)] = round(timed_restore(ns, small, tool, noflush=True), 3)

    partial_bytes: list[int] = []
    partial_times: list[float] = []
    with namespace("p") as ns:
        runner = SubprocessIptables(family=IPFamily.IPV4, backend=args.backend, netns=ns)
        preload = timed_restore(ns, rendered.save_text(), tool, noflush=False)
        canaries = "".join(
            f"*{t}\n:{CANARY_CHAIN} - [0:0]\nCOMMIT\n" for t in ("mangle", "filter", "nat")
        )
        canary_noflush = timed_restore(ns, canaries, tool, noflush=True)
        applier = IptablesApplier(runner)
        applier.adopt(rendered)
        for k in range(args.partial_runs):
            changed = with_one_endpoint_changed(state, service_index=1 + k * 7)
            t0 = time.perf_counter()
            result = applier.apply(render_iptables(changed), full=False)
            partial_times.append(time.perf_counter() - t0)
            partial_bytes.append(result.bytes_written)
            assert not result.full, result.reason

    render_med = statistics.median(render_times)
    restore_med = statistics.median(restore_times)
    full_bytes = len(payload.encode())
    report = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "iptables": subprocess.run(
                ["iptables", "-V"], capture_output=True, text=True, check=False
            ).stdout.strip(),
        },
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "payload_bytes": full_bytes,
        "payload_rules": rules,
        "render_seconds_cold": spread(render_times),
        "restore_seconds_flushing": spread(restore_times),
        "render_to_restore_ratio": round(render_med / restore_med, 4),
        "restore_noflush_seconds_by_services": noflush,
        "preload_seconds": round(preload, 3),
        "noflush_tiny_payload_seconds_at_full_size": round(canary_noflush, 3),
        "partial_sync_seconds": spread(partial_times),
        "partial_sync_bytes": spread([float(b) for b in partial_bytes]),
        "partial_to_full_bytes_ratio": round(statistics.median(partial_bytes) / full_bytes, 6),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
