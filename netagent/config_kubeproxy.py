"""Reading kube-proxy's own config file (KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1).

Why: a cluster moving from kube-proxy to netagent already has this file (kubeadm
keeps it in the ``kube-proxy`` ConfigMap). netagent reads it as it is, for the
settings that mean something to netagent, so the ConfigMap can be mounted
unchanged. Three rules, one per row kind of the table below:

* a field netagent implements sets the netagent field (errors name the
  kube-proxy path, ``config field iptables.minSyncPeriod: …``);
* a field netagent does not implement is accepted when it holds its zero
  value or kube-proxy's default, and then ignored. kubeadm writes every field,
  mostly as ``""``, ``0``, ``0s``, ``null`` or ``false``, so refusing those
  would refuse every kubeadm cluster;
* that same field set to anything else is refused by name
  (``config field winkernel.networkName: not supported by netagent …``):
  silently dropping a setting someone chose would change the dataplane
  behind their back. An unknown field is refused too.

In this file a mapped field at its zero value (``hostnameOverride: ""``,
``iptables.syncPeriod: 0s``, ``masqueradeBit: null``) means "unset", as it
does for kube-proxy, so netagent's default (or $NODE_NAME) applies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from netagent.config_values import ConfigError, go_duration_seconds

API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
KIND = "KubeProxyConfiguration"


@dataclass(frozen=True, slots=True)
class KubeProxyField:
    """One KubeProxyConfiguration field.

    Attributes:
        path: Its dotted path in the file.
        attr: The AgentConfig attribute it sets; "" when netagent has no use for it.
        defaults: kube-proxy's default values for an unused field (accepted and
            ignored like the zero value; durations compare by length).
        duration: The value is a Go duration (``1m0s``); converted to seconds.
        port: For a bind address: the port kube-proxy appends to a bare IP.
        note: Shown in the docs' mapping table.
    """

    path: str
    attr: str = ""
    defaults: tuple[object, ...] = ()
    duration: bool = False
    port: int = 0
    note: str = ""


_K = KubeProxyField
_GENERIC = "not in v1alpha1: where kube-proxy's internal config and KEP-784 keep it"

FIELDS: tuple[KubeProxyField, ...] = (
    # ---- used -------------------------------------------------------------------------------
    _K(
        "mode",
        "proxy_mode",
        note='`""` means the default; `iptables`, `ipvs` and `nftables` are accepted',
    ),
    _K("clusterCIDR", "cluster_cidrs"),
    _K("nodePortAddresses", "nodeport_addresses", note="`primary` is refused"),
    _K("hostnameOverride", "node_name", note='`""` leaves `$NODE_NAME` / `--node-name`'),
    _K("healthzBindAddress", "healthz_bind_address", port=10256, note="a bare IP gets `:10256`"),
    _K("metricsBindAddress", "metrics_bind_address", port=10249, note="a bare IP gets `:10249`"),
    _K("clientConnection.kubeconfig", "kubeconfig", note='`""`: in-cluster, then $KUBECONFIG'),
    _K("iptables.masqueradeAll", "masquerade_all"),
    _K("iptables.masqueradeBit", "masquerade_bit"),
    _K("iptables.localhostNodePorts", "localhost_nodeports"),
    _K("iptables.syncPeriod", "sync_period", duration=True, note="`0s` means the default"),
    _K("iptables.minSyncPeriod", "min_sync_period", duration=True, note="`0s` means the default"),
    _K("syncPeriod", "sync_period", duration=True, note=_GENERIC),
    _K("minSyncPeriod", "min_sync_period", duration=True, note=_GENERIC),
    # ---- no netagent meaning: accepted at zero or kube-proxy's default ------------------------
    _K("bindAddress", defaults=("0.0.0.0", "::"), note="netagent takes node IPs from the Node"),
    _K("bindAddressHardFail"),
    _K("enableProfiling"),
    _K("showHiddenMetricsForVersion"),
    _K("configSyncPeriod", defaults=("15m0s",), duration=True),
    _K("portRange"),
    _K("udpIdleTimeout", defaults=("250ms",), duration=True, note="older releases"),
    _K("oomScoreAdj", defaults=(-999,)),
    _K("windowsRunAsService"),
    _K("detectLocalMode", defaults=("ClusterCIDR",), note="netagent detects local by clusterCIDR"),
    _K("detectLocal.bridgeInterface"),
    _K("detectLocal.interfaceNamePrefix"),
    _K("clientConnection.acceptContentTypes", defaults=("application/json",)),
    _K(
        "clientConnection.contentType",
        defaults=("application/json", "application/vnd.kubernetes.protobuf"),
        note="netagent talks JSON",
    ),
    _K("clientConnection.qps", defaults=(5,)),
    _K("clientConnection.burst", defaults=(10,)),
    _K("iptables.snatNodeInternalIP"),
    _K("conntrack.maxPerCore", defaults=(32768,), note="netagent leaves conntrack limits alone"),
    _K("conntrack.min", defaults=(131072,)),
    _K("conntrack.tcpEstablishedTimeout", defaults=("24h0m0s",), duration=True),
    _K("conntrack.tcpCloseWaitTimeout", defaults=("1h0m0s",), duration=True),
    _K("conntrack.tcpBeLiberal"),
    _K("conntrack.udpTimeout", duration=True),
    _K("conntrack.udpStreamTimeout", duration=True),
    _K(
        "ipvs.syncPeriod",
        defaults=("30s",),
        duration=True,
        note="netagent's IPVS mode reads the top-level syncPeriod",
    ),
    _K("ipvs.minSyncPeriod", duration=True),
    _K("ipvs.scheduler", "ipvs_scheduler", defaults=("",), note='`""` means `rr`'),
    _K("ipvs.excludeCIDRs", "ipvs_exclude_cidrs"),
    _K("ipvs.strictARP", "ipvs_strict_arp"),
    _K("ipvs.tcpTimeout", "ipvs_tcp_timeout", duration=True),
    _K("ipvs.tcpFinTimeout", "ipvs_tcp_fin_timeout", duration=True),
    _K("ipvs.udpTimeout", "ipvs_udp_timeout", duration=True),
    _K(
        "nftables.masqueradeAll",
        note="netagent's nftables mode reads the top-level fields (masqueradeAll, syncPeriod, ...)",
    ),
    _K("nftables.masqueradeBit", defaults=(14,)),
    _K("nftables.syncPeriod", defaults=("30s",), duration=True),
    _K("nftables.minSyncPeriod", defaults=("1s",), duration=True),
    _K("winkernel.networkName", note="Windows only"),
    _K("winkernel.sourceVip"),
    _K("winkernel.enableDSR"),
    _K("winkernel.rootHnsEndpointName"),
    _K("winkernel.forwardHealthCheckVip"),
)

BY_PATH: dict[str, KubeProxyField] = {f.path: f for f in FIELDS}
#: Groups whose fields are all listed above.
GROUPS = frozenset(p.partition(".")[0] for p in BY_PATH if "." in p)
#: Groups with free-form content: every leaf must be zero or a listed default.
OPAQUE: dict[str, tuple[object, ...]] = {
    "featureGates": (),
    "logging": ("5s", 5_000_000_000, "text"),  # flushFrequency, format
}


def is_zero(value: object) -> bool:
    """Its Go type's zero value, as a serialiser writes it (``""``, ``0``, ``0s``, ``null``)."""
    if value is None or value is False:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0
    if isinstance(value, str):
        return value == "" or go_duration_seconds(value) == 0
    if isinstance(value, list | tuple):
        return not value
    if isinstance(value, Mapping):
        return all(is_zero(v) for v in value.values())
    return False


def _same(value: object, default: object, duration: bool) -> bool:
    if duration and isinstance(value, str) and isinstance(default, str):
        seconds = go_duration_seconds(value)
        if seconds is not None:
            return seconds == go_duration_seconds(default)
    return type(value) is type(default) and value == default


def _unset(value: object, spec: KubeProxyField) -> bool:
    """A used field left at the value kube-proxy reads as "not set" (then netagent's default)."""
    if value is None or value == "" or value == []:
        return True
    return spec.duration and isinstance(value, str) and go_duration_seconds(value) == 0


def _converted(value: object, spec: KubeProxyField) -> object:
    """The kube-proxy spelling of a used value, turned into netagent's."""
    if spec.duration:
        seconds = go_duration_seconds(str(value)) if isinstance(value, str) else None
        if seconds is None:
            raise ConfigError(spec.path, f"must be a duration such as 1s or 1m0s, got {value!r}")
        if seconds < 0:
            raise ConfigError(spec.path, f"must be a positive duration, got {value!r}")
        return seconds
    if spec.port and isinstance(value, str):
        try:
            ip = ipaddress.ip_address(value.strip("[]"))
        except ValueError:
            return value
        return f"[{ip}]:{spec.port}" if ip.version == 6 else f"{ip}:{spec.port}"
    return value


def _refuse(path: str, value: object) -> ConfigError:
    return ConfigError(
        path,
        f"not supported by netagent (set to {value!r}; only its zero value or kube-proxy's "
        "default is accepted)",
    )


def read(document: Mapping[str, object]) -> dict[str, tuple[str, object]]:
    """``{attribute: (kube-proxy path, raw value)}`` for the fields netagent uses.

    Raises ConfigError naming the first field that is set to something netagent
    cannot do, or that kube-proxy does not have.
    """
    out: dict[str, tuple[str, object]] = {}
    for key, value in document.items():
        if key in ("apiVersion", "kind"):
            continue
        _walk(str(key), value, out)
    return out


def _walk(path: str, value: object, out: dict[str, tuple[str, object]]) -> None:
    spec = BY_PATH.get(path)
    top = path.partition(".")[0]
    if spec is None and (path in GROUPS or top in OPAQUE):
        if value is None:
            return
        if isinstance(value, Mapping):
            for key, sub in value.items():
                _walk(f"{path}.{key}", sub, out)
            return
        if path in GROUPS or path in OPAQUE:
            raise ConfigError(path, f"must be a mapping, got {value!r}")
        if is_zero(value) or any(_same(value, d, True) for d in OPAQUE[top]):
            return
        raise _refuse(path, value)
    if spec is None:
        raise ConfigError(path, f"unknown field of {KIND} ({API_VERSION})")
    if not spec.attr:
        if is_zero(value) or any(_same(value, d, spec.duration) for d in spec.defaults):
            return
        raise _refuse(path, value)
    if _unset(value, spec):
        return
    value = _converted(value, spec)
    if spec.attr in out:
        other, first = out[spec.attr]
        if first != value:
            raise ConfigError(path, f"disagrees with {other} ({first!r}); set one of them")
        return
    out[spec.attr] = (path, value)
