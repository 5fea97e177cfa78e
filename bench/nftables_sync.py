"""Benchmark: netagent's map-based nftables mode against the kube-proxy nftables shape.

What it measures (targets in ../shared/PERF.md: a full sync at 10k x 10 <= 6 s
and >= 25x faster than the kube-proxy-shaped ruleset measured in the same run;
a one-endpoint change at 10k services <= 50 ms with no full-table listing;
first-packet p50 at 10k services <= 1.2x that at 0; agent RSS <= 250 MiB at
10k x 10):

a. **kube-proxy shape, first load**: the wall time of one ``nft -f`` process
   loading bench/kube_proxy_nft_shape.py's text for the same state into an
   empty, fresh namespace (a chain per service and per endpoint).
b. **netagent, full sync**: the cold render (``render_nftables``, pure), the
   building of the transaction text (``full_transaction``) and one ``nft -f``
   process loading that exact text into an empty, fresh namespace; their sum
   is netagent's full-sync time, and kube-proxy's load time divided by it is
   the headline ratio. The proxier's own first sync (``NftablesProxier.sync``,
   through ``SubprocessNft``, into another fresh namespace) is timed as well,
   since that is what the agent really does.
c. **one-endpoint change at N services**: after that first sync, the first
   endpoint of one service moves to a new IP (cumulative, a different
   service each time), and ``proxier.sync`` is timed: wall (the target's
   number), its own render/apply split, and the rest (``other_seconds``:
   bookkeeping inside ``sync``), with the bytes it wrote. For scale, the last
   payload (an idempotent delete + add of one element) is replayed with
   ``nft -f`` alone, and ``ip netns exec NS true`` is timed (the agent itself
   runs nft without ``ip netns exec``). The runner records every nft command;
   the report counts the ``list`` commands issued during these syncs (must be
   0: no full-table listing) and checks the new endpoint is in the kernel
   afterwards.
d. ``--latency``: first-packet latency (bench/first_packet.py) at 0, 1,000 and
   10,000 services with netagent's nftables ruleset and netagent's iptables
   ruleset (iptables-nft), interleaved rounds in the same run; per mode the
   ratio p50(largest N) / p50(smallest N).
e. **agent RSS**: a child Python process builds the N x K state and syncs it
   with the proxier into a fresh namespace; its ``ru_maxrss`` (RUSAGE_SELF,
   so nft's own memory is not included; nft's max RSS is reported apart).
   The child is forked by a small ``sh``, because Linux carries the maximum
   RSS across ``exec`` and this benchmark process is large by then.

Timings are medians over ``--runs`` (with min and max). The kube-proxy shape
is loaded ``--kube-proxy-runs`` times (default 1: at 10k services one load
takes minutes). ``--also N ...`` repeats a. (with ``--also-kube-proxy``) and b.
at more sizes, for the load-time linearity. Everything runs in namespaces this
script creates (names carry a per-run suffix) and deletes, even on failure.
Before each heavy phase the script waits (bounded) for the 1-minute load
average to drop to ``--max-load``, and before each timed step until the CPUs
are >= 90% idle (the kernel tears a deleted namespace's ruleset down in the
background); the loads and idle fractions seen are in the report, and so is,
for every ``nft -f`` load, the CPU time the machine spent on anything else
while it ran. JSON goes to stdout (and ``--json``), a short table to stderr.
Run as root::

    .venv/bin/python bench/nftables_sync.py --services 10000 --endpoints 10 --runs 3 \\
        --also 30000 --latency --json /tmp/nftables-sync.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.first_packet import settle  # noqa: E402
from bench.kube_proxy_nft_shape import render_kube_proxy_shape, shape_counts  # noqa: E402
from bench.synthetic import build_state, with_one_endpoint_changed  # noqa: E402
from netagent.model import IPFamily, ProxyState  # noqa: E402

#: The IP ``with_one_endpoint_changed`` moves an endpoint to.
MOVED_IP = "10.244.255.254"


@contextlib.contextmanager
def namespace(tag: str) -> Iterator[str]:
    """A fresh network namespace, always deleted afterwards."""
    name = f"na-nftb-{tag}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


#: CPU idle fractions seen just before each timed step (see ``first_packet.settle``).
IDLE_SEEN: list[float] = []


def quiet() -> None:
    """Wait (bounded) until the CPUs are idle, e.g. after a big namespace was deleted."""
    IDLE_SEEN.append(settle())


def busy_cpu_seconds() -> float:
    """CPU seconds all CPUs spent not idle since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def nft_load(ns: str, text: str, other_cpu: list[float] | None = None) -> float:
    """Seconds for one whole ``nft -f`` process reading ``text`` (into namespace ``ns``).

    ``other_cpu``, when given, gets the CPU seconds the machine spent on
    anything but that nft process while it ran (other processes, kernel
    workers): how much the timing may have been disturbed.
    """
    quiet()
    busy0, own0 = busy_cpu_seconds(), children_cpu_seconds()
    t0 = time.perf_counter()
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "/dev/stdin"], input=text, text=True, check=True
    )
    took = time.perf_counter() - t0
    if other_cpu is not None:
        own = children_cpu_seconds() - own0
        other_cpu.append(round(max(0.0, busy_cpu_seconds() - busy0 - own), 2))
    return took


def spread(values: list[float], digits: int = 4) -> dict[str, float]:
    """Median, min and max, rounded for the report."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def wait_quiet(max_load: float, limit_seconds: float, phase: str, seen: dict[str, float]) -> None:
    """Wait (at most ``limit_seconds``) until the 1-minute load is <= ``max_load``; record it."""
    deadline = time.monotonic() + limit_seconds
    load1 = os.getloadavg()[0]
    while load1 > max_load and time.monotonic() < deadline:
        print(f"  load {load1:.2f} > {max_load}: waiting before {phase}", file=sys.stderr)
        time.sleep(15)
        load1 = os.getloadavg()[0]
    seen[phase] = round(load1, 2)


# --- netagent's API (being written alongside this benchmark; adapt here if it moves) -------


def netagent_render(state: ProxyState) -> Any:
    """A cold render of ``state`` (pure)."""
    from netagent.proxy.nftables.render import render_nftables

    return render_nftables(state)


def netagent_full_text(rendered: Any) -> str:
    """The ``nft -f`` text of a full sync of ``rendered`` into an empty namespace."""
    from netagent.proxy.nftables.transaction import full_transaction

    tx = full_transaction(rendered)
    return tx if isinstance(tx, str) else str(tx.payload)


def table_words() -> list[str]:
    """``["ip", "netagent"]``: netagent's IPv4 table."""
    from netagent.proxy.nftables.ruleset import table_spec

    return table_spec(IPFamily.IPV4).split()


def make_proxier(ns: str) -> tuple[Any, Any]:
    """``(proxier, runner)``: netagent's nftables proxier writing into namespace ``ns``."""
    from netagent.proxy.nftables.proxier import NftablesProxier
    from netagent.proxy.nftables.runner import SubprocessNft

    runner = SubprocessNft(netns=ns)
    return NftablesProxier(runner=runner, conntrack=None, family=IPFamily.IPV4), runner


# --- the phases ----------------------------------------------------------------------------


def kube_proxy_load(state: ProxyState, runs: int) -> dict[str, Any]:
    """a. First loads of the kube-proxy-shaped text, each into a fresh namespace."""
    t0 = time.perf_counter()
    text = render_kube_proxy_shape(state)
    generate = time.perf_counter() - t0
    loads: list[float] = []
    other: list[float] = []
    for i in range(runs):
        with namespace(f"kp{i}") as ns:
            loads.append(nft_load(ns, text, other))
        print(f"  kube-proxy shape: nft -f {loads[-1]:.2f} s", file=sys.stderr, flush=True)
    return {
        "runs": runs,
        "generate_seconds": round(generate, 3),
        "nft_f_seconds": spread(loads, 3),
        "other_cpu_seconds_during_each_load": other,
        "shape": shape_counts(text),
    }


def netagent_full(state: ProxyState, runs: int) -> dict[str, Any]:
    """b. Cold render, transaction text and ``nft -f`` of netagent's full sync."""
    renders: list[float] = []
    texts: list[float] = []
    loads: list[float] = []
    totals: list[float] = []
    other: list[float] = []
    text = ""
    for i in range(runs):
        quiet()
        t0 = time.perf_counter()
        rendered = netagent_render(state)
        t1 = time.perf_counter()
        text = netagent_full_text(rendered)
        t2 = time.perf_counter()
        with namespace(f"na{i}") as ns:
            load = nft_load(ns, text, other)
        renders.append(t1 - t0)
        texts.append(t2 - t1)
        loads.append(load)
        totals.append(t2 - t0 + load)
        print(
            f"  netagent: render {renders[-1]:.2f} s + text {texts[-1]:.2f} s"
            f" + nft -f {load:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    counts = rendered.counts() if hasattr(rendered, "counts") else {}
    return {
        "runs": runs,
        "render_seconds": spread(renders),
        "transaction_text_seconds": spread(texts),
        "nft_f_seconds": spread(loads),
        "total_seconds": spread(totals),
        "other_cpu_seconds_during_each_load": other,
        "payload_bytes": len(text.encode()),
        "payload_lines": text.count("\n"),
        "objects": counts,
    }


def proxier_syncs(state: ProxyState, partial_runs: int, first_service: int) -> dict[str, Any]:
    """b'. and c.: the proxier's first full sync, then one-endpoint changes."""
    with namespace("px") as ns:
        proxier, runner = make_proxier(ns)
        quiet()
        t0 = time.perf_counter()
        first = proxier.sync(state, full=True)
        first_wall = time.perf_counter() - t0
        print(f"  proxier first sync: {first_wall:.2f} s", file=sys.stderr, flush=True)
        mark = len(runner.calls)
        walls: list[float] = []
        results: list[dict[str, Any]] = []
        current = state
        n = len(state.services)
        for k in range(partial_runs):
            index = (first_service + k * 7919) % n
            current = with_one_endpoint_changed(current, index)
            quiet()
            t0 = time.perf_counter()
            result = proxier.sync(current)
            walls.append(time.perf_counter() - t0)
            results.append({"service_index": index, **_sync_fields(result)})
            results[-1]["wall_seconds"] = round(walls[-1], 5)
            # The part of sync() that is neither its render nor its apply (bookkeeping).
            results[-1]["other_seconds"] = round(
                walls[-1] - result.render_seconds - result.apply_seconds, 5
            )
        during = runner.calls[mark:]
        kinds = [c[0] for c in during]
        last = str(getattr(proxier, "last_payload", ""))
        # What the apply costs without the proxier: the same nft -f process on the last
        # (idempotent: delete + add of one element) payload, and the process floor.
        replay: list[float] = []
        floor: list[float] = []
        for _ in range(5 if last else 0):
            replay.append(nft_load(ns, last))
            t0 = time.perf_counter()
            subprocess.run(["ip", "netns", "exec", ns, "true"], check=True)
            floor.append(time.perf_counter() - t0)
        listed = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "list", "table", *table_words()],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return {
        "first_sync": {"wall_seconds": round(first_wall, 3), **_sync_fields(first)},
        "partial": {
            "runs": partial_runs,
            "wall_seconds": spread(walls, 5),
            "render_seconds": spread([r["render_seconds"] for r in results], 5),
            "apply_seconds": spread([r["apply_seconds"] for r in results], 5),
            "other_seconds": spread([r["other_seconds"] for r in results], 5),
            "bytes_written": spread([float(r["bytes_written"]) for r in results], 0),
            "each": results,
            "nft_commands_during": {k: kinds.count(k) for k in sorted(set(kinds))},
            "full_table_listings_during": kinds.count("list"),
            "moved_endpoint_in_kernel": MOVED_IP in listed,
            "last_payload": last,
            "nft_f_of_last_payload_seconds": spread(replay, 5) if replay else None,
            "ip_netns_exec_true_seconds": spread(floor, 5) if floor else None,
        },
    }


def _sync_fields(result: Any) -> dict[str, Any]:
    fields = ("full", "render_seconds", "apply_seconds", "bytes_written", "objects_written")
    out = {f: getattr(result, f) for f in fields if hasattr(result, f)}
    for f in ("render_seconds", "apply_seconds"):
        if f in out:
            out[f] = round(float(out[f]), 5)
    return out


def agent_rss(services: int, endpoints: int) -> dict[str, Any]:
    """e. Peak RSS of a child Python process that builds the state and syncs it.

    Linux carries a process's maximum RSS across ``exec``, so a child
    started directly from this (large) benchmark process would report the
    benchmark's own peak as its ``ru_maxrss``. The child is therefore started
    by a small ``sh`` that forks it (the command is not the shell's last, so
    the shell does not exec it). ``max_rss_mib`` is the child's ``ru_maxrss``
    (``getrusage(RUSAGE_SELF)``); ``vm_hwm_mib`` (``/proc/self/status``, the
    peak of its address space) must agree with it.
    """
    with namespace("rss") as ns:
        out = subprocess.run(
            [
                "sh",
                "-c",
                '"$0" "$@"; exit $?',
                sys.executable,
                str(Path(__file__).resolve()),
                "_rss",
                ns,
                str(services),
                str(endpoints),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        ).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def _rss_child(ns: str, services: int, endpoints: int) -> int:
    """In a child process: build the state, sync it, print RSS figures (MiB) as JSON."""

    def vm_rss(field: str = "VmRSS") -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return 0.0

    start = vm_rss()
    state = build_state(services, endpoints)
    after_state = vm_rss()
    proxier, _ = make_proxier(ns)
    result = proxier.sync(state, full=True)
    after_sync = vm_rss()
    peak = vm_rss("VmHWM")
    self_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nft_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    json.dump(
        {
            "services": services,
            "endpoints_per_service": endpoints,
            "rss_mib_at_start": round(start, 1),
            "rss_mib_after_state": round(after_state, 1),
            "rss_mib_after_sync": round(after_sync, 1),
            "max_rss_mib": round(self_max, 1),
            "vm_hwm_mib": round(peak, 1),
            "nft_child_max_rss_mib": round(nft_max, 1),
            "sync_full": bool(getattr(result, "full", True)),
        },
        sys.stdout,
    )
    return 0


def machine() -> dict[str, Any]:
    """What the numbers depend on."""
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "nft": subprocess.run(
            ["nft", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "iptables": subprocess.run(
            ["iptables", "-V"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }


def table(report: dict[str, Any]) -> str:
    """The short human summary."""
    lines = []
    for n, size in report["sizes"].items():
        na = size["netagent"]
        line = (
            f"{int(n):>6} services x {report['endpoints_per_service']}: netagent full sync"
            f" {na['total_seconds']['median']:.2f} s (render {na['render_seconds']['median']:.2f}"
            f" + text {na['transaction_text_seconds']['median']:.2f}"
            f" + nft -f {na['nft_f_seconds']['median']:.2f})"
        )
        kp = size.get("kube_proxy_shape")
        if kp:
            line += (
                f"; kube-proxy shape nft -f {kp['nft_f_seconds']['median']:.1f} s"
                f" ({kp['runs']} run{'s' if kp['runs'] != 1 else ''});"
                f" ratio {size['kube_proxy_to_netagent_ratio']:.1f}x"
            )
        lines.append(line)
    px = report.get("proxier")
    if px:
        p = px["partial"]
        ms = {k: v * 1000 for k, v in p["wall_seconds"].items()}
        lines.append(
            f"proxier first sync {px['first_sync']['wall_seconds']:.2f} s; one-endpoint change:"
            f" {ms['median']:.1f} ms (min {ms['min']:.1f}, max {ms['max']:.1f}),"
            f" {p['bytes_written']['median']:.0f} bytes, {p['full_table_listings_during']} listings"
        )
    lat = report.get("latency")
    if lat:
        for mode, s in lat["summary"].items():
            pts = ", ".join(
                f"{n}: {v['p50_us']['median']:.1f}/{v['p99_us']['median']:.1f}"
                for n, v in s["by_services"].items()
            )
            lines.append(
                f"first packet {mode} p50/p99 us by services {pts}; p50 ratio {s['p50_ratio']:.2f}"
            )
    rss = report.get("agent_rss")
    if rss:
        lines.append(
            f"agent max RSS {rss['max_rss_mib']:.0f} MiB at {rss['services']} x"
            f" {rss['endpoints_per_service']} (nft child {rss['nft_child_max_rss_mib']:.0f} MiB)"
        )
    lines.append(f"load average seen before each phase: {report['load_seen']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["_rss"]:
        return _rss_child(argv[1], int(argv[2]), int(argv[3]))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of netagent's timings")
    parser.add_argument("--kube-proxy-runs", type=int, default=1)
    parser.add_argument("--also", type=int, nargs="*", default=[], help="more sizes for a./b.")
    parser.add_argument(
        "--also-kube-proxy",
        action="store_true",
        help="load the kube-proxy shape at the --also sizes too (slow)",
    )
    parser.add_argument("--partial-runs", type=int, default=5)
    parser.add_argument("--latency", action="store_true", help="d. first-packet latency")
    parser.add_argument("--latency-services", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--latency-modes", nargs="+", default=["netagent-nft", "iptables-nft"])
    parser.add_argument("--latency-count", type=int, default=1000)
    parser.add_argument("--latency-repeats", type=int, default=3)
    parser.add_argument("--no-rss", action="store_true", help="skip e.")
    parser.add_argument("--skip-kube-proxy", action="store_true", help="skip a.")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=600, help="seconds to wait for quiet")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/nftables_sync.py needs root (it creates network namespaces)", file=sys.stderr)
        return 2

    load_seen: dict[str, float] = {}
    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/nftables_sync.py", *argv]),
        "machine": machine(),
        "endpoints_per_service": args.endpoints,
        "load_seen": load_seen,
        "sizes": {},
    }
    started = time.perf_counter()
    for n in [args.services, *args.also]:
        state = build_state(n, args.endpoints)
        size: dict[str, Any] = {}
        wait_quiet(args.max_load, args.max_wait, f"netagent full {n}", load_seen)
        size["netagent"] = netagent_full(state, args.runs)
        kube_proxy = not args.skip_kube_proxy and (n == args.services or args.also_kube_proxy)
        if kube_proxy:
            wait_quiet(args.max_load, args.max_wait, f"kube-proxy shape {n}", load_seen)
            size["kube_proxy_shape"] = kube_proxy_load(state, args.kube_proxy_runs)
            size["kube_proxy_to_netagent_ratio"] = round(
                size["kube_proxy_shape"]["nft_f_seconds"]["median"]
                / size["netagent"]["total_seconds"]["median"],
                2,
            )
            size["kube_proxy_to_netagent_nft_f_ratio"] = round(
                size["kube_proxy_shape"]["nft_f_seconds"]["median"]
                / size["netagent"]["nft_f_seconds"]["median"],
                2,
            )
        report["sizes"][str(n)] = size

    state = build_state(args.services, args.endpoints)
    wait_quiet(args.max_load, args.max_wait, "proxier syncs", load_seen)
    report["proxier"] = proxier_syncs(state, args.partial_runs, first_service=args.services // 3)

    if args.latency:
        from bench.first_packet import summarize, sweep

        wait_quiet(args.max_load, args.max_wait, "latency", load_seen)
        results = sweep(
            args.latency_modes,
            args.latency_services,
            args.endpoints,
            count=args.latency_count,
            warmup=100,
            repeats=args.latency_repeats,
        )
        report["latency"] = {
            "count_per_point": args.latency_count,
            "summary": summarize(results),
            "measurements": [asdict(r) for r in results],
        }

    if not args.no_rss:
        wait_quiet(args.max_load, args.max_wait, "agent rss", load_seen)
        report["agent_rss"] = agent_rss(args.services, args.endpoints)

    load_seen["end"] = round(os.getloadavg()[0], 2)
    report["cpu_idle_before_timed_steps"] = spread(IDLE_SEEN, 3)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    print(table(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
