"""Benchmark: pod-to-pod throughput across two lab nodes, VXLAN vs host-gw vs the bare underlay.

What it measures (target in ../shared/PERF.md: single-stream TCP over VXLAN
>= 0.85x host-gw). Two two-node lab clusters (netns-lab) are up at once, one
with ``--overlay vxlan`` and one with ``--overlay host-gw``, each running the
real ``netagent run``; one pod is attached to each node's cbr0. iperf3
(Debian's) runs a server in the pod on node-2 and a client in the pod on
node-1, and the same between the two nodes' own namespaces over the lab
underlay (192.0.2.11 -> .12), the ceiling both overlays are measured against:

* **TCP**, one stream, ``-t DURATION``; the receiver's throughput;
* **UDP**, one stream, unlimited rate (``-b 0``), datagrams of ``MTU - 28``
  bytes (fills the path MTU without fragmenting); the throughput that
  arrived (sent x (1 - loss)), with the loss.

The three paths are measured **interleaved** (vxlan, host-gw, underlay,
vxlan, ...), ``--repeats`` times each, so slow drift in the machine's load
hits all of them alike; medians and min/max are reported.

Two CPU placements, because a lab "node" is a namespace, not a machine:

* ``shared``: nothing pinned. veth delivers a packet on the CPU that sent
  it, so the sender's CPU carries node-1's *and* node-2's packet processing;
  the ratio then compares the total per-packet CPU cost of each path on one
  core, which is harsher on VXLAN than two machines would be.
* ``cpu-per-node``: node-1 is CPU 0 and node-2 is CPU 1: the iperf3 client
  is pinned to CPU 0, the server to CPU 1, and RPS on each node's underlay
  veth (its "NIC") steers received packets to that node's CPU, so each
  node's share of the work runs on its own CPU, as on two machines.

Before measuring, the path is checked (``ip route get`` on node-1): with
vxlan the pod route must go through flannel.1, with host-gw via node-2's
underlay IP; otherwise the run stops rather than report the wrong path.

The report also records what the numbers depend on: the kernel release, the
iperf3 version, the CPU count, each device's MTU and its offload settings
(``ethtool -k``: checksum, scatter-gather, TSO/GSO/GRO, UDP-tunnel
segmentation) on the veth pairs and flannel.1 inside the lab. Everything
lives in the labs' namespaces and is deleted at the end, even on failure.
Run as root, on a quiet machine:

    .venv/bin/python bench/overlay_iperf.py --duration 5 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab.cluster import ClusterLab  # noqa: E402
from netnslab.netns import exec_argv  # noqa: E402

PORT = 5201
#: The offload features the numbers depend on (``ethtool -k`` names).
OFFLOADS = (
    "rx-checksumming",
    "tx-checksumming",
    "scatter-gather",
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "tx-udp_tnl-segmentation",
)
PATHS = ("vxlan", "host-gw", "underlay")
PLACEMENTS = ("shared", "cpu-per-node")


def run_in(ns: str, argv: list[str], timeout: float) -> str:
    done = subprocess.run(
        exec_argv(ns, argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def mtu_of(ns: str, dev: str) -> int:
    info = json.loads(run_in(ns, ["ip", "-j", "link", "show", "dev", dev], 10))
    return int(info[0]["mtu"])


def offloads(ns: str, dev: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in run_in(ns, ["ethtool", "-k", dev], 10).splitlines():
        name, _, value = line.strip().partition(": ")
        if name in OFFLOADS:
            out[name] = value.strip()
    return out


def set_rps(ns: str, dev: str, cpu: int | None) -> None:
    """Steer ``dev``'s received packets to ``cpu`` (None: RPS off, the default)."""
    mask = "0" if cpu is None else format(1 << cpu, "x")
    run_in(ns, ["sh", "-c", f"echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"], 10)


@dataclass
class Endpoint:
    """One side of a measured path: a namespace and the address iperf3 uses."""

    ns: str
    ip: str


@dataclass
class Path_:
    """A measured path: client and server side and the MTU on it."""

    name: str
    client: Endpoint
    server: Endpoint
    mtu: int
    node_ns: tuple[str, str]


class IperfServer:
    """``iperf3 -s`` in a namespace (optionally pinned) for the ``with`` block."""

    def __init__(self, ns: str, bind: str, cpu: int | None) -> None:
        self.ns, self.bind, self.cpu = ns, bind, cpu
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> IperfServer:
        argv = pinned(["iperf3", "-s", "-B", self.bind, "-p", str(PORT)], self.cpu)
        self.proc = subprocess.Popen(
            exec_argv(self.ns, argv),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if run_in(self.ns, ["ss", "-Htln", f"sport = :{PORT}"], 5).strip():
                return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"iperf3 server in {self.ns} did not listen")

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def iperf(path: Path_, *, udp: bool, duration: int, cpu: int | None) -> dict[str, float]:
    """One iperf3 run; throughput in bit/s as received, and the UDP loss."""
    argv = ["iperf3", "-c", path.server.ip, "-p", str(PORT), "-t", str(duration), "-J"]
    if udp:
        argv += ["-u", "-b", "0", "-l", str(path.mtu - 28)]
    result = json.loads(run_in(path.client.ns, pinned(argv, cpu), duration + 30))
    if "error" in result:
        raise RuntimeError(f"iperf3 on {path.name}: {result['error']}")
    end = result["end"]
    if udp:
        loss = float(end["sum"].get("lost_percent", 0.0))
        return {"bps": float(end["sum"]["bits_per_second"]) * (1 - loss / 100), "loss": loss}
    return {"bps": float(end["sum_received"]["bits_per_second"]), "loss": 0.0}


def check_path(lab: ClusterLab, backend: str, dst: str, timeout: float = 20.0) -> str:
    """``ip route get`` on node-1 towards the server pod, once the agent has programmed it.

    Refuses (after ``timeout``) a path other than the backend's, so a result
    can never be reported for the wrong path.
    """
    want = "dev flannel.1" if backend == "vxlan" else f"via {lab.node('node-2').ip} dev eth0"
    deadline = time.monotonic() + timeout
    while True:
        route = run_in(lab.node("node-1").ns, ["ip", "route", "get", dst], 10).strip()
        if want in route:
            return route.splitlines()[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{backend}: route to {dst} is {route!r}, expected {want!r}")
        time.sleep(0.2)


def describe(lab: ClusterLab, backend: str) -> dict[str, Any]:
    """Route, MTUs and offloads of one lab's pod path."""
    src, dst = lab.pods["echo-1a"], lab.pods["echo-2a"]
    n1 = lab.node("node-1")
    devices = {"pod eth0 (veth)": (src.ns, "eth0"), "node eth0 (underlay veth)": (n1.ns, "eth0")}
    if backend == "vxlan":
        devices["flannel.1"] = (n1.ns, "flannel.1")
    return {
        "route": check_path(lab, backend, dst.ip),
        "devices": {
            name: {"mtu": mtu_of(ns, dev), "offloads": offloads(ns, dev)}
            for name, (ns, dev) in devices.items()
        },
    }


def measure(
    paths: dict[str, Path_], placement: str, duration: int, repeats: int
) -> dict[str, Any]:
    """Every path, TCP then UDP, interleaved ``repeats`` times."""
    per_node = placement == "cpu-per-node"
    client_cpu, server_cpu = (0, 1) if per_node else (None, None)
    for p in paths.values():
        set_rps(p.node_ns[0], "eth0", 0 if per_node else None)
        set_rps(p.node_ns[1], "eth0", 1 if per_node else None)
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {"tcp": [], "udp": []} for name in paths
    }
    servers = [IperfServer(p.server.ns, p.server.ip, server_cpu) for p in paths.values()]
    try:
        for s in servers:
            s.__enter__()
        for proto in ("tcp", "udp"):
            for _ in range(repeats):
                for name, p in paths.items():
                    samples[name][proto].append(
                        iperf(p, udp=proto == "udp", duration=duration, cpu=client_cpu)
                    )
    finally:
        for s in servers:
            s.__exit__()
    out: dict[str, Any] = {}
    for name, by_proto in samples.items():
        out[name] = {"mtu": paths[name].mtu}
        for proto, runs in by_proto.items():
            gbps = [r["bps"] / 1e9 for r in runs]
            out[name][proto] = {
                "median_gbps": round(statistics.median(gbps), 3),
                "min_gbps": round(min(gbps), 3),
                "max_gbps": round(max(gbps), 3),
            }
            if proto == "udp":
                out[name][proto]["median_loss_percent"] = round(
                    statistics.median(r["loss"] for r in runs), 2
                )
    out["ratios"] = {
        proto: {
            "vxlan/host-gw": ratio(out["vxlan"][proto], out["host-gw"][proto]),
            "vxlan/underlay": ratio(out["vxlan"][proto], out["underlay"][proto]),
            "host-gw/underlay": ratio(out["host-gw"][proto], out["underlay"][proto]),
        }
        for proto in ("tcp", "udp")
    }
    return out


def ratio(a: dict[str, float], b: dict[str, float]) -> float:
    return round(a["median_gbps"] / b["median_gbps"], 3) if b["median_gbps"] else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per iperf3 run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per path and protocol")
    parser.add_argument(
        "--placement", choices=[*PLACEMENTS, "both"], default="both", help="CPU placement"
    )
    parser.add_argument("--json", type=Path, help="also write the full result here")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 60 or not 1 <= args.repeats <= 10:
        parser.error("--duration must be 1-60 s and --repeats 1-10 (bounded load)")
    placements = PLACEMENTS if args.placement == "both" else (args.placement,)
    cpus = os.cpu_count() or 1
    if "cpu-per-node" in placements and cpus < 2:
        parser.error("--placement cpu-per-node needs at least 2 CPUs")

    iperf_version = subprocess.run(
        ["iperf3", "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    report: dict[str, Any] = {
        "command": " ".join(["bench/overlay_iperf.py", *(argv or sys.argv[1:])]),
        "kernel": platform.release(),
        "cpus": cpus,
        "iperf3": iperf_version,
        "duration_s": args.duration,
        "repeats": args.repeats,
    }
    labs: dict[str, ClusterLab] = {}
    try:
        for backend in ("vxlan", "host-gw"):
            labs[backend] = ClusterLab(nodes=2, overlay=backend).up(pods_per_node=1, client=False)
        report["paths"] = {b: describe(lab, b) for b, lab in labs.items()}
        paths: dict[str, Path_] = {}
        for backend, lab in labs.items():
            src, dst = lab.pods["echo-1a"], lab.pods["echo-2a"]
            nodes = (lab.node("node-1").ns, lab.node("node-2").ns)
            paths[backend] = Path_(
                backend, Endpoint(src.ns, src.ip), Endpoint(dst.ns, dst.ip),
                mtu_of(src.ns, "eth0"), nodes,
            )
        n1, n2 = labs["host-gw"].node("node-1"), labs["host-gw"].node("node-2")
        paths["underlay"] = Path_(
            "underlay", Endpoint(n1.ns, n1.ip), Endpoint(n2.ns, n2.ip),
            mtu_of(n1.ns, "eth0"), (n1.ns, n2.ns),
        )
        report["results"] = {}
        for placement in placements:
            print(f"== {placement}", file=sys.stderr, flush=True)
            report["results"][placement] = measure(paths, placement, args.duration, args.repeats)
    finally:
        for lab in labs.values():
            lab.down()

    print(
        f"kernel {report['kernel']}, {cpus} CPUs, {iperf_version}, "
        f"{args.repeats} x {args.duration} s per test, interleaved"
    )
    for placement, res in report["results"].items():
        print(f"\n[{placement}]")
        print(f"{'path':<10} {'MTU':>5} {'TCP Gbit/s (min-max)':>24} {'UDP Gbit/s (min-max)':>24} "
              f"{'UDP loss %':>10}")
        for name in PATHS:
            r = res[name]
            cells = [
                f"{r[p]['median_gbps']:.2f} ({r[p]['min_gbps']:.2f}-{r[p]['max_gbps']:.2f})"
                for p in ("tcp", "udp")
            ]
            print(f"{name:<10} {r['mtu']:>5} {cells[0]:>24} {cells[1]:>24} "
                  f"{r['udp']['median_loss_percent']:>10.1f}")
        for proto, rs in res["ratios"].items():
            print(f"{proto.upper()} ratios: " + ", ".join(f"{k} {v}" for k, v in rs.items()))
        tcp = res["ratios"]["tcp"]["vxlan/host-gw"]
        print(f"target TCP VXLAN >= 0.85 x host-gw: {'met' if tcp >= 0.85 else 'NOT met'} ({tcp})")
    print()
    for backend, d in report["paths"].items():
        print(f"{backend} route on node-1: {d['route']}")
        for dev, info in d["devices"].items():
            on = ", ".join(f"{k} {v}" for k, v in info["offloads"].items())
            print(f"  {dev}: mtu {info['mtu']}; {on}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
