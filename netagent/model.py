"""The typed, frozen model that everything after the boundary works on.

Why this module exists: Kubernetes objects arrive as loosely typed dicts or
kubernetes-client models. They are translated and validated exactly once, in
:mod:`netagent.translate`, into the dataclasses below. From then on every
layer (state, endpoint selection, renderers, appliers, the packet tracer's
tests) works with typed addresses and enums and never re-checks input.

All classes are frozen and hashable, so renderers can memoise per-object
output, and change tracking can compare old and new values with ``==``.

Addresses use the standard library's :mod:`ipaddress` types rather than
netaddr's: they are cheaper to construct and compare, which matters at
100,000 endpoints; netaddr is used where its set and allocation operations
earn their keep (see docs/dependencies.md).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Kubernetes' defaults, mirrored so that every layer agrees on them.
DEFAULT_STICKY_SECONDS = 10800
MAX_STICKY_SECONDS = 86400
DEFAULT_MASQUERADE_BIT = 14


class Protocol(str, enum.Enum):
    """A Service or EndpointSlice port protocol."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def lowercase(self) -> str:
        """The spelling iptables, nft and conntrack use (``tcp``)."""
        return self.value.lower()


class TrafficPolicy(str, enum.Enum):
    """externalTrafficPolicy / internalTrafficPolicy."""

    CLUSTER = "Cluster"
    LOCAL = "Local"


class SessionAffinity(str, enum.Enum):
    """spec.sessionAffinity."""

    NONE = "None"
    CLIENT_IP = "ClientIP"


class IPFamily(str, enum.Enum):
    """An address family; each proxier instance programs exactly one."""

    IPV4 = "IPv4"
    IPV6 = "IPv6"

    @staticmethod
    def of(addr: IPAddress | IPNetwork) -> IPFamily:
        """The family of an address or network."""
        return IPFamily.IPV4 if addr.version == 4 else IPFamily.IPV6


@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    """Identifies one port of one Service: ``namespace/name:port``.

    ``port`` is the Service port's *name* (may be empty for a single unnamed
    port), exactly as kube-proxy keys its service map.
    """

    namespace: str
    name: str
    port: str = ""

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base

    @property
    def service(self) -> str:
        """``namespace/name`` of the owning Service."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """Everything the proxy needs to know about one port of one Service.

    Address tuples are sorted by the translator, so two equal Services always
    compare equal and render identically.
    """

    name: ServicePortName
    protocol: Protocol
    port: int
    cluster_ips: tuple[IPAddress, ...] = ()
    node_port: int = 0  # 0: no NodePort
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    session_affinity: SessionAffinity = SessionAffinity.NONE
    sticky_seconds: int = DEFAULT_STICKY_SECONDS
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    health_check_node_port: int = 0  # 0: none
    # Service type, kept for display (debug dumps) and for NodePort/LB gating.
    type: str = "ClusterIP"

    @property
    def external_policy_local(self) -> bool:
        """True when external traffic must stay on this node's endpoints.

        As in kube-proxy, the policy only matters for a Service that has
        some external entry point (NodePort, externalIPs or LB ingress).
        """
        return self.external_traffic_policy is TrafficPolicy.LOCAL and self.has_external

    @property
    def internal_policy_local(self) -> bool:
        """True when cluster-internal traffic must stay on this node."""
        return self.internal_traffic_policy is TrafficPolicy.LOCAL

    @property
    def has_external(self) -> bool:
        """The Service is reachable from outside (NodePort, external or LB IPs)."""
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One backend of one service port, after merging EndpointSlices.

    ``ready``/``serving``/``terminating`` follow the EndpointSlice
    conditions; ``ready`` is already normalised (nil means ready).
    ``is_local`` is set by the state builder by comparing ``node_name`` with
    the agent's node, so the renderer stays a function of its input.
    """

    ip: IPAddress
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    zone_hints: frozenset[str] = field(default_factory=frozenset)
    is_local: bool = False

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One entry of ``EndpointSlice.endpoints`` (validated)."""

    addresses: tuple[IPAddress, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str = ""
    zone: str = ""
    zone_hints: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class SlicePort:
    """One entry of ``EndpointSlice.ports``; ``name`` matches a Service port name."""

    name: str
    port: int
    protocol: Protocol


@dataclass(frozen=True, slots=True)
class EndpointSliceInfo:
    """A validated discovery.k8s.io/v1 EndpointSlice.

    ``service_name`` comes from the ``kubernetes.io/service-name`` label; a
    slice without it is rejected at the boundary. ``trigger_time`` is the
    ``endpoints.kubernetes.io/last-change-trigger-time`` annotation in epoch
    seconds (0 when absent), used for network-programming latency.
    """

    namespace: str
    name: str
    service_name: str
    address_type: IPFamily
    ports: tuple[SlicePort, ...]
    endpoints: tuple[SliceEndpoint, ...]
    trigger_time: float = 0.0

    @property
    def key(self) -> str:
        """``namespace/name`` of the slice itself."""
        return f"{self.namespace}/{self.name}"


#: The taint the cluster autoscaler puts on a node it is about to remove.
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The parts of a Node the agent uses.

    ``addresses`` are InternalIP first, then ExternalIP, in the order the
    Node lists them. ``annotations`` and ``labels`` are kept for the overlay.
    ``deleting`` (a deletionTimestamp is set) and ``taint_keys`` tell whether
    the node is going away (:attr:`going_away`), which /healthz reports.
    """

    name: str
    addresses: tuple[IPAddress, ...] = ()
    pod_cidrs: tuple[IPNetwork, ...] = ()
    zone: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    resource_version: str = ""
    deleting: bool = False
    taint_keys: tuple[str, ...] = ()

    @property
    def going_away(self) -> bool:
        """Being deleted, or tainted by the cluster autoscaler for removal.

        kube-proxy's /healthz answers 503 for such a node, so load balancers
        stop sending it new connections before it disappears.
        """
        return self.deleting or TO_BE_DELETED_TAINT in self.taint_keys

    def annotation(self, key: str) -> str | None:
        """The value of one annotation, or None."""
        for k, v in self.annotations:
            if k == key:
                return v
        return None

    def addresses_of(self, family: IPFamily) -> tuple[IPAddress, ...]:
        """The node's addresses of one family."""
        return tuple(a for a in self.addresses if IPFamily.of(a) is family)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Proxy settings that change what gets rendered.

    Attributes:
        cluster_cidrs: The pod network; traffic to a ClusterIP from outside it
            is masqueraded (kube-proxy's ``--cluster-cidr``). Empty means
            "unknown" and disables that masquerade rule.
        nodeport_addresses: CIDRs whose local addresses accept NodePorts.
            Empty means every local address (``--dst-type LOCAL``).
        masquerade_all: Masquerade every packet sent to a service IP.
        masquerade_bit: The fwmark bit that requests masquerade (14 → 0x4000).
        localhost_nodeports: Serve NodePorts on 127.0.0.1 (needs
            route_localnet=1 and the martian-packet drop rule).
        external_ip_allow_cidrs: The only CIDRs a Service's externalIPs may
            come from (CVE-2020-8554). Empty means every externalIP is
            programmed, as kube-proxy does. Applied once, in
            :func:`netagent.state.build_proxy_state`, so every proxy mode
            sees the same filtered Services.
    """

    cluster_cidrs: tuple[IPNetwork, ...] = ()
    nodeport_addresses: tuple[IPNetwork, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = DEFAULT_MASQUERADE_BIT
    localhost_nodeports: bool = True
    external_ip_allow_cidrs: tuple[IPNetwork, ...] = ()

    def external_ip_allowed(self, ip: IPAddress) -> bool:
        """Whether a Service may claim ``ip`` as an externalIP (always, with no allow-list)."""
        if not self.external_ip_allow_cidrs:
            return True
        return any(
            ip.version == net.version and ip in net for net in self.external_ip_allow_cidrs
        )

    @property
    def masquerade_mark(self) -> str:
        """The mark value as iptables prints it (``0x4000``)."""
        return hex(1 << self.masquerade_bit)


@dataclass(frozen=True, slots=True)
class RejectedExternalIP:
    """An externalIP that a Service claims but ``externalIPAllowCIDRs`` does not allow.

    One per Service (not per Service port) and address: this is what the
    agent logs and counts (``netagent_external_ips_rejected``).
    """

    namespace: str
    service: str
    ip: IPAddress

    def sort_key(self) -> tuple[str, str, int, int]:
        """Namespace, name, then the address (IPv4 first)."""
        return (self.namespace, self.service, self.ip.version, int(self.ip))

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service} {self.ip}"


@dataclass(frozen=True, slots=True)
class ProxyState:
    """The desired state for one sync: the input of every renderer.

    ``endpoints`` maps each service port to its merged endpoint list, sorted.
    A service port missing from ``endpoints`` has no endpoints.
    ``rejected_external_ips`` lists the externalIPs of this family that were
    removed from ``services`` because ``config.external_ip_allow_cidrs``
    does not allow them (sorted; renderers never read it).
    """

    services: dict[ServicePortName, ServicePort]
    endpoints: dict[ServicePortName, tuple[Endpoint, ...]]
    node: NodeInfo
    config: ProxyConfig
    family: IPFamily = IPFamily.IPV4
    rejected_external_ips: tuple[RejectedExternalIP, ...] = ()

    def __hash__(self) -> int:  # dicts are not hashable; identity is enough
        return id(self)
