"""Agent configuration: one validated, frozen object built from a YAML file and flags.

Why: configuration is input like any other, so it crosses the same kind of
boundary as Kubernetes objects. Every field is checked once, here, and an
invalid value stops the agent at start with a message naming the field by
its YAML path (``config field syncPeriod: must be a positive duration, got
'-1'``) instead of surfacing later as a strange rule. Flags take precedence
over the file, as with kube-proxy's ``--config``.

The file is either netagent's own (``netagent.io/v1alpha1``,
``NetagentConfiguration``), grouped the way KubeProxyConfiguration groups its
fields, or kube-proxy's own KubeProxyConfiguration (read by
:mod:`netagent.config_kubeproxy`). Every field, its YAML path, flags and
check come from the table in :mod:`netagent.config_fields`; this module
merges the sources and checks the settings that depend on each other.
docs/configuration.md lists every key (generated: ``python -m
netagent.config_docs``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from netagent import config_kubeproxy
from netagent.config_fields import (
    BY_ATTR,
    BY_PATH,
    FIELDS,
    FORMER_KEYS,
    GROUPS,
    IPTABLES_BACKENDS,
    OVERLAY_BACKENDS,
    PROXY_MODES,
    RESERVED_GROUPS,
    VXLAN_TX_CHECKSUM,
    group_keys,
)
from netagent.config_values import ConfigError
from netagent.model import IPNetwork, ProxyConfig

__all__ = [
    "API_VERSION",
    "IPTABLES_BACKENDS",
    "KIND",
    "OVERLAY_BACKENDS",
    "PROXY_MODES",
    "VXLAN_TX_CHECKSUM",
    "AgentConfig",
    "ConfigError",
    "add_run_flags",
    "build_config",
    "config_to_dict",
    "flag_values",
    "load_config_file",
]

#: netagent's own file.
API_VERSION = "netagent.io/v1alpha1"
KIND = "NetagentConfiguration"
#: Bounds of ``clientConnection.minWatchTimeout``: below a second every watch
#: would be a reconnect; above an hour a silently dead watch goes unnoticed too long.
MIN_WATCH_TIMEOUT = 1.0
MAX_WATCH_TIMEOUT = 3600.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything `netagent run` needs to know.

    Attributes:
        node_name: This node's Node object name (``--node-name`` or $NODE_NAME).
        cluster_cidrs: The pod network (``--cluster-cidr``), comma-separated.
        proxy_mode: Which proxier programs Services; only ``iptables`` today.
        iptables_backend: ``auto`` detects nft or legacy the way
            iptables-wrappers does; ``nft``/``legacy`` force one.
        manifests_dir: Read objects from this directory instead of the API.
        min_sync_period: Seconds between two syncs at least (burst limiter).
        sync_period: Seconds between two full syncs at most.
        nodeport_addresses: CIDRs whose local IPs accept NodePorts; empty = all.
        external_ip_allow_cidrs: CIDRs Service externalIPs may come from
            (CVE-2020-8554); empty = every externalIP, as kube-proxy.
        masquerade_all: SNAT all traffic sent to service IPs.
        masquerade_bit: fwmark bit requesting masquerade (0-31, default 14).
        localhost_nodeports: Accept NodePorts on 127.0.0.1 (sets route_localnet).
        healthz_bind_address: host:port of /healthz and /livez.
        metrics_bind_address: host:port of /metrics.
        kubeconfig: kubeconfig file for the API (default: in-cluster, then
            $KUBECONFIG / ~/.kube/config).
        master: API server URL; overrides the kubeconfig's server (like
            kube-proxy's ``--master``), with no credentials when alone.
        legacy_endpoints: Watch core/v1 Endpoints instead of EndpointSlices.
        min_watch_timeout: Seconds; each watch asks the API server to end it
            after a random time between this and twice this (client-go's
            ``MinWatchTimeout``), and a watch silent for longer (plus a margin)
            is given up as dead.
        overlay_backend: ``none`` (proxy only), ``vxlan`` or ``host-gw``.
        overlay_iface: Underlay interface (default: the default route's).
        overlay_public_ip: Underlay IP published to peers (default: the
            interface's first IPv4 address).
        overlay_subnet_len: Prefix length of each node's pod CIDR.
        overlay_direct_routing: VXLAN backend: plain routes to same-L2 peers.
        overlay_vxlan_tx_checksum: ``auto``, ``on`` or ``off``: transmit
            checksum offload on the VXLAN device (``auto``: off before Linux 5.7).
        overlay_ip_masq: Masquerade pod traffic leaving the cluster CIDR
            (flannel's ``--ip-masq``; also written to subnet.env).
        overlay_annotation_prefix: Node annotation prefix (flannel's default).
        subnet_file: Where the flannel-compatible subnet.env is written.
        cni_conf_file: Where the CNI conflist is written (empty: not written).
    """

    node_name: str = ""
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    proxy_mode: str = "iptables"
    ipvs_scheduler: str = "rr"
    ipvs_strict_arp: bool = False
    ipvs_exclude_cidrs: tuple[IPNetwork, ...] = ()
    #: IPVS timeouts in whole seconds; 0 leaves the kernel's value.
    ipvs_tcp_timeout: float = 0.0
    ipvs_tcp_fin_timeout: float = 0.0
    ipvs_udp_timeout: float = 0.0
    iptables_backend: str = "auto"
    manifests_dir: Path | None = None
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    nodeport_addresses: tuple[IPNetwork, ...] = ()
    external_ip_allow_cidrs: tuple[IPNetwork, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    localhost_nodeports: bool = True
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    kubeconfig: Path | None = None
    master: str | None = None
    legacy_endpoints: bool = False
    min_watch_timeout: float = 300.0
    overlay_backend: str = "none"
    overlay_iface: str | None = None
    overlay_public_ip: ipaddress.IPv4Address | None = None
    overlay_subnet_len: int = 24
    overlay_direct_routing: bool = False
    overlay_ip_masq: bool = True
    overlay_vxlan_tx_checksum: str = "auto"
    overlay_annotation_prefix: str = "flannel.alpha.coreos.com"
    subnet_file: Path = Path("/run/flannel/subnet.env")
    cni_conf_file: Path | None = Path("/etc/cni/net.d/10-netagent.conflist")
    extra: Mapping[str, Any] = field(default_factory=dict)

    def proxy_config(self) -> ProxyConfig:
        """The subset of settings that change rendered rules."""
        return ProxyConfig(
            cluster_cidrs=self.cluster_cidrs,
            nodeport_addresses=self.nodeport_addresses,
            masquerade_all=self.masquerade_all,
            masquerade_bit=self.masquerade_bit,
            localhost_nodeports=self.localhost_nodeports,
            external_ip_allow_cidrs=self.external_ip_allow_cidrs,
        )


#: Where one raw value came from: the YAML path (or a flag's field path) that errors name.
Raw = dict[str, tuple[str, object]]


# ---- the file --------------------------------------------------------------------------------


def load_config_file(path: Path) -> Raw:
    """Read a config file into ``{attribute: (YAML path, raw value)}``; unknown keys are errors.

    The file's ``apiVersion``/``kind`` choose the reader: netagent's own
    (also when both are left out) or kube-proxy's KubeProxyConfiguration.
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "config file must hold a mapping")
    kinds = (data.get("apiVersion"), data.get("kind"))
    if kinds == (config_kubeproxy.API_VERSION, config_kubeproxy.KIND):
        return config_kubeproxy.read(data)
    if kinds in ((API_VERSION, KIND), (None, None)):
        return read_netagent_document(data)
    raise ConfigError(
        str(path),
        f"unknown apiVersion/kind {kinds[0]!r}/{kinds[1]!r} (netagent reads {API_VERSION} "
        f"{KIND} and {config_kubeproxy.API_VERSION} {config_kubeproxy.KIND})",
    )


def read_netagent_document(data: Mapping[str, object]) -> Raw:
    """``{attribute: (YAML path, raw value)}`` from netagent's own (grouped) file."""
    out: Raw = {}
    for key, value in data.items():
        key = str(key)
        if key in ("apiVersion", "kind"):
            continue
        if "." in key:
            group, _, sub = key.partition(".")
            raise ConfigError(
                key, f"unknown field (write it nested: {group}: {{{sub}: …}})"
            )
        if key not in GROUPS:
            _put(out, key, value)
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping of settings, got {value!r}")
        for sub, sub_value in value.items():
            _put(out, f"{key}.{sub}", sub_value)
    return out


def _put(out: Raw, path: str, value: object) -> None:
    spec = BY_PATH.get(path)
    if spec is None:
        raise _unknown(path)
    if spec.attr in out:
        raise ConfigError(
            path, f"also given as {out[spec.attr][0]}; set only one of them"
        )
    out[spec.attr] = (path, value)


def _unknown(path: str) -> ConfigError:
    group = path.rpartition(".")[0]
    if not group and path in FORMER_KEYS:
        reason = f"unknown field (it is now {FORMER_KEYS[path]} in {API_VERSION})"
    elif group in RESERVED_GROUPS:
        reason = f"unknown field (the {group} group has no settings yet)"
    elif group:
        reason = f"unknown field (known fields of {group}: {', '.join(group_keys(group))})"
    else:
        reason = f"unknown field (known fields: {', '.join(group_keys(''))})"
    return ConfigError(path, reason)


# ---- flags -----------------------------------------------------------------------------------


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag (or ``--X``/``--no-X`` pair) per field, with ``dest`` = the attribute.

    Every flag defaults to None, "not given", so that it leaves the file's value alone.
    """
    defaults = AgentConfig()
    for spec in FIELDS:
        shown = spec.default_doc.strip("`") or spec.show(getattr(defaults, spec.attr))
        help_text = f"{spec.help} (YAML {spec.path}; default {shown})"
        kwargs: dict[str, Any] = {"dest": spec.attr, "default": None, "help": help_text}
        if spec.type.boolean:
            kwargs["action"] = argparse.BooleanOptionalAction
        if spec.type.choices:
            kwargs["choices"] = spec.type.choices
        if spec.type.flag_type is not None:
            kwargs["type"] = spec.type.flag_type
        parser.add_argument(*spec.flags, **kwargs)


def flag_values(args: argparse.Namespace) -> dict[str, object]:
    """The parsed config flags as ``{attribute: value}``; None means "not given"."""
    return {spec.attr: getattr(args, spec.attr, None) for spec in FIELDS}


# ---- merging ---------------------------------------------------------------------------------


def build_config(
    flags: Mapping[str, object],
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Merge defaults, the YAML file, $NODE_NAME and flags (in rising precedence).

    ``flags`` maps attributes to values (None: not given), as :func:`flag_values` returns.
    """
    env = os.environ if env is None else env
    raw: Raw = {}
    if config_file is not None:
        raw.update(load_config_file(config_file))
    if env.get("NODE_NAME") and "node_name" not in raw:
        raw["node_name"] = ("nodeName", env["NODE_NAME"])
    for attr, value in flags.items():
        if value is None:
            continue
        spec = BY_ATTR.get(attr)
        if spec is None:
            raise ConfigError(attr, "unknown field")
        raw[attr] = (spec.path, value)
    values: dict[str, object] = {}
    for attr, (key, value) in raw.items():
        spec = BY_ATTR[attr]
        if value is None and spec.type.nullable:
            values[attr] = None
        else:
            values[attr] = spec.type.parse(key, value)
    config = replace(AgentConfig(), **values)  # type: ignore[arg-type]
    _check_together(config, {attr: key for attr, (key, _) in raw.items()})
    return config


def _check_together(config: AgentConfig, keys: Mapping[str, str]) -> None:
    """Checks across fields; each error names the key the value came from."""

    def key(attr: str) -> str:
        return keys.get(attr, BY_ATTR[attr].path)

    if config.min_sync_period > config.sync_period:
        raise ConfigError(
            key("min_sync_period"),
            f"{config.min_sync_period}s is longer than {key('sync_period')} {config.sync_period}s",
        )
    if not MIN_WATCH_TIMEOUT <= config.min_watch_timeout <= MAX_WATCH_TIMEOUT:
        raise ConfigError(
            key("min_watch_timeout"),
            f"{config.min_watch_timeout}s is outside {MIN_WATCH_TIMEOUT:.0f}s to "
            f"{MAX_WATCH_TIMEOUT:.0f}s",
        )
    if config.overlay_backend != "none":
        v4 = [c for c in config.cluster_cidrs if c.version == 4]
        if not v4:
            raise ConfigError(
                key("cluster_cidrs"),
                f"{key('overlay_backend')} {config.overlay_backend} needs an IPv4 cluster CIDR",
            )
        if config.overlay_subnet_len <= v4[0].prefixlen:
            raise ConfigError(
                key("overlay_subnet_len"),
                f"/{config.overlay_subnet_len} is not smaller than the cluster CIDR {v4[0]}",
            )
    if config.overlay_backend != "none" and config.manifests_dir is not None:
        raise ConfigError(
            key("overlay_backend"),
            "the overlay needs the Kubernetes API (it claims pod CIDRs on Nodes)",
        )


# ---- showing ---------------------------------------------------------------------------------


def config_to_dict(config: AgentConfig) -> dict[str, Any]:
    """The effective configuration in netagent's YAML shape (for ``/configz``).

    Every field is present (unset ones as None); the values are plain
    JSON/YAML values, and the result loads back (``--config``) to an equal
    AgentConfig.
    """
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND}
    for group in GROUPS:
        out[group] = {}
    for spec in FIELDS:
        value = getattr(config, spec.attr)
        dumped = None if value is None else spec.type.dump(value)
        target = out[spec.group] if spec.group else out
        target[spec.key] = dumped
    return out
