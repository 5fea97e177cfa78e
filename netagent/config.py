"""Agent configuration: one validated, frozen object built from a YAML file and flags.

Why: configuration is input like any other, so it crosses the same kind of
boundary as Kubernetes objects. Every field is checked once, here, and an
invalid value stops the agent at start with a message naming the field
(``config field syncPeriod: must be a positive duration, got '-1'``)
instead of surfacing later as a strange rule. Flags take precedence over the
file, as with kube-proxy's ``--config``.

The YAML keys are camelCase, like KubeProxyConfiguration, so a kube-proxy
operator can read them; docs/configuration.md lists every key.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from netagent.model import IPNetwork, ProxyConfig

PROXY_MODES = ("iptables",)
IPTABLES_BACKENDS = ("auto", "nft", "legacy")
OVERLAY_BACKENDS = ("none", "vxlan", "host-gw")
#: ``overlayVxlanTxChecksum`` values (see netagent/overlay/checksum.py).
VXLAN_TX_CHECKSUM = ("auto", "on", "off")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config field {key}: {reason}")
        self.key = key


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
    iptables_backend: str = "auto"
    manifests_dir: Path | None = None
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    nodeport_addresses: tuple[IPNetwork, ...] = ()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    localhost_nodeports: bool = True
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    kubeconfig: Path | None = None
    master: str | None = None
    legacy_endpoints: bool = False
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
        )


# YAML key -> dataclass attribute. Keys not listed here are refused.
_YAML_KEYS = {
    "nodeName": "node_name",
    "clusterCIDR": "cluster_cidrs",
    "mode": "proxy_mode",
    "iptablesBackend": "iptables_backend",
    "manifestsDir": "manifests_dir",
    "minSyncPeriod": "min_sync_period",
    "syncPeriod": "sync_period",
    "nodePortAddresses": "nodeport_addresses",
    "masqueradeAll": "masquerade_all",
    "masqueradeBit": "masquerade_bit",
    "localhostNodePorts": "localhost_nodeports",
    "healthzBindAddress": "healthz_bind_address",
    "metricsBindAddress": "metrics_bind_address",
    "kubeconfig": "kubeconfig",
    "master": "master",
    "legacyEndpoints": "legacy_endpoints",
    "overlayBackend": "overlay_backend",
    "overlayIface": "overlay_iface",
    "overlayPublicIP": "overlay_public_ip",
    "overlaySubnetLen": "overlay_subnet_len",
    "overlayDirectRouting": "overlay_direct_routing",
    "overlayIPMasq": "overlay_ip_masq",
    "overlayVxlanTxChecksum": "overlay_vxlan_tx_checksum",
    "overlayAnnotationPrefix": "overlay_annotation_prefix",
    "subnetFile": "subnet_file",
    "cniConfFile": "cni_conf_file",
}
_ATTR_TO_KEY = {v: k for k, v in _YAML_KEYS.items()}


def _cidrs(key: str, value: object) -> tuple[IPNetwork, ...]:
    items: list[object]
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(key, f"expected a CIDR or a list of CIDRs, got {value!r}")
    out: list[IPNetwork] = []
    for item in items:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            out.append(item)
            continue
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=True))
        except ValueError as exc:
            raise ConfigError(key, f"{item!r} is not a valid CIDR ({exc})") from None
    return tuple(out)


def _seconds(key: str, value: object) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a duration in seconds, got {value!r}")
    text = str(value).strip()
    scale = 1.0
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], mult
            break
    try:
        seconds = float(text) * scale
    except ValueError:
        raise ConfigError(key, f"must be a duration such as 1s or 30, got {value!r}") from None
    if not math.isfinite(seconds):  # inf, nan, 1e999: a timer that never (or always) fires
        raise ConfigError(key, f"must be a finite duration, got {value!r}")
    if not seconds > 0:
        raise ConfigError(key, f"must be a positive duration, got {value!r}")
    return seconds


def _bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(key, f"must be true or false, got {value!r}")


def _bind(key: str, value: object) -> str:
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"must be host:port, got {value!r}")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(key, f"host must be an IP address, got {host!r}") from None
    return text


def _coerce(attr: str, value: object) -> object:
    """Convert and check one value; raise ConfigError naming its YAML key."""
    key = _ATTR_TO_KEY.get(attr, attr)
    if attr in ("cluster_cidrs", "nodeport_addresses"):
        return _cidrs(key, value)
    if attr in ("min_sync_period", "sync_period"):
        return _seconds(key, value)
    if attr in (
        "masquerade_all",
        "localhost_nodeports",
        "legacy_endpoints",
        "overlay_direct_routing",
        "overlay_ip_masq",
    ):
        return _bool(key, value)
    if attr == "overlay_vxlan_tx_checksum":
        if isinstance(value, bool):  # YAML 1.1 reads a bare on/off as a boolean
            value = "on" if value else "off"
        if value not in VXLAN_TX_CHECKSUM:
            raise ConfigError(key, f"must be one of {', '.join(VXLAN_TX_CHECKSUM)}, got {value!r}")
        return value
    if attr == "overlay_backend":
        if value not in OVERLAY_BACKENDS:
            raise ConfigError(key, f"must be one of {', '.join(OVERLAY_BACKENDS)}, got {value!r}")
        return value
    if attr == "overlay_subnet_len":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(key, f"must be an integer 16-30, got {value!r}")
        try:
            length = int(value)
        except ValueError:
            raise ConfigError(key, f"must be an integer 16-30, got {value!r}") from None
        if not 16 <= length <= 30:
            raise ConfigError(key, f"must be an integer 16-30, got {value!r}")
        return length
    if attr == "overlay_public_ip":
        try:
            return ipaddress.IPv4Address(str(value).strip())
        except ValueError:
            raise ConfigError(key, f"must be an IPv4 address, got {value!r}") from None
    if attr in ("kubeconfig", "subnet_file"):
        if value in (None, ""):
            raise ConfigError(key, "must be a file path")
        return Path(str(value))
    if attr == "cni_conf_file":
        return None if value in (None, "") else Path(str(value))
    if attr == "master":
        text = str(value).strip()
        if not text.startswith(("http://", "https://")):
            raise ConfigError(key, f"must be an http:// or https:// URL, got {value!r}")
        return text
    if attr in ("overlay_iface", "overlay_annotation_prefix"):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(key, f"must be a non-empty string, got {value!r}")
        return value.strip()
    if attr == "masquerade_bit":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(key, f"must be an integer 0-31, got {value!r}")
        try:
            bit = int(value)
        except ValueError:
            raise ConfigError(key, f"must be an integer 0-31, got {value!r}") from None
        if not 0 <= bit <= 31:
            raise ConfigError(key, f"must be an integer 0-31, got {value!r}")
        return bit
    if attr == "proxy_mode":
        if value not in PROXY_MODES:
            raise ConfigError(key, f"must be one of {', '.join(PROXY_MODES)}, got {value!r}")
        return value
    if attr == "iptables_backend":
        if value not in IPTABLES_BACKENDS:
            raise ConfigError(key, f"must be one of {', '.join(IPTABLES_BACKENDS)}, got {value!r}")
        return value
    if attr == "manifests_dir":
        return None if value in (None, "") else Path(str(value))
    if attr in ("healthz_bind_address", "metrics_bind_address"):
        return _bind(key, value)
    if attr == "node_name":
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(key, "unknown field")


def load_config_file(path: Path) -> dict[str, object]:
    """Read a YAML config file into ``{attribute: raw value}``; unknown keys are errors."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "config file must hold a mapping")
    out: dict[str, object] = {}
    for key, value in data.items():
        if key in ("apiVersion", "kind"):
            continue
        attr = _YAML_KEYS.get(str(key))
        if attr is None:
            known = ", ".join(sorted(_YAML_KEYS))
            raise ConfigError(str(key), f"unknown field (known fields: {known})")
        out[attr] = value
    return out


def build_config(
    flags: Mapping[str, object],
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Merge defaults, the YAML file, $NODE_NAME and flags (in rising precedence)."""
    env = os.environ if env is None else env
    raw: dict[str, object] = {}
    if config_file is not None:
        raw.update(load_config_file(config_file))
    if env.get("NODE_NAME") and "node_name" not in raw:
        raw["node_name"] = env["NODE_NAME"]
    raw.update({k: v for k, v in flags.items() if v is not None})
    known = {f.name for f in fields(AgentConfig)} - {"extra"}
    values: dict[str, object] = {}
    for attr, value in raw.items():
        if attr not in known:
            raise ConfigError(attr, "unknown field")
        values[attr] = _coerce(attr, value)
    config = replace(AgentConfig(), **values)  # type: ignore[arg-type]
    if config.min_sync_period > config.sync_period:
        raise ConfigError(
            "minSyncPeriod",
            f"{config.min_sync_period}s is longer than syncPeriod {config.sync_period}s",
        )
    if config.overlay_backend != "none":
        v4 = [c for c in config.cluster_cidrs if c.version == 4]
        if not v4:
            raise ConfigError(
                "clusterCIDR", f"overlayBackend {config.overlay_backend} needs an IPv4 cluster CIDR"
            )
        if config.overlay_subnet_len <= v4[0].prefixlen:
            raise ConfigError(
                "overlaySubnetLen",
                f"/{config.overlay_subnet_len} is not smaller than the cluster CIDR {v4[0]}",
            )
    if config.overlay_backend != "none" and config.manifests_dir is not None:
        raise ConfigError(
            "overlayBackend", "the overlay needs the Kubernetes API (it claims pod CIDRs on Nodes)"
        )
    return config
