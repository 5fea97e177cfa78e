"""Why each endpoint is, or is not, selected for each kind of traffic (select_endpoints, explained).

Why a separate helper: :func:`netagent.proxy.endpoint_selection.select_endpoints`
answers *which* endpoints every renderer programs, and must stay small and
fast. ``netagent debug services`` must also say *why* an endpoint is left
out (not ready, terminating while others are ready, another zone's hint,
another node under a Local policy). This module calls ``select_endpoints``
for the verdict — so it can never disagree with what is programmed — and
only adds the reason, applying the rules listed in that module's docstring
one endpoint at a time.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from netagent.model import Endpoint, NodeInfo, ServicePort
from netagent.proxy.endpoint_selection import (
    EndpointSelection,
    endpoint_sort_key,
    select_endpoints,
    topology_applies,
)


class Traffic(str, enum.Enum):
    """Who sends the traffic: what decides which selection list applies."""

    #: To a cluster IP (internalTrafficPolicy).
    INTERNAL = "internal"
    #: From outside the node to a NodePort, external IP or LB IP (externalTrafficPolicy).
    EXTERNAL = "external"
    #: From pods or the host to an external address of an externalTrafficPolicy=Local
    #: service: not subject to the policy, these reach the Cluster-policy endpoints.
    EXTERNAL_FROM_CLUSTER = "external-from-cluster"


@dataclass(frozen=True, slots=True)
class EndpointVerdict:
    """One endpoint for one kind of traffic: selected or not, and why (one short phrase)."""

    endpoint: Endpoint
    selected: bool
    reason: str


def endpoint_state(ep: Endpoint) -> str:
    """``ready``, ``serving-terminating`` or ``not-serving`` (the three cases selection knows)."""
    if ep.ready:
        return "ready"
    if ep.serving and ep.terminating:
        return "serving-terminating"
    return "not-serving"


def _selected_list(
    sel: EndpointSelection, svc: ServicePort, traffic: Traffic
) -> tuple[Endpoint, ...]:
    if traffic is Traffic.INTERNAL:
        return sel.cluster
    if traffic is Traffic.EXTERNAL:
        return sel.external
    return sel.cluster_policy if svc.external_policy_local else sel.external


def _uses_local(svc: ServicePort, traffic: Traffic) -> str | None:
    """The Local policy that applies to ``traffic`` (its name), or None."""
    if traffic is Traffic.INTERNAL and svc.internal_policy_local:
        return "internalTrafficPolicy=Local"
    if traffic is Traffic.EXTERNAL and svc.external_policy_local:
        return "externalTrafficPolicy=Local"
    return None


def _readiness_reason(ep: Endpoint, pool: Sequence[Endpoint], where: str) -> str:
    """Why an endpoint of ``pool`` (the candidates) was passed over for readiness."""
    if ep.ready:
        return ""
    if ep.serving and ep.terminating:
        return f"terminating; {where} are ready"
    if ep.terminating:
        return "terminating and not serving"
    return "not ready"


def _reason(
    ep: Endpoint,
    selected: bool,
    svc: ServicePort,
    ordered: Sequence[Endpoint],
    node: NodeInfo,
    traffic: Traffic,
    hints: bool,
) -> str:
    policy = _uses_local(svc, traffic)
    if policy is not None:
        if selected:
            if ep.ready:
                return "local"
            return "local, terminating fallback (none ready)"
        if not ep.is_local:
            return f"not local ({policy})"
        local = [e for e in ordered if e.is_local]
        return _readiness_reason(ep, local, "other local ones") or "not selected"
    if selected:
        if not ep.ready:
            return "terminating fallback (none ready)"
        if hints:
            return f"ready, hinted for zone {node.zone}"
        return "ready"
    why = _readiness_reason(ep, ordered, "others")
    if why:
        return why
    if hints and node.zone not in ep.zone_hints:
        shown = ",".join(sorted(ep.zone_hints)) or "none"
        return f"hints for zone {shown}, node in {node.zone}"
    return "not selected"


def explain_endpoints(
    svc: ServicePort,
    endpoints: Sequence[Endpoint],
    node: NodeInfo,
    traffic: Traffic,
    selection: EndpointSelection | None = None,
) -> tuple[EndpointVerdict, ...]:
    """Every endpoint of ``svc`` for ``traffic``, in selection order, with its verdict.

    ``selected`` is exactly membership in the list :func:`select_endpoints`
    gives that traffic (pass its result as ``selection`` when it is at hand,
    for the same arguments); a service with no usable endpoint says so.
    """
    sel = selection or select_endpoints(svc, endpoints, node)
    chosen = {id(ep) for ep in _selected_list(sel, svc, traffic)}
    ordered = sorted(endpoints, key=endpoint_sort_key)
    hints = topology_applies(ordered, node.zone)
    out: list[EndpointVerdict] = []
    for ep in ordered:
        selected = id(ep) in chosen
        if not sel.has_any_endpoints:
            reason = f"{endpoint_state(ep)}: no endpoint can serve, traffic is rejected"
        elif traffic is not Traffic.INTERNAL and not svc.has_external:
            reason = "the service has no NodePort, external or load-balancer IP"
        else:
            reason = _reason(ep, selected, svc, ordered, node, traffic, hints)
        out.append(EndpointVerdict(ep, selected, reason))
    return tuple(out)
