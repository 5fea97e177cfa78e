"""``netagent debug service NS/NAME``: a Service's kernel objects next to what netagent would write.

Why: ``debug services`` says what the desired state is; when traffic still
goes wrong the question becomes "is that what the kernel holds?". This
report takes the objects the proxier owns for the Service's ports, as the
kernel holds them now (``Proxier.kernel_objects``) and as netagent would
write them (``Proxier.render_objects``), marks each present, missing,
different or unexpected, lists the Service's rules inside the shared chains
(the dispatch rules in ``NETAGENT-SERVICES`` and friends; in nftables mode
the shared balancing chains such as ``cluster-tcp-3``), and traces one
packet per frontend: from a pod, and for NodePort, external and
load-balancer addresses from outside the cluster too. What depends on the
proxy mode (those shared rules, the tracer: the live ruleset in iptables
mode, netagent's render in nftables mode) is in :mod:`netagent.debug.modes`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from netagent.debug.context import DebugContext, DebugError, service_key
from netagent.debug.modes import debug_view
from netagent.debug.services import frontends, host_port, port_entry
from netagent.model import IPAddress, IPFamily, ProxyState
from netagent.proxy.proxier import OwnedObject

PRESENT = "present"
MISSING = "missing"
DIFFERENT = "different"
UNEXPECTED = "unexpected"

#: Sources of the traced packets from outside the cluster (documentation ranges).
EXTERNAL_SOURCE = {IPFamily.IPV4: "203.0.113.7", IPFamily.IPV6: "2001:db8::7"}
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')


def compare(desired: OwnedObject | None, kernel: OwnedObject | None) -> str:
    """present / missing / different / unexpected for one (kind, key)."""
    if desired is None:
        return UNEXPECTED
    if kernel is None:
        return MISSING
    return PRESENT if desired.content == kernel.content else DIFFERENT


def object_row(desired: OwnedObject | None, kernel: OwnedObject | None) -> dict[str, Any]:
    """One owned object, desired next to kernel, as JSON."""
    some = desired or kernel
    assert some is not None
    return {
        "kind": some.kind,
        "key": some.key,
        "owner": desired.owner if desired is not None else some.owner,
        "state": compare(desired, kernel),
        "desired": list(desired.content) if desired is not None else None,
        "kernel": list(kernel.content) if kernel is not None else None,
    }


def comment_of(rule: str) -> str:
    """The comment of a rule line ("" when it has none)."""
    found = _COMMENT.search(rule)
    if found is None:
        return ""
    return found.group(1) if found.group(1) is not None else found.group(2)


def iptables_shared_rules(
    desired: Sequence[OwnedObject],
    kernel: Mapping[tuple[str, str], OwnedObject],
    names: Collection[str],
) -> list[dict[str, Any]]:
    """iptables mode: the service's rules (by comment) in node-owned chains, present or missing."""
    rows: list[dict[str, Any]] = []
    for obj in desired:
        if obj.kind != "chain" or obj.owner in names:
            continue
        live = kernel.get((obj.kind, obj.key))
        live_rules = set(live.content) if live is not None else set()
        for rule in obj.content:
            if comment_of(rule).split(" ", 1)[0] in names:
                rows.append(
                    {
                        "chain": obj.key,
                        "rule": rule,
                        "state": PRESENT if rule in live_rules else MISSING,
                    }
                )
    return rows


def pod_source(ctx: DebugContext, state: ProxyState) -> str:
    """A pod address on this node to trace from (the last host of its pod CIDR of the family)."""
    version = 4 if state.family is IPFamily.IPV4 else 6
    nets = [n for n in state.node.pod_cidrs if n.version == version]
    nets += [n for n in ctx.config.cluster_cidrs if n.version == version]
    if nets:
        return str(nets[0].broadcast_address - 1)
    return "10.244.0.254" if version == 4 else "fd00:10:244::fe"


def trace_packets(
    ctx: DebugContext, state: ProxyState, spn_ports: Sequence[Any]
) -> list[tuple[str, str, str, str, int, str]]:
    """(port name, frontend, src, dst, port, origin) of each packet to trace."""
    from netagent.proxy.iptables.trace import Origin

    out: list[tuple[str, str, str, str, int, str]] = []
    version = 4 if state.family is IPFamily.IPV4 else 6
    node_ips = [a for a in state.node.addresses if a.version == version]
    for svc in spn_ports:
        for kind, address, port, _ in frontends(svc, state.family):
            dst = address
            if kind == "NodePort":
                if not node_ips:
                    continue
                dst = str(node_ips[0])
            label = f"{kind} {host_port(dst, port)}/{svc.protocol.value}"
            out.append((str(svc.name), label, pod_source(ctx, state), dst, port, Origin.POD.value))
            if kind != "ClusterIP":
                out.append(
                    (
                        str(svc.name),
                        label,
                        EXTERNAL_SOURCE[state.family],
                        dst,
                        port,
                        Origin.EXTERNAL.value,
                    )
                )
    return out


def iptables_traces(
    ctx: DebugContext, state: ProxyState, ports: Sequence[Any], owners: Mapping[str, str]
) -> list[dict[str, Any]]:
    from netagent.debug.trace import trace_one
    from netagent.proxy.iptables.parse import RuleParseError, parse_ruleset
    from netagent.proxy.iptables.trace import Origin, Packet, TraceError

    if ctx.ruleset is None:
        return []
    try:
        ruleset = parse_ruleset(ctx.ruleset(state.family))
    except (RuleParseError, OSError, RuntimeError) as exc:
        return [{"error": f"cannot read the {state.family.value} ruleset: {exc}"}]
    local: set[IPAddress] = set(ctx.local_ips())
    local.update(state.node.addresses)
    out: list[dict[str, Any]] = []
    for name, label, src, dst, port, origin in trace_packets(ctx, state, ports):
        svc = next(p for p in ports if str(p.name) == name)
        packet = Packet(
            src=src, dst=dst, protocol=svc.protocol.lowercase, dport=port, origin=Origin(origin)
        )
        try:
            traced = trace_one(ruleset, packet, frozenset(local), owners)
        except TraceError as exc:
            traced = {
                "packet": {"src": src, "dst": dst, "port": port, "from": origin},
                "error": str(exc),
            }
        traced["port"] = name
        traced["frontend"] = label
        out.append(traced)
    return out


def service_report(ctx: DebugContext, name: str, *, traces: bool = True) -> dict[str, Any]:
    """The kernel's and netagent's objects of Service ``name`` per family, plus traces."""
    key = service_key(name)
    view = debug_view(ctx)
    families: list[dict[str, Any]] = []
    kernel_total = 0
    for state in ctx.states:
        ports = [svc for spn, svc in state.services.items() if spn.service == key]
        if not ports:
            continue
        names = {str(p.name) for p in ports} | {key}
        proxier = ctx.proxier(state.family)
        overlay = ctx.overlay_rules if state.family is IPFamily.IPV4 else None
        desired = list(proxier.render_objects(state, overlay))
        kernel = list(proxier.kernel_objects())
        kernel_total += len(kernel)
        by_key = {(o.kind, o.key): o for o in kernel}
        wanted = [o for o in desired if o.owner in names]
        wanted_keys = {(o.kind, o.key) for o in wanted}
        rows = [object_row(o, by_key.get((o.kind, o.key))) for o in wanted]
        rows += [
            object_row(None, o)
            for o in kernel
            if o.owner in names and (o.kind, o.key) not in wanted_keys
        ]
        families.append(
            {
                "family": state.family.value,
                "ports": [view.describe_port(state, p, port_entry(state, p)) for p in ports],
                "objects": rows,
                "sharedRules": view.shared_rules(state, desired, by_key, names),
                "traces": view.traces(state, ports) if traces else [],
            }
        )
    if not families:
        raise DebugError(
            f"service {key} not found in {ctx.source or 'the desired state'}"
            " (or it has no cluster IP: headless Services are not proxied)",
            status=404,
        )
    if kernel_total == 0:
        raise view.not_programmed()
    return {
        "kind": "service",
        "node": ctx.node_name,
        "source": ctx.source,
        "service": key,
        "families": families,
    }
