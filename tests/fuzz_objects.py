"""Hypothesis strategies for Services, EndpointSlices and Nodes, legal and malformed.

Why they live here: the fuzz unit tests (``tests/unit/test_fuzz_objects.py``)
and the real-kernel fuzz case (``tests/lab/test_reliability_fuzz_lab.py``)
draw from the same strategies, so what the kernel test proves is the same
input the fast tests shrink.

Two families of input, as issue 14 case 4 asks:

* **API-legal** objects (:func:`legal_batch`): odd but valid values an API
  server accepts and stores: 63-character names, 253-character EndpointSlice
  and Node names, up to 100 ports, every protocol, headless, ExternalName and
  dual-stack Services, IPv6-only objects in an IPv4 cluster, hostname-only
  and ``ipMode: Proxy`` ingress, source ranges with padding, slices with
  FQDN addresses, duplicate endpoints, null conditions, no ports or unset
  ports, unicode in annotations, managedFields and fields this agent does not
  know. Addresses and node ports are allocated per batch, as the API server's
  allocators would (no two Services share one), from pools disjoint from the
  lab's addresses, and EndpointSlices only point at the batch's own
  Services, so no legal fuzz object can change what a hand-written Service
  does. The agent must accept every one of them.
* **Malformed** objects (:func:`malformed_object`): a legal object with one
  :class:`Corruption` an API server would refuse (a port out of range, a
  wrong type, a bad address, an IPv6 endpoint in an IPv4 slice, a unicode or
  over-long name, an unknown enum value, ...), each with the field path its
  error must name; and :func:`mangled_object`, a legal object with a random
  subtree replaced or deleted, for which only "no crash" is expected.

Names of fuzz objects start with ``fz``, so they never collide with the
lab's or a test's own objects.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import strategies as st

#: Pools the API "allocators" of a batch hand out; none overlaps the lab's addresses
#: (10.96.0.0/24 services, 10.244.0.0/16 pods, 192.0.2.0/24, 198.51.100.0/24).
CLUSTER_V4 = ipaddress.ip_network("10.97.0.0/16")
CLUSTER_V6 = ipaddress.ip_network("fd00:97::/108")
EXTERNAL_V4 = ipaddress.ip_network("203.0.113.0/24")
EXTERNAL_V6 = ipaddress.ip_network("2001:db8:97::/112")
ENDPOINT_V4 = ipaddress.ip_network("10.250.0.0/16")
ENDPOINT_V6 = ipaddress.ip_network("fd00:250::/112")
NODE_V4 = ipaddress.ip_network("172.31.0.0/16")
#: Fuzz node ports; hand-written lab Services use 30000-30999.
NODE_PORTS = range(31000, 32768)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
FLANNEL = "flannel.alpha.coreos.com"
KINDS = ("Service", "EndpointSlice", "Node")
PROTOCOLS = ("TCP", "UDP", "SCTP")

Obj = dict[str, Any]

# ---- names -----------------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


@st.composite
def dns_label(draw: st.DrawFn, *, prefix: str = "", max_size: int = 63) -> str:
    """An RFC 1123 label: ``prefix`` (alphanumeric at its start) and up to ``max_size`` in all."""
    extra = draw(st.integers(0 if prefix else 1, max_size - len(prefix)))
    if extra == 0:
        return prefix
    if extra == 1:
        return prefix + draw(st.sampled_from(_ALNUM))
    middle = draw(st.text(alphabet=_ALNUM + "-", min_size=extra - 2, max_size=extra - 2))
    first = draw(st.sampled_from(_ALNUM + "-")) if prefix else draw(st.sampled_from(_ALNUM))
    return prefix + first + middle + draw(st.sampled_from(_ALNUM))


def service_name() -> st.SearchStrategy[str]:
    """A DNS-1035 label starting with ``fz`` (Service names), up to 63 characters."""
    return dns_label(prefix="fz")


@st.composite
def subdomain(draw: st.DrawFn, *, prefix: str = "fz") -> str:
    """A DNS-1123 subdomain starting with ``prefix``, up to 253 characters."""
    labels = [draw(dns_label(prefix=prefix))]
    labels += draw(st.lists(dns_label(), max_size=4))
    name = ".".join(labels)
    return name[:253].rstrip(".-") or prefix


def port_name() -> st.SearchStrategy[str]:
    return dns_label(max_size=15)


#: Annotation values may hold anything: unicode, newlines, quotes, JSON.
ANNOTATION_VALUE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(['{"a": 1}', "line one\nline two", 'quote " and \\', "ℵ₀ naïve 🚀", ""]),
)


@st.composite
def metadata_extras(draw: st.DrawFn) -> Obj:
    """Fields of ``metadata`` the agent must ignore."""
    extra: Obj = {}
    if draw(st.booleans()):
        extra["labels"] = draw(
            st.dictionaries(
                st.sampled_from(["app", "tier", "example.com/team", "fz"]),
                dns_label(max_size=20),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        extra["annotations"] = draw(
            st.dictionaries(
                st.sampled_from(
                    ["example.com/note", "fz.io/unicode-value", "kubectl.kubernetes.io/x"]
                ),
                ANNOTATION_VALUE,
                max_size=3,
            )
        )
    if draw(st.booleans()):
        extra["uid"] = "0b5a3f0e-0000-4000-8000-000000000000"
        extra["resourceVersion"] = str(draw(st.integers(1, 2**40)))
        extra["creationTimestamp"] = "2026-01-02T03:04:05Z"
        extra["generation"] = draw(st.integers(1, 100))
    if draw(st.booleans()):
        extra["managedFields"] = [
            {
                "manager": "kubectl",
                "operation": "Update",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:ports": {}}},
                "time": "2026-01-02T03:04:05Z",
            }
        ]
        extra["finalizers"] = ["example.com/keep"]
    return extra


# ---- a batch's allocator -----------------------------------------------------------------------


class Allocator:
    """Hands out unique addresses and node ports for one batch, as the API server does."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def _take(self, pool: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
        n = self._next.get(pool, 1)
        self._next[pool] = n + 1
        return str(net[n])

    def cluster_ip(self, family: int) -> str:
        return self._take("c4", CLUSTER_V4) if family == 4 else self._take("c6", CLUSTER_V6)

    def external_ip(self, family: int) -> str:
        return self._take("e4", EXTERNAL_V4) if family == 4 else self._take("e6", EXTERNAL_V6)

    def endpoint_ip(self, family: int) -> str:
        return self._take("p4", ENDPOINT_V4) if family == 4 else self._take("p6", ENDPOINT_V6)

    def node_ip(self) -> str:
        return self._take("n4", NODE_V4)

    def node_port(self) -> int:
        n = self._next.get("np", 0)
        self._next["np"] = n + 1
        return NODE_PORTS[n % len(NODE_PORTS)]


# ---- legal Services ----------------------------------------------------------------------------


@st.composite
def legal_service(draw: st.DrawFn, alloc: Allocator) -> Obj:
    """A Service an API server would store (defaults filled in, as it does)."""
    name = draw(service_name())
    svc_type = draw(
        st.sampled_from(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer", "ExternalName"])
    )
    meta: Obj = {"name": name, "namespace": draw(st.sampled_from(["default", "fz-ns"]))}
    meta.update(draw(metadata_extras()))
    spec: Obj = {"type": svc_type}
    obj: Obj = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    if draw(st.booleans()):
        obj["fzFutureField"] = {"nested": [1, "two"]}  # a field from a newer API
    if svc_type == "ExternalName":
        spec["externalName"] = "db.example.com"
        if draw(st.booleans()):
            spec["ports"] = [{"name": "x", "port": 5432, "protocol": "TCP"}]
        return obj

    families = draw(st.sampled_from([(4,), (4,), (4, 6), (6, 4), (6,)]))
    headless = svc_type == "ClusterIP" and draw(st.integers(0, 9)) == 0
    if headless:
        spec["clusterIP"] = "None"
        spec["clusterIPs"] = ["None"]
    else:
        ips = [alloc.cluster_ip(f) for f in families]
        spec["clusterIP"] = ips[0]
        spec["clusterIPs"] = ips
    spec["ipFamilies"] = ["IPv4" if f == 4 else "IPv6" for f in families]
    spec["ipFamilyPolicy"] = "SingleStack" if len(families) == 1 else "RequireDualStack"

    ports: list[Obj] = []
    if draw(st.integers(0, 9)) == 0:  # a huge port list, generated without a draw per port
        for i in range(draw(st.integers(20, 100))):
            port = {
                "name": f"p{i}",
                "port": 1000 + i,
                "protocol": PROTOCOLS[i % 3],
                "targetPort": 8000 + i,
            }
            if svc_type in ("NodePort", "LoadBalancer"):
                port["nodePort"] = alloc.node_port()
            ports.append(port)
    else:
        n_ports = draw(st.integers(1, 4))
        names = draw(st.lists(port_name(), min_size=n_ports, max_size=n_ports, unique=True))
        numbers = draw(
            st.lists(
                st.tuples(st.integers(1, 65535), st.sampled_from(PROTOCOLS)),
                min_size=n_ports,
                max_size=n_ports,
                unique=True,
            )
        )
        for pname, (number, protocol) in zip(names, numbers, strict=True):
            port = {"port": number, "protocol": protocol}
            if n_ports > 1 or draw(st.booleans()):
                port["name"] = pname
            port["targetPort"] = draw(st.one_of(st.integers(1, 65535), port_name()))
            if draw(st.booleans()):
                port["appProtocol"] = draw(
                    st.sampled_from(["http", "kubernetes.io/h2c", "fz.io/x"])
                )
            if svc_type in ("NodePort", "LoadBalancer"):
                port["nodePort"] = alloc.node_port()
            ports.append(port)
    spec["ports"] = ports

    if not headless and draw(st.integers(0, 3)) == 0:
        spec["externalIPs"] = [
            alloc.external_ip(draw(st.sampled_from([4, 4, 6])))
            for _ in range(draw(st.integers(1, 3)))
        ]
    if draw(st.booleans()):
        spec["sessionAffinity"] = "ClientIP"
        if draw(st.booleans()):
            timeout = draw(st.one_of(st.just(10800), st.integers(1, 86400)))
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
    else:
        spec["sessionAffinity"] = "None"
    if svc_type in ("NodePort", "LoadBalancer") or spec.get("externalIPs"):
        spec["externalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    spec["internalTrafficPolicy"] = draw(st.sampled_from(["Cluster", "Local"]))
    if svc_type == "LoadBalancer":
        if spec["externalTrafficPolicy"] == "Local":
            spec["healthCheckNodePort"] = alloc.node_port()
        if draw(st.booleans()):
            spec["loadBalancerSourceRanges"] = draw(
                st.lists(
                    st.sampled_from(
                        [
                            "10.0.0.0/8",
                            " 192.168.0.0/16 ",
                            "2001:db8::/32",
                            "203.0.113.7/32",
                            "0.0.0.0/0",
                        ]
                    ),
                    min_size=1,
                    max_size=3,
                    unique=True,
                )
            )
        ingress = []
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["ip", "hostname", "proxy"]))
            if kind == "hostname":
                ingress.append({"hostname": "lb.example.com"})
            else:
                entry: Obj = {"ip": alloc.external_ip(draw(st.sampled_from([4, 6])))}
                entry["ipMode"] = "Proxy" if kind == "proxy" else "VIP"
                ingress.append(entry)
        obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


# ---- legal EndpointSlices ----------------------------------------------------------------------


@st.composite
def legal_slice(draw: st.DrawFn, alloc: Allocator, service: Obj | None) -> Obj:
    """An EndpointSlice for ``service`` (or for a Service that does not exist)."""
    if service is not None:
        namespace = service["metadata"]["namespace"]
        owner = service["metadata"]["name"]
        svc_ports = service["spec"].get("ports") or []
    else:
        namespace, owner, svc_ports = "default", draw(service_name()), []
    address_type = draw(st.sampled_from(["IPv4", "IPv4", "IPv4", "IPv6", "FQDN"]))
    family = 6 if address_type == "IPv6" else 4
    meta: Obj = {
        "name": draw(subdomain()),
        "namespace": namespace,
        "labels": {
            SERVICE_NAME_LABEL: owner,
            "endpointslice.kubernetes.io/managed-by": "fz.io/controller",
        },
    }
    if draw(st.booleans()):
        meta["annotations"] = {
            "endpoints.kubernetes.io/last-change-trigger-time": draw(
                # Annotations are never validated: any string is legal, dates that do not exist too.
                st.sampled_from(
                    [
                        "2026-01-02T03:04:05Z",
                        "2026-01-02T03:04:05.123456789+02:00",
                        "not a time",
                        "2026-13-45T25:61:61Z",
                        "2026-02-30T00:00:00Z",
                        "2026-01-02T03:04:05+99:00",
                        "٢٠٢٦-01-02T03:04:05Z",
                        "",
                    ]
                )
            )
        }
    ports = []
    chosen = (
        draw(
            st.lists(
                st.sampled_from(svc_ports),
                unique_by=lambda p: p.get("name", ""),
                max_size=len(svc_ports),
            )
        )
        if svc_ports
        else []
    )
    for sp in chosen:
        port: Obj = {"protocol": sp["protocol"], "port": draw(st.integers(1, 65535))}
        if "name" in sp:
            port["name"] = sp["name"]
        else:
            port["name"] = ""
        ports.append(port)
    if draw(st.integers(0, 9)) == 0 and all(p["name"] != "fz-all" for p in ports):
        ports.append({"name": "fz-all", "protocol": "TCP", "port": None})  # "all ports"
    endpoints: list[Obj] = []
    if address_type != "FQDN" and draw(st.integers(0, 9)) == 0:
        # A big slice (the API allows 1,000 endpoints), every tenth address a duplicate.
        addrs = [alloc.endpoint_ip(family) for _ in range(draw(st.integers(50, 1000)))]
        for i, addr in enumerate(addrs):
            conditions = [
                {},
                {"ready": True},
                {"ready": False, "serving": True, "terminating": True},
                {"ready": None, "serving": None},
            ][i % 4]
            endpoints.append(
                {
                    "addresses": [addrs[i - 1] if i % 10 == 9 else addr],
                    "conditions": conditions,
                    "nodeName": "fz-node-1",
                }
            )
    previous: list[str] = []
    for _ in range(draw(st.integers(0, 5))):
        if address_type == "FQDN":
            addr = "pod.example.com"
        elif previous and draw(st.integers(0, 4)) == 0:
            addr = draw(st.sampled_from(previous))  # a duplicate endpoint
        else:
            addr = alloc.endpoint_ip(family)
        previous.append(addr)
        ep: Obj = {"addresses": [addr]}
        conditions: Obj = {}
        for cond in ("ready", "serving", "terminating"):
            value = draw(st.sampled_from([None, True, False, "absent"]))
            if value != "absent":
                conditions[cond] = value
        if conditions or draw(st.booleans()):
            ep["conditions"] = conditions
        if draw(st.booleans()):
            ep["nodeName"] = draw(st.sampled_from(["fz-node-1", "fz.node.2"]))
        if draw(st.booleans()):
            ep["zone"] = draw(st.sampled_from(["zone-a", "zone-b"]))
        if draw(st.integers(0, 4)) == 0:
            ep["hints"] = {"forZones": [{"name": "zone-a"}], "forNodes": [{"name": "fz-node-1"}]}
        if draw(st.integers(0, 4)) == 0:
            ep["targetRef"] = {"kind": "Pod", "namespace": namespace, "name": "fz-pod"}
            ep["hostname"] = "fz-host"
        endpoints.append(ep)
    obj: Obj = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": address_type,
        "endpoints": endpoints,
    }
    if ports or draw(st.booleans()):
        obj["ports"] = ports
    return obj


# ---- legal Nodes -------------------------------------------------------------------------------


@st.composite
def legal_node(draw: st.DrawFn, alloc: Allocator, index: int) -> Obj:
    """A Node; flannel annotations hold anything, since the API never checks annotations."""
    meta: Obj = {"name": draw(subdomain(prefix="fz-node"))}
    meta.update(draw(metadata_extras()))
    annotations = meta.setdefault("annotations", {})
    ip = alloc.node_ip()
    if draw(st.booleans()):
        annotations[f"{FLANNEL}/backend-type"] = draw(
            st.sampled_from(["vxlan", "host-gw", "udp", ""])
        )
        annotations[f"{FLANNEL}/public-ip"] = draw(st.sampled_from([ip, "not-an-ip", "", "::1"]))
        annotations[f"{FLANNEL}/backend-data"] = draw(
            st.sampled_from(
                [
                    '{"VtepMAC":"02:00:00:00:00:01"}',
                    "{",
                    "null",
                    "[1]",
                    '{"VtepMAC":"zz"}',
                    '{"VtepMAC":7}',
                    "",
                ]
            )
        )
    addresses = [{"type": "InternalIP", "address": ip}]
    if draw(st.booleans()):
        addresses.append({"type": "InternalIP", "address": "fd00:172::" + format(index + 1, "x")})
    if draw(st.booleans()):
        addresses.append({"type": "Hostname", "address": meta["name"]})
    if draw(st.booleans()):
        addresses.append({"type": "ExternalIP", "address": str(EXTERNAL_V4[200 + index % 50])})
    spec: Obj = {}
    if draw(st.booleans()):
        cidr = f"10.{200 + index % 50}.{index % 250}.0/24"
        spec["podCIDR"] = cidr
        spec["podCIDRs"] = [cidr] + ([f"fd00:10:{index:x}::/64"] if draw(st.booleans()) else [])
    if draw(st.booleans()):
        spec["taints"] = [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]
        spec["unschedulable"] = True
    labels = meta.setdefault("labels", {})
    if draw(st.booleans()):
        labels["topology.kubernetes.io/zone"] = draw(st.sampled_from(["zone-a", "zone-b"]))
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta,
        "spec": spec,
        "status": {"addresses": addresses},
    }
    if draw(st.integers(0, 9)) == 0:
        meta["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    return obj


@st.composite
def legal_batch(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 12) -> list[Obj]:
    """Services, their EndpointSlices (and orphans) and Nodes, as one API server holds them."""
    alloc = Allocator()
    services = draw(
        st.lists(
            legal_service(alloc),
            min_size=min_size,
            max_size=max_size,
            unique_by=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"]),
        )
    )
    objects: list[Obj] = list(services)
    for svc in services:
        for _ in range(draw(st.integers(0, 2))):
            objects.append(draw(legal_slice(alloc, svc)))
    for _ in range(draw(st.integers(0, 2))):
        objects.append(draw(legal_slice(alloc, None)))
    for i in range(draw(st.integers(0, 3))):
        objects.append(draw(legal_node(alloc, i)))
    return unique_names(objects)


def unique_names(objects: list[Obj]) -> list[Obj]:
    """Drops later objects whose (kind, namespace, name) repeats an earlier one's."""
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for obj in objects:
        key = identity(obj)
        if key not in seen:
            seen.add(key)
            kept.append(obj)
    return kept


def identity(obj: Obj) -> tuple[str, str, str]:
    """(kind, namespace, name) as written; namespace "" for Nodes."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(meta, dict)
    kind = str(obj.get("kind"))
    namespace = "" if kind == "Node" else str(meta.get("namespace") or "default")
    return kind, namespace, str(meta.get("name"))


# ---- malformed objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruption:
    """One change that makes an object invalid; ``path`` is what its error must name."""

    kind: str
    path: str
    value: Any
    where: tuple[str | int, ...]  # keys from the object's root; the last is set (or deleted)

    DELETE = object()

    def apply(self, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        node: Any = out
        for step in self.where[:-1]:
            node = node[step]
        if self.value is Corruption.DELETE:
            del node[self.where[-1]]
        else:
            node[self.where[-1]] = self.value
        return out


_BAD_LABELS = ["Fz-Upper", "fz_under", "fz.dot", "fz ünï", 'fz"q', "fz\nnl", "-fz", ""]
_BAD_IPS = ["10.97.0.300", "fz", "10.97.0.1/32", " 10.97.0.1", "::g", 7, None, ["10.97.0.1"]]
_BAD_PORTS = [0, 65536, -1, 10**12, "80", 80.5, True, None, {"port": 80}]


def corruptions(obj: Obj) -> list[Corruption]:
    """Every corruption this module knows that applies to ``obj``, with the path its error names."""
    kind = obj["kind"]
    out: list[Corruption] = []
    name_ok = ("metadata", "name")
    # Too long: 64 characters for a label (Services), 254 for a subdomain.
    too_long = "fz" * 32 if kind == "Service" else "f" * 254
    for bad in [*_BAD_LABELS, too_long]:
        if kind != "Service" and bad == "fz.dot":
            continue  # a legal subdomain
        out.append(Corruption(kind, "metadata.name", bad, name_ok))
    out.append(Corruption(kind, "metadata", Corruption.DELETE, ("metadata",)))
    out.append(Corruption(kind, "metadata", ["not", "a", "map"], ("metadata",)))
    if kind != "Node":
        out.append(Corruption(kind, "metadata.namespace", "Fz NS", ("metadata", "namespace")))
    if kind == "Service":
        spec = obj["spec"]
        out.append(Corruption(kind, "spec.type", "Fz", ("spec", "type")))
        if spec["type"] == "ExternalName" or spec.get("clusterIP") == "None":
            return out  # not proxied: the rest of the spec is not read, as in kube-proxy
        out.append(Corruption(kind, "spec", "not a map", ("spec",)))
        out.append(Corruption(kind, "spec.sessionAffinity", "Cookie", ("spec", "sessionAffinity")))
        out.append(
            Corruption(
                kind, "spec.externalTrafficPolicy", "Global", ("spec", "externalTrafficPolicy")
            )
        )
        out.append(
            Corruption(
                kind, "spec.internalTrafficPolicy", "local", ("spec", "internalTrafficPolicy")
            )
        )
        for timeout in (0, 86401, "60", True):
            out.append(
                Corruption(
                    kind,
                    "sessionAffinityConfig",
                    {"clientIP": {"timeoutSeconds": timeout}},
                    ("spec", "sessionAffinityConfig"),
                )
            )
        for bad in _BAD_IPS:
            out.append(
                Corruption(
                    kind,
                    "spec.clusterIP",
                    {**spec, "clusterIP": bad, "clusterIPs": [bad]},
                    ("spec",),
                )
            )
        out.append(
            Corruption(
                kind,
                "spec.clusterIPs",
                {**spec, "clusterIP": "10.97.255.1", "clusterIPs": ["10.97.255.1", "10.97.255.2"]},
                ("spec",),
            )
        )
        out.append(
            Corruption(kind, "spec.externalIPs", ["10.97.0.1", "fz"], ("spec", "externalIPs"))
        )
        out.append(Corruption(kind, "spec.ports", [], ("spec", "ports")))
        out.append(Corruption(kind, "spec.ports", {"port": 80}, ("spec", "ports")))
        for bad in _BAD_PORTS:
            out.append(Corruption(kind, "spec.ports[0].port", bad, ("spec", "ports", 0, "port")))
        out.append(
            Corruption(kind, "spec.ports[0].protocol", "tcp", ("spec", "ports", 0, "protocol"))
        )
        out.append(
            Corruption(kind, "spec.ports[0].protocol", "ICMP", ("spec", "ports", 0, "protocol"))
        )
        out.append(Corruption(kind, "spec.ports[0].name", "Fz_Port", ("spec", "ports", 0, "name")))
        if len(spec["ports"]) > 1:
            out.append(Corruption(kind, "spec.ports[1]", spec["ports"][0], ("spec", "ports", 1)))
        if spec["type"] == "LoadBalancer":
            out.append(
                Corruption(
                    kind,
                    "spec.loadBalancerSourceRanges",
                    ["10.0.0.0/33"],
                    ("spec", "loadBalancerSourceRanges"),
                )
            )
            out.append(
                Corruption(
                    kind,
                    "status.loadBalancer.ingress",
                    {"loadBalancer": {"ingress": ["198.51.100.9"]}},
                    ("status",),
                )
            )
    elif kind == "EndpointSlice":
        labels = ("metadata", "labels")
        out.append(Corruption(kind, "kubernetes.io/service-name", {"app": "x"}, labels))
        out.append(
            Corruption(kind, "kubernetes.io/service-name", {SERVICE_NAME_LABEL: "Fz Svc"}, labels)
        )
        out.append(Corruption(kind, "addressType", "IPv5", ("addressType",)))
        out.append(Corruption(kind, "addressType", Corruption.DELETE, ("addressType",)))
        if obj["addressType"] != "FQDN":
            family_ip = "fd00:250::1" if obj["addressType"] == "IPv4" else "10.250.0.1"
            bad_endpoints = [
                [{"addresses": [family_ip]}],  # the other family: the API checks addressType
                [{"addresses": []}],
                [{"addresses": ["10.250.0.1/32"]}],
                [{"addresses": ["fz"]}],
                [{"addresses": ["10.250.0.1"], "conditions": {"ready": "yes"}}],
                [{"addresses": ["10.250.0.1"], "nodeName": "Fz Node"}],
                ["10.250.0.1"],
            ]
            for bad in bad_endpoints:
                out.append(Corruption(kind, "endpoints[0]", bad, ("endpoints",)))
            for port in (0, 70000, "80"):
                out.append(
                    Corruption(
                        kind,
                        "ports[0].port",
                        [{"name": "p", "protocol": "TCP", "port": port}],
                        ("ports",),
                    )
                )
            out.append(
                Corruption(
                    kind,
                    "ports[1].name",
                    [
                        {"name": "p", "protocol": "TCP", "port": 1},
                        {"name": "p", "protocol": "UDP", "port": 2},
                    ],
                    ("ports",),
                )
            )
    else:  # Node
        out.append(
            Corruption(
                kind,
                "status.addresses[0].address",
                {"addresses": [{"type": "InternalIP", "address": "node.example"}]},
                ("status",),
            )
        )
        out.append(Corruption(kind, "spec.podCIDR", {"podCIDR": "10.0.0.0/40"}, ("spec",)))
        out.append(
            Corruption(
                kind, "spec.podCIDRs", {"podCIDRs": ["10.1.0.0/24", "10.2.0.0/24"]}, ("spec",)
            )
        )
        out.append(Corruption(kind, "spec.taints", {"taints": "NoSchedule"}, ("spec",)))
        out.append(
            Corruption(
                kind,
                "metadata.labels",
                {"name": obj["metadata"]["name"], "labels": {"zone": 1}},
                ("metadata",),
            )
        )
    return out


def corrupt(draw: st.DrawFn, obj: Obj) -> tuple[Obj, Corruption]:
    """``obj`` with one of its :func:`corruptions`, and that corruption."""
    corruption = draw(st.sampled_from(corruptions(obj)))
    return corruption.apply(obj), corruption


@st.composite
def malformed_object(draw: st.DrawFn) -> tuple[Obj, Corruption]:
    """A legal object with one corruption an API server would refuse, and the corruption."""
    batch = draw(legal_batch(max_size=3))
    return corrupt(draw, draw(st.sampled_from(batch)))


#: Values that replace a random subtree in :func:`mangled_object`.
WRONG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["None", "10.97.0.1", "::", "0.0.0.0/0", "Local", "TCP", "\x00", "ﬀ"]),
)


def _paths(node: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found: list[tuple[str | int, ...]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            found.append((*prefix, k))
            found.extend(_paths(v, (*prefix, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found.append((*prefix, i))
            found.extend(_paths(v, (*prefix, i)))
    return found


def mangle(draw: st.DrawFn, obj: Obj) -> Obj:
    """A copy of ``obj`` with one to three random subtrees replaced by random values, or deleted."""
    obj = copy.deepcopy(obj)
    paths = [p for p in _paths(obj) if p != ("kind",)]
    for _ in range(draw(st.integers(1, 3))):
        if not paths:
            break
        where = draw(st.sampled_from(paths))
        node: Any = obj
        try:
            for step in where[:-1]:
                node = node[step]
            if draw(st.integers(0, 4)) == 0 and isinstance(node, dict):
                del node[where[-1]]
            else:
                node[where[-1]] = draw(WRONG_VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed this path
    return obj


@st.composite
def mangled_object(draw: st.DrawFn) -> Obj:
    """A legal object with random subtrees replaced or deleted (see :func:`mangle`)."""
    batch = draw(legal_batch(max_size=3))
    return mangle(draw, draw(st.sampled_from(batch)))


@dataclass(frozen=True)
class FuzzBatch:
    """One generated directory's worth: legal objects, corrupted copies, mangled copies."""

    legal: list[Obj]
    malformed: list[tuple[Obj, Corruption]]
    mangled: list[Obj]

    @property
    def objects(self) -> list[Obj]:
        """Every object, legal ones first (so a bad copy never displaces its original)."""
        return self.legal + [obj for obj, _ in self.malformed] + self.mangled


@st.composite
def fuzz_batch(
    draw: st.DrawFn,
    *,
    services: tuple[int, int] = (1, 12),
    malformed: tuple[int, int] = (0, 6),
    mangled: tuple[int, int] = (0, 4),
) -> FuzzBatch:
    """A legal batch, plus corrupted and mangled copies of its own objects.

    Copying from the batch keeps generation cheap (one batch is drawn, not one
    per bad object), so a single example can hold the 60 and more objects the
    kernel test writes at once.
    """
    legal = draw(legal_batch(min_size=services[0], max_size=services[1]))
    bad = [
        corrupt(draw, draw(st.sampled_from(legal))) for _ in range(draw(st.integers(*malformed)))
    ]
    odd = [mangle(draw, draw(st.sampled_from(legal))) for _ in range(draw(st.integers(*mangled)))]
    return FuzzBatch(legal, bad, odd)


# ---- files -------------------------------------------------------------------------------------


def object_files(objects: list[Obj], prefix: str) -> dict[str, Obj]:
    """One file name per object, ``.json`` and ``.yaml`` in turn, sorting in list order."""
    return {f"{prefix}{i:04d}.{'json' if i % 2 else 'yaml'}": obj for i, obj in enumerate(objects)}


def file_text(name: str, obj: Obj) -> str:
    """``obj`` serialized for the file ``name`` (JSON or YAML by suffix)."""
    if name.endswith(".json"):
        return json.dumps(obj)
    return yaml.safe_dump(obj, allow_unicode=True)


def as_read(name: str, obj: Obj) -> Obj:
    """``obj`` as the agent reads it back from ``name``.

    A YAML round trip is not always exact for random text (a raw U+2028 or
    NEL is a line break to a YAML reader), so expectations are computed from
    what the file says, not from what was generated.
    """
    text = file_text(name, obj)
    loaded = json.loads(text) if name.endswith(".json") else yaml.load(text, Loader=_LOADER)
    assert isinstance(loaded, dict)
    return loaded


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
