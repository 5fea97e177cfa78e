"""Where ``netagent debug`` reads the desired state: the API (one LIST each) or manifests.

Why here and not in the agent's sources: the debug command must see what
the agent would see, but once, now, without reflectors, threads or a sync
loop. So it reads from the same place with the same parts — the agent's
configuration (:func:`netagent.config.build_config`, same flags, same
``--config`` file), the API client the agent builds
(:func:`netagent.runtime.api_source.api_client`), the reflectors' resource
table and translators (:mod:`netagent.sources.api_watch`, so an object is
translated exactly as the reflectors translate it), or
:func:`netagent.sources.manifests.load_manifests` — and builds each
family's state with the node sync's own :func:`build_states`.

Every failure (bad flag, no credentials, API unreachable, missing
directory) becomes a one-line :class:`DebugError`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from netagent.config import AgentConfig, ConfigError, build_config, flag_values
from netagent.debug.context import DebugContext, DebugError, node_kernel
from netagent.model import EndpointSliceInfo, IPFamily, NodeInfo, ServicePort
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.proxier import Proxier
from netagent.runtime.node_sync import Snapshot, build_states

if TYPE_CHECKING:  # the kubernetes client loads only in API mode
    from netagent.sources.api_watch import Resource
from netagent.translate import InvalidObject

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds to connect and to read one LIST page.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class Inputs:
    """The objects one debug run works on, where they came from, and what was skipped."""

    snapshot: Snapshot
    source: str
    errors: tuple[str, ...] = ()


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The agent configuration from the debug command's flags and ``--config``."""
    try:
        config = build_config(flag_values(args), getattr(args, "config", None))
    except ConfigError as exc:
        raise DebugError(str(exc), status=400) from None
    if not config.node_name:
        raise DebugError("config field nodeName: required (--node-name or $NODE_NAME)", status=400)
    return config


def load_inputs(config: AgentConfig) -> Inputs:
    """Read the objects from ``config.manifests_dir``, or else from the API."""
    if config.manifests_dir is not None:
        return _from_manifests(config.manifests_dir)
    return _from_api(config)


def _from_manifests(directory: Path) -> Inputs:
    from netagent.sources.manifests import load_manifests

    if not directory.is_dir():
        raise DebugError(f"config field manifestsDir: {directory} is not a directory", status=400)
    loaded = load_manifests(directory, known_errors=())
    snapshot = Snapshot(
        services=tuple(loaded.services),
        slices=tuple(loaded.slices),
        nodes={n.name: n for n in loaded.nodes},
    )
    return Inputs(snapshot, f"manifests {directory}", tuple(str(e) for e in loaded.errors))


def _from_api(config: AgentConfig) -> Inputs:
    from kubernetes.client import CoreV1Api, DiscoveryV1Api

    from netagent.runtime.api_source import api_client
    from netagent.sources import api_watch
    from netagent.sources.kubeconfig import KubeconfigError, describe

    try:
        client = api_client(config)
    except KubeconfigError as exc:
        raise DebugError(str(exc), status=400) from None
    where = describe(client)
    apis: dict[str, Any] = {"core": CoreV1Api(client), "discovery": DiscoveryV1Api(client)}
    endpoints: Resource[Any] = (
        api_watch.LEGACY_ENDPOINTS if config.legacy_endpoints else api_watch.ENDPOINT_SLICES
    )
    errors: list[str] = []
    services: list[ServicePort] = []
    slices: list[EndpointSliceInfo] = []
    nodes: dict[str, NodeInfo] = {}
    try:
        services = [
            port for value in _translated(apis, api_watch.SERVICES, where, errors) for port in value
        ]
        for found in _translated(apis, endpoints, where, errors):
            slices.extend(found if isinstance(found, tuple) else (found,))
        for node in _translated(apis, api_watch.NODES, where, errors):
            nodes[node.name] = node
    finally:
        client.close()  # type: ignore[no-untyped-call]
    snapshot = Snapshot(services=tuple(services), slices=tuple(slices), nodes=nodes)
    return Inputs(snapshot, f"API {where}", tuple(errors))


def _translated(
    apis: Mapping[str, Any], resource: Resource[T], where: str, errors: list[str]
) -> Iterator[T]:
    """Every object of one resource, translated as the reflectors do; invalid ones noted."""
    method = getattr(apis[resource.api], resource.list_method)
    for obj in _list_all(method, resource.kind, where):
        try:
            value = resource.translate(obj)
        except InvalidObject as exc:
            log.warning("invalid %s; ignoring it", exc)
            errors.append(str(exc))
            continue
        if value is not None:
            yield value


def _list_all(method: Any, kind: str, where: str) -> Iterator[Mapping[str, Any]]:
    """Every object of one LIST (paged), or DebugError naming the kind and the server."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    token: str | None = None
    while True:
        try:
            response = method(
                limit=PAGE_SIZE,
                _continue=token,
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
            )
            body = json.loads(response.data)
        except ApiException as exc:
            reason = f"HTTP {exc.status} {exc.reason or ''}".strip()
            raise DebugError(
                f"cannot list {kind}s from the API server {where}: {reason}", status=503
            ) from None
        except (HTTPError, OSError, ValueError) as exc:
            why = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise DebugError(
                f"cannot reach the API server {where} to list {kind}s: {why}", status=503
            ) from None
        items = body.get("items") if isinstance(body, dict) else None
        for item in items or ():
            if isinstance(item, Mapping):
                yield item
        meta = body.get("metadata") if isinstance(body, dict) else None
        token = meta.get("continue") if isinstance(meta, dict) else None
        if not token:
            return


class LazyProxiers(Mapping[IPFamily, Proxier]):
    """The configured mode's proxier per family, built on first use (it detects the backend)."""

    def __init__(self, config: AgentConfig, families: tuple[IPFamily, ...]) -> None:
        self._config = config
        self._families = families
        self._made: dict[IPFamily, Proxier] = {}

    def __getitem__(self, family: IPFamily) -> Proxier:
        if family not in self._families:
            raise KeyError(family)
        proxier = self._made.get(family)
        if proxier is None:
            from netagent.proxy.registry import make_proxier

            try:
                proxier = self._made[family] = make_proxier(self._config, family)
            except Exception as exc:  # no iptables tools, unknown mode: one line
                raise DebugError(f"cannot read the {family.value} proxy state: {exc}") from None
        return proxier

    def __iter__(self) -> Iterator[IPFamily]:
        return iter(self._families)

    def __len__(self) -> int:
        return len(self._families)


def overlay_rules_for(config: AgentConfig, node: NodeInfo | None) -> OverlayRules | None:
    """The overlay's packet-filter intent as the agent forms it (None without an overlay)."""
    if config.overlay_backend == "none":
        return None
    network = next((c for c in config.cluster_cidrs if c.version == 4), None)
    if not isinstance(network, ipaddress.IPv4Network):
        return None
    subnet = None
    if node is not None:
        subnet = next((c for c in node.pod_cidrs if isinstance(c, ipaddress.IPv4Network)), None)
    return OverlayRules(
        cluster_network=network, local_subnet=subnet, ip_masq=config.overlay_ip_masq
    )


def local_context(config: AgentConfig, inputs: Inputs) -> DebugContext:
    """The context of a debug command run on the node: fresh inputs, this namespace's kernel."""
    from netagent.debug.trace import kernel_local_ips

    states = build_states(config, inputs.snapshot)
    families = tuple(s.family for s in states)
    own = inputs.snapshot.nodes.get(config.node_name)

    kernel = node_kernel(config)
    return DebugContext(
        config=config,
        states=states,
        nodes=dict(inputs.snapshot.nodes),
        proxiers=LazyProxiers(config, families),
        source=inputs.source,
        overlay_rules=overlay_rules_for(config, own),
        overlay_kernel=kernel.overlay_kernel,
        underlay=kernel.underlay,
        ruleset=kernel.ruleset,
        local_ips=kernel_local_ips,
    )
