"""The Node annotations through which nodes tell each other how to reach their pods.

Why flannel's annotations: every node publishes its backend type, backend
data (the VXLAN VTEP MAC) and underlay ("public") IP on its own Node object,
under a prefix (``flannel.alpha.coreos.com`` by default). Using the same keys
and value formats lets existing tooling, and operators used to flannel, read
them, and lets the operator's ``public-ip-overwrite`` keep working.

Peers are parsed here, once, into :class:`RemoteNode` values. A peer that has
not published yet (no pod CIDR, backend type or public IP) is not an error:
:func:`remote_node` returns None and the peer is simply not routed yet. A
peer with a value that is present but wrong raises :class:`InvalidAnnotation`
naming the Node, the annotation key and the reason, so one broken Node is
reported and skipped instead of breaking the whole overlay.

The VTEP MAC is derived from the node name (:func:`vtep_mac_for`): it stays
the same across restarts and re-creations of the VXLAN device even if the
annotation was lost, so peers' neighbour and FDB entries stay valid.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from netagent.model import NodeInfo
from netagent.overlay.model import BackendType, IPv4Address, IPv4Network, RemoteNode

BACKEND_TYPE = "backend-type"
BACKEND_DATA = "backend-data"
PUBLIC_IP = "public-ip"
PUBLIC_IP_OVERWRITE = "public-ip-overwrite"
KUBE_SUBNET_MANAGER = "kube-subnet-manager"

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class InvalidAnnotation(ValueError):
    """A peer's annotation is present but unusable."""

    def __init__(self, node: str, key: str, reason: str) -> None:
        super().__init__(f"Node {node}: annotation {key}: {reason}")
        self.node = node
        self.key = key
        self.reason = reason


def key(prefix: str, name: str) -> str:
    """The full annotation key, ``<prefix>/<name>``."""
    return f"{prefix}/{name}"


def backend_data(backend: BackendType, vtep_mac: str | None, vni: int) -> str:
    """The ``backend-data`` value: compact JSON for VXLAN, ``null`` for host-gw."""
    if backend is BackendType.HOST_GW:
        return "null"
    if vtep_mac is None:
        raise ValueError("the vxlan backend needs a VTEP MAC to publish")
    mac = normalize_mac(vtep_mac)
    if mac is None:
        raise ValueError(f"invalid VTEP MAC {vtep_mac!r}")
    return json.dumps({"VNI": vni, "VtepMAC": mac}, separators=(",", ":"))


def node_annotations(
    prefix: str,
    backend: BackendType,
    public_ip: IPv4Address,
    vtep_mac: str | None,
    vni: int,
) -> dict[str, str]:
    """The annotations this node publishes on its own Node object.

    ``public-ip-overwrite`` is never written: it belongs to the operator.
    """
    return {
        key(prefix, BACKEND_TYPE): backend.value,
        key(prefix, BACKEND_DATA): backend_data(backend, vtep_mac, vni),
        key(prefix, KUBE_SUBNET_MANAGER): "true",
        key(prefix, PUBLIC_IP): str(public_ip),
    }


def publish_patch(
    prefix: str,
    backend: BackendType,
    public_ip: IPv4Address,
    vtep_mac: str | None,
    vni: int,
    *,
    current: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """A JSON merge-patch body setting our annotations, or None when ``current`` has them all.

    With ``current`` (the Node's present annotations) only the keys whose
    value differs are in the patch, so an unchanged Node is not written.
    """
    wanted = node_annotations(prefix, backend, public_ip, vtep_mac, vni)
    if current is not None:
        wanted = {k: v for k, v in wanted.items() if current.get(k) != v}
        if not wanted:
            return None
    return {"metadata": {"annotations": wanted}}


def normalize_mac(text: str) -> str | None:
    """The MAC in lowercase colon form, or None unless it is a unicast Ethernet MAC."""
    mac = text.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        return None
    if int(mac[:2], 16) & 0x01 or mac == "00:00:00:00:00:00":
        return None  # multicast / broadcast, or all zero: not a VTEP
    return mac


def vtep_mac_for(node_name: str) -> str:
    """A locally administered unicast MAC derived from the node name (stable across restarts)."""
    digest = bytearray(hashlib.sha256(f"netagent-vtep/{node_name}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in digest)


def public_ip_of(node: NodeInfo, prefix: str) -> IPv4Address | None:
    """The node's underlay IP as published: ``public-ip-overwrite`` wins over ``public-ip``.

    Also what this agent uses for itself when the operator set the
    overwrite on our own Node. Raises :class:`InvalidAnnotation` for a value
    that is not an IPv4 address.
    """
    for name in (PUBLIC_IP_OVERWRITE, PUBLIC_IP):
        k = key(prefix, name)
        value = node.annotation(k)
        if value is None or not value.strip():
            continue
        try:
            return ipaddress.IPv4Address(value.strip())
        except ValueError:
            raise InvalidAnnotation(node.name, k, f'invalid IPv4 address "{value}"') from None
    return None


def _subnet_of(node: NodeInfo) -> IPv4Network | None:
    for cidr in node.pod_cidrs:
        if isinstance(cidr, ipaddress.IPv4Network):
            return cidr
    return None


def _vtep_mac(node: NodeInfo, prefix: str) -> str | None:
    k = key(prefix, BACKEND_DATA)
    raw = node.annotation(k)
    if raw is None or not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidAnnotation(node.name, k, f"not JSON ({exc})") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidAnnotation(node.name, k, f"expected a JSON object, got {raw.strip()}")
    mac = data.get("VtepMAC")
    if mac is None or mac == "":
        return None
    normalized = normalize_mac(mac) if isinstance(mac, str) else None
    if normalized is None:
        raise InvalidAnnotation(node.name, k, f'invalid VtepMAC "{mac}"')
    return normalized


def remote_node(node: NodeInfo, prefix: str) -> RemoteNode | None:
    """The peer as the overlay needs it, or None when it has not published yet.

    Raises :class:`InvalidAnnotation` when a published value is unusable.
    """
    subnet = _subnet_of(node)
    k = key(prefix, BACKEND_TYPE)
    raw_backend = node.annotation(k)
    if subnet is None or raw_backend is None or not raw_backend.strip():
        return None
    try:
        backend = BackendType(raw_backend.strip())
    except ValueError:
        raise InvalidAnnotation(node.name, k, f'unknown backend type "{raw_backend}"') from None
    public_ip = public_ip_of(node, prefix)
    if public_ip is None:
        return None
    vtep_mac = _vtep_mac(node, prefix) if backend is BackendType.VXLAN else None
    return RemoteNode(
        name=node.name, subnet=subnet, public_ip=public_ip, backend=backend, vtep_mac=vtep_mac
    )


def remote_nodes(
    nodes: Iterable[NodeInfo], prefix: str, local_name: str
) -> tuple[list[RemoteNode], list[InvalidAnnotation]]:
    """Ready peers other than ``local_name``, sorted by name, plus the invalid ones' errors."""
    peers: list[RemoteNode] = []
    errors: list[InvalidAnnotation] = []
    for node in sorted(nodes, key=lambda x: x.name):
        if node.name == local_name:
            continue
        try:
            peer = remote_node(node, prefix)
        except InvalidAnnotation as exc:
            errors.append(exc)
            continue
        if peer is not None:
            peers.append(peer)
    return peers, errors
