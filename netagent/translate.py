"""Kubernetes objects -> the validated, frozen model: the one place that knows their shape.

Why this module exists: Services, EndpointSlices and Nodes arrive as loosely
typed camelCase dicts (YAML or JSON manifests) or as kubernetes-client model
objects. Both are turned into the same dict first, and then go through one
code path that checks every field the agent uses and builds the dataclasses
of :mod:`netagent.model`. Nothing after this module re-checks input, so
everything that could break a later layer is rejected here:

* names and namespaces must be DNS-1123 labels (subdomains for Nodes and
  EndpointSlices), because they end up inside quoted iptables comments and
  chain-name hashes; a quote, space or newline there would corrupt a restore
  payload;
* addresses and CIDRs must parse, in the family the object claims;
* ports, timeouts and enum values must be in the API's ranges.

An invalid object raises :class:`InvalidObject`, whose message is one line
that names the object and the field
(``Service default/web: spec.ports[1].port 70000 is out of range 1-65535``),
so a caller can log it and skip just that object.

Where kube-proxy and the API documentation differ, the choice is written next
to the code; the main ones:

* ``externalTrafficPolicy`` accepts only ``Cluster`` and ``Local``, as the API
  server does. ``Global`` was a value of the long-removed
  ``service.*.kubernetes.io/external-traffic`` annotation, never of the field.
* ``loadBalancerSourceRanges`` entries are trimmed of whitespace (the API lets
  padding through and kube-proxy trims it). The
  ``service.beta.kubernetes.io/load-balancer-source-ranges`` annotation is
  used when the field is empty, with the precedence the Kubernetes service
  helpers give it. kube-proxy itself reads only the field; honouring the
  deprecated annotation is a deliberate, stricter choice.
* EndpointSlice ``serving: nil`` follows ``ready``, as the API documents it
  (kube-proxy reads nil as true); ``ready: nil`` is true and
  ``terminating: nil`` false in both.
* IPv4 addresses with leading zeros (``010.0.0.1``) are read as decimal, as
  Go's ``ParseIPSloppy`` does for objects created before the API became
  strict; Python's :mod:`ipaddress` would reject them.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from netagent.model import (
    DEFAULT_STICKY_SECONDS,
    MAX_STICKY_SECONDS,
    EndpointSliceInfo,
    IPAddress,
    IPFamily,
    IPNetwork,
    NodeInfo,
    Protocol,
    ServicePort,
    ServicePortName,
    SessionAffinity,
    SliceEndpoint,
    SlicePort,
    TrafficPolicy,
)

log = logging.getLogger(__name__)

#: Label of an EndpointSlice naming the Service it belongs to.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: EndpointSlice annotation: when the change that produced the slice happened.
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
#: Deprecated Service annotation that predates spec.loadBalancerSourceRanges.
SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"
#: Node label holding the node's zone (topology hints compare against it).
ZONE_LABEL = "topology.kubernetes.io/zone"

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
_NODE_PORT_TYPES = frozenset({"NodePort", "LoadBalancer"})
_SLICE_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
_NODE_ADDRESS_ORDER = ("InternalIP", "ExternalIP")
_MAX_SHOWN = 80  # characters of an offending value quoted in a message

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SLOPPY_IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?P<frac>\.\d+)?(?P<tz>[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,  # \d is 0-9 only, not every script's digits
)
_SAFE_DISPLAY = re.compile(r"[!#-~]+")  # printable ASCII without space or '"'


class InvalidObject(ValueError):
    """A Kubernetes object the agent cannot use; ``str()`` is one line naming it and why.

    ``source`` is optional context set by whoever read the object (a manifest
    file and line); it is not part of the message.
    """

    def __init__(
        self, kind: str, namespace: str, name: str, reason: str, *, source: str = ""
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.reason = reason
        self.source = source
        super().__init__(f"{kind} {self.ref}: {reason}")

    @property
    def ref(self) -> str:
        """``namespace/name`` (just ``name`` for cluster-scoped kinds), safe to print."""
        name = _display(self.name) if self.name else "<no name>"
        return f"{_display(self.namespace)}/{name}" if self.namespace else name


class _FieldError(Exception):
    """Raised by the field readers; turned into InvalidObject by the public functions."""


def _fail(reason: str) -> NoReturn:
    raise _FieldError(reason)


# --------------------------------------------------------------------------- input shapes


def as_dict(obj: object) -> Mapping[str, Any]:
    """The camelCase dict form of a manifest dict or a kubernetes-client model object."""
    if isinstance(obj, Mapping):
        return obj
    if hasattr(obj, "openapi_types") or hasattr(obj, "attribute_map"):
        data = _api_client().sanitize_for_serialization(obj)
        if isinstance(data, Mapping):
            return data
    raise TypeError(f"expected a dict or a kubernetes-client model, got {type(obj).__name__}")


_API_CLIENT: Any = None


def _api_client() -> Any:
    """One shared ApiClient, imported lazily: the manifests path never needs the client."""
    global _API_CLIENT
    if _API_CLIENT is None:
        from kubernetes.client import ApiClient

        _API_CLIENT = ApiClient()
    return _API_CLIENT


def _display(text: str) -> str:
    """``text`` as is when it is harmless in a log line, else JSON-quoted (one line)."""
    return text if _SAFE_DISPLAY.fullmatch(text) else json.dumps(text)


def _show(value: object) -> str:
    """An offending value for a message: JSON, one line, truncated."""
    try:
        text = json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        text = json.dumps(repr(value))
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


# --------------------------------------------------------------------------- field readers


def _mapping(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(f"{path} {_show(value)} is not an object")
    return value


def _sequence(parent: Mapping[str, Any], key: str, path: str) -> Sequence[Any]:
    value = parent.get(key)
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        _fail(f"{path} {_show(value)} is not a list")
    return value


def _string(parent: Mapping[str, Any], key: str, path: str, default: str = "") -> str:
    value = parent.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        _fail(f"{path} {_show(value)} is not a string")
    return value


def _integer(parent: Mapping[str, Any], key: str, path: str) -> int | None:
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(f"{path} {_show(value)} is not an integer")
    return value


def _boolean(parent: Mapping[str, Any], key: str, path: str) -> bool | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        _fail(f"{path} {_show(value)} is not true or false")
    return value


def _in_range(value: int, path: str, low: int, high: int) -> int:
    if not low <= value <= high:
        _fail(f"{path} {value} is out of range {low}-{high}")
    return value


def _port(parent: Mapping[str, Any], key: str, path: str, *, required: bool) -> int:
    """A port number 1-65535; for an optional port, 0 (absent or explicitly 0) means none."""
    value = _integer(parent, key, path)
    if value is None:
        if required:
            _fail(f"{path} is missing")
        return 0
    if value == 0 and not required:
        return 0
    return _in_range(value, path, 1, 65535)


def _choice(value: str, path: str, allowed: Sequence[str], hint: str = "") -> str:
    if value not in allowed:
        _fail(f"{path} {_show(value)} is not one of {', '.join(allowed)}{hint}")
    return value


def _protocol(parent: Mapping[str, Any], key: str, path: str) -> Protocol:
    value = _string(parent, key, path, Protocol.TCP.value)
    return Protocol(_choice(value, path, [p.value for p in Protocol]))


def _dns_label(value: str, path: str) -> str:
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        _fail(
            f"{path} {_show(value)} is not a DNS-1123 label "
            "(a-z, 0-9 and '-', alphanumeric at both ends, at most 63 characters)"
        )
    return value


def _dns_subdomain(value: str, path: str) -> str:
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        _fail(
            f"{path} {_show(value)} is not a DNS-1123 subdomain "
            "(dot-separated labels of a-z, 0-9 and '-', at most 253 characters)"
        )
    return value


def parse_ip(text: object) -> IPAddress | None:
    """An IP address the way Kubernetes reads one, or None.

    Accepts IPv4 octets with leading zeros as decimal (Go's ParseIPSloppy);
    rejects IPv6 zone indices (``fe80::1%eth0``), which have no place in a rule.
    """
    if not isinstance(text, str):
        return None
    try:  # fast path for canonical IPv4 (inet_pton accepts exactly what ipaddress does)
        return ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text)))
    except OSError:
        pass
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        match = _SLOPPY_IPV4.fullmatch(text)
        if match is None:
            return None
        octets = [int(part) for part in match.groups()]
        if any(o > 255 for o in octets):
            return None
        return ipaddress.IPv4Address(".".join(str(o) for o in octets))
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        return None
    return addr


def parse_cidr(text: object) -> IPNetwork | None:
    """A CIDR (``addr/len``, host bits allowed and cleared, as ParseCIDRSloppy), or None."""
    if not isinstance(text, str) or text.count("/") != 1:
        return None
    addr_text, _, length_text = text.partition("/")
    addr = parse_ip(addr_text)
    if addr is None or not length_text.isdigit() or len(length_text) > 3:
        return None
    length = int(length_text)
    if length > addr.max_prefixlen:
        return None
    return ipaddress.ip_network((addr, length), strict=False)


def _ip(value: object, path: str, family: IPFamily | None = None) -> IPAddress:
    addr = parse_ip(value)
    if addr is None:
        _fail(f"{path} {_show(value)} is not an IP address")
    if family is not None and IPFamily.of(addr) is not family:
        _fail(f"{path} {_show(value)} is not an {family.value} address")
    return addr


def _cidr(value: object, path: str) -> IPNetwork:
    net = parse_cidr(value)
    if net is None:
        _fail(f"{path} {_show(value)} is not a CIDR")
    return net


def _sorted_ips(addrs: Sequence[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(sorted(set(addrs), key=lambda a: (a.version, int(a))))


def _sorted_nets(nets: Sequence[IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen)))


def _string_map(parent: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for k, v in _mapping(parent, key, path).items():
        entry = f"{path}[{_show(k)}]"
        if not isinstance(k, str):
            _fail(f"{path} key {_show(k)} is not a string")
        if not isinstance(v, str):
            _fail(f"{entry} {_show(v)} is not a string")
        result[k] = v
    return result


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class _Ref:
    """Who an object is, read before anything else so every error can name it."""

    kind: str
    namespace: str
    name: str

    def invalid(self, reason: str) -> InvalidObject:
        return InvalidObject(self.kind, self.namespace, self.name, reason)


def _identify(
    data: Mapping[str, Any],
    kind: str,
    *,
    namespaced: bool,
    name_rule: Literal["label", "subdomain"],
) -> _Ref:
    """The object's kind/namespace/name, validated; raises InvalidObject naming what it can."""
    raw_meta = data.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    raw_name, raw_ns = meta.get("name"), meta.get("namespace")
    shown_name = "" if raw_name is None else str(raw_name)
    shown_ns = (str(raw_ns) if raw_ns else "default") if namespaced else ""
    ref = _Ref(kind, shown_ns, shown_name)
    try:
        declared = data.get("kind")
        if declared is not None and declared != kind:
            _fail(f"kind {_show(declared)} is not {kind}")
        if raw_meta is None:
            _fail("metadata is missing")
        _mapping(data, "metadata", "metadata")
        name = _string(meta, "name", "metadata.name")
        if not name:
            _fail("metadata.name is missing")
        if name_rule == "label":
            _dns_label(name, "metadata.name")
        else:
            _dns_subdomain(name, "metadata.name")
        if namespaced:
            # Like kubectl, a manifest without a namespace lands in "default".
            namespace = _string(meta, "namespace", "metadata.namespace") or "default"
            _dns_label(namespace, "metadata.namespace")
    except _FieldError as exc:
        raise ref.invalid(str(exc)) from None
    return ref


# --------------------------------------------------------------------------- Service


def service_ports(obj: object) -> tuple[ServicePort, ...]:
    """One :class:`ServicePort` per ``spec.ports`` entry of a Service.

    ExternalName, headless (``clusterIP: None``) and not-yet-allocated
    (no clusterIP) Services are not proxied and yield ``()``, as in kube-proxy.
    Raises :class:`InvalidObject`.
    """
    data = as_dict(obj)
    ref = _identify(data, "Service", namespaced=True, name_rule="label")
    try:
        return _service_ports(data, ref)
    except _FieldError as exc:
        raise ref.invalid(str(exc)) from None


def _cluster_ips(spec: Mapping[str, Any]) -> tuple[IPAddress, ...] | None:
    """The Service's cluster IPs; None for a headless Service, () when unallocated."""
    single = _string(spec, "clusterIP", "spec.clusterIP")
    many = _sequence(spec, "clusterIPs", "spec.clusterIPs")
    for i, value in enumerate(many):
        if not isinstance(value, str):
            _fail(f"spec.clusterIPs[{i}] {_show(value)} is not a string")
    if single and many and many[0] != single:
        _fail(f"spec.clusterIP {_show(single)} does not match spec.clusterIPs[0] {_show(many[0])}")
    texts = list(many) if many else ([single] if single else [])
    if "None" in texts:
        if texts != ["None"]:
            _fail(f"spec.clusterIPs {_show(texts)} mixes None with addresses")
        return None
    if len(texts) > 2:
        _fail(f"spec.clusterIPs {_show(texts)} has more than two addresses")
    path = "spec.clusterIPs" if many else "spec.clusterIP"
    addrs = [_ip(t, f"{path}[{i}]" if many else path) for i, t in enumerate(texts)]
    if len(addrs) == 2 and addrs[0].version == addrs[1].version:
        _fail(f"spec.clusterIPs {_show(texts)} has two addresses of the same family")
    return tuple(addrs)


def _source_ranges(meta: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[IPNetwork, ...]:
    ranges = _sequence(spec, "loadBalancerSourceRanges", "spec.loadBalancerSourceRanges")
    if ranges:
        return _sorted_nets(
            [
                _cidr(r.strip() if isinstance(r, str) else r, f"spec.loadBalancerSourceRanges[{i}]")
                for i, r in enumerate(ranges)
            ]
        )
    # Only the annotation we use is checked: an unrelated bad annotation is
    # not this agent's business.
    annotations = _mapping(meta, "annotations", "metadata.annotations")
    path = f"metadata.annotations[{_show(SOURCE_RANGES_ANNOTATION)}]"
    text = _string(annotations, SOURCE_RANGES_ANNOTATION, path).strip()
    if not text:
        return ()
    nets = []
    for part in text.split(","):
        net = parse_cidr(part.strip())
        if net is None:
            _fail(f"{path} entry {_show(part.strip())} is not a CIDR")
        nets.append(net)
    return _sorted_nets(nets)


def _service_ports(data: Mapping[str, Any], ref: _Ref) -> tuple[ServicePort, ...]:
    meta = _mapping(data, "metadata", "metadata")
    spec = _mapping(data, "spec", "spec")
    status = _mapping(data, "status", "status")
    svc_type = _choice(_string(spec, "type", "spec.type", "ClusterIP"), "spec.type", SERVICE_TYPES)
    if svc_type == "ExternalName":
        log.debug("Service %s/%s: type ExternalName, not proxied", ref.namespace, ref.name)
        return ()
    cluster_ips = _cluster_ips(spec)
    if not cluster_ips:
        log.debug(
            "Service %s/%s: %s, not proxied",
            ref.namespace,
            ref.name,
            "headless" if cluster_ips is None else "no cluster IP allocated",
        )
        return ()

    external_ips = _sorted_ips(
        [
            _ip(v, f"spec.externalIPs[{i}]")
            for i, v in enumerate(_sequence(spec, "externalIPs", "spec.externalIPs"))
        ]
    )
    lb_ips: list[IPAddress] = []
    lb = _mapping(status, "loadBalancer", "status.loadBalancer")
    for i, ingress in enumerate(_sequence(lb, "ingress", "status.loadBalancer.ingress")):
        path = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(ingress, Mapping):
            _fail(f"{path} {_show(ingress)} is not an object")
        ip_text = _string(ingress, "ip", f"{path}.ip")
        if not ip_text:
            continue  # hostname-only ingress: nothing for the proxy to match
        addr = _ip(ip_text, f"{path}.ip")
        # ipMode Proxy: the load balancer delivers to the node, not to the VIP,
        # so kube-proxy programs no rule for it; nor do we.
        if _string(ingress, "ipMode", f"{path}.ipMode", "VIP") == "Proxy":
            continue
        lb_ips.append(addr)
    source_ranges = _source_ranges(meta, spec)

    affinity = SessionAffinity(
        _choice(
            _string(spec, "sessionAffinity", "spec.sessionAffinity", SessionAffinity.NONE.value),
            "spec.sessionAffinity",
            [a.value for a in SessionAffinity],
        )
    )
    affinity_config = _mapping(spec, "sessionAffinityConfig", "spec.sessionAffinityConfig")
    client_ip = _mapping(affinity_config, "clientIP", "spec.sessionAffinityConfig.clientIP")
    timeout_path = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
    timeout = _integer(client_ip, "timeoutSeconds", timeout_path)
    sticky = DEFAULT_STICKY_SECONDS
    if timeout is not None:
        sticky = _in_range(timeout, timeout_path, 1, MAX_STICKY_SECONDS)

    policies = [p.value for p in TrafficPolicy]
    etp_text = _string(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy")
    etp = TrafficPolicy.CLUSTER
    if etp_text:
        hint = ' ("Global" was an annotation value; use Cluster)' if etp_text == "Global" else ""
        etp = TrafficPolicy(_choice(etp_text, "spec.externalTrafficPolicy", policies, hint))
    itp_text = _string(spec, "internalTrafficPolicy", "spec.internalTrafficPolicy")
    itp = TrafficPolicy.CLUSTER
    if itp_text:
        itp = TrafficPolicy(_choice(itp_text, "spec.internalTrafficPolicy", policies))

    # Only an externally reachable Service has an external policy (the API's
    # ExternallyAccessible); normalising it keeps equal Services equal.
    externally_accessible = svc_type in _NODE_PORT_TYPES or bool(external_ips)
    if not externally_accessible:
        etp = TrafficPolicy.CLUSTER
    health_port = _port(spec, "healthCheckNodePort", "spec.healthCheckNodePort", required=False)
    if not (svc_type == "LoadBalancer" and etp is TrafficPolicy.LOCAL):
        health_port = 0

    raw_ports = _sequence(spec, "ports", "spec.ports")
    if not raw_ports:
        _fail("spec.ports is empty")
    result: list[ServicePort] = []
    seen_names: dict[str, int] = {}
    seen_ports: dict[tuple[int, Protocol], int] = {}
    seen_node_ports: dict[tuple[int, Protocol], int] = {}
    for i, raw in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        if not isinstance(raw, Mapping):
            _fail(f"{path} {_show(raw)} is not an object")
        name = _string(raw, "name", f"{path}.name")
        if name:
            _dns_label(name, f"{path}.name")
            if name in seen_names:
                _fail(f"{path}.name {_show(name)} duplicates spec.ports[{seen_names[name]}].name")
            seen_names[name] = i
        elif len(raw_ports) > 1:
            _fail(f"{path}.name is required when a Service has more than one port")
        protocol = _protocol(raw, "protocol", f"{path}.protocol")
        port = _port(raw, "port", f"{path}.port", required=True)
        if (port, protocol) in seen_ports:
            first = seen_ports[port, protocol]
            _fail(f"{path} {port}/{protocol.value} duplicates spec.ports[{first}]")
        seen_ports[port, protocol] = i
        # The API's 30000-32767 default range is the API server's business.
        node_port = _port(raw, "nodePort", f"{path}.nodePort", required=False)
        if svc_type not in _NODE_PORT_TYPES:
            node_port = 0
        if node_port:
            if (node_port, protocol) in seen_node_ports:
                first = seen_node_ports[node_port, protocol]
                _fail(f"{path}.nodePort {node_port} duplicates spec.ports[{first}].nodePort")
            seen_node_ports[node_port, protocol] = i
        result.append(
            ServicePort(
                name=ServicePortName(ref.namespace, ref.name, name),
                protocol=protocol,
                port=port,
                cluster_ips=_sorted_ips(cluster_ips),
                node_port=node_port,
                external_ips=external_ips,
                load_balancer_ips=_sorted_ips(lb_ips) if svc_type == "LoadBalancer" else (),
                load_balancer_source_ranges=source_ranges,
                session_affinity=affinity,
                sticky_seconds=sticky,
                external_traffic_policy=etp,
                internal_traffic_policy=itp,
                health_check_node_port=health_port,
                type=svc_type,
            )
        )
    return tuple(result)


# --------------------------------------------------------------------------- EndpointSlice


def endpoint_slice(obj: object) -> EndpointSliceInfo | None:
    """A validated EndpointSlice; None for an FQDN slice (the proxy has no use for it).

    Raises :class:`InvalidObject`.
    """
    data = as_dict(obj)
    ref = _identify(data, "EndpointSlice", namespaced=True, name_rule="subdomain")
    try:
        return _endpoint_slice(data, ref)
    except _FieldError as exc:
        raise ref.invalid(str(exc)) from None


def _trigger_time(annotations: Mapping[str, Any], ref: _Ref) -> float:
    """The last-change-trigger-time annotation as epoch seconds; 0 when absent or unreadable.

    It only feeds a latency metric, so a bad value is logged, not fatal.
    """
    raw = annotations.get(TRIGGER_TIME_ANNOTATION)
    if raw is None:
        return 0.0
    if isinstance(raw, datetime.datetime):  # an unquoted timestamp in YAML
        when = raw
    else:
        match = _RFC3339.fullmatch(raw) if isinstance(raw, str) else None
        if match is None:
            log.debug("EndpointSlice %s/%s: ignoring trigger time %r", ref.namespace, ref.name, raw)
            return 0.0
        text = raw.upper()
        frac = match.group("frac")
        if frac and len(frac) > 7:  # fromisoformat takes at most microseconds
            text = text.replace(frac, frac[:7], 1)
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:  # shaped like a time but not one: month 13, offset +99:00, ...
            log.debug("EndpointSlice %s/%s: ignoring trigger time %r", ref.namespace, ref.name, raw)
            return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _endpoint_slice(data: Mapping[str, Any], ref: _Ref) -> EndpointSliceInfo | None:
    meta = _mapping(data, "metadata", "metadata")
    labels = _mapping(meta, "labels", "metadata.labels")
    label_path = f"metadata.labels[{_show(SERVICE_NAME_LABEL)}]"
    service_name = _string(labels, SERVICE_NAME_LABEL, label_path)
    if not service_name:
        _fail(f"{label_path} is missing")
    _dns_label(service_name, label_path)

    address_type = _string(data, "addressType", "addressType")
    if not address_type:
        _fail("addressType is missing")
    _choice(address_type, "addressType", _SLICE_ADDRESS_TYPES)
    if address_type == "FQDN":
        log.debug("EndpointSlice %s/%s: addressType FQDN is not proxied", ref.namespace, ref.name)
        return None
    family = IPFamily(address_type)

    ports: list[SlicePort] = []
    seen_names: dict[str, int] = {}
    for i, raw in enumerate(_sequence(data, "ports", "ports")):
        path = f"ports[{i}]"
        if not isinstance(raw, Mapping):
            _fail(f"{path} {_show(raw)} is not an object")
        name = _string(raw, "name", f"{path}.name")
        if name:
            _dns_label(name, f"{path}.name")
        if name in seen_names:
            _fail(f"{path}.name {_show(name)} duplicates ports[{seen_names[name]}].name")
        seen_names[name] = i
        protocol = _protocol(raw, "protocol", f"{path}.protocol")
        if raw.get("port") is None:
            # The API allows an unset port ("all ports"); kube-proxy skips it too.
            log.debug("EndpointSlice %s/%s: %s has no port, skipped", ref.namespace, ref.name, path)
            continue
        ports.append(SlicePort(name, _port(raw, "port", f"{path}.port", required=True), protocol))

    endpoints: list[SliceEndpoint] = []
    for i, raw in enumerate(_sequence(data, "endpoints", "endpoints")):
        path = f"endpoints[{i}]"
        if not isinstance(raw, Mapping):
            _fail(f"{path} {_show(raw)} is not an object")
        addresses = _sequence(raw, "addresses", f"{path}.addresses")
        if not addresses:
            _fail(f"{path}.addresses is empty")
        addrs = tuple(_ip(a, f"{path}.addresses[{j}]", family) for j, a in enumerate(addresses))
        cond = _mapping(raw, "conditions", f"{path}.conditions")
        ready = _boolean(cond, "ready", f"{path}.conditions.ready")
        serving = _boolean(cond, "serving", f"{path}.conditions.serving")
        terminating = _boolean(cond, "terminating", f"{path}.conditions.terminating")
        ready = True if ready is None else ready
        node_name = _string(raw, "nodeName", f"{path}.nodeName")
        if node_name:
            _dns_subdomain(node_name, f"{path}.nodeName")
        hints = _mapping(raw, "hints", f"{path}.hints")
        zones: set[str] = set()
        for j, zone in enumerate(_sequence(hints, "forZones", f"{path}.hints.forZones")):
            zpath = f"{path}.hints.forZones[{j}]"
            if not isinstance(zone, Mapping):
                _fail(f"{zpath} {_show(zone)} is not an object")
            zone_name = _string(zone, "name", f"{zpath}.name")
            if zone_name:
                zones.add(zone_name)
        endpoints.append(
            SliceEndpoint(
                addresses=addrs,
                ready=ready,
                serving=ready if serving is None else serving,
                terminating=bool(terminating),
                node_name=node_name,
                zone=_string(raw, "zone", f"{path}.zone"),
                zone_hints=frozenset(zones),
            )
        )

    return EndpointSliceInfo(
        namespace=ref.namespace,
        name=ref.name,
        service_name=service_name,
        address_type=family,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
        trigger_time=_trigger_time(_mapping(meta, "annotations", "metadata.annotations"), ref),
    )


# --------------------------------------------------------------------------- Node


def node_info(obj: object) -> NodeInfo:
    """A validated Node. Raises :class:`InvalidObject`."""
    data = as_dict(obj)
    ref = _identify(data, "Node", namespaced=False, name_rule="subdomain")
    try:
        return _node_info(data, ref)
    except _FieldError as exc:
        raise ref.invalid(str(exc)) from None


def _node_info(data: Mapping[str, Any], ref: _Ref) -> NodeInfo:
    meta = _mapping(data, "metadata", "metadata")
    spec = _mapping(data, "spec", "spec")
    status = _mapping(data, "status", "status")

    by_type: dict[str, list[IPAddress]] = {t: [] for t in _NODE_ADDRESS_ORDER}
    for i, raw in enumerate(_sequence(status, "addresses", "status.addresses")):
        path = f"status.addresses[{i}]"
        if not isinstance(raw, Mapping):
            _fail(f"{path} {_show(raw)} is not an object")
        addr_type = _string(raw, "type", f"{path}.type")
        if addr_type in by_type:
            by_type[addr_type].append(_ip(raw.get("address"), f"{path}.address"))
    addresses: list[IPAddress] = []
    for addr_type in _NODE_ADDRESS_ORDER:
        addresses.extend(a for a in by_type[addr_type] if a not in addresses)

    single = _string(spec, "podCIDR", "spec.podCIDR")
    many = _sequence(spec, "podCIDRs", "spec.podCIDRs")
    if many:
        cidrs = [_cidr(c, f"spec.podCIDRs[{i}]") for i, c in enumerate(many)]
        if single and _cidr(single, "spec.podCIDR") != cidrs[0]:
            _fail(f"spec.podCIDR {_show(single)} does not match spec.podCIDRs[0] {_show(many[0])}")
    else:
        cidrs = [_cidr(single, "spec.podCIDR")] if single else []
    if len({c.version for c in cidrs}) != len(cidrs):
        _fail(f"spec.podCIDRs {_show(list(many))} has more than one CIDR of a family")

    labels = _string_map(meta, "labels", "metadata.labels")
    annotations = _string_map(meta, "annotations", "metadata.annotations")
    taint_keys: list[str] = []
    for i, raw in enumerate(_sequence(spec, "taints", "spec.taints")):
        if not isinstance(raw, Mapping):
            _fail(f"spec.taints[{i}] {_show(raw)} is not an object")
        taint_keys.append(_string(raw, "key", f"spec.taints[{i}].key"))
    return NodeInfo(
        deleting=bool(meta.get("deletionTimestamp")),
        taint_keys=tuple(sorted(set(taint_keys))),
        name=ref.name,
        addresses=tuple(addresses),
        pod_cidrs=tuple(cidrs),
        zone=labels.get(ZONE_LABEL, ""),
        labels=tuple(sorted(labels.items())),
        annotations=tuple(sorted(annotations.items())),
        resource_version=_string(meta, "resourceVersion", "metadata.resourceVersion"),
    )
