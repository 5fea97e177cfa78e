"""Packet captures inside a lab namespace with scapy, decoded into plain records.

Why: the overlay's claims about the wire (VXLAN on UDP 8472 with VNI 1 and the
pods' own addresses inside; no encapsulation at all in host-gw mode) can
only be proven by looking at the underlay. The capture runs as a child
process inside the namespace (``ip netns exec``), so the test process never
enters another namespace; it prints ``READY`` once its socket is open, then
one JSON object per captured packet, and exits after ``count`` packets or
``timeout`` seconds.

Decoding is done here rather than in each test: scapy only dissects VXLAN on
its IANA port 4789, so port 8472 (the Linux and flannel default) is bound
explicitly, and each record carries the outer and the inner addresses.

Run as ``python -m netnslab.capture --iface ul0 --count 20 --timeout 10``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netnslab.netns import exec_argv
from netnslab.traffic import LineReader

LAB_DIR = Path(__file__).resolve().parents[1]
VXLAN_PORT = 8472


@dataclass(frozen=True)
class Captured:
    """One packet on the wire: the outer IPv4 header, and the inner one if encapsulated."""

    src: str
    dst: str
    proto: int
    length: int
    udp_dport: int | None = None
    vni: int | None = None
    inner_src: str | None = None
    inner_dst: str | None = None
    inner_proto: int | None = None

    @property
    def is_vxlan(self) -> bool:
        """Whether this is a VXLAN frame."""
        return self.vni is not None


def decode(packet: Any) -> dict[str, Any] | None:
    """A JSON-able record of one scapy packet (None for non-IPv4 frames)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.vxlan import VXLAN

    if IP not in packet:
        return None
    outer = packet[IP]
    record: dict[str, Any] = {
        "src": outer.src,
        "dst": outer.dst,
        "proto": int(outer.proto),
        "length": int(outer.len),
    }
    if UDP in packet:
        record["udp_dport"] = int(packet[UDP].dport)
    if VXLAN in packet:
        vxlan = packet[VXLAN]
        record["vni"] = int(vxlan.vni)
        inner = vxlan.payload
        if IP in inner:
            record["inner_src"] = inner[IP].src
            record["inner_dst"] = inner[IP].dst
            record["inner_proto"] = int(inner[IP].proto)
    return record


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netnslab.capture")
    parser.add_argument("--iface", required=True)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--filter", default=None, help="a BPF filter (compiled with tcpdump)")
    args = parser.parse_args(argv)
    from scapy.config import conf
    from scapy.layers.inet import UDP
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import bind_layers
    from scapy.sendrecv import sniff

    conf.verb = 0
    bind_layers(UDP, VXLAN, dport=VXLAN_PORT)

    def emit(packet: Any) -> None:
        record = decode(packet)
        if record is not None:
            print(json.dumps(record), flush=True)

    sniff(
        iface=args.iface,
        filter=args.filter,
        count=args.count,
        timeout=args.timeout,
        store=False,
        prn=emit,
        lfilter=lambda p: decode(p) is not None,
        started_callback=lambda: print("READY", flush=True),
    )
    return 0


class Capture:
    """A running capture in a namespace; use as a context manager, then read :attr:`packets`."""

    def __init__(
        self,
        ns: str,
        iface: str,
        *,
        python: str,
        bpf: str | None = None,
        count: int = 50,
        timeout: float = 10.0,
    ) -> None:
        argv = [python, "-m", "netnslab.capture", "--iface", iface]
        argv += ["--count", str(count), "--timeout", str(timeout)]
        if bpf:
            argv += ["--filter", bpf]
        self._timeout = timeout
        self._proc = subprocess.Popen(
            exec_argv(ns, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={"PYTHONPATH": str(LAB_DIR), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        self._reader = LineReader(self._proc.stdout.fileno())
        line = self._reader.readline(15.0)
        if line != "READY":
            self._proc.kill()
            err = self._proc.stderr.read().decode() if self._proc.stderr else ""
            raise RuntimeError(f"capture on {iface} in {ns} did not start: {line!r} {err}")
        self.packets: list[Captured] = []

    def finish(self) -> list[Captured]:
        """Wait for the capture to end (count or timeout) and return what it saw."""
        try:
            self._proc.wait(timeout=self._timeout + 10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        while True:
            try:
                line = self._reader.readline(0.5)
            except TimeoutError:
                break
            if line is None:
                break
            if line.startswith("{"):
                self.packets.append(Captured(**json.loads(line)))
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        return self.packets

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


if __name__ == "__main__":
    sys.exit(_main())
