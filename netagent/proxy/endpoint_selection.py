"""Which endpoints a service port's traffic may reach from this node.

Why a module of its own: every proxy mode (iptables, IPVS, nftables) must
make exactly the same choice, and the choice has more cases than it looks:
readiness, the fallback to terminating endpoints, topology hints, and the two
traffic policies interact. Keeping it a pure function of (service, endpoints,
node) lets one table of tests pin the behaviour for all renderers.

The rules, as kube-proxy applies them:

* **Cluster-policy endpoints** are computed when anything can use them: when
  internalTrafficPolicy is Cluster, or when the service is reachable from
  outside (even under externalTrafficPolicy=Local, pods and the host itself
  reach external addresses through all endpoints). They are the ready
  endpoints, narrowed to the node's zone when topology hints are usable; when
  none is ready, the endpoints that are both serving and terminating.
* **Topology hints** are usable only when the node has a zone, every ready
  endpoint carries at least one hint, and some ready endpoint is hinted for
  the node's zone; otherwise hints are ignored, so a half-hinted slice never
  blackholes traffic.
* **Local endpoints** are computed when a Local policy is in effect: this
  node's ready endpoints, or when none of them is ready, this node's serving
  and terminating ones. Hints do not apply to them.
* **has_any_endpoints** is True when some endpoint anywhere can serve. False
  means "reject"; True with an empty list for one kind of traffic means
  "drop" that traffic (a Local policy with no local endpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from netagent.model import Endpoint, NodeInfo, ServicePort

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EndpointSelection:
    """The endpoints each kind of traffic may reach, each sorted by (ip, port).

    Attributes:
        cluster: Endpoints for internal (ClusterIP) traffic, honouring
            internalTrafficPolicy: :attr:`local` when it is Local, otherwise
            :attr:`cluster_policy`.
        local: This node's usable endpoints; what external traffic reaches
            under externalTrafficPolicy=Local. Empty when no Local policy
            applies to the service.
        cluster_policy: Endpoints under Cluster policy (any node), used by
            external traffic under Cluster policy and by pod- or host-sourced
            traffic to a Local-policy service's external addresses. Empty when
            nothing uses them.
        external: Endpoints for external traffic from outside the node,
            honouring externalTrafficPolicy. Empty when the service has no
            external entry point.
        all_reachable: Union of every list above: each endpoint that some
            rule can send traffic to (one DNAT chain each; conntrack cleanup).
        has_any_endpoints: Some endpoint anywhere is ready, or serving and
            terminating. False means traffic is rejected.

    The lists hold the caller's Endpoint objects themselves, never copies, so
    a renderer may key per-endpoint data by identity.
    """

    cluster: tuple[Endpoint, ...]
    local: tuple[Endpoint, ...]
    all_reachable: tuple[Endpoint, ...]
    has_any_endpoints: bool
    cluster_policy: tuple[Endpoint, ...] = ()
    external: tuple[Endpoint, ...] = ()


def endpoint_sort_key(endpoint: Endpoint) -> tuple[int, int, int]:
    """(family, address, port): the order every renderer lists endpoints in."""
    return (endpoint.ip.version, int(endpoint.ip), endpoint.port)


def uses_cluster_endpoints(svc: ServicePort) -> bool:
    """Cluster-policy endpoints are needed (internal Cluster policy, or external access)."""
    return not svc.internal_policy_local or svc.has_external


def uses_local_endpoints(svc: ServicePort) -> bool:
    """Local endpoints are needed (either traffic policy is Local)."""
    return svc.internal_policy_local or svc.external_policy_local


def topology_applies(endpoints: Sequence[Endpoint], zone: str) -> bool:
    """True when zone hints may narrow the Cluster-policy endpoints for ``zone``."""
    if not zone:
        return False
    hinted_for_zone = False
    for ep in endpoints:
        if not ep.ready:
            continue
        if not ep.zone_hints:
            return False
        if zone in ep.zone_hints:
            hinted_for_zone = True
    return hinted_for_zone


def _cluster_policy_endpoints(endpoints: Sequence[Endpoint], zone: str) -> tuple[Endpoint, ...]:
    if topology_applies(endpoints, zone):
        chosen = tuple(ep for ep in endpoints if ep.ready and zone in ep.zone_hints)
    else:
        chosen = tuple(ep for ep in endpoints if ep.ready)
    if chosen:
        return chosen
    return tuple(ep for ep in endpoints if ep.serving and ep.terminating)


def _local_endpoints(endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    ready = tuple(ep for ep in endpoints if ep.is_local and ep.ready)
    if ready:
        return ready
    return tuple(ep for ep in endpoints if ep.is_local and ep.serving and ep.terminating)


def select_endpoints(
    svc: ServicePort, endpoints: Sequence[Endpoint], node: NodeInfo
) -> EndpointSelection:
    """Choose the endpoints of ``svc`` for each kind of traffic on ``node``."""
    ordered = sorted(endpoints, key=endpoint_sort_key)
    has_any = any(ep.ready or (ep.serving and ep.terminating) for ep in ordered)

    cluster_policy = (
        _cluster_policy_endpoints(ordered, node.zone) if uses_cluster_endpoints(svc) else ()
    )
    local = _local_endpoints(ordered) if uses_local_endpoints(svc) else ()

    cluster = local if svc.internal_policy_local else cluster_policy
    if svc.external_policy_local:
        external = local
    elif svc.has_external:
        external = cluster_policy
    else:
        external = ()

    if not local:
        all_reachable = cluster_policy
    elif not cluster_policy:
        all_reachable = local
    else:
        merged = {(ep.ip, ep.port): ep for ep in cluster_policy}
        for ep in local:
            merged.setdefault((ep.ip, ep.port), ep)
        all_reachable = tuple(sorted(merged.values(), key=endpoint_sort_key))

    return EndpointSelection(
        cluster=cluster,
        local=local,
        all_reachable=all_reachable,
        has_any_endpoints=has_any,
        cluster_policy=cluster_policy,
        external=external,
    )
