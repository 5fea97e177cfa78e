"""``netagent debug trace``: "what happens to this packet on this node?", without iptables-save.

Why: the top operator complaint about kube-proxy is that debugging means
SSHing to a node and reading thousands of iptables lines. The packet tracer
that the unit tests use to check rendered rules works just as well on the
live ruleset, so the operator gets the chains a packet visits and where it
ends up (which endpoints, masqueraded or not, dropped or rejected), with
the share of new connections each path gets and, for each chain, the
Service port it belongs to: from the chain names of the desired state when
one is available, else from the rule comments netagent writes.

In nftables mode the trace is :mod:`netagent.proxy.nftables.trace` over
netagent's render of the desired state instead (see
:class:`netagent.debug.modes.NftablesView`); :func:`format_nft_trace`
prints it with the rule-by-rule steps that tracer records.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from netagent.model import IPAddress
from netagent.proxy.iptables import chain_names as cn
from netagent.proxy.iptables.parse import RuleParseError, Ruleset, parse_ruleset
from netagent.proxy.iptables.trace import (
    NodeView,
    Origin,
    Packet,
    TraceError,
    TraceResult,
    trace_packet,
)


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


def comment_owners(ruleset: Ruleset) -> dict[str, str]:
    """Chain -> ``ns/name:port`` from the comments of netagent's per-service chains.

    Used when no desired state is at hand: every rule of a per-service
    chain carries a comment that starts with its service port's name.
    """
    owners: dict[str, str] = {}
    for chains in ruleset.tables.values():
        for chain, rules in chains.items():
            if not chain.startswith(cn.PER_SERVICE_PREFIXES) or chain in owners:
                continue
            for rule in rules:
                comment = next((str(m.value) for m in rule.matches if m.kind == "comment"), "")
                first = comment.split(" ", 1)[0]
                if "/" in first:
                    owners[chain] = first
                    break
    return owners


def chain_owner(chain: str, owners: Mapping[str, str]) -> str:
    """The owner shown next to ``table/chain``: a service port, ``node``, or "" (built-in)."""
    name = chain.split("/", 1)[-1]
    if name in owners:
        return owners[name]
    if name.startswith("NETAGENT-OVERLAY-"):
        return "overlay"
    if name.startswith("NETAGENT-"):
        return "node"
    return ""


def result_paths(result: TraceResult, owners: Mapping[str, str]) -> list[dict[str, Any]]:
    """The outcomes of one trace as JSON-able paths, each chain with its owner."""
    return [
        {
            "verdict": o.verdict,
            "endpoint": o.endpoint,
            "masquerade": o.masquerade,
            "probability": round(o.probability, 6),
            "affinity": list(o.affinity),
            "chains": [{"chain": c, "owner": chain_owner(c, owners)} for c in o.chains],
        }
        for o in result.outcomes
    ]


def trace_one(
    ruleset: Ruleset, packet: Packet, local_ips: frozenset[IPAddress], owners: Mapping[str, str]
) -> dict[str, Any]:
    """Trace ``packet``; the JSON-able result (raises TraceError)."""
    result = trace_packet(ruleset, packet, NodeView(local_ips=local_ips))
    return {
        "packet": {
            "protocol": packet.protocol,
            "src": packet.src,
            "dst": packet.dst,
            "port": packet.dport,
            "from": packet.origin.value,
        },
        "paths": result_paths(result, owners),
        "endpoints": sorted(result.endpoints),
    }


def trace_report(
    *,
    text: str,
    packet: Packet,
    local_ips: frozenset[IPAddress],
    owners: Mapping[str, str] | None,
) -> dict[str, Any]:
    """``debug trace`` as a report: the packet, its paths and the possible endpoints.

    ``owners`` (chain -> service port, from the desired state) may be None:
    the rule comments are used then. Raises RuleParseError or TraceError.
    """
    ruleset = parse_ruleset(text)
    known = dict(comment_owners(ruleset))
    if owners is not None:
        known.update(owners)
    report = trace_one(ruleset, packet, local_ips, known)
    report["kind"] = "trace"
    report["owners_from"] = "desired state" if owners is not None else "rule comments"
    return report


def format_trace(report: Mapping[str, Any]) -> str:
    """The trace as text: one block per path, each chain with its owner."""
    if report.get("tracer") == "nftables":
        return format_nft_trace(report)
    p = report["packet"]
    lines = [f"packet {p['protocol']} {p['src']} -> {p['dst']}:{p['port']} from {p['from']}"]
    for i, path in enumerate(report["paths"], 1):
        target = path["endpoint"] or "(not DNATed)"
        masq = "masqueraded" if path["masquerade"] else "source kept"
        share = f"p={path['probability']:.4g}"
        if path["affinity"]:
            share += f", if the client has affinity ({', '.join(path['affinity'])})"
        lines.append(f"  path {i}: {path['verdict']} -> {target}, {masq} ({share})")
        chains = [
            f"{c['chain']} [{c['owner']}]" if c["owner"] else c["chain"] for c in path["chains"]
        ]
        lines += _wrap_chain(chains, "    chains: ", " " * 12)
    endpoints = ", ".join(report["endpoints"]) or "none"
    lines += textwrap.wrap(f"possible endpoints: {endpoints}", 100, subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def _step_line(step: Mapping[str, Any]) -> list[str]:
    owner = f" [{step['owner']}]" if step["owner"] else ""
    text = f"{step['chain']}: {step['detail']} -> {step['verdict']}{owner}"
    return textwrap.wrap(text, 100, initial_indent="    ", subsequent_indent=" " * 8)


def format_nft_trace(report: Mapping[str, Any]) -> str:
    """An nftables trace as text: the steps all paths share once, then each path's own."""
    p = report["packet"]
    lines = [f"packet {p['protocol']} {p['src']} -> {p['dst']}:{p['port']} from {p['from']}"]
    lines += textwrap.wrap(f"tracer: {report.get('note', 'nftables')}", 100, subsequent_indent="  ")
    lines += textwrap.wrap(f"outcome: {report['summary']}", 100, subsequent_indent="  ")
    paths = report["paths"]
    steps = [path["steps"] for path in paths]
    shared = 0
    while steps and all(len(s) > shared and s[shared] == steps[0][shared] for s in steps):
        shared += 1
    if shared:
        lines.append("  steps of every path:" if len(paths) > 1 else "  steps:")
        for step in steps[0][:shared]:
            lines += _step_line(step)
    for i, path in enumerate(paths, 1):
        target = path["endpoint"] or "(not DNATed)"
        masq = "masqueraded" if path["masquerade"] else "source kept"
        share = f"p={path['probability']:.4g}"
        if path["affinity"]:
            share += f", if the client has affinity ({', '.join(path['affinity'])})"
        lines.append(f"  path {i}: {path['verdict']} -> {target}, {masq} ({share})")
        for step in path["steps"][shared:]:
            lines += _step_line(step)
    endpoints = ", ".join(report["endpoints"]) or "none"
    lines += textwrap.wrap(f"possible endpoints: {endpoints}", 100, subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def _wrap_chain(parts: Sequence[str], first: str, rest: str, width: int = 100) -> list[str]:
    """``a -> b -> c`` over as many lines as ``width`` needs, breaking only between parts."""
    lines: list[str] = []
    current = first
    for i, part in enumerate(parts):
        piece = part if i == 0 else f" -> {part}"
        if i and len(current) + len(piece) > width:
            lines.append(current + " ->")
            current, piece = rest, part
        current += piece
    lines.append(current)
    return lines


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
    owners: Mapping[str, str] | None = None,
) -> int:
    """Trace one packet and print the result; exit 0, 1 on a tracing error, 2 on bad input."""
    report, status = build_trace(
        src=src,
        dst=dst,
        proto=proto,
        port=port,
        origin=origin,
        rules_file=rules_file,
        local_ips=local_ips,
        owners=owners,
    )
    if report is None:
        return status
    out.write(format_trace(report))
    return 0


def build_trace(
    *,
    src: str,
    dst: str,
    proto: str,
    port: int,
    origin: str,
    rules_file: Path | None,
    local_ips: Sequence[str],
    owners: Mapping[str, str] | None,
    errors: TextIO | None = None,
) -> tuple[dict[str, Any] | None, int]:
    """The trace report, or (None, exit status) after writing one ``error:`` line."""
    import sys

    err = errors or sys.stdout  # today's `debug trace` reports its errors on stdout
    try:
        dst_ip = ipaddress.ip_address(dst)
        ipaddress.ip_address(src)
    except ValueError as exc:
        err.write(f"error: {exc}\n")
        return None, 2
    try:
        text = rules_file.read_text() if rules_file else kernel_ruleset(dst_ip.version == 6)
        locals_ = (
            frozenset(ipaddress.ip_address(a) for a in local_ips)
            if local_ips
            else kernel_local_ips()
        )
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        err.write(f"error: cannot read the ruleset: {_one_line(exc)}\n")
        return None, 1
    try:
        report = trace_report(
            text=text,
            packet=Packet(src=src, dst=dst, protocol=proto, dport=port, origin=Origin(origin)),
            local_ips=locals_,
            owners=owners,
        )
    except (RuleParseError, TraceError) as exc:
        err.write(f"error: {exc}\n")
        return None, 1
    return report, 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        cmd = " ".join(shlex.quote(str(a)) for a in exc.cmd)
        return f"{cmd} exited {exc.returncode}: {' '.join(str(exc.stderr or '').split())}"
    return " ".join(str(exc).split()) or type(exc).__name__
