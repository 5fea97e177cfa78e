"""AgentConfig: defaults, YAML file, flag precedence, and errors that name the field."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml

from netagent.config import ConfigError, build_config, config_to_dict


def test_defaults_match_kube_proxy() -> None:
    cfg = build_config({}, env={})
    assert cfg.min_sync_period == 1.0
    assert cfg.sync_period == 30.0
    assert cfg.masquerade_bit == 14
    assert cfg.proxy_config().masquerade_mark == "0x4000"
    assert cfg.healthz_bind_address == "0.0.0.0:10256"
    assert cfg.metrics_bind_address == "127.0.0.1:10249"


def test_file_then_flags_take_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("nodeName: from-file\nsyncPeriod: 45s\nclusterCIDR: 10.244.0.0/16\n")
    cfg = build_config({"node_name": "from-flag", "sync_period": None}, f, env={})
    assert cfg.node_name == "from-flag"
    assert cfg.sync_period == 45.0
    assert cfg.cluster_cidrs == (ipaddress.ip_network("10.244.0.0/16"),)


def test_node_name_from_env() -> None:
    assert build_config({}, env={"NODE_NAME": "n1"}).node_name == "n1"
    assert build_config({"node_name": "n2"}, env={"NODE_NAME": "n1"}).node_name == "n2"


@pytest.mark.parametrize(
    ("flags", "field", "fragment"),
    [
        ({"cluster_cidrs": "10.244.0.0/33"}, "clusterCIDR", "not a valid CIDR"),
        ({"cluster_cidrs": "10.244.0.1/16"}, "clusterCIDR", "has host bits set"),
        ({"sync_period": "-1"}, "syncPeriod", "positive"),
        ({"min_sync_period": "fast"}, "minSyncPeriod", "duration"),
        ({"masquerade_bit": 40}, "iptables.masqueradeBit", "0-31"),
        ({"proxy_mode": "userspace"}, "mode", "must be one of"),
        ({"iptables_backend": "xt"}, "iptables.backend", "must be one of"),
        ({"min_sync_period": "60s", "sync_period": "30s"}, "minSyncPeriod", "longer than"),
        ({"overlay_vxlan_tx_checksum": "maybe"}, "overlay.vxlanTxChecksum", "must be one of"),
        ({"min_watch_timeout": "0.5s"}, "clientConnection.minWatchTimeout", "outside 1s to 3600s"),
        ({"min_watch_timeout": "2h"}, "clientConnection.minWatchTimeout", "outside 1s to 3600s"),
    ],
)
def test_invalid_values_name_the_field(flags: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(flags, env={})
    assert info.value.key == field
    assert f"config field {field}:" in str(info.value)
    assert fragment in str(info.value)


def test_unknown_yaml_key_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("syncPeriodd: 10s\n")
    with pytest.raises(ConfigError, match="syncPeriodd: unknown field"):
        build_config({}, f, env={})


def test_bad_bind_address(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("metricsBindAddress: localhost:99999\n")
    with pytest.raises(ConfigError, match="metricsBindAddress"):
        build_config({}, f, env={})


@pytest.mark.parametrize(
    ("attr", "key", "value"),
    [
        ("sync_period", "syncPeriod", "inf"),
        ("sync_period", "syncPeriod", "infs"),
        ("sync_period", "syncPeriod", "1e999"),
        ("min_sync_period", "minSyncPeriod", "nan"),
        ("min_sync_period", "minSyncPeriod", "NaNms"),
        ("sync_period", "syncPeriod", float("inf")),
    ],
)
def test_non_finite_durations_are_refused(attr: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({attr: value}, env={})
    assert info.value.key == key
    assert str(info.value) == f"config field {key}: must be a finite duration, got {value!r}"


def test_non_finite_duration_in_the_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("syncPeriod: .inf\n")  # YAML's infinity
    with pytest.raises(ConfigError, match=r"config field syncPeriod: must be a finite duration"):
        build_config({}, f, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "auto"),
        ("overlay:\n  vxlanTxChecksum: auto\n", "auto"),
        ("overlay:\n  vxlanTxChecksum: off\n", "off"),  # YAML 1.1 reads a bare off as false
        ("overlay:\n  vxlanTxChecksum: on\n", "on"),
        ("overlay:\n  vxlanTxChecksum: 'off'\n", "off"),
    ],
)
def test_vxlan_tx_checksum_from_the_file(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text or "{}\n")
    assert build_config({}, f, env={}).overlay_vxlan_tx_checksum == expected


def test_ip_masq_and_tx_checksum_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("overlay:\n  ipMasq: false\n  vxlanTxChecksum: off\n")
    cfg = build_config({"overlay_ip_masq": True, "overlay_vxlan_tx_checksum": "on"}, f, env={})
    assert cfg.overlay_ip_masq is True and cfg.overlay_vxlan_tx_checksum == "on"
    assert build_config({}, f, env={}).overlay_ip_masq is False


# ---- netagent.io/v1alpha1: the grouped file --------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return f


GROUPED = """\
apiVersion: netagent.io/v1alpha1
kind: NetagentConfiguration
nodeName: n1
clusterCIDR: 10.244.0.0/16
syncPeriod: 45s
minSyncPeriod: 2s
nodePortAddresses: [192.0.2.0/24]
healthzBindAddress: 127.0.0.1:10256
legacyEndpoints: true
clientConnection:
  kubeconfig: /etc/netagent/kubeconfig
  master: https://192.0.2.10:6443
iptables:
  backend: nft
  masqueradeAll: true
  masqueradeBit: 15
  localhostNodePorts: false
ipvs: {}
nftables:
overlay:
  backend: vxlan
  iface: eth1
  publicIP: 192.0.2.21
  subnetLen: 25
  directRouting: true
  ipMasq: false
  vxlanTxChecksum: "off"
  annotationPrefix: example.com
  subnetFile: /run/x/subnet.env
  cniConfFile: ""
"""


def test_every_grouped_key_is_read(tmp_path: Path) -> None:
    cfg = build_config({}, write(tmp_path, GROUPED), env={})
    assert cfg.node_name == "n1"
    assert cfg.cluster_cidrs == (ipaddress.ip_network("10.244.0.0/16"),)
    assert (cfg.sync_period, cfg.min_sync_period) == (45.0, 2.0)
    assert cfg.nodeport_addresses == (ipaddress.ip_network("192.0.2.0/24"),)
    assert cfg.healthz_bind_address == "127.0.0.1:10256"
    assert cfg.legacy_endpoints is True
    assert cfg.kubeconfig == Path("/etc/netagent/kubeconfig")
    assert cfg.master == "https://192.0.2.10:6443"
    assert cfg.iptables_backend == "nft"
    assert (cfg.masquerade_all, cfg.masquerade_bit, cfg.localhost_nodeports) == (True, 15, False)
    assert cfg.overlay_backend == "vxlan"
    assert cfg.overlay_iface == "eth1"
    assert cfg.overlay_public_ip == ipaddress.IPv4Address("192.0.2.21")
    assert cfg.overlay_subnet_len == 25
    assert (cfg.overlay_direct_routing, cfg.overlay_ip_masq) == (True, False)
    assert cfg.overlay_vxlan_tx_checksum == "off"
    assert cfg.overlay_annotation_prefix == "example.com"
    assert cfg.subnet_file == Path("/run/x/subnet.env")
    assert cfg.cni_conf_file is None


def test_a_file_without_apiversion_is_read_as_netagents(tmp_path: Path) -> None:
    cfg = build_config({}, write(tmp_path, "overlay:\n  subnetLen: 26\n"), env={})
    assert cfg.overlay_subnet_len == 26


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (
            "overlay:\n  ifac: eth1\n",
            "overlay.ifac",
            "unknown field (known fields of overlay: annotationPrefix, backend",
        ),
        (
            "iptables:\n  sync: 1s\n",
            "iptables.sync",
            "known fields of iptables: backend, localhostNodePorts",
        ),
        ("ipvs:\n  minSyncPeriod: 1s\n", "ipvs.minSyncPeriod", "known fields of ipvs: excludeCIDRs, "),
        (
            "nftables:\n  masqueradeAll: true\n",
            "nftables.masqueradeAll",
            "the nftables group has no settings yet",
        ),
        (
            "overlayBackend: vxlan\n",
            "overlayBackend",
            "unknown field (it is now overlay.backend in netagent.io/v1alpha1)",
        ),
        ("kubeconfig: /k\n", "kubeconfig", "it is now clientConnection.kubeconfig"),
        ("masqueradeAll: true\n", "masqueradeAll", "it is now iptables.masqueradeAll"),
        (
            "backend: vxlan\n",
            "backend",
            "unknown field (known fields: clientConnection, clusterCIDR",
        ),
        (
            "overlay.backend: vxlan\n",
            "overlay.backend",
            "unknown field (write it nested: overlay: {backend: …})",
        ),
        ("overlay: vxlan\n", "overlay", "must be a mapping of settings"),
        (
            "clientConnection:\n  qps: 5\n",
            "clientConnection.qps",
            "known fields of clientConnection: kubeconfig, master",
        ),
    ],
)
def test_unknown_grouped_keys_are_refused_by_their_full_path(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({}, write(tmp_path, text), env={})
    assert info.value.key == key
    assert str(info.value).startswith(f"config field {key}: ")
    assert fragment in str(info.value)


def test_grouped_values_are_checked_and_named_by_path(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^config field overlay\.subnetLen: must be an integer 16-30"
    ):
        build_config({}, write(tmp_path, "overlay:\n  subnetLen: 8\n"), env={})
    with pytest.raises(
        ConfigError, match=r"^config field iptables\.masqueradeBit: must be an integer 0-31"
    ):
        build_config({}, write(tmp_path, "iptables:\n  masqueradeBit: 32\n"), env={})
    with pytest.raises(
        ConfigError, match=r"^config field clientConnection\.master: must be an http"
    ):
        build_config({}, write(tmp_path, "clientConnection:\n  master: 10.0.0.1:6443\n"), env={})


def test_the_v1alpha1_sync_period_spelling_is_an_alias(tmp_path: Path) -> None:
    f = write(tmp_path, "iptables:\n  syncPeriod: 40s\n  minSyncPeriod: 3s\n")
    cfg = build_config({}, f, env={})
    assert (cfg.sync_period, cfg.min_sync_period) == (40.0, 3.0)
    assert build_config({"sync_period": "50s"}, f, env={}).sync_period == 50.0  # flags still win
    f = write(tmp_path, "iptables:\n  minSyncPeriod: -1s\n")
    with pytest.raises(
        ConfigError, match=r"^config field iptables\.minSyncPeriod: must be a positive"
    ):
        build_config({}, f, env={})
    f = write(tmp_path, "iptables:\n  minSyncPeriod: 40s\n  syncPeriod: 30s\n")
    with pytest.raises(ConfigError) as info:
        build_config({}, f, env={})
    assert str(info.value) == (
        "config field iptables.minSyncPeriod: 40.0s is longer than iptables.syncPeriod 30.0s"
    )


def test_both_spellings_of_one_setting_are_refused(tmp_path: Path) -> None:
    f = write(tmp_path, "syncPeriod: 30s\niptables:\n  syncPeriod: 30s\n")
    with pytest.raises(ConfigError) as info:
        build_config({}, f, env={})
    assert info.value.key == "iptables.syncPeriod"
    assert "also given as syncPeriod; set only one of them" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: netagent.io/v2\nkind: NetagentConfiguration\n",
        "apiVersion: netagent.io/v1alpha1\n",
        "kind: KubeProxyConfiguration\n",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
    ],
)
def test_unknown_apiversion_or_kind_is_refused(tmp_path: Path, text: str) -> None:
    f = write(tmp_path, text)
    with pytest.raises(ConfigError, match="unknown apiVersion/kind") as info:
        build_config({}, f, env={})
    assert info.value.key == str(f)


def test_null_means_unset_where_the_default_is_unset(tmp_path: Path) -> None:
    text = (
        "manifestsDir: null\nclientConnection: {kubeconfig: null, master: null}\n"
        "overlay: {iface: null, publicIP: null, cniConfFile: null}\n"
    )
    cfg = build_config({}, write(tmp_path, text), env={})
    assert (cfg.manifests_dir, cfg.kubeconfig, cfg.master) == (None, None, None)
    assert (cfg.overlay_iface, cfg.overlay_public_ip, cfg.cni_conf_file) == (None, None, None)
    with pytest.raises(
        ConfigError, match=r"^config field overlay\.subnetFile: must be a file path"
    ):
        build_config({}, write(tmp_path, "overlay:\n  subnetFile: null\n"), env={})
    with pytest.raises(ConfigError, match=r"^config field syncPeriod: must be a duration"):
        build_config({}, write(tmp_path, "syncPeriod: null\n"), env={})


def test_the_underlay_check_names_the_keys_an_operator_writes_today() -> None:
    """Code outside the config modules names fields by their YAML path too."""
    from netagent.overlay.underlay import UnderlayError

    assert UnderlayError("x").key == "overlay.iface"
    assert str(ConfigError("overlay.publicIP", "x")) == "config field overlay.publicIP: x"


# ---- config_to_dict ---------------------------------------------------------------------------


def test_config_to_dict_of_the_defaults() -> None:
    shown = config_to_dict(build_config({}, env={}))
    assert shown == {
        "apiVersion": "netagent.io/v1alpha1",
        "kind": "NetagentConfiguration",
        "nodeName": "",
        "clusterCIDR": "",
        "mode": "iptables",
        "nodePortAddresses": [],
        "externalIPAllowCIDRs": [],
        "manifestsDir": None,
        "legacyEndpoints": False,
        "minSyncPeriod": "1s",
        "syncPeriod": "30s",
        "healthzBindAddress": "0.0.0.0:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clientConnection": {"kubeconfig": None, "master": None, "minWatchTimeout": "300s"},
        "iptables": {
            "backend": "auto",
            "masqueradeAll": False,
            "masqueradeBit": 14,
            "localhostNodePorts": True,
        },
        "ipvs": {
            "scheduler": "rr",
            "strictARP": False,
            "excludeCIDRs": "",
            "tcpTimeout": "0s",
            "tcpFinTimeout": "0s",
            "udpTimeout": "0s",
        },
        "nftables": {},
        "overlay": {
            "backend": "none",
            "iface": None,
            "publicIP": None,
            "subnetLen": 24,
            "directRouting": False,
            "ipMasq": True,
            "vxlanTxChecksum": "auto",
            "annotationPrefix": "flannel.alpha.coreos.com",
            "subnetFile": "/run/flannel/subnet.env",
            "cniConfFile": "/etc/cni/net.d/10-netagent.conflist",
        },
    }
    json.dumps(shown)  # /configz serves it as JSON


def test_config_to_dict_loads_back_to_the_same_config(tmp_path: Path) -> None:
    cfg = build_config(
        {"min_sync_period": "500ms", "cluster_cidrs": "10.244.0.0/16,fd00:10::/56"},
        write(tmp_path, GROUPED),
        env={},
    )
    shown = config_to_dict(cfg)
    assert shown["minSyncPeriod"] == "500ms"
    assert shown["clusterCIDR"] == "10.244.0.0/16,fd00:10::/56"
    assert shown["overlay"]["publicIP"] == "192.0.2.21"
    assert shown["overlay"]["cniConfFile"] is None
    again = build_config({}, write(tmp_path, yaml.safe_dump(shown)), env={})
    assert again == cfg


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("1.5s", "whole seconds"), ("-5", "positive"), ("30d", "duration"), ("3000000", "at most")],
)
def test_ipvs_timeouts_are_refused_by_name(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"ipvs_udp_timeout": value}, None)
    assert info.value.key == "ipvs.udpTimeout"
    assert fragment in str(info.value)
