"""``netagent debug diff``: all netagent owns, desired against the kernel; exit 1 on a difference.

Why: the agent repairs drift at its next periodic sync, but an operator
(or a script, or an alert) needs to know *now* whether the node is what
netagent wants, and if not, exactly which object differs. The proxy side
is backend-neutral — the proxier's ``render_objects`` against its
``kernel_objects`` — and the overlay side reuses ``debug overlay``'s plan
and kernel reading. Each difference is one line naming the object and its
owner, e.g. ``missing chain nat NETAGENT-SVC-… (default/web:http)``, in
nftables mode ``missing element service-ips 10.96.0.10 . tcp . 80
(default/web:http)`` (a frontend's endpoints are one ``endpoints`` object,
compared as a sorted list, since their slot order depends on history), or
``missing route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink (peer node-2)``.
"""

from __future__ import annotations

from typing import Any

from netagent.debug.context import DebugContext
from netagent.debug.modes import debug_view
from netagent.debug.overlay import overlay_report
from netagent.model import IPFamily
from netagent.proxy.proxier import OwnedObject


def _proxy_differences(ctx: DebugContext) -> tuple[list[dict[str, str]], int]:
    """Differences of every family's proxier, and how many objects the kernel holds."""
    out: list[dict[str, str]] = []
    kernel_count = 0
    for state in ctx.states:
        proxier = ctx.proxier(state.family)
        overlay = ctx.overlay_rules if state.family is IPFamily.IPV4 else None
        desired = {(o.kind, o.key): o for o in proxier.render_objects(state, overlay)}
        kernel = {(o.kind, o.key): o for o in proxier.kernel_objects()}
        kernel_count += len(kernel)
        for key in sorted(desired.keys() | kernel.keys()):
            want, have = desired.get(key), kernel.get(key)
            if want is not None and have is not None and want.content == have.content:
                continue
            out.append(_proxy_row(state.family, want, have))
    return out, kernel_count


def _proxy_row(
    family: IPFamily, want: OwnedObject | None, have: OwnedObject | None
) -> dict[str, str]:
    some = want or have
    assert some is not None
    state = "missing" if have is None else "unexpected" if want is None else "different"
    owner = want.owner if want is not None else some.owner
    detail = ""
    if want is not None and have is not None and some.kind == "element":
        detail = f"{' '.join(have.content)!r} in the kernel, {' '.join(want.content)!r} wanted"
    elif want is not None and have is not None:
        noun = "endpoints" if some.kind == "endpoints" else "rules"
        gone = [r for r in want.content if r not in set(have.content)]
        extra = [r for r in have.content if r not in set(want.content)]
        detail = f"{len(gone)} {noun} missing, {len(extra)} unexpected"
        if not have.content:
            detail = f"flushed, all {len(want.content)} {noun} missing"
        elif not gone and not extra:
            detail = f"{noun} in another order"
    return {
        "area": f"proxy {family.value}",
        "state": state,
        "kind": some.kind,
        "object": some.key,
        "owner": owner,
        "detail": detail,
        "line": f"{state} {some.kind} {some.key} ({owner})" + (f": {detail}" if detail else ""),
    }


def _overlay_differences(ctx: DebugContext) -> list[dict[str, str]]:
    report = overlay_report(ctx)
    out: list[dict[str, str]] = []

    def add(state: str, kind: str, what: str, owner: str, detail: str = "") -> None:
        line = f"{state} {kind} {what} ({owner})" + (f": {detail}" if detail else "")
        out.append(
            {
                "area": "overlay",
                "state": state,
                "kind": kind,
                "object": what,
                "owner": owner,
                "detail": detail,
                "line": line,
            }
        )

    for device in (report["vtep"], report["bridge"]):
        if device is not None and device["state"] != "present":
            add(
                device["state"],
                "device",
                device["device"],
                "overlay",
                ", ".join(device["differences"]),
            )
    for peer in report["peers"]:
        for entry in peer["entries"]:
            if entry["state"] != "present":
                add(entry["state"], entry["kind"], entry["entry"], f"peer {peer['name']}")
    for entry in report["foreign"]:
        add(entry["state"], entry["kind"], entry["entry"], "no peer")
    for name, info in report["files"].items():
        if info["state"] not in ("present", "not configured"):
            add(info["state"], "file", info["path"], "overlay", name)
    return out


def diff_report(ctx: DebugContext) -> dict[str, Any]:
    """Every difference; ``equal`` is True when there is none."""
    differences, kernel_count = _proxy_differences(ctx)
    if kernel_count == 0:
        raise debug_view(ctx).not_programmed()
    overlay_checked = ctx.config.overlay_backend != "none"
    if overlay_checked:
        differences += _overlay_differences(ctx)
    return {
        "kind": "diff",
        "node": ctx.node_name,
        "source": ctx.source,
        "families": [s.family.value for s in ctx.states],
        "overlay": overlay_checked,
        "equal": not differences,
        "differences": differences,
    }
