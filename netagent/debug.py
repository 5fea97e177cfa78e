"""`netagent debug`: "what happens to this packet on this node?" without reading iptables-save.

Why: the top operator complaint about kube-proxy is that debugging means
SSHing to a node and reading thousands of iptables lines. The packet tracer
that the unit tests use to check rendered rules works just as well on the
live ruleset, so the operator gets the chains a packet visits and where it
ends up (which endpoints, masqueraded or not, dropped or rejected).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from netagent.model import IPAddress
from netagent.proxy.iptables.parse import RuleParseError, parse_ruleset
from netagent.proxy.iptables.trace import NodeView, Origin, Packet, TraceError, trace_packet


def kernel_local_ips() -> frozenset[IPAddress]:
    """Addresses configured in this network namespace (what --dst-type LOCAL matches)."""
    out = subprocess.run(
        ["ip", "-j", "addr", "show"], check=True, capture_output=True, text=True
    ).stdout
    ips: set[IPAddress] = set()
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            ips.add(ipaddress.ip_address(addr["local"]))
    return frozenset(ips)


def kernel_ruleset(family_v6: bool) -> str:
    """The live ruleset as iptables-save prints it."""
    tool = "ip6tables-save" if family_v6 else "iptables-save"
    return subprocess.run([tool], check=True, capture_output=True, text=True).stdout


def run_trace(
    *,
    src: str,
    dst: str,
    proto: str,
    port: int,
    origin: str,
    rules_file: Path | None,
    local_ips: Sequence[str],
    out: TextIO,
) -> int:
    """Trace one packet and print the result; exit status 0, or 1 on a tracing error."""
    try:
        dst_ip = ipaddress.ip_address(dst)
        ipaddress.ip_address(src)
    except ValueError as exc:
        out.write(f"error: {exc}\n")
        return 2
    text = rules_file.read_text() if rules_file else kernel_ruleset(dst_ip.version == 6)
    locals_ = (
        frozenset(ipaddress.ip_address(a) for a in local_ips) if local_ips else kernel_local_ips()
    )
    try:
        ruleset = parse_ruleset(text)
        result = trace_packet(
            ruleset,
            Packet(src=src, dst=dst, protocol=proto, dport=port, origin=Origin(origin)),
            NodeView(local_ips=locals_),
        )
    except (RuleParseError, TraceError) as exc:
        out.write(f"error: {exc}\n")
        return 1
    out.write(f"packet {proto} {src} -> {dst}:{port} from {origin}\n")
    for i, outcome in enumerate(result.outcomes, 1):
        target = outcome.endpoint or "(not DNATed)"
        masq = "masqueraded" if outcome.masquerade else "source kept"
        out.write(f"  path {i}: {outcome.verdict} -> {target}, {masq}\n")
        out.write(f"    chains: {' -> '.join(outcome.chains)}\n")
    endpoints = ", ".join(sorted(result.endpoints)) or "none"
    out.write(f"possible endpoints: {endpoints}\n")
    return 0
