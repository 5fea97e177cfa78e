"""The debug reports by name: one table from a command (or ``/debug/<name>`` page) to its builder.

Why a table: the CLI and the running agent's endpoint must offer the same
reports with the same parameters. Both look a report up here and pass it
the parameters as strings (the CLI from its flags, the endpoint from the
query string), so adding a report is one entry, and the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from netagent.debug.context import DebugContext, DebugError

Builder = Callable[[DebugContext, Mapping[str, str]], dict[str, Any]]


def _services(ctx: DebugContext, params: Mapping[str, str]) -> dict[str, Any]:
    from netagent.debug.services import services_report

    return services_report(ctx, params.get("name") or None)


def _service(ctx: DebugContext, params: Mapping[str, str]) -> dict[str, Any]:
    from netagent.debug.service import service_report

    name = params.get("name")
    if not name:
        raise DebugError("debug service needs a service name (NAMESPACE/NAME)", status=400)
    return service_report(ctx, name)


def _overlay(ctx: DebugContext, params: Mapping[str, str]) -> dict[str, Any]:
    from netagent.debug.overlay import overlay_report

    return overlay_report(ctx)


def _diff(ctx: DebugContext, params: Mapping[str, str]) -> dict[str, Any]:
    from netagent.debug.diff import diff_report

    return diff_report(ctx)


def _trace(ctx: DebugContext, params: Mapping[str, str]) -> dict[str, Any]:
    import ipaddress

    from netagent.debug.modes import debug_view
    from netagent.model import IPFamily
    from netagent.proxy.iptables.trace import Origin, Packet

    try:
        src, dst = params["src"], params["dst"]
        dst_ip = ipaddress.ip_address(dst)
        ipaddress.ip_address(src)
        packet = Packet(
            src=src,
            dst=dst,
            protocol=params.get("proto", "tcp"),
            dport=int(params["port"]),
            origin=Origin(params.get("from", "pod")),
        )
    except (KeyError, ValueError) as exc:
        raise DebugError(
            f"bad trace parameters (src, dst, port, proto, from): {exc}", status=400
        ) from None
    family = IPFamily.IPV4 if dst_ip.version == 4 else IPFamily.IPV6
    return debug_view(ctx).trace(packet, family)


REPORTS: Mapping[str, Builder] = {
    "services": _services,
    "service": _service,
    "overlay": _overlay,
    "diff": _diff,
    "trace": _trace,
}


def build(name: str, ctx: DebugContext, params: Mapping[str, str]) -> dict[str, Any]:
    """Report ``name`` for ``ctx``; DebugError (404) for a report that does not exist."""
    builder = REPORTS.get(name)
    if builder is None:
        known = ", ".join(sorted(REPORTS))
        raise DebugError(f"no debug report {name!r} (known: {known})", status=404)
    return builder(ctx, params)
