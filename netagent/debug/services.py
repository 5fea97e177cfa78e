"""``netagent debug services``: every frontend of every Service port and what each backend gets.

Why this report: "why does my Service not reach that pod?" is the question
operators ask most, and the answer is spread over readiness, terminating
fallback, topology hints and two traffic policies. Modelled on ``cilium-dbg
service list``, it lists one row per frontend (cluster IP, each external IP,
each load-balancer IP, the NodePort) with its backends, and says for each
backend whether this node sends that frontend's traffic to it and why.

It is built from the desired state only (:func:`netagent.state.build_proxy_state`
per family, through the node sync's ``build_states``) and the same
endpoint selection every renderer uses, explained by
:mod:`netagent.proxy.endpoint_explain`; what the kernel holds is
``netagent debug service`` and ``netagent debug diff``. In nftables mode
each frontend also says what netagent's table does with it, from a render
of the same state: the dispatch verdict (``goto cluster-tcp-3``, reject,
drop), the endpoints by slot, and the ClientIP-affinity chains
(:meth:`netagent.debug.modes.NftablesView.describe_port`).
"""

from __future__ import annotations

from typing import Any

from netagent.debug.context import DebugContext, DebugError, service_key
from netagent.debug.modes import debug_view
from netagent.model import IPAddress, IPFamily, ProxyState, ServicePort, SessionAffinity
from netagent.proxy.endpoint_explain import Traffic, endpoint_state, explain_endpoints
from netagent.proxy.endpoint_selection import EndpointSelection, select_endpoints


def host_port(ip: IPAddress | str, port: int) -> str:
    """``ip:port``, with brackets for IPv6."""
    text = str(ip)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def frontends(svc: ServicePort, family: IPFamily) -> list[tuple[str, str, int, Traffic]]:
    """(type, address, port, traffic) of each frontend of ``svc`` in ``family``."""
    out: list[tuple[str, str, int, Traffic]] = [
        ("ClusterIP", str(ip), svc.port, Traffic.INTERNAL) for ip in svc.cluster_ips
    ]
    out += [("ExternalIP", str(ip), svc.port, Traffic.EXTERNAL) for ip in svc.external_ips]
    out += [("LoadBalancer", str(ip), svc.port, Traffic.EXTERNAL) for ip in svc.load_balancer_ips]
    if svc.node_port:
        any_address = "0.0.0.0" if family is IPFamily.IPV4 else "::"
        out.append(("NodePort", any_address, svc.node_port, Traffic.EXTERNAL))
    return out


def _backends(
    state: ProxyState, svc: ServicePort, traffic: Traffic, sel: EndpointSelection
) -> list[dict[str, Any]]:
    endpoints = state.endpoints.get(svc.name, ())
    verdicts = explain_endpoints(svc, endpoints, state.node, traffic, sel)
    from_cluster = None
    if traffic is Traffic.EXTERNAL and svc.external_policy_local:
        others = explain_endpoints(svc, endpoints, state.node, Traffic.EXTERNAL_FROM_CLUSTER, sel)
        from_cluster = {id(v.endpoint): v for v in others}
    rows: list[dict[str, Any]] = []
    for verdict in verdicts:
        ep = verdict.endpoint
        row: dict[str, Any] = {
            "address": str(ep),
            "state": endpoint_state(ep),
            "node": ep.node_name,
            "local": ep.is_local,
            "zone": ep.zone,
            "zoneHints": sorted(ep.zone_hints),
            "selected": verdict.selected,
            "reason": verdict.reason,
        }
        if from_cluster is not None:
            other = from_cluster[id(ep)]
            row["selectedFromCluster"] = other.selected
            row["reasonFromCluster"] = other.reason
        rows.append(row)
    return rows


def port_entry(state: ProxyState, svc: ServicePort) -> dict[str, Any]:
    """One service port in one family: its settings and its frontends with their backends."""
    entry: dict[str, Any] = {
        "name": str(svc.name),
        "service": svc.name.service,
        "port": svc.name.port,
        "family": state.family.value,
        "type": svc.type,
        "protocol": svc.protocol.value,
        "externalTrafficPolicy": svc.external_traffic_policy.value,
        "internalTrafficPolicy": svc.internal_traffic_policy.value,
        "sessionAffinity": svc.session_affinity.value,
        "stickySeconds": (
            svc.sticky_seconds if svc.session_affinity is SessionAffinity.CLIENT_IP else None
        ),
        "healthCheckNodePort": svc.health_check_node_port or None,
        "frontends": [],
    }
    sel = select_endpoints(svc, state.endpoints.get(svc.name, ()), state.node)
    for kind, address, port, traffic in frontends(svc, state.family):
        frontend: dict[str, Any] = {
            "type": kind,
            "address": address,
            "port": port,
            "frontend": f"{host_port(address, port)}/{svc.protocol.value}",
            "traffic": traffic.value,
            "backends": _backends(state, svc, traffic, sel),
        }
        if kind == "LoadBalancer" and svc.load_balancer_source_ranges:
            frontend["sourceRanges"] = [str(n) for n in svc.load_balancer_source_ranges]
        entry["frontends"].append(frontend)
    return entry


def services_report(ctx: DebugContext, name: str | None = None) -> dict[str, Any]:
    """Every service port of every family (or of Service ``name``, ``ns/name``)."""
    key = service_key(name) if name else None
    view = debug_view(ctx)
    ports: list[dict[str, Any]] = []
    for state in ctx.states:
        for spn, svc in state.services.items():
            if key is None or spn.service == key:
                ports.append(view.describe_port(state, svc, port_entry(state, svc)))
    if key is not None and not ports:
        raise DebugError(
            f"service {key} not found in {ctx.source or 'the desired state'}", status=404
        )
    return {
        "kind": "services",
        "node": ctx.node_name,
        "source": ctx.source,
        "services": ports,
    }
