"""Benchmark: IPVS mode's Python side at scale, on the host (no IPVS kernel needed).

What it measures, for N services x K endpoints with node ports:

1. a render from scratch (``render_ipvs``), and a memoised re-render after
   one endpoint changed (``IpvsRenderer``, what every sync does);
2. the proxier's sync over the stateful fakes (FakeIpvs, FakeIpsets,
   FakeDummy, FakeIptables): the first (full) sync, then partial syncs after
   one endpoint change each, with the number of kernel calls they make.

The fakes answer at once, so (2) is the agent's own cost; the kernel's
share (netlink round trips) is measured in the VM by bench/ipvs_sync.py.

    .venv/bin/python -m bench.ipvs_render --services 10000 --endpoints 10 --runs 5
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.iptables_sync import spread
from bench.report import emit, machine
from bench.synthetic import build_state, with_one_endpoint_changed
from netagent.model import IPAddress
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.ipvs.fake import FakeDummy, FakeIpsets, FakeIpvs
from netagent.proxy.ipvs.proxier import IpvsProxier
from netagent.proxy.ipvs.render import IpvsRenderer, render_ipvs

NODE = ipaddress.ip_address("192.0.2.2")


def local() -> tuple[frozenset[IPAddress], frozenset[IPAddress]]:
    return frozenset({NODE}), frozenset({NODE})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    state = build_state(args.services, args.endpoints, node_ports=True)

    scratch = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        render_ipvs(state, node_addresses=[NODE])
        scratch.append(time.perf_counter() - t0)
    renderer = IpvsRenderer()
    renderer.render(state, node_addresses=[NODE])
    memo = []
    for k in range(args.runs):
        changed = with_one_endpoint_changed(state, 1 + 7 * k)
        t0 = time.perf_counter()
        renderer.render(changed, node_addresses=[NODE])
        memo.append(time.perf_counter() - t0)

    ipvs, sets, dummy = FakeIpvs(), FakeIpsets(), FakeDummy()
    proxier = IpvsProxier(
        ipvs=ipvs,
        ipsets=sets,
        dummy=dummy,
        iptables=FakeIptables(),
        local_addresses=local,
        conntrack=None,
    )
    t0 = time.perf_counter()
    assert proxier.sync(state).full
    full = time.perf_counter() - t0
    full_calls = len(ipvs.calls) + len(sets.calls) + len(dummy.calls)
    partial, calls = [], []
    current = state
    for k in range(args.runs):
        current = with_one_endpoint_changed(state, 1 + 7 * k)
        before = len(ipvs.calls) + len(sets.calls) + len(dummy.calls)
        t0 = time.perf_counter()
        result = proxier.sync(current)
        partial.append(time.perf_counter() - t0)
        assert not result.full
        calls.append(len(ipvs.calls) + len(sets.calls) + len(dummy.calls) - before)
    report = {
        "command": " ".join([".venv/bin/python", "-m", "bench.ipvs_render", *sys.argv[1:]]),
        "machine": machine(),
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "render_from_scratch_seconds": spread(scratch),
        "memoised_render_after_one_change_seconds": spread(memo),
        "first_sync_over_fakes_seconds": round(full, 3),
        "first_sync_kernel_calls": full_calls,
        "partial_sync_over_fakes_seconds": spread(partial),
        "partial_sync_kernel_calls_median": statistics.median(calls),
    }
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
