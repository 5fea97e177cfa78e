"""Benchmark: netagent's IPVS mode -- full sync vs N, one-endpoint partial sync, first packet.

What it measures, all in one process and one kernel (meant for the qemu VM,
``netns-lab/netnslab/vm.py``: the host kernel has no IPVS; under TCG every
absolute time is ~30x slower than native, so compare ratios within one run):

1. Full sync of N services x K endpoints (``bench.synthetic``) through the
   real :class:`IpvsProxier` (pyroute2 IPVS, ipset and rtnetlink sockets,
   ``iptables-nft-restore``) into a fresh namespace: render and apply time,
   and the kernel calls made, counted by wrapping the kernel objects'
   methods (one call is one netlink request; a dump is one request with a
   multi-part answer). Linearity: time and calls per service across N.
2. At the largest N, one-endpoint partial syncs (change one endpoint of one
   service; change it back; change another service): time and calls. Target:
   O(1) calls, and a small fraction of the full sync of the same run.
3. Optionally (``--first-packet``) TCP connect() latency to a ClusterIP at 0
   services and at the largest N, with bench/first_packet.py's harness
   (client / node / server namespaces); the IPVS ruleset is programmed by
   the proxier in the node namespace.

Every measurement runs in the node namespace of a fresh
:func:`bench.first_packet.topology` (deleted afterwards, even on failure);
its state is the synthetic state plus the first-packet target service, so
"N services" is N + 1 virtual servers. ``--budget`` bounds the run: a size
whose projected full sync (linear from the previous size) does not fit what
is left is skipped and reported as skipped.

Run as root inside the VM, e.g.::

    PYTHONPATH=netns-lab .venv/bin/python -m netnslab.vm run --cwd $PWD --timeout 900 -- \\
        $PWD/.venv/bin/python bench/ipvs_sync.py --services 1000 5000 10000 \\
        --first-packet --json .vm-out/ipvs-sync.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ipaddress
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import first_packet as fp  # noqa: E402
from bench.synthetic import with_one_endpoint_changed  # noqa: E402
from netagent.model import IPFamily  # noqa: E402

IPVS_METHODS = (
    "services",
    "add_service",
    "update_service",
    "delete_service",
    "dests",
    "add_dest",
    "update_dest",
    "delete_dest",
)
IPSET_METHODS = ("list_sets", "members", "create", "add", "delete", "destroy", "swap", "flush")
DUMMY_METHODS = ("exists", "ensure", "addresses", "add_address", "delete_address", "delete")
IPTABLES_METHODS = ("restore", "save", "chain_exists")


class CallCounter:
    """Counts calls of chosen methods of several objects (wrapping the instances' attributes)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def wrap(self, prefix: str, obj: Any, methods: tuple[str, ...]) -> None:
        for name in methods:
            original = getattr(obj, name)

            def counted(*args: Any, _orig: Any = original, _key: str = f"{prefix}.{name}") -> Any:
                self.counts[_key] += 1
                return _orig(*args)

            setattr(obj, name, counted)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def since(self, before: dict[str, int]) -> dict[str, int]:
        now = self.snapshot()
        return {k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0)}


def netlink_total(calls: dict[str, int]) -> int:
    """Netlink requests: every IPVS, ipset and dummy-device call (not iptables-restore)."""
    return sum(v for k, v in calls.items() if not k.startswith("iptables."))


@contextlib.contextmanager
def proxier_in(ns: str, counter: CallCounter) -> Iterator[Any]:
    """An IpvsProxier programming namespace ``ns``; its sockets closed afterwards."""
    from netagent.proxy.iptables.runner import SubprocessIptables
    from netagent.proxy.ipvs.dummy import PyrouteDummy
    from netagent.proxy.ipvs.ipsets import PyrouteIpset
    from netagent.proxy.ipvs.netlink import PyrouteIpvs
    from netagent.proxy.ipvs.proxier import IpvsProxier

    for key, value in (
        ("net.ipv4.vs.conntrack", "1"),
        ("net.ipv4.vs.expire_nodest_conn", "1"),
        ("net.ipv4.vs.expire_quiescent_template", "1"),
    ):
        subprocess.run(fp._in_ns(ns, "sysctl", "-qw", f"{key}={value}"), check=False)
    ipvs = PyrouteIpvs(netns=ns)
    ipsets = PyrouteIpset(netns=ns)
    dummy = PyrouteDummy(ns)
    iptables = SubprocessIptables(family=IPFamily.IPV4, backend="nft", netns=ns)
    counter.wrap("ipvs", ipvs, IPVS_METHODS)
    counter.wrap("ipset", ipsets, IPSET_METHODS)
    counter.wrap("dummy", dummy, DUMMY_METHODS)
    counter.wrap("iptables", iptables, IPTABLES_METHODS)
    node = frozenset({ipaddress.ip_address(fp.CLIENT_GW), ipaddress.ip_address(fp.SERVER_GW)})
    try:
        yield IpvsProxier(
            ipvs=ipvs,
            ipsets=ipsets,
            dummy=dummy,
            iptables=iptables,
            local_addresses=lambda: (node, node),
            conntrack=None,
        )
    finally:
        for sock in (ipvs, ipsets, dummy):
            with contextlib.suppress(Exception):
                sock.close()


def timed_sync(proxier: Any, counter: CallCounter, state: Any, *, full: bool) -> dict[str, Any]:
    before = counter.snapshot()
    t0 = time.perf_counter()
    result = proxier.sync(state, full=full)
    wall = time.perf_counter() - t0
    calls = counter.since(before)
    return {
        "full": result.full,
        "wall_seconds": round(wall, 4),
        "render_seconds": round(result.render_seconds, 4),
        "apply_seconds": round(result.apply_seconds, 4),
        "objects_written": result.objects_written,
        "objects_deleted": result.objects_deleted,
        "bytes_written": result.bytes_written,
        "netlink_calls": netlink_total(calls),
        "iptables_restores": calls.get("iptables.restore", 0),
        "calls": calls,
    }


def first_packet(topo: fp.Topology, services: int, count: int, warmup: int) -> dict[str, Any]:
    idle = fp.settle(limit_seconds=20.0)
    samples = sorted(fp.run_client(topo.client, count, warmup))
    return {
        "services": services,
        "count": len(samples),
        "p50_us": round(fp._percentile(samples, 0.50), 1),
        "p99_us": round(fp._percentile(samples, 0.99), 1),
        "mean_us": round(statistics.fmean(samples), 1),
        "min_us": round(samples[0], 1),
        "max_us": round(samples[-1], 1),
        "idle_before": idle,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.monotonic()
    deadline = start + args.budget
    sizes = sorted(args.services)
    out: dict[str, Any] = {
        "machine": {
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "in_vm": os.environ.get("NETAGENT_IN_VM") == "1" or Path("/run/netagent-vm").exists(),
            "loadavg_start": os.getloadavg(),
        },
        "endpoints": args.endpoints,
        "full": [],
        "skipped": [],
        "partial": [],
        "first_packet": [],
    }

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    if args.first_packet:
        with (
            fp.topology() as topo,
            fp.server(topo.server),
            proxier_in(topo.node, CallCounter()) as px,
        ):
            px.sync(fp.target_state(0, args.endpoints), full=True)
            out["first_packet"].append(first_packet(topo, 0, args.count, args.warmup))
            log(f"first packet at 0 services: {out['first_packet'][-1]}")

    largest_done = None
    for i, n in enumerate(sizes):
        state = fp.target_state(n, args.endpoints)
        counter = CallCounter()
        with contextlib.ExitStack() as stack:
            topo = stack.enter_context(fp.topology())
            px = stack.enter_context(proxier_in(topo.node, counter))
            full = timed_sync(px, counter, state, full=True)
            full["services"] = n
            out["full"].append(full)
            log(f"full N={n}: {full['wall_seconds']:.2f}s, {full['netlink_calls']} netlink calls")
            # Does the next size fit (linear projection, plus its teardown and the rest)?
            per_service = full["wall_seconds"] / max(1, n)
            remaining = deadline - time.monotonic()
            if i + 1 < len(sizes):
                nxt = sizes[i + 1]
                projected = per_service * nxt
                if projected * args.margin + args.reserve < remaining:
                    continue
                for m in sizes[i + 1 :]:
                    out["skipped"].append(
                        {
                            "services": m,
                            "projected_seconds": round(per_service * m, 1),
                            "remaining_seconds": round(remaining, 1),
                        }
                    )
                    log(f"skip N={m}: projected {per_service * m:.0f}s, {remaining:.0f}s left")
            largest_done = n
            # Partial syncs at the largest N: change, change back, change another service.
            steps = [
                (f"change svc-{n // 2} endpoint", with_one_endpoint_changed(state, n // 2)),
                (f"revert svc-{n // 2} endpoint", state),
                (f"change svc-{n // 3} endpoint", with_one_endpoint_changed(state, n // 3)),
            ]
            for label, st in steps:
                p = timed_sync(px, counter, st, full=False)
                p["services"] = n
                p["step"] = label
                out["partial"].append(p)
                log(f"partial N={n} {label}: {p['wall_seconds']:.3f}s, {p['netlink_calls']} calls")
            if args.first_packet:
                px.sync(state, full=False)  # back to the plain state
                stack.enter_context(fp.server(topo.server))
                out["first_packet"].append(first_packet(topo, n, args.count, args.warmup))
                log(f"first packet at {n} services: {out['first_packet'][-1]}")
            break
    out["largest_services"] = largest_done
    out["elapsed_seconds"] = round(time.monotonic() - start, 1)
    out["machine"]["loadavg_end"] = os.getloadavg()
    out["summary"] = summarize(out)
    return out


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    full = out["full"]
    if full:
        s["full_seconds_per_1k_services"] = {
            str(f["services"]): round(f["wall_seconds"] / f["services"] * 1000, 3) for f in full
        }
        s["full_calls_per_service"] = {
            str(f["services"]): round(f["netlink_calls"] / f["services"], 2) for f in full
        }
    if out["partial"]:
        big = next(f for f in full if f["services"] == out["largest_services"])
        walls = [p["wall_seconds"] for p in out["partial"]]
        s["partial_wall_median_seconds"] = round(statistics.median(walls), 4)
        s["partial_over_full_wall"] = round(statistics.median(walls) / big["wall_seconds"], 5)
        s["partial_netlink_calls"] = [p["netlink_calls"] for p in out["partial"]]
        s["full_netlink_calls_same_n"] = big["netlink_calls"]
    if len(out["first_packet"]) == 2:
        a, b = out["first_packet"]
        s["first_packet_p50_ratio"] = round(b["p50_us"] / a["p50_us"], 3)
        s["first_packet_p99_ratio"] = round(b["p99_us"] / a["p99_us"], 3)
    return s


def table(out: dict[str, Any]) -> str:
    lines = ["phase        N   wall s  render s  apply s  netlink  restores  objs"]
    for f in out["full"]:
        lines.append(
            f"full    {f['services']:>6} {f['wall_seconds']:8.3f} {f['render_seconds']:9.3f}"
            f" {f['apply_seconds']:8.3f} {f['netlink_calls']:8d} {f['iptables_restores']:9d}"
            f" {f['objects_written']:5d}"
        )
    for p in out["partial"]:
        lines.append(
            f"partial {p['services']:>6} {p['wall_seconds']:8.3f} {p['render_seconds']:9.3f}"
            f" {p['apply_seconds']:8.3f} {p['netlink_calls']:8d} {p['iptables_restores']:9d}"
            f" {p['objects_written']:5d}  {p['step']}"
        )
    for s in out["skipped"]:
        lines.append(f"skipped {s['services']:>6} (projected {s['projected_seconds']} s)")
    for r in out["first_packet"]:
        lines.append(
            f"first-packet N={r['services']}: p50 {r['p50_us']} us p99 {r['p99_us']} us"
            f" (n={r['count']}, idle {r['idle_before']:.0%})"
        )
    for k, v in out["summary"].items():
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--budget", type=float, default=600.0, help="seconds for the whole run")
    ap.add_argument(
        "--reserve",
        type=float,
        default=90.0,
        help="seconds kept for the partial syncs and first packet",
    )
    ap.add_argument(
        "--margin", type=float, default=1.5, help="factor on the linear projection of a size"
    )
    ap.add_argument("--first-packet", action="store_true")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out = run(args)
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
