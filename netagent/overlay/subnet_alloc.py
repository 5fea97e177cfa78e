"""Give every node its own pod subnet, stored in the Node object itself.

Why: the overlay needs each node to own a slice of the cluster network
(``10.244.3.0/24``). When the cluster allocates (kube-controller-manager's
``--allocate-node-cidrs``), ``spec.podCIDR`` is already set and is used as is.
Otherwise the agents allocate among themselves, with the Node objects as the
only shared state: a subnet is taken while some Node holds it, so it is freed
when that Node is deleted, and an agent restarting finds its own subnet again.

Two parts:

* :func:`choose_subnet` is pure: the free ``/subnet_len`` subnet to take. The
  first subnet of the network (``10.244.0.0/24``) is never handed out, as in
  flannel (its lowest subnet is network + one subnet), so the network address
  never doubles as a pod subnet. The search starts at an offset derived from
  a stable hash of ``seed`` (the node name) and wraps around, so agents that
  start together usually pick different subnets to begin with.
* :class:`NodeClaimer` writes the choice into the Node, safely against other
  agents doing the same at the same time.

The race and how it is closed. Each Node's resourceVersion makes the update
of *that* Node atomic, but two agents can both list the nodes, pick the same
free subnet and each successfully update *its own* Node. A re-check after
the write with a "lower name wins" rule is not enough: ``spec.podCIDR`` is
immutable once set (the API server allows only "" → value), so a loser could
never take its claim back, and an agent that re-checks before the other one
has written sees nothing and commits too. So the claim happens in two phases:

1. *Claim*: write the chosen subnet into an annotation of our own Node
   (:data:`CLAIM_ANNOTATION`, mutable, optimistic concurrency on our Node).
2. *Check*: list every Node (a quorum read: a list without resourceVersion is
   served from etcd). If any other Node holds an overlapping subnet, either
   as ``spec.podCIDR(s)`` or as a claim annotation, yield: go back to 1 with
   that subnet counted as taken (the claim annotation is overwritten).
3. *Commit*: otherwise write ``spec.podCIDR`` and ``spec.podCIDRs``.

Why that is safe: writes are linearised. Of two agents claiming the same
subnet, the one whose claim landed second lists after both claims exist, so
it sees the first one's claim and yields. The first may or may not see the
second's claim; if it does, both yield (no harm, both retry), otherwise it
alone commits. A claim stays visible until its owner yields (overwriting
it) or its Node is deleted, and a committed subnet stays forever, so two
commits of overlapping subnets cannot happen. The cost of "both yield" is
a retry; retries re-seed the search (node name + attempt) and sleep a
jittered moment, so repeated collisions are unlikely.

A Node that already has a claim annotation (the agent crashed between claim
and commit) prefers that subnet again. A Node whose ``spec.podCIDR`` lies
outside the overlay network cannot be fixed here (the field is immutable):
:class:`SubnetClaimError`. If the cluster allocates pod CIDRs, agents should
wait for them rather than claim (a claim would race the controller, which
does not read our annotations).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from typing import Any, Protocol, cast

import netaddr

from netagent.overlay.model import IPv4Network

#: The annotation holding a node's not-yet-committed subnet claim.
CLAIM_ANNOTATION = "netagent.io/pod-cidr-claim"

#: 409s on the final spec write survived before the round starts over.
_COMMIT_RETRIES = 5

#: Longest subnet length handed out: a /30 still has a gateway and two pods.
MAX_SUBNET_LEN = 30


class SubnetExhausted(RuntimeError):
    """No free subnet of the requested length is left in the network."""


class SubnetClaimError(RuntimeError):
    """The subnet could not be claimed (invalid node state, or too many retries)."""


class ConflictError(RuntimeError):
    """An update carried a stale resourceVersion (HTTP 409)."""


class NodeApi(Protocol):
    """The few Node operations the claimer needs; bodies are plain JSON dicts."""

    def get_node(self, name: str) -> dict[str, Any]:
        """The Node named ``name``."""
        ...

    def list_nodes(self) -> list[dict[str, Any]]:
        """Every Node (a fresh, consistent read)."""
        ...

    def replace_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the Node; raises :class:`ConflictError` on a stale resourceVersion."""
        ...


# ----------------------------------------------------------------------------- choosing


def _subnet_count(network: IPv4Network, subnet_len: int) -> int:
    if not network.prefixlen < subnet_len <= MAX_SUBNET_LEN:
        raise ValueError(
            f"subnet length /{subnet_len} must be longer than the network's "
            f"/{network.prefixlen} and at most /{MAX_SUBNET_LEN}"
        )
    return 1 << (subnet_len - network.prefixlen)


def _start_index(seed: str, count: int) -> int:
    """Where the search starts: 1 (the lowest usable) without a seed, else a stable hash."""
    if not seed or count <= 2:
        return 1
    digest = hashlib.sha256(seed.encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (count - 1)


def _is_usable(candidate: IPv4Network, network: IPv4Network, subnet_len: int) -> bool:
    return (
        candidate.prefixlen == subnet_len
        and candidate.subnet_of(network)
        and candidate.network_address != network.network_address
    )


def choose_subnet(
    network: IPv4Network,
    subnet_len: int,
    taken: Iterable[IPv4Network],
    *,
    preferred: IPv4Network | None = None,
    seed: str = "",
) -> IPv4Network:
    """A free ``/subnet_len`` subnet of ``network`` that overlaps nothing in ``taken``.

    ``preferred`` is returned when it is usable (right length, inside the
    network, not its first subnet) and free. Otherwise the search starts at
    an offset derived from ``seed`` and wraps around; the network's first
    subnet is skipped. Raises :class:`SubnetExhausted` when nothing is free
    and ValueError for a subnet length that does not fit the network.
    """
    count = _subnet_count(network, subnet_len)
    taken_set = netaddr.IPSet(
        str(t) for t in taken if isinstance(t, ipaddress.IPv4Network) and t.overlaps(network)
    )
    if (
        preferred is not None
        and _is_usable(preferred, network, subnet_len)
        and netaddr.IPSet([str(preferred)]).isdisjoint(taken_set)
    ):
        return preferred
    free = netaddr.IPSet([str(network)]) - taken_set
    # Free candidates as half-open index ranges: each free CIDR at least as
    # big as a subnet covers a run of whole, aligned subnets.
    shift = 32 - subnet_len
    base = int(network.network_address)
    ranges: list[tuple[int, int]] = []
    for cidr in free.iter_cidrs():
        if cidr.prefixlen > subnet_len:
            continue
        lo = (int(cidr.first) - base) >> shift
        hi = lo + (1 << (subnet_len - cidr.prefixlen))
        lo = max(lo, 1)  # the first subnet is never handed out
        if lo < hi:
            ranges.append((lo, hi))
    if not ranges:
        raise SubnetExhausted(f"no free /{subnet_len} subnet left in {network}")
    start = _start_index(seed, count)
    chosen: int | None = None
    for lo, hi in ranges:  # sorted ascending: iter_cidrs() is ordered
        if hi > start:
            chosen = max(lo, start)
            break
    if chosen is None:
        chosen = ranges[0][0]  # wrap around
    return ipaddress.IPv4Network((base + (chosen << shift), subnet_len))


# ----------------------------------------------------------------------------- node bodies


def _ipv4_networks(values: Iterable[object]) -> list[IPv4Network]:
    out: list[IPv4Network] = []
    for value in values:
        if not isinstance(value, str) or not value:
            continue
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            out.append(net)
    return out


def node_pod_cidrs(node: Mapping[str, Any]) -> list[IPv4Network]:
    """The IPv4 networks of ``spec.podCIDR`` and ``spec.podCIDRs``, in that order, deduplicated."""
    spec = node.get("spec") or {}
    values: list[object] = [spec.get("podCIDR"), *(spec.get("podCIDRs") or [])]
    return list(dict.fromkeys(_ipv4_networks(values)))


def _name(node: Mapping[str, Any]) -> str:
    return str((node.get("metadata") or {}).get("name", ""))


def _claim_of(node: Mapping[str, Any], annotation: str) -> IPv4Network | None:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    nets = _ipv4_networks([annotations.get(annotation)])
    return nets[0] if nets else None


def _held(node: Mapping[str, Any], network: IPv4Network, annotation: str) -> list[IPv4Network]:
    """Subnets a node holds: its pod CIDRs, or its claim when none is in the network."""
    cidrs = node_pod_cidrs(node)
    if any(c.overlaps(network) for c in cidrs):
        return cidrs
    claim = _claim_of(node, annotation)
    return [*cidrs, claim] if claim is not None else cidrs


class NodeClaimer:
    """Claims a pod subnet for a node in its Node object (see the module docstring).

    ``sleep`` and ``rng`` are injectable so tests run fast and reproducibly.
    ``spread=False`` starts every search at the lowest free subnet (flannel's
    order), which makes agents collide more: tests use it to stress the
    protocol.
    """

    def __init__(
        self,
        api: NodeApi,
        *,
        annotation: str = CLAIM_ANNOTATION,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        spread: bool = True,
        backoff: float = 0.05,
    ) -> None:
        self._api = api
        self._annotation = annotation
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._spread = spread
        self._backoff = backoff

    def claim(
        self, node_name: str, network: IPv4Network, subnet_len: int, *, max_attempts: int = 20
    ) -> IPv4Network:
        """The node's pod subnet: the existing one, or a newly claimed one.

        Raises :class:`SubnetExhausted` when the network is full and
        :class:`SubnetClaimError` when the node holds a pod CIDR outside the
        network or ``max_attempts`` rounds all lost a race.
        """
        _subnet_count(network, subnet_len)  # validate early
        for attempt in range(max_attempts):
            if attempt:
                self._sleep(self._backoff * (1 + self._rng.random()))
            node = self._api.get_node(node_name)
            existing = self._existing(node, network)
            if existing is not None:
                return existing
            others = [n for n in self._api.list_nodes() if _name(n) != node_name]
            taken = [s for n in others for s in _held(n, network, self._annotation)]
            seed = f"{node_name}#{attempt}" if self._spread else ""
            subnet = choose_subnet(
                network,
                subnet_len,
                taken,
                preferred=_claim_of(node, self._annotation),
                seed=seed,
            )
            claimed = self._write_claim(node, subnet)
            if claimed is None:
                continue  # our Node changed under us: start over
            if self._contested(node_name, subnet, network):
                continue  # yield; the next round counts the rival as taken
            committed = self._commit(node_name, claimed, subnet, network)
            if committed is not None:
                return committed
        raise SubnetClaimError(
            f"node {node_name}: no subnet of {network} claimed after {max_attempts} attempts"
        )

    def _existing(self, node: Mapping[str, Any], network: IPv4Network) -> IPv4Network | None:
        cidrs = node_pod_cidrs(node)
        for cidr in cidrs:
            if cidr.subnet_of(network):
                return cidr
        if cidrs:
            raise SubnetClaimError(
                f"node {_name(node)}: spec.podCIDR {cidrs[0]} is outside the overlay network "
                f"{network} and cannot be changed"
            )
        return None

    def _write_claim(self, node: dict[str, Any], subnet: IPv4Network) -> dict[str, Any] | None:
        """Our Node with the claim annotation set (written when it changed), or None on 409."""
        if _claim_of(node, self._annotation) == subnet:
            return node
        body = deepcopy(node)
        meta = body.setdefault("metadata", {})
        annotations = meta.get("annotations") or {}
        annotations[self._annotation] = str(subnet)
        meta["annotations"] = annotations
        try:
            return self._api.replace_node(_name(node), body)
        except ConflictError:
            return None

    def _contested(self, node_name: str, subnet: IPv4Network, network: IPv4Network) -> bool:
        """Whether any other Node holds (or claims) a subnet overlapping ``subnet``."""
        for other in self._api.list_nodes():
            if _name(other) == node_name:
                continue
            if any(s.overlaps(subnet) for s in _held(other, network, self._annotation)):
                return True
        return False

    def _commit(
        self, node_name: str, node: dict[str, Any], subnet: IPv4Network, network: IPv4Network
    ) -> IPv4Network | None:
        """Write spec.podCIDR(s); re-read and retry on 409 while our claim stands.

        Returns None when the claim was lost meanwhile (someone rewrote our
        Node's annotation) or the Node kept changing under us: the caller
        starts over (the claim stays, so the next round prefers it again).
        """
        for _ in range(_COMMIT_RETRIES):
            existing = self._existing(node, network)
            if existing is not None:
                return existing
            if _claim_of(node, self._annotation) != subnet:
                return None
            body = deepcopy(node)
            spec = body.setdefault("spec", {})
            spec["podCIDR"] = str(subnet)
            spec["podCIDRs"] = [str(subnet)]
            try:
                self._api.replace_node(node_name, body)
                return subnet
            except ConflictError:
                self._sleep(self._backoff * self._rng.random())
                node = self._api.get_node(node_name)
        return None


# ----------------------------------------------------------------------------- kubernetes


class KubernetesNodeApi:
    """:class:`NodeApi` over the official client, returning plain dicts.

    ``_preload_content=False`` skips the client's model deserialisation
    (slow, and lossy for fields the client version does not know).
    ``core_api`` replaces the ``CoreV1Api`` (tests).
    """

    def __init__(self, api_client: Any, *, core_api: Any | None = None, page_size: int = 500):
        if core_api is None:
            from kubernetes import client

            core_api = client.CoreV1Api(api_client)
        self._core = core_api
        self._page_size = page_size

    def get_node(self, name: str) -> dict[str, Any]:
        """GET the Node."""
        return self._json(self._core.read_node(name, _preload_content=False))

    def list_nodes(self) -> list[dict[str, Any]]:
        """LIST every Node, page by page (the pages are one consistent snapshot)."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            page = self._json(self._core.list_node(**kwargs))
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    def replace_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the Node; HTTP 409 becomes :class:`ConflictError`."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._core.replace_node(name, cast(Any, body), _preload_content=False)
            return self._json(response)
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"node {name}: {exc.reason}") from exc
            raise

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        data = json.loads(response.data)
        if not isinstance(data, dict):
            raise ValueError(f"unexpected API response: {type(data).__name__}")
        return data
