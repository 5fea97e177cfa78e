"""One place that turns a debug report (a JSON-able dict) into table, JSON or YAML text.

Why one module: the report builders return plain data so the running agent
can serve the very same reports; how they look on a terminal is decided
here alone, per report ``kind``. Tables aim at a 100-column terminal:
columns size to their content, and long rule lines wrap under their row
instead of being cut.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

FORMATS = ("table", "json", "yaml")
WIDTH = 100

try:  # libyaml is much faster for the 10,000-service report
    _Dumper: Any = yaml.CSafeDumper
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Dumper = yaml.SafeDumper


def render(report: Mapping[str, Any], fmt: str) -> str:
    """``report`` as text in format ``fmt`` (table, json or yaml), ending in a newline."""
    if fmt == "json":
        return to_json(report)
    if fmt == "yaml":
        text: str = yaml.dump(dict(report), Dumper=_Dumper, sort_keys=False)
        return text
    if fmt != "table":
        raise ValueError(f"unknown output format {fmt!r} (known: {', '.join(FORMATS)})")
    table = _TABLES.get(str(report.get("kind")))
    if table is None:
        return to_json(report)
    return table(report)


def to_json(report: Mapping[str, Any]) -> str:
    """JSON with each element of a top-level list on its own line.

    Indenting the whole report would use the json module's pure-Python
    encoder, which needs seconds for 10,000 services; one line per service
    port (or difference, or peer) keeps the C encoder, ``grep`` and ``jq``
    work on it, and it is still one JSON document.
    """
    parts = []
    for key, value in report.items():
        head = "  " + json.dumps(key) + ": "
        if isinstance(value, list) and value:
            items = ",\n    ".join(json.dumps(item) for item in value)
            parts.append(f"{head}[\n    {items}\n  ]")
        else:
            parts.append(head + json.dumps(value))
    return "{\n" + ",\n".join(parts) + "\n}\n"


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Aligned columns; the last one is not padded, and wraps under itself past :data:`WIDTH`."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    start = len(indent) + sum(w + 2 for w in widths[:-1])
    room = WIDTH - start
    out = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        last = row[-1]
        if len(last) <= room or room < 20:
            out.append((indent + "  ".join([*cells, last])).rstrip())
            continue
        pieces = textwrap.wrap(last, room, break_on_hyphens=False) or [""]
        out.append((indent + "  ".join([*cells, pieces[0]])).rstrip())
        out.extend(" " * start + piece for piece in pieces[1:])
    return out


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=indent,
        subsequent_indent=indent + "    ",
        break_on_hyphens=False,
        break_long_words=True,
    )


def _header(report: Mapping[str, Any], what: str) -> str:
    source = f", desired state from {report['source']}" if report.get("source") else ""
    return f"{what} on node {report.get('node', '?')}{source}"


# ---- services ------------------------------------------------------------------------------


def _why(backend: Mapping[str, Any]) -> str:
    text = str(backend["reason"]).replace("externalTrafficPolicy", "eTP")
    text = text.replace("internalTrafficPolicy", "iTP")
    if "selectedFromCluster" in backend:
        verdict = "yes" if backend["selectedFromCluster"] else "no"
        text += f"; pods/host: {verdict}"
    return text


def port_lines(port: Mapping[str, Any]) -> list[str]:
    """One service port: a settings line, then one row per (frontend, backend)."""
    affinity = port["sessionAffinity"]
    if port.get("stickySeconds"):
        affinity += f" {port['stickySeconds']}s"
    settings = (
        f"{port['name']}  {port['type']} {port['protocol']} {port['family']}  trafficPolicy "
        f"external={port['externalTrafficPolicy']} internal={port['internalTrafficPolicy']}  "
        f"affinity={affinity}"
    )
    lines = _wrap(settings, "")
    nft_port = port.get("nftables")
    if nft_port is not None and nft_port["chains"]:
        lines.append("  nftables chains of its own (ClientIP affinity):")
        for chain in nft_port["chains"]:
            lines += _wrap(f"{chain['chain']}: {'; '.join(chain['rules'])}", "    ")
    for vs in port.get("ipvs") or ():
        lines += _wrap(f"IPVS {vs['kind']}: {vs['virtualServer']}", "  ")
        for rs in vs["realServers"] or ["(no real server: the kernel refuses new connections)"]:
            lines.append(f"    -> {rs}")
    for fe in port["frontends"]:
        kind = fe["type"]
        if fe.get("sourceRanges"):
            kind += ", source ranges " + ",".join(fe["sourceRanges"])
        lines.append(f"  {fe['frontend']} ({kind})")
        if fe.get("nftables") is not None:
            lines += _nft_frontend_lines(fe["nftables"])
        if not fe["backends"]:
            lines.append("    no endpoints: traffic is rejected")
            continue
        rows = [
            [
                f"{i} => {be['address']}",
                be["state"],
                (be["node"] or "?") + ("*" if be["local"] else ""),
                "yes" if be["selected"] else "no",
                _why(be),
            ]
            for i, be in enumerate(fe["backends"], 1)
        ]
        lines += columns(("BACKEND", "STATE", "NODE", "USED", "WHY"), rows, "    ")
    return lines


_DISPATCH_MAPS = ("service-ips ", "service-nodeports ")


def _nft_frontend_lines(nft: Mapping[str, Any]) -> list[str]:
    """A frontend in nftables terms: its dispatch verdict, slots, and its other elements."""
    if nft["verdict"] is None:
        return _wrap(f"nftables: {nft['claim']}: {nft['note']}", "    ")
    lines = _wrap(f"nftables: {nft['claim']} -> {nft['verdict']}", "    ")
    slots: dict[str, list[str]] = {}
    for slot in nft["slots"]:
        slots.setdefault(slot["map"], []).append(f"{slot['slot']} => {slot['endpoint']}")
    for name, texts in slots.items():
        lines += _wrap(f"slots of @{name}: {', '.join(texts)}", "      ")
    for element in nft["elements"]:
        if element.split(" ", 1)[0] not in slots and not element.startswith(_DISPATCH_MAPS):
            lines += _wrap(f"element {element}", "      ")
    return lines


def _services_table(report: Mapping[str, Any]) -> str:
    legend = "(NODE: * is this node; WHY: eTP/iTP are external/internalTrafficPolicy)"
    lines = [_header(report, "services"), legend, ""]
    if not report["services"]:
        lines.append("no service ports")
    for port in report["services"]:
        lines += port_lines(port)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ---- service -------------------------------------------------------------------------------


def _object_lines(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Owned objects as aligned rows; a different one is followed by its rule differences."""
    rows = [[o["state"], o["kind"], o["key"], o["owner"]] for o in objects]
    table = columns(("STATE", "KIND", "KEY", "OWNER"), rows, "  ")
    lines = [table[0]]
    for line, obj in zip(table[1:], objects, strict=True):
        lines.append(line)
        desired, kernel = obj.get("desired"), obj.get("kernel")
        if obj["state"] != "different" or desired is None or kernel is None:
            continue
        for rule in desired:
            if rule not in kernel:
                lines += _wrap(f"- {rule}", "      ")
        for rule in kernel:
            if rule not in desired:
                lines += _wrap(f"+ {rule}", "      ")
        if set(desired) == set(kernel):
            lines.append("      (same rules, another order)")
    return lines


def _trace_lines(trace: Mapping[str, Any]) -> list[str]:
    p = trace.get("packet", {})
    head = f"{trace.get('frontend', '')} from {p.get('from')} {p.get('src')}:"
    if "error" in trace:
        return _wrap(f"{head} cannot trace: {trace['error']}", "  ")
    parts = []
    for path in trace["paths"]:
        if path["affinity"]:
            continue
        target = path["endpoint"] or "(not DNATed)"
        masq = ", masqueraded" if path["masquerade"] else ""
        parts.append(f"{path['verdict']} -> {target} p={path['probability']:.3g}{masq}")
    sticky = sum(1 for path in trace["paths"] if path["affinity"])
    if sticky:
        parts.append(f"{sticky} more with affinity")
    return _wrap(f"{head} " + "; ".join(parts or ["no path"]), "  ")


def _service_table(report: Mapping[str, Any]) -> str:
    lines = [_header(report, f"service {report['service']}")]
    for fam in report["families"]:
        lines += ["", f"== {fam['family']}", ""]
        for port in fam["ports"]:
            lines += port_lines(port)
        lines += ["", "objects (kernel against what netagent would write):"]
        lines += _object_lines(fam["objects"])
        if fam["sharedRules"]:
            lines += ["", "rules in shared chains:"]
            for rule in fam["sharedRules"]:
                text = rule["rule"]
                if not text.startswith("-A "):  # an nft rule does not name its chain
                    text = f"{rule['chain']}: {text}"
                lines += _wrap(f"{rule['state']:<8} {text}", "  ")
        if fam["traces"]:
            lines += ["", "one packet per frontend (new client, probability per path):"]
            if any(t.get("tracer") == "nftables" for t in fam["traces"]):
                lines += _wrap("(traced over netagent's render of the desired state)", "")
            for trace in fam["traces"]:
                lines += _trace_lines(trace)
    return "\n".join(lines) + "\n"


# ---- overlay -------------------------------------------------------------------------------


def _device_line(label: str, device: Mapping[str, Any] | None, fields: Sequence[str]) -> list[str]:
    if device is None:
        return []
    shown = "  ".join(f"{f} {device[f]}" for f in fields if device.get(f) is not None)
    state = device["state"]
    if device.get("differences"):
        state += ": " + ", ".join(device["differences"])
    return _wrap(f"{label:<7}{state:<9}{device['device']}  {shown}", "")


def _overlay_table(report: Mapping[str, Any]) -> str:
    lines = [_header(report, f"overlay ({report['backend']})")]
    lines += _wrap(
        f"subnet {report['subnet']} of {report['network']}, public IP {report['publicIP']} "
        f"(underlay {report['underlay']['device']}, MTU {report['underlay']['mtu']}), "
        f"pod MTU {report['podMTU']}",
        "",
    )
    lines.append("")
    lines += _device_line("VTEP", report["vtep"], ("vni", "mac", "mtu", "local", "address"))
    lines += _device_line("bridge", report["bridge"], ("address", "mtu"))
    lines.append("")
    peer_rows = [
        [p["name"], p["subnet"], p["publicIP"], p["backend"], p["vtepMAC"] or "-"]
        for p in report["peers"]
    ]
    if not peer_rows:
        lines.append("no peers")
    for i, line in enumerate(
        columns(("PEER", "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC"), peer_rows)
    ):
        lines.append(line)
        if i == 0:
            continue
        for entry in report["peers"][i - 1]["entries"]:
            lines.append(f"    {entry['state']:<8} {entry['kind']:<6} {entry['entry']}")
    if report["foreign"]:
        lines += ["", "entries of no peer:"]
        lines += [f"    {e['state']:<8} {e['kind']:<6} {e['entry']}" for e in report["foreign"]]
    if report["skipped"]:
        lines += ["", "peers not programmed:"]
        for reason in report["skipped"]:
            lines += _wrap(reason, "    ")
    lines += ["", "files:"]
    files = report["files"]
    rows = [
        ["subnet.env", files["subnetEnv"]["state"], files["subnetEnv"]["path"] or "-"],
        ["CNI conflist", files["cniConflist"]["state"], files["cniConflist"]["path"] or "-"],
    ]
    lines += columns(("FILE", "STATE", "PATH"), rows, "  ")[1:]
    return "\n".join(lines) + "\n"


# ---- diff and trace ------------------------------------------------------------------------


def _diff_table(report: Mapping[str, Any]) -> str:
    checked = ", ".join(f"proxy {f}" for f in report["families"])
    if report["overlay"]:
        checked += ", overlay"
    lines = [_header(report, f"diff of {checked}")]
    for diff in report["differences"]:
        lines += _wrap(diff["line"], "  ")
    n = len(report["differences"])
    lines.append("no differences" if n == 0 else f"{n} difference{'s' if n != 1 else ''}")
    return "\n".join(lines) + "\n"


def _trace_table(report: Mapping[str, Any]) -> str:
    from netagent.debug.trace import format_trace

    return format_trace(report)


_TABLES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "services": _services_table,
    "service": _service_table,
    "overlay": _overlay_table,
    "diff": _diff_table,
    "trace": _trace_table,
}
