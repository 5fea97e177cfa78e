"""What ``netagent debug`` does differently per proxy mode: one small view per mode.

Why: the reports are backend-neutral wherever the :class:`~netagent.proxy.proxier.Proxier`
protocol reaches (the objects netagent would write against those the kernel
holds, which is all of ``debug diff``), but four things depend on the mode:

* what a Service port looks like in the kernel's own terms (nothing to add
  in iptables mode, where the per-service chains *are* the objects; in
  nftables mode each frontend's verdict, its endpoints by slot, and the
  ClientIP-affinity chains);
* which of a Service's rules sit in chains the node owns (rule comments in
  iptables mode, the shared balancing chains in nftables mode);
* how a packet is traced: iptables mode walks the live ``iptables-save``
  ruleset; nftables mode walks netagent's render of the desired state with
  :mod:`netagent.proxy.nftables.trace` (root-less and per Service, where
  the kernel's ``nftrace`` needs root, a live packet and a ``meta nftrace
  set 1`` rule);
* what to say when the kernel holds nothing of netagent's.

:func:`debug_view` picks the view once per report from ``proxy_mode``; the
report builders call it and never test the mode themselves. ``none`` (the
overlay's chains only) keeps the iptables view, as it keeps an iptables
ruleset.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from netagent.debug.context import DebugContext, DebugError
from netagent.model import IPAddress, IPFamily, ProxyState, ServicePort
from netagent.proxy.proxier import OwnedObject

if TYPE_CHECKING:
    from netagent.proxy.iptables.trace import Packet
    from netagent.proxy.nftables.ruleset import Frontend, RenderedNft
    from netagent.proxy.nftables.trace import NftTrace, NftTracer

#: Where the nftables traces come from, for reports and help texts.
NFT_TRACER = "nftables"
NFT_TRACER_NOTE = (
    "traced over netagent's render of the desired state (a model of its table, no root needed),"
    " not through the kernel"
)


class DebugView(Protocol):
    """The mode-dependent parts of the debug reports."""

    def describe_port(
        self, state: ProxyState, svc: ServicePort, entry: dict[str, Any]
    ) -> dict[str, Any]:
        """``entry`` (a :func:`~netagent.debug.services.port_entry`) with the mode's details."""
        ...

    def shared_rules(
        self,
        state: ProxyState,
        desired: Sequence[OwnedObject],
        kernel: Mapping[tuple[str, str], OwnedObject],
        names: set[str],
    ) -> list[dict[str, Any]]:
        """The Service's rules in node-owned chains, each present in the kernel or missing."""
        ...

    def traces(self, state: ProxyState, ports: Sequence[ServicePort]) -> list[dict[str, Any]]:
        """One traced packet per frontend and origin, for ``debug service``."""
        ...

    def trace(self, packet: Packet, family: IPFamily) -> dict[str, Any]:
        """``debug trace``: one packet, as a report."""
        ...

    def not_programmed(self) -> DebugError:
        """The error when the kernel holds nothing of netagent's."""
        ...


def debug_view(ctx: DebugContext) -> DebugView:
    """The view of ``ctx``'s proxy mode."""
    if ctx.config.proxy_mode == "nftables":
        return NftablesView(ctx)
    if ctx.config.proxy_mode == "ipvs":
        return IpvsView(ctx)
    return IptablesView(ctx)


# ---- IPVS -----------------------------------------------------------------------------------


class IpvsView:
    """IPVS mode: each frontend's virtual server and real servers, from the desired state.

    There is no packet trace in this mode: the choice of real server is the
    kernel scheduler's (rr, wrr, sh, ...), not a rule a tracer could follow;
    ``debug service`` and ``diff`` show the virtual servers instead.
    """

    def __init__(self, ctx: DebugContext) -> None:
        self.ctx = ctx
        self._rendered: dict[IPFamily, Any] = {}

    def rendered(self, state: ProxyState) -> Any:
        found = self._rendered.get(state.family)
        if found is None:
            from netagent.proxy.ipvs.local_addresses import read_local_addresses
            from netagent.proxy.ipvs.render import render_ipvs

            node, other = read_local_addresses()
            found = render_ipvs(
                state,
                node_addresses=node,
                other_interface_addresses=other,
                scheduler=self.ctx.config.ipvs_scheduler,
            )
            self._rendered[state.family] = found
        return found

    def describe_port(
        self, state: ProxyState, svc: ServicePort, entry: dict[str, Any]
    ) -> dict[str, Any]:
        rendered = self.rendered(state)
        entry["ipvs"] = [
            {
                "virtualServer": str(f.server),
                "kind": f.kind,
                "realServers": [str(rs) for rs in f.real_servers],
            }
            for f in rendered.virtual_servers.values()
            if f.owner == svc.name
        ]
        return entry

    def shared_rules(
        self,
        state: ProxyState,
        desired: Sequence[OwnedObject],
        kernel: Mapping[tuple[str, str], OwnedObject],
        names: set[str],
    ) -> list[dict[str, Any]]:
        return []  # the iptables rules of IPVS mode are the same for every Service

    def traces(self, state: ProxyState, ports: Sequence[ServicePort]) -> list[dict[str, Any]]:
        return []

    def trace(self, packet: Packet, family: IPFamily) -> dict[str, Any]:
        raise DebugError(
            "debug trace is not available in ipvs mode: the kernel's IPVS scheduler picks the "
            "real server; see `netagent debug service` for the virtual servers",
            status=400,
        )

    def not_programmed(self) -> DebugError:
        return DebugError(
            "this node holds no virtual server of netagent's: netagent has not programmed it",
            status=503,
        )


# ---- iptables (and none) -------------------------------------------------------------------


class IptablesView:
    """iptables mode: per-service chains, rule comments, and the live ruleset's tracer."""

    def __init__(self, ctx: DebugContext) -> None:
        self.ctx = ctx

    def describe_port(
        self, state: ProxyState, svc: ServicePort, entry: dict[str, Any]
    ) -> dict[str, Any]:
        return entry

    def shared_rules(
        self,
        state: ProxyState,
        desired: Sequence[OwnedObject],
        kernel: Mapping[tuple[str, str], OwnedObject],
        names: set[str],
    ) -> list[dict[str, Any]]:
        from netagent.debug.service import iptables_shared_rules

        return iptables_shared_rules(desired, kernel, names)

    def traces(self, state: ProxyState, ports: Sequence[ServicePort]) -> list[dict[str, Any]]:
        from netagent.debug.service import iptables_traces
        from netagent.proxy.iptables.inspect import chain_owners

        return iptables_traces(self.ctx, state, ports, chain_owners(state))

    def trace(self, packet: Packet, family: IPFamily) -> dict[str, Any]:
        from netagent.debug.trace import trace_report
        from netagent.proxy.iptables.inspect import chain_owners
        from netagent.proxy.iptables.parse import RuleParseError
        from netagent.proxy.iptables.trace import TraceError

        ctx = self.ctx
        if ctx.ruleset is None:
            raise DebugError("this proxy mode has no iptables ruleset to trace", status=400)
        owners: dict[str, str] = {}
        for state in ctx.states:
            owners.update(chain_owners(state))
        try:
            return trace_report(
                text=ctx.ruleset(family),
                packet=packet,
                local_ips=ctx.local_ips(),
                owners=owners if ctx.states else None,
            )
        except (RuleParseError, TraceError) as exc:
            raise DebugError(str(exc), status=422) from None

    def not_programmed(self) -> DebugError:
        return DebugError(
            "this node holds no netagent rules (no NETAGENT- chains): "
            "netagent has not programmed it",
            status=503,
        )


# ---- nftables -------------------------------------------------------------------------------


class NftablesView:
    """nftables mode: frontends as map elements, shared chains, and the render's tracer.

    The render is of the desired state (what a sync of it commits, up to
    the slot order: a cold render numbers each list's endpoints in sorted
    order, the kernel keeps the order changes arrived in, which is why
    ``debug diff`` compares each frontend's endpoints as a sorted list).
    """

    def __init__(self, ctx: DebugContext) -> None:
        self.ctx = ctx
        self._rendered: dict[IPFamily, RenderedNft] = {}
        self._tracers: dict[IPFamily, NftTracer] = {}

    def rendered(self, state: ProxyState) -> RenderedNft:
        """netagent's table for ``state`` (rendered once per family and report)."""
        from netagent.proxy.nftables.render import render_nftables

        found = self._rendered.get(state.family)
        if found is None:
            overlay = self.ctx.overlay_rules if state.family is IPFamily.IPV4 else None
            found = self._rendered[state.family] = render_nftables(state, overlay)
        return found

    def local_ips(self, state: ProxyState) -> frozenset[IPAddress]:
        """The node's addresses: the Node's, and this namespace's when they can be read."""
        try:
            kernel = self.ctx.local_ips()
        except (OSError, ValueError, subprocess.CalledProcessError):
            kernel = frozenset()
        return frozenset((*state.node.addresses, *kernel))

    def tracer(self, state: ProxyState) -> NftTracer:
        """The tracer over :meth:`rendered` (one per family and report)."""
        from netagent.proxy.nftables.trace import NftTracer

        found = self._tracers.get(state.family)
        if found is None:
            found = NftTracer(self.rendered(state), self.local_ips(state))
            self._tracers[state.family] = found
        return found

    def describe_port(
        self, state: ProxyState, svc: ServicePort, entry: dict[str, Any]
    ) -> dict[str, Any]:
        rendered = self.rendered(state)
        fragment = rendered.fragments.get(svc.name)
        frontends = {f.claim: f for f in fragment.frontends} if fragment is not None else {}
        proto = svc.protocol.lowercase
        for fe in entry["frontends"]:
            if fe["type"] == "NodePort":
                claim = f"node port {proto} . {fe['port']}"
            else:
                claim = f"{fe['address']} . {proto} . {fe['port']}"
            found = frontends.get(claim)
            if found is not None:
                fe["nftables"] = frontend_details(found)
                continue
            prefix = f"service port {svc.name}: "
            conflict = next(
                (c for c in rendered.conflicts if c.startswith(prefix) and claim in c), ""
            )
            fe["nftables"] = {
                "claim": claim,
                "verdict": None,
                "note": conflict or "not in netagent's table",
                "elements": [],
                "slots": [],
            }
        entry["nftables"] = {
            "table": rendered.table,
            "sharedChains": list(fragment.shared_chains) if fragment is not None else [],
            "chains": [
                {"chain": c.name, "rules": list(c.rules)}
                for c in (fragment.chains if fragment is not None else ())
            ],
        }
        return entry

    def shared_rules(
        self,
        state: ProxyState,
        desired: Sequence[OwnedObject],
        kernel: Mapping[tuple[str, str], OwnedObject],
        names: set[str],
    ) -> list[dict[str, Any]]:
        from netagent.debug.service import MISSING, PRESENT

        rendered = self.rendered(state)
        chains: set[str] = set()
        for name, fragment in rendered.fragments.items():
            if str(name) in names:
                chains.update(fragment.shared_chains)
        rows: list[dict[str, Any]] = []
        for obj in desired:
            if obj.kind != "chain" or obj.key not in chains:
                continue
            live = kernel.get((obj.kind, obj.key))
            live_rules = set(live.content) if live is not None else set()
            for rule in obj.content:
                state_text = PRESENT if rule in live_rules else MISSING
                rows.append({"chain": obj.key, "rule": rule, "state": state_text})
        return rows

    def traces(self, state: ProxyState, ports: Sequence[ServicePort]) -> list[dict[str, Any]]:
        from netagent.debug.service import trace_packets
        from netagent.proxy.nftables.trace import Origin, Packet, TraceError

        tracer = self.tracer(state)
        by_name = {str(p.name): p for p in ports}
        out: list[dict[str, Any]] = []
        for name, label, src, dst, port, origin in trace_packets(self.ctx, state, ports):
            protocol = by_name[name].protocol.lowercase
            packet = Packet(src=src, dst=dst, protocol=protocol, dport=port, origin=Origin(origin))
            try:
                traced = nft_trace_json(tracer, tracer.trace(packet))
            except TraceError as exc:
                traced = {
                    "packet": {"src": src, "dst": dst, "port": port, "from": origin},
                    "error": str(exc),
                }
            traced["tracer"] = NFT_TRACER
            traced["port"] = name
            traced["frontend"] = label
            out.append(traced)
        return out

    def trace(self, packet: Packet, family: IPFamily) -> dict[str, Any]:
        from netagent.proxy.nftables.trace import TraceError

        state = self.ctx.state(family)
        if state is None:
            raise DebugError(f"this node proxies no {family.value} Services", status=400)
        tracer = self.tracer(state)
        try:
            traced = tracer.trace(packet)
        except TraceError as exc:
            raise DebugError(str(exc), status=422) from None
        report = {"kind": "trace", **nft_trace_json(tracer, traced)}
        report["tracer"] = NFT_TRACER
        report["owners_from"] = "the render of the desired state"
        report["note"] = NFT_TRACER_NOTE
        return report

    def not_programmed(self) -> DebugError:
        return DebugError(
            "this node holds no netagent nftables table (ip netagent, ip6 netagent): "
            "netagent has not programmed it",
            status=503,
        )


def _endpoint_text(value: str) -> str:
    """``10.244.0.3 . 8080`` (a slot map's value) as ``10.244.0.3:8080``."""
    host, _, port = value.partition(" . ")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return value
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def frontend_details(frontend: Frontend) -> dict[str, Any]:
    """One frontend in nftables terms: dispatch verdict, every element, endpoints by slot."""
    from netagent.proxy.nftables.proxier import SLOT_MAPS

    slots: list[dict[str, Any]] = []
    for set_name, key, value in frontend.elements:
        if set_name in SLOT_MAPS:
            slots.append(
                {
                    "map": set_name,
                    "slot": int(key.rpartition(" . ")[2]),
                    "endpoint": _endpoint_text(value),
                }
            )
    return {
        "claim": frontend.claim,
        "verdict": frontend.verdict,
        "elements": [
            f"{set_name} {key} : {value}" if value else f"{set_name} {key}"
            for set_name, key, value in frontend.elements
        ],
        "slots": slots,
        "endpoints": [_endpoint_text(e) for e in frontend.endpoints],
    }


def nft_trace_json(tracer: NftTracer, traced: NftTrace) -> dict[str, Any]:
    """An nftables trace in the shape of the iptables reports, plus each path's steps."""
    packet = traced.packet
    return {
        "packet": {
            "protocol": packet.protocol,
            "src": packet.src,
            "dst": packet.dst,
            "port": packet.dport,
            "from": packet.origin.value,
        },
        "paths": [
            {
                "verdict": p.verdict,
                "endpoint": p.endpoint,
                "masquerade": p.masquerade,
                "probability": round(p.probability, 6),
                "affinity": list(p.affinity),
                "chains": [{"chain": c, "owner": tracer.chain_owner(c)} for c in p.chains],
                "outcome": p.outcome,
                "service": p.service,
                "steps": [
                    {
                        "chain": s.chain,
                        "rule": s.rule,
                        "matched": s.matched,
                        "detail": s.detail,
                        "verdict": s.verdict,
                        "owner": s.owner,
                    }
                    for s in p.steps
                ],
            }
            for p in traced.paths
        ],
        "endpoints": sorted(traced.endpoints),
        "outcome": traced.outcome,
        "masquerade": traced.masquerade,
        "service": traced.service,
        "summary": traced.summary(),
        "localIPs": sorted(str(a) for a in traced.local_ips),
    }
