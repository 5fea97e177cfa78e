"""The desired state of one address family: validated Services + EndpointSlices -> ProxyState.

Why a pure function: the renderers must be functions of their input, so
something has to turn "every Service port and every slice we know of" into the
exact per-family view they render, and do it the same way every time. Keeping
it free of I/O, clocks and caches makes it trivial to test and lets the sync
loop rebuild it from scratch on every sync; change tracking, if it is ever
needed for speed, can sit in front of it without changing what it returns.

Semantics, matched to kube-proxy's service and endpoint-slice caches:

* Each family is proxied on its own. A Service port is kept for a family only
  when it has a cluster IP of that family; its external IPs, load-balancer IPs
  and source ranges are cut down to that family too. A single-stack IPv4
  Service therefore has no IPv6 rules at all, NodePorts included.
* Endpoints come only from slices of the family, and only from the slices of
  the Service (``kubernetes.io/service-name``) in the same namespace. A slice
  port feeds the Service port with the same name *and* protocol.
* An endpoint's address is the first of its ``addresses`` (the API declares
  them fungible and consumers may use only the first).
* The same ip:port listed by two slices (an endpoint moving between slices)
  appears once: the ready copy wins, then the local one, then the slice that
  sorts first by name, so the result does not depend on input order.
* ``Endpoint.is_local`` is ``node_name == node.name``, never true for an
  endpoint without a node name.
* Endpoint lists are sorted by (ip, port); a Service port with no endpoint is
  absent from ``ProxyState.endpoints``.
* With ``ProxyConfig.external_ip_allow_cidrs`` set, an externalIP outside
  those CIDRs is removed from its Service port (CVE-2020-8554: any user who
  may create a Service could otherwise capture traffic to any address). The
  rest of the Service is kept; the removed addresses are listed in
  ``ProxyState.rejected_external_ips`` for the caller to log and count. Doing
  it here, and nowhere else, gives every proxy mode the same answer.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace

from netagent.model import (
    Endpoint,
    EndpointSliceInfo,
    IPFamily,
    NodeInfo,
    Protocol,
    ProxyConfig,
    ProxyState,
    RejectedExternalIP,
    ServicePort,
    ServicePortName,
)

log = logging.getLogger(__name__)


def service_for_family(service: ServicePort, family: IPFamily) -> ServicePort | None:
    """``service`` with only ``family``'s addresses; None when it has no cluster IP of it."""
    cluster_ips = tuple(a for a in service.cluster_ips if IPFamily.of(a) is family)
    if not cluster_ips:
        return None
    return replace(
        service,
        cluster_ips=cluster_ips,
        external_ips=tuple(a for a in service.external_ips if IPFamily.of(a) is family),
        load_balancer_ips=tuple(a for a in service.load_balancer_ips if IPFamily.of(a) is family),
        load_balancer_source_ranges=tuple(
            n for n in service.load_balancer_source_ranges if IPFamily.of(n) is family
        ),
    )


def allowed_external_ips(
    service: ServicePort, config: ProxyConfig
) -> tuple[ServicePort, tuple[RejectedExternalIP, ...]]:
    """``service`` without the externalIPs ``config`` does not allow, and those it dropped."""
    if not config.external_ip_allow_cidrs or not service.external_ips:
        return service, ()
    kept = tuple(ip for ip in service.external_ips if config.external_ip_allowed(ip))
    if len(kept) == len(service.external_ips):
        return service, ()
    name = service.name
    rejected = tuple(
        RejectedExternalIP(name.namespace, name.name, ip)
        for ip in service.external_ips
        if ip not in kept
    )
    return replace(service, external_ips=kept), rejected


def _preference(endpoint: Endpoint) -> tuple[bool, bool]:
    """Which of two copies of one ip:port to keep: ready first, then local."""
    return (endpoint.ready, endpoint.is_local)


def build_proxy_state(
    services: Iterable[ServicePort],
    slices: Iterable[EndpointSliceInfo],
    node: NodeInfo,
    config: ProxyConfig,
    family: IPFamily,
) -> ProxyState:
    """Merge every Service port and slice into the desired state for ``family``."""
    kept: dict[ServicePortName, ServicePort] = {}
    rejected: set[RejectedExternalIP] = set()
    for service in services:
        if service.name in kept:
            log.debug("service port %s given twice; keeping the first", service.name)
            continue
        narrowed = service_for_family(service, family)
        if narrowed is None:
            log.debug("service port %s has no %s cluster IP", service.name, family.value)
            continue
        narrowed, refused = allowed_external_ips(narrowed, config)
        rejected.update(refused)
        kept[service.name] = narrowed

    # (namespace, service) -> {(port name, protocol): service port name}
    ports_by_service: dict[tuple[str, str], dict[tuple[str, Protocol], ServicePortName]] = (
        defaultdict(dict)
    )
    for name, service in kept.items():
        ports_by_service[name.namespace, name.name][name.port, service.protocol] = name

    merged: dict[ServicePortName, dict[tuple[object, int], Endpoint]] = defaultdict(dict)
    for slice_ in sorted(slices, key=lambda s: (s.namespace, s.name)):
        if slice_.address_type is not family:
            continue
        service_ports = ports_by_service.get((slice_.namespace, slice_.service_name))
        if not service_ports:
            continue
        for slice_port in slice_.ports:
            port_name = service_ports.get((slice_port.name, slice_port.protocol))
            if port_name is None:
                continue
            by_address = merged[port_name]
            for entry in slice_.endpoints:
                endpoint = Endpoint(
                    ip=entry.addresses[0],
                    port=slice_port.port,
                    ready=entry.ready,
                    serving=entry.serving,
                    terminating=entry.terminating,
                    node_name=entry.node_name,
                    zone=entry.zone,
                    zone_hints=entry.zone_hints,
                    is_local=bool(node.name) and entry.node_name == node.name,
                )
                key = (endpoint.ip, endpoint.port)
                previous = by_address.get(key)
                if previous is None or _preference(endpoint) > _preference(previous):
                    by_address[key] = endpoint

    endpoints = {
        name: tuple(sorted(by_address.values(), key=lambda e: (int(e.ip), e.port)))
        for name, by_address in sorted(merged.items())
        if by_address
    }
    return ProxyState(
        services=dict(sorted(kept.items())),
        endpoints=endpoints,
        node=node,
        config=config,
        family=family,
        rejected_external_ips=tuple(sorted(rejected, key=RejectedExternalIP.sort_key)),
    )
