"""``netagent debug overlay``: this node's subnet, VTEP and per-peer entries, plan against kernel.

Why: a pod that cannot reach another node's pods is, nine times out of
ten, one missing or stale entry — an FDB entry pointing at an old public
IP, a neighbour entry with the peer's previous VTEP MAC, a route someone
deleted — or a subnet.env/CNI file the runtime never got. This report plans
the overlay exactly as the agent does (the Nodes' annotations through
:mod:`netagent.overlay.annotations`, then the pure
:func:`netagent.overlay.plan.plan_overlay`), reads what the kernel holds
through the :class:`~netagent.overlay.kernel.OverlayKernel` Protocol, and
marks every entry present, missing, or foreign (in the kernel but not
netagent's plan: stale, or someone else's).
"""

from __future__ import annotations

import ipaddress
import json
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netagent.debug.context import DebugContext, DebugError
from netagent.overlay import annotations as ann
from netagent.overlay.cni_files import cni_conflist_text, subnet_env_text
from netagent.overlay.kernel import LinkState, OverlayKernel
from netagent.overlay.model import (
    VXLAN_OVERHEAD,
    BackendType,
    FdbEntry,
    LocalNode,
    NeighEntry,
    OverlayConfig,
    RemoteNode,
    RouteEntry,
)
from netagent.overlay.plan import DesiredOverlay, plan_overlay
from netagent.overlay.underlay import UnderlayError

PRESENT = "present"
MISSING = "missing"
FOREIGN = "foreign"
DIFFERENT = "different"


@dataclass(frozen=True, slots=True)
class OverlayPlan:
    """The agent's overlay plan for this node, and what went into it."""

    settings: OverlayConfig
    local: LocalNode
    remotes: tuple[RemoteNode, ...]
    desired: DesiredOverlay
    pod_mtu: int
    invalid_peers: tuple[str, ...]


def overlay_settings(ctx: DebugContext) -> OverlayConfig:
    """The overlay's settings exactly as the agent builds them."""
    from netagent.overlay.agent import overlay_config_for

    if ctx.config.overlay_backend == "none":
        raise DebugError("the overlay is off on this node (--overlay none)", status=400)
    try:
        return overlay_config_for(ctx.config, platform.release())
    except ValueError as exc:
        raise DebugError(str(exc), status=400) from None


def _published_mac(node_annotation: str | None) -> str | None:
    if not node_annotation:
        return None
    try:
        data = json.loads(node_annotation)
    except ValueError:
        return None
    mac = data.get("VtepMAC") if isinstance(data, dict) else None
    return ann.normalize_mac(mac) if isinstance(mac, str) else None


def plan_for(ctx: DebugContext) -> OverlayPlan:
    """Plan the overlay from the Nodes, as the agent's sync does (DebugError when it cannot)."""
    settings = overlay_settings(ctx)
    own = ctx.nodes.get(ctx.node_name)
    if own is None:
        raise DebugError(f"Node {ctx.node_name} is not in {ctx.source or 'the Nodes'}", status=404)
    subnet = next((c for c in own.pod_cidrs if isinstance(c, ipaddress.IPv4Network)), None)
    if subnet is None:
        raise DebugError(
            f"Node {own.name} has no IPv4 pod CIDR yet: netagent's overlay has not claimed one",
            status=503,
        )
    if ctx.underlay is None:
        raise DebugError("the underlay of this node is unknown", status=503)
    try:
        underlay = ctx.underlay()
    except UnderlayError as exc:
        raise DebugError(str(exc), status=503) from None
    vtep_mac = None
    if settings.backend is BackendType.VXLAN:
        raw = own.annotation(ann.key(settings.annotation_prefix, ann.BACKEND_DATA))
        vtep_mac = _published_mac(raw) or ann.vtep_mac_for(own.name)
    local = LocalNode(
        name=own.name,
        subnet=subnet,
        public_ip=underlay.address,
        underlay_device=underlay.device,
        underlay_mtu=underlay.mtu,
        vtep_mac=vtep_mac,
    )
    remotes, errors = ann.remote_nodes(ctx.nodes.values(), settings.annotation_prefix, own.name)
    desired = plan_overlay(settings, local, remotes, underlay.subnets)
    vxlan = settings.backend is BackendType.VXLAN
    mtu = local.underlay_mtu - VXLAN_OVERHEAD if vxlan else local.underlay_mtu
    return OverlayPlan(settings, local, tuple(remotes), desired, mtu, tuple(map(str, errors)))


def fdb_text(e: FdbEntry) -> str:
    """``bridge fdb`` spelling of an FDB entry."""
    return f"{e.mac} dst {e.remote_ip} dev {e.device}"


def neigh_text(e: NeighEntry) -> str:
    """``ip neigh`` spelling of a neighbour entry."""
    return f"{e.address} lladdr {e.mac} dev {e.device}"


def route_text(e: RouteEntry) -> str:
    """``ip route`` spelling of one of netagent's routes."""
    return f"{e.destination} via {e.gateway} dev {e.device}" + (" onlink" if e.onlink else "")


def _vtep(plan: OverlayPlan, kernel: OverlayKernel) -> dict[str, Any] | None:
    want = plan.desired.vxlan
    if want is None:
        return None
    link = kernel.link(want.name)
    row: dict[str, Any] = {
        "device": want.name,
        "vni": want.vni,
        "port": want.port,
        "local": str(want.local),
        "mac": want.mac,
        "mtu": want.mtu,
        "address": str(want.address),
    }
    if link is None:
        return {**row, "state": MISSING, "differences": [], "kernel": None}
    differences = _link_differences(link, want.vni, want.port, str(want.local), want.mtu, want.mac)
    if want.address not in kernel.addresses(want.name):
        differences.append(f"address {want.address} missing")
    if not link.owned:
        differences.append("not created by netagent (no 'netagent' alias)")
    return {
        **row,
        "state": DIFFERENT if differences else PRESENT,
        "differences": differences,
        "kernel": {
            "vni": link.vni,
            "port": link.port,
            "local": str(link.local) if link.local else None,
            "mac": link.mac,
            "mtu": link.mtu,
            "up": link.up,
            "owned": link.owned,
        },
    }


def _link_differences(
    link: LinkState, vni: int, port: int, local: str, mtu: int, mac: str | None
) -> list[str]:
    pairs: list[tuple[str, object, object]] = [
        ("kind", link.kind, "vxlan"),
        ("vni", link.vni, vni),
        ("port", link.port, port),
        ("local", str(link.local) if link.local else None, local),
        ("mtu", link.mtu, mtu),
    ]
    if mac:
        pairs.append(("mac", link.mac.lower(), mac.lower()))
    out = [f"{name} {have} (want {need})" for name, have, need in pairs if have != need]
    if not link.up:
        out.append("down")
    return out


def _bridge(plan: OverlayPlan, kernel: OverlayKernel) -> dict[str, Any]:
    want = plan.desired.bridge
    link = kernel.link(want.name)
    row: dict[str, Any] = {"device": want.name, "address": str(want.address), "mtu": want.mtu}
    if link is None:
        return {**row, "state": MISSING, "differences": []}
    differences: list[str] = []
    if link.kind != "bridge":
        differences.append(f"kind {link.kind or 'plain'} (want bridge)")
    if link.mtu != want.mtu:
        differences.append(f"mtu {link.mtu} (want {want.mtu})")
    if want.address not in kernel.addresses(want.name):
        differences.append(f"address {want.address} missing")
    return {**row, "state": DIFFERENT if differences else PRESENT, "differences": differences}


def _entries(
    kind: str, desired: Iterable[Any], kernel: set[Any], text: Any
) -> tuple[dict[Any, dict[str, str]], list[tuple[Any, dict[str, str]]]]:
    """Desired entries marked present/missing, and the kernel's extra ones (foreign)."""
    wanted = set(desired)
    marked = {
        e: {"kind": kind, "entry": text(e), "state": PRESENT if e in kernel else MISSING}
        for e in desired
    }
    foreign = [
        (e, {"kind": kind, "entry": text(e), "state": FOREIGN}) for e in sorted(kernel - wanted)
    ]
    return marked, foreign


def _file(path: Path | None, want: str) -> dict[str, Any]:
    if path is None:
        return {"path": None, "state": "not configured"}
    try:
        have = path.read_text()
    except FileNotFoundError:
        return {"path": str(path), "state": MISSING}
    except OSError as exc:
        return {"path": str(path), "state": f"unreadable: {exc.strerror or exc}"}
    return {
        "path": str(path),
        "state": PRESENT if have == want else DIFFERENT,
        "matches": have == want,
    }


def overlay_report(ctx: DebugContext) -> dict[str, Any]:
    """The overlay report (raises DebugError when there is no overlay to show)."""
    plan = plan_for(ctx)
    if ctx.overlay_kernel is None:
        raise DebugError("no access to the overlay's kernel state", status=503)
    try:
        kernel = ctx.overlay_kernel()
    except Exception as exc:  # netlink refused: one line
        raise DebugError(f"cannot read the overlay's kernel state: {exc}", status=503) from None
    try:
        return _report(ctx, plan, kernel)
    finally:
        close = getattr(kernel, "close", None)
        if callable(close):
            close()


def _report(ctx: DebugContext, plan: OverlayPlan, kernel: OverlayKernel) -> dict[str, Any]:
    d = plan.desired
    fdb, fdb_foreign = _entries("fdb", d.fdb, kernel.fdb(d.vxlan_name), fdb_text)
    neigh, neigh_foreign = _entries("neigh", d.neigh, kernel.neighbours(d.vxlan_name), neigh_text)
    routes_now = kernel.routes()
    routes, route_foreign = _entries("route", d.routes, routes_now, route_text)
    vtep = _vtep(plan, kernel)
    if (vtep is None or vtep["state"] == MISSING) and not routes_now:
        device = f"overlay device {d.vxlan_name} and no " if vtep is not None else ""
        raise DebugError(
            f"no {device}netagent routes on this node: netagent's overlay has not programmed it",
            status=503,
        )
    peers: list[dict[str, Any]] = []
    for peer in plan.remotes:
        entries: list[dict[str, str]] = []
        entries += [row for e, row in fdb.items() if e.remote_ip == peer.public_ip]
        entries += [row for e, row in neigh.items() if e.address == peer.subnet.network_address]
        entries += [row for e, row in routes.items() if e.destination == peer.subnet]
        entries += [row for e, row in fdb_foreign if e.remote_ip == peer.public_ip]
        entries += [row for e, row in neigh_foreign if e.address == peer.subnet.network_address]
        entries += [row for e, row in route_foreign if e.destination == peer.subnet]
        peers.append(
            {
                "name": peer.name,
                "subnet": str(peer.subnet),
                "publicIP": str(peer.public_ip),
                "backend": peer.backend.value,
                "vtepMAC": peer.vtep_mac,
                "entries": entries,
            }
        )
    claimed = {id(row) for p in peers for row in p["entries"]}
    unattributed = [
        row for _, row in (*fdb_foreign, *neigh_foreign, *route_foreign) if id(row) not in claimed
    ]
    settings = plan.settings
    env_text = subnet_env_text(settings.network, plan.local.subnet, plan.pod_mtu, settings.ip_masq)
    cni_text = cni_conflist_text(plan.local.subnet, plan.pod_mtu, bridge=settings.bridge)
    return {
        "kind": "overlay",
        "node": ctx.node_name,
        "source": ctx.source,
        "backend": settings.backend.value,
        "network": str(settings.network),
        "subnet": str(plan.local.subnet),
        "publicIP": str(plan.local.public_ip),
        "underlay": {"device": plan.local.underlay_device, "mtu": plan.local.underlay_mtu},
        "podMTU": plan.pod_mtu,
        "vtep": vtep,
        "bridge": _bridge(plan, kernel),
        "peers": peers,
        "foreign": unattributed,
        "skipped": list(d.skipped) + list(plan.invalid_peers),
        "files": {
            "subnetEnv": _file(ctx.config.subnet_file, env_text),
            "cniConflist": _file(ctx.config.cni_conf_file, cni_text),
        },
    }
