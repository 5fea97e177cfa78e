"""Benchmark: first-packet latency to a ClusterIP, as a function of the number of services.

What it measures (target in ../shared/PERF.md: in nftables mode p50 at 10k
services <= 1.2x p50 at 0 services; KEP-3866: iptables grows with N, nftables
is flat): the time of a TCP ``connect()`` to a ClusterIP, a new connection each
time, so every SYN is a new conntrack entry and walks the NAT rules once.

Topology, made fresh for every measurement (namespace names carry a per-run
suffix; all are deleted afterwards, even on failure; nothing is done in the
host's root namespace)::

    client ns               node ns (rules, ip_forward=1)          server ns
    10.201.0.2/24 -- veth -- 10.201.0.1 | 10.202.0.1 -- veth -- 10.202.0.2/24
                                                                 listening on :8080

The ruleset is the synthetic state (``bench.synthetic.build_state``: N
services x K endpoints whose endpoints are not reachable) plus one target
service, ClusterIP ``10.100.0.10:80`` with the single endpoint
``10.202.0.2:8080``, a real listening socket in the server namespace. Its
namespace (``zz-target``) sorts last, so in iptables mode it is the last
service rule of the services chain: the worst case of the linear walk. The
client is outside the cluster CIDR, so the connection is also marked and
masqueraded, the same in every mode. "0 services" means the target service
alone.

The client loop is one Python process in the client namespace: per connection
it creates a socket (SO_LINGER 0, so ``close()`` sends RST and leaves no
TIME_WAIT; bound to its own source port, so no 4-tuple is ever reused), then
times only ``connect()`` with ``time.perf_counter_ns()``, then closes. The
first ``--warmup`` connections (ARP, caches) are not counted. Before the
client starts, the harness waits (at most 60 s) until the CPUs are >= 90%
idle, because the kernel tears down the previous measurement's namespaces
(and rulesets) in the background; the idle fraction it saw is reported. The
report gives p50/p99/mean/min/max in microseconds per measurement and, per
mode and N, the median (min, max) of p50 and p99 over ``--repeats`` rounds;
the rounds are interleaved (every N and mode once per round). ``--cpu`` pins
the client process (not used for the numbers in docs/).

Rulesets (``--modes``):

* ``netagent-nft``: netagent's own nftables transaction (``full_transaction``);
* ``kube-proxy-nft``: the kube-proxy-shaped ruleset (bench/kube_proxy_nft_shape.py);
* ``iptables-nft`` / ``iptables-legacy``: netagent's iptables ruleset
  (``render_iptables(state).save_text()``) loaded with
  ``iptables-{nft,legacy}-restore``.

Run as root::

    .venv/bin/python bench/first_packet.py --modes netagent-nft iptables-nft \\
        --services 0 1000 10000 --count 1000 --json /tmp/first-packet.json

Importable: :func:`ruleset_for` builds a :class:`Ruleset`, :func:`measure`
times one.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import platform
import secrets
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.synthetic import build_state, with_target_service  # noqa: E402
from netagent.model import ProxyState  # noqa: E402

CLIENT_IP = "10.201.0.2"
CLIENT_GW = "10.201.0.1"
SERVER_IP = "10.202.0.2"
SERVER_GW = "10.202.0.1"
CLUSTER_IP = "10.100.0.10"
SERVICE_PORT = 80
BACKEND_PORT = 8080
#: Client source ports: one per connection, below the ephemeral range.
FIRST_SOURCE_PORT = 10000
MODES = ("netagent-nft", "kube-proxy-nft", "iptables-nft", "iptables-legacy")


@dataclass(frozen=True)
class Ruleset:
    """What to load into the node namespace, and with which tool."""

    mode: str
    services: int
    text: str

    @property
    def loader(self) -> list[str]:
        """The argv that reads :attr:`text` on stdin."""
        if self.mode.startswith("iptables-"):
            return [f"{self.mode}-restore"]
        return ["nft", "-f", "/dev/stdin"]


@dataclass(frozen=True)
class FirstPacket:
    """One measurement: connect() latency percentiles in microseconds."""

    mode: str
    services: int
    count: int
    p50_us: float
    p99_us: float
    mean_us: float
    min_us: float
    max_us: float
    load_seconds: float
    ruleset_bytes: int
    #: Fraction of CPU time idle just before the client started (see :func:`settle`).
    idle_before: float


def target_state(services: int, endpoints: int) -> ProxyState:
    """The synthetic state plus the target service whose backend is the server namespace."""
    return with_target_service(
        build_state(services, endpoints),
        ipaddress.IPv4Address(CLUSTER_IP),
        ipaddress.IPv4Address(SERVER_IP),
        BACKEND_PORT,
        port=SERVICE_PORT,
    )


def ruleset_for(mode: str, state: ProxyState, services: int) -> Ruleset:
    """The ruleset text of ``mode`` for ``state`` (``services`` is only a label)."""
    if mode == "kube-proxy-nft":
        from bench.kube_proxy_nft_shape import render_kube_proxy_shape

        return Ruleset(mode, services, render_kube_proxy_shape(state))
    if mode == "netagent-nft":
        from netagent.proxy.nftables.render import render_nftables
        from netagent.proxy.nftables.transaction import full_transaction

        tx = full_transaction(render_nftables(state))
        # A Transaction (payload + counts); a plain str in an early version of the API.
        return Ruleset(mode, services, tx if isinstance(tx, str) else tx.payload)
    if mode in ("iptables-nft", "iptables-legacy"):
        from netagent.proxy.iptables.render import render_iptables

        return Ruleset(mode, services, render_iptables(state).save_text())
    raise ValueError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@dataclass(frozen=True)
class Topology:
    """The three namespaces of one measurement."""

    client: str
    node: str
    server: str


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    """Client, node and server namespaces joined by two veth pairs; always deleted."""
    suffix = secrets.token_hex(3)
    topo = Topology(f"na-fp-c-{suffix}", f"na-fp-n-{suffix}", f"na-fp-s-{suffix}")
    made: list[str] = []
    try:
        for ns in (topo.client, topo.node, topo.server):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # The veths are created inside the node namespace, never in the root one.
        _ip(
            "-n",
            topo.node,
            "link",
            "add",
            "to-client",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            topo.client,
        )
        _ip(
            "-n",
            topo.node,
            "link",
            "add",
            "to-server",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            topo.server,
        )
        for ns, dev, addr in (
            (topo.node, "to-client", f"{CLIENT_GW}/24"),
            (topo.node, "to-server", f"{SERVER_GW}/24"),
            (topo.client, "eth0", f"{CLIENT_IP}/24"),
            (topo.server, "eth0", f"{SERVER_IP}/24"),
        ):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", topo.client, "route", "add", "default", "via", CLIENT_GW)
        _ip("-n", topo.server, "route", "add", "default", "via", SERVER_GW)
        subprocess.run(_in_ns(topo.node, "sysctl", "-qw", "net.ipv4.ip_forward=1"), check=True)
        yield topo
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@contextlib.contextmanager
def server(ns: str, idle_seconds: float = 300.0) -> Iterator[subprocess.Popen[str]]:
    """The accept-and-close server in ``ns``; stopped (by its pid) afterwards."""
    proc = subprocess.Popen(
        _in_ns(
            ns,
            sys.executable,
            str(Path(__file__).resolve()),
            "_serve",
            SERVER_IP,
            str(BACKEND_PORT),
            str(idle_seconds),
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=30) or proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the first-packet server did not start")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def load(node_ns: str, ruleset: Ruleset) -> float:
    """Seconds to load ``ruleset`` into ``node_ns`` with its tool (one process)."""
    t0 = time.perf_counter()
    subprocess.run(_in_ns(node_ns, *ruleset.loader), input=ruleset.text, text=True, check=True)
    return time.perf_counter() - t0


def cpu_idle_fraction(interval: float = 0.5) -> float:
    """Fraction of all CPUs' time spent idle over the next ``interval`` seconds (/proc/stat)."""

    def read() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle0, total0 = read()
    time.sleep(interval)
    idle1, total1 = read()
    return (idle1 - idle0) / max(1, total1 - total0)


def settle(min_idle: float = 0.9, limit_seconds: float = 60.0) -> float:
    """Wait (bounded) until the CPUs are at least ``min_idle`` idle; return the last reading.

    Deleting a namespace that held a large ruleset goes on in a kernel worker
    for seconds after ``ip netns del`` returns; without this wait it would
    compete with the next measurement (and so would other work on the machine).
    """
    deadline = time.monotonic() + limit_seconds
    idle = cpu_idle_fraction()
    while idle < min_idle and time.monotonic() < deadline:
        idle = cpu_idle_fraction()
    return round(idle, 3)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def run_client(client_ns: str, count: int, warmup: int, cpu: int | None = None) -> list[float]:
    """connect() latencies in microseconds from one client process in ``client_ns``.

    ``cpu``: pin the client process to that CPU (``taskset -c``).
    """
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    out = subprocess.run(
        _in_ns(
            client_ns,
            *pin,
            sys.executable,
            str(Path(__file__).resolve()),
            "_client",
            CLUSTER_IP,
            str(SERVICE_PORT),
            str(count),
            str(warmup),
        ),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    samples: list[float] = json.loads(out)["samples_us"]
    return samples


def measure(
    ruleset: Ruleset, *, count: int = 1000, warmup: int = 100, cpu: int | None = None
) -> FirstPacket:
    """Load ``ruleset`` into a fresh topology and time ``count`` connects to the ClusterIP."""
    with topology() as topo, server(topo.server):
        load_seconds = load(topo.node, ruleset)
        idle = settle()
        samples = sorted(run_client(topo.client, count, warmup, cpu))
    return FirstPacket(
        mode=ruleset.mode,
        services=ruleset.services,
        count=len(samples),
        p50_us=round(_percentile(samples, 0.50), 1),
        p99_us=round(_percentile(samples, 0.99), 1),
        mean_us=round(statistics.fmean(samples), 1),
        min_us=round(samples[0], 1),
        max_us=round(samples[-1], 1),
        load_seconds=round(load_seconds, 3),
        ruleset_bytes=len(ruleset.text.encode()),
        idle_before=idle,
    )


def sweep(
    modes: list[str],
    services: list[int],
    endpoints: int,
    *,
    count: int,
    warmup: int,
    repeats: int = 1,
    cpu: int | None = None,
) -> list[FirstPacket]:
    """:func:`measure` every mode at every service count, ``repeats`` rounds, interleaved.

    Each round walks every (N, mode) once, so slow drift in the machine's load
    hits every point alike. Rulesets are rendered once per (N, mode).
    """
    rulesets: list[Ruleset] = []
    for n in services:
        state = target_state(n, endpoints)
        rulesets.extend(ruleset_for(mode, state, n) for mode in modes)
    results: list[FirstPacket] = []
    for round_ in range(repeats):
        for ruleset in rulesets:
            result = measure(ruleset, count=count, warmup=warmup, cpu=cpu)
            print(
                f"  [{round_ + 1}/{repeats}] first packet {result.mode:15} {result.services:>6}"
                f" services: p50 {result.p50_us:6.1f} us  p99 {result.p99_us:6.1f} us"
                f"  (load {result.load_seconds:.2f} s, idle {result.idle_before:.0%})",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    return results


def _spread(values: list[float], digits: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def summarize(results: list[FirstPacket]) -> dict[str, Any]:
    """Per mode and N: p50/p99 (median and spread over rounds); per mode the flatness ratios.

    ``p50_ratio`` is the median p50 at the largest N over the median p50 at
    the smallest N (PERF.md's target in nftables mode: <= 1.2); ``p99_ratio``
    the same for p99.
    """
    out: dict[str, Any] = {}
    for mode in dict.fromkeys(r.mode for r in results):
        points: dict[int, dict[str, Any]] = {}
        for n in sorted({r.services for r in results if r.mode == mode}):
            rows = [r for r in results if r.mode == mode and r.services == n]
            points[n] = {
                "p50_us": _spread([r.p50_us for r in rows]),
                "p99_us": _spread([r.p99_us for r in rows]),
                "load_seconds": _spread([r.load_seconds for r in rows]),
                "idle_before": _spread([r.idle_before for r in rows], 3),
                "rounds": len(rows),
            }
        lo, hi = points[min(points)], points[max(points)]
        out[mode] = {
            "by_services": {str(n): p for n, p in points.items()},
            "from_services": min(points),
            "to_services": max(points),
            "p50_ratio": round(hi["p50_us"]["median"] / lo["p50_us"]["median"], 3),
            "p99_ratio": round(hi["p99_us"]["median"] / lo["p99_us"]["median"], 3),
        }
    return out


# --- the two processes that run inside the namespaces -------------------------------------


def _serve(addr: str, port: int, idle_seconds: float) -> int:
    """Accept and close connections until idle for ``idle_seconds`` (or terminated)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((addr, port))
        srv.listen(4096)
        srv.settimeout(idle_seconds)
        print("ready", flush=True)
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                return 0
            conn.close()


def _client(addr: str, port: int, count: int, warmup: int) -> int:
    """Time ``warmup + count`` blocking connects; print the last ``count`` as JSON (us)."""
    linger = struct.pack("ii", 1, 0)
    samples: list[float] = []
    for k in range(warmup + count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            # Bounded: a lost SYN fails after 2 retries (~7 s), never the default ~2 min.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, 2)
            sock.bind((CLIENT_IP, FIRST_SOURCE_PORT + k))
            t0 = time.perf_counter_ns()
            sock.connect((addr, port))
            t1 = time.perf_counter_ns()
        finally:
            sock.close()
        if k >= warmup:
            samples.append((t1 - t0) / 1000)
    json.dump({"samples_us": samples}, sys.stdout)
    return 0


def machine() -> dict[str, Any]:
    """What the numbers depend on."""
    load1, load5, _ = os.getloadavg()
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1m_5m_at_start": [round(load1, 2), round(load5, 2)],
        "nft": subprocess.run(
            ["nft", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "iptables": subprocess.run(
            ["iptables", "-V"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["_serve"]:
        return _serve(argv[1], int(argv[2]), float(argv[3]))
    if argv[:1] == ["_client"]:
        return _client(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--modes", nargs="+", default=["netagent-nft", "iptables-nft"], choices=MODES
    )
    parser.add_argument("--services", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--count", type=int, default=1000, help="timed connections per point")
    parser.add_argument("--warmup", type=int, default=100, help="untimed connections first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every point")
    parser.add_argument("--cpu", type=int, help="pin the client process to this CPU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/first_packet.py needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/first_packet.py", *argv]),
        "machine": machine(),
        "endpoints_per_service": args.endpoints,
    }
    results = sweep(
        args.modes,
        args.services,
        args.endpoints,
        count=args.count,
        warmup=args.warmup,
        repeats=args.repeats,
        cpu=args.cpu,
    )
    report["summary"] = summarize(results)
    report["measurements"] = [asdict(r) for r in results]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
