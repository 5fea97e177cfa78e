"""kube-proxy's KubeProxyConfiguration read as netagent's config: used, ignored at zero, refused."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from netagent.config import AgentConfig, ConfigError, build_config

FIXTURES = Path(__file__).parent / "fixtures" / "config"
KUBEADM = FIXTURES / "kubeadm-kube-proxy.yaml"
HEAD = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"


def load(tmp_path: Path, doc: str | dict[str, Any], **flags: object) -> AgentConfig:
    f = tmp_path / "kube-proxy.yaml"
    f.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return build_config(flags, f, env={"NODE_NAME": "node-a"})


def kubeadm() -> dict[str, Any]:
    doc = yaml.safe_load(KUBEADM.read_text())
    assert isinstance(doc, dict)
    return doc


def test_the_kubeadm_configmap_with_every_field_at_zero_is_accepted(tmp_path: Path) -> None:
    cfg = load(tmp_path, KUBEADM.read_text())
    assert cfg.cluster_cidrs == (ipaddress.ip_network("10.244.0.0/16"),)
    assert cfg.kubeconfig == Path("/var/lib/kube-proxy/kubeconfig.conf")
    # Every zero value means "unset": netagent's defaults, and $NODE_NAME, apply.
    assert cfg.node_name == "node-a"
    defaults = AgentConfig()
    for attr in (
        "proxy_mode",
        "min_sync_period",
        "sync_period",
        "masquerade_all",
        "masquerade_bit",
        "localhost_nodeports",
        "healthz_bind_address",
        "metrics_bind_address",
        "nodeport_addresses",
        "overlay_backend",
    ):
        assert getattr(cfg, attr) == getattr(defaults, attr), attr


def test_kube_proxys_own_defaults_are_accepted_too(tmp_path: Path) -> None:
    """What `kube-proxy --write-config-to` writes: kube-proxy's defaults filled in."""
    doc = kubeadm()
    doc.update(
        mode="iptables",
        bindAddress="0.0.0.0",
        configSyncPeriod="15m0s",
        oomScoreAdj=-999,
        detectLocalMode="ClusterCIDR",
        healthzBindAddress="0.0.0.0:10256",
        metricsBindAddress="127.0.0.1:10249",
    )
    doc["clientConnection"].update(
        burst=10, qps=5, contentType="application/vnd.kubernetes.protobuf"
    )
    doc["conntrack"].update(
        maxPerCore=32768, min=131072, tcpCloseWaitTimeout="1h0m0s", tcpEstablishedTimeout="24h0m0s"
    )
    doc["iptables"].update(
        localhostNodePorts=True, masqueradeBit=14, minSyncPeriod="1s", syncPeriod="30s"
    )
    doc["ipvs"].update(syncPeriod="30s")
    doc["nftables"].update(masqueradeBit=14, minSyncPeriod="1s", syncPeriod="30s")
    doc["logging"].update(flushFrequency="5s", format="text")
    cfg = load(tmp_path, doc)
    assert (cfg.proxy_mode, cfg.sync_period, cfg.min_sync_period, cfg.masquerade_bit) == (
        "iptables",
        30.0,
        1.0,
        14,
    )


def test_the_common_fields_are_used(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        HEAD + "mode: iptables\n"
        "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n"
        "hostnameOverride: node-b\n"
        "healthzBindAddress: 127.0.0.1\n"  # a bare IP: kube-proxy appends its port
        "metricsBindAddress: '::1'\n"
        "nodePortAddresses: [192.0.2.0/24, localhost]\n"
        "clientConnection: {kubeconfig: /etc/kp/kubeconfig}\n"
        "iptables:\n"
        "  masqueradeAll: true\n"
        "  masqueradeBit: 0\n"  # a set 0 is bit 0, not "unset" (kube-proxy's field is a pointer)
        "  localhostNodePorts: false\n"
        "  syncPeriod: 1m30s\n"  # compound, as Kubernetes writes durations
        "  minSyncPeriod: 500ms\n",
    )
    assert cfg.node_name == "node-b"
    assert [n.version for n in cfg.cluster_cidrs] == [4, 6]
    assert cfg.healthz_bind_address == "127.0.0.1:10256"
    assert cfg.metrics_bind_address == "[::1]:10249"
    assert cfg.nodeport_addresses == tuple(
        ipaddress.ip_network(n) for n in ("192.0.2.0/24", "127.0.0.0/8", "::1/128")
    )
    assert cfg.kubeconfig == Path("/etc/kp/kubeconfig")
    assert (cfg.masquerade_all, cfg.masquerade_bit, cfg.localhost_nodeports) == (True, 0, False)
    assert (cfg.sync_period, cfg.min_sync_period) == (90.0, 0.5)


def test_flags_override_a_kube_proxy_file_and_add_the_overlay(tmp_path: Path) -> None:
    cfg = load(tmp_path, KUBEADM.read_text(), overlay_backend="vxlan", sync_period="10s")
    assert (cfg.overlay_backend, cfg.sync_period) == ("vxlan", 10.0)


def test_top_level_sync_periods_are_read_and_must_agree_with_iptables(tmp_path: Path) -> None:
    cfg = load(tmp_path, HEAD + "syncPeriod: 20s\nminSyncPeriod: 2s\niptables: {syncPeriod: 0s}\n")
    assert (cfg.sync_period, cfg.min_sync_period) == (20.0, 2.0)
    assert load(tmp_path, HEAD + "syncPeriod: 1m\niptables: {syncPeriod: 1m0s}\n").sync_period == 60
    with pytest.raises(ConfigError) as info:
        load(tmp_path, HEAD + "syncPeriod: 20s\niptables: {syncPeriod: 30s}\n")
    assert info.value.key == "iptables.syncPeriod"
    assert "disagrees with syncPeriod" in str(info.value)


def test_ipvs_timeouts_are_read_as_whole_seconds(tmp_path: Path) -> None:
    cfg = load(tmp_path, HEAD + "ipvs: {tcpTimeout: 15m0s, tcpFinTimeout: 0s, udpTimeout: 45s}\n")
    assert (cfg.ipvs_tcp_timeout, cfg.ipvs_tcp_fin_timeout, cfg.ipvs_udp_timeout) == (
        900.0,
        0.0,
        45.0,
    )
    with pytest.raises(ConfigError) as info:
        load(tmp_path, HEAD + "ipvs: {udpTimeout: 1500ms}\n")
    assert info.value.key == "ipvs.udpTimeout"
    assert "whole seconds" in str(info.value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("winkernel.networkName", "l2bridge"),
        ("ipvs.minSyncPeriod", "5s"),
        ("nftables.masqueradeAll", True),
        ("conntrack.maxPerCore", 65536),
        ("clientConnection.qps", 50),
        ("bindAddress", "192.0.2.5"),
        ("detectLocalMode", "NodeCIDR"),
        ("oomScoreAdj", -500),
        ("featureGates.SomeGate", True),
        ("logging.verbosity", 4),
        ("logging.options.json.infoBufferSize", "64Ki"),
        ("enableProfiling", True),
    ],
)
def test_a_set_field_with_no_netagent_meaning_is_refused_by_name(
    tmp_path: Path, path: str, value: object
) -> None:
    doc = kubeadm()
    node = doc
    *groups, leaf = path.split(".")
    for group in groups:
        node = node.setdefault(group, {})
    node[leaf] = value
    with pytest.raises(ConfigError) as info:
        load(tmp_path, doc)
    assert info.value.key == path
    assert str(info.value).startswith(f"config field {path}: not supported by netagent (set to ")


def test_the_brief_example_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, HEAD + "winkernel:\n  networkName: l2\n")
    assert str(info.value) == (
        "config field winkernel.networkName: not supported by netagent (set to 'l2'; "
        "only its zero value or kube-proxy's default is accepted)"
    )


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("mode: userspace\n", "mode", "must be one of iptables, ipvs, nftables, none, got"),
        ("mode: kernelspace\n", "mode", "must be one of iptables, ipvs, nftables, none"),
        ("nodePortAddresses: [primary]\n", "nodePortAddresses", "the keyword 'primary'"),
        (
            "iptables: {minSyncPeriod: fast}\n",
            "iptables.minSyncPeriod",
            "must be a duration such as 1s or 1m0s",
        ),
        (
            "iptables: {syncPeriod: -5s}\n",
            "iptables.syncPeriod",
            "must be a positive duration, got '-5s'",
        ),
        ("iptables: {masqueradeBit: 40}\n", "iptables.masqueradeBit", "must be an integer 0-31"),
        (
            "iptables: {minSyncPeriod: 1m, syncPeriod: 30s}\n",
            "iptables.minSyncPeriod",
            "longer than iptables.syncPeriod",
        ),
        ("clusterCIDR: 10.244.0.1/16\n", "clusterCIDR", "has host bits set"),
        (
            "metricsBindAddress: localhost:10249\n",
            "metricsBindAddress",
            "host must be an IP address",
        ),
        ("overlay: {backend: vxlan}\n", "overlay", "unknown field of KubeProxyConfiguration"),
        (
            "iptables: {backend: nft}\n",
            "iptables.backend",
            "unknown field of KubeProxyConfiguration",
        ),
        ("masqueradeAll: true\n", "masqueradeAll", "unknown field of KubeProxyConfiguration"),
        ("conntrack: 5\n", "conntrack", "must be a mapping"),
    ],
)
def test_bad_kube_proxy_values_name_the_kube_proxy_path(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, HEAD + text)
    assert info.value.key == key
    assert f"config field {key}: " in str(info.value)
    assert fragment in str(info.value)


def test_the_docs_example_is_a_kube_proxy_file_netagent_reads() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "kube-proxy.yaml"
    cfg = build_config({}, example, env={"NODE_NAME": "n1"})
    assert (cfg.sync_period, cfg.min_sync_period) == (60.0, 1.0)
    assert cfg.nodeport_addresses == (ipaddress.ip_network("192.0.2.0/24"),)
