"""Benchmark: iptables full syncs at scale, listed (``-S``) or not, against the floors.

What it measures, for each ``--services`` size (N ClusterIP services x K
endpoints, the synthetic state of bench/synthetic.py), each in a fresh
network namespace this script creates and deletes:

1. **first full sync** through netagent's applier (nft backend: each table
   listed first, one transaction per table plus the late jumps);
2. the same chains as **one unlisted ``--noflush`` transaction** (what the
   applier did before), only up to ``--unlisted-max`` services because it is
   quadratic;
3. the **flushing restore** of the same rules (the floor ../shared/PERF.md lists);
4. the same rules **split into many COMMITs** of ``--chunk`` services each
   (the cost of a staged sync; the order here is not a consistent one, only
   the cost is measured);
5. a **replacing full sync**: the kernel holds N services, every endpoint
   moves, and a full sync rewrites them (read + plan + restore);
6. **partial syncs** of k changed services at N existing, listed and not,
   which is how :data:`~netagent.proxy.iptables.apply.LIST_FIRST_MIN_CHAINS`
   was chosen;
7. with ``--legacy``, items 1 and 3 on the legacy backend (never listed).

Run as root (about 6 minutes at 10,000 services):

    .venv/bin/python bench/iptables_full_sync.py --services 2000 10000 --json bench/out/full.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.iptables_sync import namespace, spread, timed_restore
from bench.report import emit, machine
from bench.synthetic import build_state
from netagent.model import ProxyState, ServicePortName
from netagent.proxy.iptables import apply as apply_module
from netagent.proxy.iptables.apply import IptablesApplier
from netagent.proxy.iptables.chain_names import PER_SERVICE_PREFIXES
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.render import render_iptables
from netagent.proxy.iptables.rules import RenderedIptables
from netagent.proxy.iptables.runner import Backend, SubprocessIptables


def moved(state: ProxyState, names: set[ServicePortName] | None = None) -> ProxyState:
    """``state`` with the endpoints of ``names`` (all when None) moved to port 9090."""
    endpoints = {
        name: (
            tuple(replace(e, port=9090) for e in eps) if names is None or name in names else eps
        )
        for name, eps in state.endpoints.items()
    }
    return replace(state, endpoints=endpoints)


def first_full(rendered: RenderedIptables, backend: Backend) -> tuple[float, str, int]:
    """Seconds of one full apply into an empty namespace, its payload and COMMIT count."""
    with namespace("ff") as ns:
        applier = IptablesApplier(SubprocessIptables(backend=backend, netns=ns))
        t0 = time.perf_counter()
        result = applier.apply(rendered, full=True)
        return time.perf_counter() - t0, result.payload, result.transactions


def one_transaction_payload(rendered: RenderedIptables) -> str:
    """What the applier wrote before listing: one unlisted transaction per table.

    (The legacy model never lists; into an empty kernel its payload is the same chains.)
    """
    return IptablesApplier(FakeIptables(backend="legacy")).apply(rendered, full=True).payload


def chunked(payload: str, services_per_chunk: int, endpoints: int) -> str:
    """A one-transaction ``payload`` with its nat table cut into many COMMITs.

    The first COMMIT creates the fixed chains empty; each COMMIT declares
    and fills the per-service chains of about ``services_per_chunk``
    services; a last one fills the fixed chains (the dispatch chains that
    jump to them) and adds the jumps. That is the order a
    staged sync would use; here only its cost is measured.
    """
    head: list[str] = []
    declared: list[str] = []
    rules: dict[str, list[str]] = {}
    other: list[str] = []
    tail: list[str] = []
    table = ""
    for line in payload.splitlines():
        if line.startswith("*"):
            table = line
        if table != "*nat":
            (head if not declared and not other else tail).append(line)
            continue
        if line.startswith(":"):
            declared.append(line[1:].split(" ", 1)[0])
        elif line.startswith("-A "):
            rules.setdefault(line.split(" ", 2)[1], []).append(line)
        elif line.startswith(("-I ", "-D ", "-X ")):
            other.append(line)
    per_service = [c for c in declared if c.startswith(PER_SERVICE_PREFIXES)]
    fixed = [c for c in declared if not c.startswith(PER_SERVICE_PREFIXES)]
    out = list(head)
    size = services_per_chunk * (endpoints + 1)
    for i in range(0, len(per_service), size):
        chunk = per_service[i : i + size]
        out.append("*nat")
        if i == 0:  # the fixed chains exist first: per-service rules jump to MARK-MASQ
            out.extend(f":{c} - [0:0]" for c in fixed)
        out.extend(f":{c} - [0:0]" for c in chunk)
        for c in chunk:
            out.extend(rules.get(c, ()))
        out.append("COMMIT")
    out.append("*nat")
    for c in fixed:
        out.extend(rules.get(c, ()))
    out.extend(other)
    out.append("COMMIT")
    out.extend(tail)
    return "\n".join(out) + "\n"


def flushing(payload: str) -> str:
    """A one-transaction payload for a flushing restore: the jumps as appends, in order."""
    lines = []
    for line in payload.splitlines():
        if line.startswith("-I "):
            chain, _, rest = line[3:].partition(" ")
            line = f"-A {chain} {rest.split(' ', 1)[1]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    values = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        values.append(time.perf_counter() - t0)
    return values


@contextlib.contextmanager
def list_threshold(value: int) -> Iterator[None]:
    """Force the applier's listing threshold for partial syncs to ``value`` chains."""
    old = apply_module.LIST_FIRST_MIN_CHAINS, apply_module.LIST_FIRST_FACTOR
    apply_module.LIST_FIRST_MIN_CHAINS, apply_module.LIST_FIRST_FACTOR = value, 0
    try:
        yield
    finally:
        apply_module.LIST_FIRST_MIN_CHAINS, apply_module.LIST_FIRST_FACTOR = old


def measure(n: int, args: argparse.Namespace) -> dict[str, object]:
    state = build_state(n, args.endpoints)
    rendered = render_iptables(state)
    res: dict[str, object] = {"services": n, "endpoints_per_service": args.endpoints}
    firsts = []
    payload, commits = "", 0
    for _ in range(args.runs):
        seconds, payload, commits = first_full(rendered, "nft")
        firsts.append(seconds)
    res["payload_bytes"] = len(payload.encode())
    res["payload_chains"] = payload.count("\n:")
    res["first_full_sync_listed_seconds"] = spread(firsts)
    res["first_full_sync_transactions"] = commits
    plain = one_transaction_payload(rendered)
    nft_restore = "iptables-nft-restore"
    if n <= args.unlisted_max:
        times = []
        for _ in range(args.runs):
            with namespace("ul") as ns:
                times.append(timed_restore(ns, plain, nft_restore, noflush=True))
        res["one_unlisted_noflush_transaction_seconds"] = spread(times)
    floors = []
    for _ in range(args.runs):
        with namespace("fl") as ns:
            floors.append(timed_restore(ns, flushing(plain), nft_restore, noflush=False))
    res["flushing_restore_seconds"] = spread(floors)
    staged_payload = chunked(plain, args.chunk, args.endpoints)
    staged = []
    for _ in range(args.runs):
        with namespace("st") as ns:
            staged.append(timed_restore(ns, staged_payload, nft_restore, noflush=True))
    res["staged_many_commits_seconds"] = spread(staged)
    res["staged_transactions"] = staged_payload.count("COMMIT")

    with namespace("rp") as ns:
        runner = SubprocessIptables(backend="nft", netns=ns)
        applier = IptablesApplier(runner)
        applier.apply(rendered, full=True)
        other = render_iptables(moved(state))
        t0 = time.perf_counter()
        read = runner.save()
        t1 = time.perf_counter()
        result = applier.apply(other, full=True)
        t2 = time.perf_counter()
        res["replacing_full_sync_seconds"] = round(t2 - t1, 3)
        res["replacing_full_sync_save_seconds"] = round(t1 - t0, 3)
        res["replacing_full_sync_save_bytes"] = len(read.encode())
        res["replacing_full_sync_chains_deleted"] = result.chains_deleted
        assert result.listed_first
        # Back to ``rendered`` so partial syncs start from it.
        applier.apply(rendered, full=True)
        names = sorted(state.services)
        partial: dict[str, dict[str, float]] = {}
        start = 0
        for k in args.partial_services:
            changed = set(names[start : start + k])
            start += k
            there = render_iptables(moved(state, changed))
            with list_threshold(10**9):
                t0 = time.perf_counter()
                unlisted_result = applier.apply(there, full=False)
                t1 = time.perf_counter()
            with list_threshold(0):
                back = applier.apply(rendered, full=False)
                t2 = time.perf_counter()
            assert not unlisted_result.full and not unlisted_result.listed_first
            assert not back.full and back.listed_first
            partial[str(k)] = {
                "chains_touched": unlisted_result.chains_written + unlisted_result.chains_deleted,
                "unlisted_seconds": round(t1 - t0, 3),
                "listed_seconds": round(t2 - t1, 3),
            }
        res["partial_syncs_by_changed_services"] = partial

    if args.legacy:
        legacy_first = [first_full(rendered, "legacy")[0] for _ in range(args.runs)]
        res["legacy_first_full_sync_seconds"] = spread(legacy_first)
        lfloor = []
        for _ in range(args.runs):
            with namespace("lf") as ns:
                lfloor.append(
                    timed_restore(ns, flushing(plain), "iptables-legacy-restore", noflush=False)
                )
        res["legacy_flushing_restore_seconds"] = spread(lfloor)
    first_med = statistics.median(firsts)
    res["listed_to_flushing_ratio"] = round(first_med / statistics.median(floors), 3)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1, help="repetitions of each timing")
    parser.add_argument("--unlisted-max", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=100, help="services per staged COMMIT")
    parser.add_argument(
        "--partial-services", type=int, nargs="*", default=[5, 20, 50, 150],
        help="changed services per partial sync (each touches about 2K+1 chains)",
    )  # fmt: skip
    parser.add_argument("--legacy", action="store_true", help="also time the legacy backend")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/iptables_full_sync.py needs root (it creates namespaces)", file=sys.stderr)
        return 2
    report: dict[str, object] = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine(),
    }
    sizes: list[dict[str, object]] = []
    for n in args.services:
        sizes.append(measure(n, args))
        print(json.dumps(sizes[-1]), file=sys.stderr, flush=True)
    report["sizes"] = sizes
    emit(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
