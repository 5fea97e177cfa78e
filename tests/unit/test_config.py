"""AgentConfig: defaults, YAML file, flag precedence, and errors that name the field."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from netagent.config import ConfigError, build_config


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
        ({"masquerade_bit": 40}, "masqueradeBit", "0-31"),
        ({"proxy_mode": "userspace"}, "mode", "must be one of"),
        ({"iptables_backend": "xt"}, "iptablesBackend", "must be one of"),
        ({"min_sync_period": "60s", "sync_period": "30s"}, "minSyncPeriod", "longer than"),
        ({"overlay_vxlan_tx_checksum": "maybe"}, "overlayVxlanTxChecksum", "must be one of"),
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
        ("overlayVxlanTxChecksum: auto\n", "auto"),
        ("overlayVxlanTxChecksum: off\n", "off"),  # YAML 1.1 reads a bare off as false
        ("overlayVxlanTxChecksum: on\n", "on"),
        ("overlayVxlanTxChecksum: 'off'\n", "off"),
    ],
)
def test_vxlan_tx_checksum_from_the_file(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text or "{}\n")
    assert build_config({}, f, env={}).overlay_vxlan_tx_checksum == expected


def test_ip_masq_and_tx_checksum_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("overlayIPMasq: false\noverlayVxlanTxChecksum: off\n")
    cfg = build_config({"overlay_ip_masq": True, "overlay_vxlan_tx_checksum": "on"}, f, env={})
    assert cfg.overlay_ip_masq is True and cfg.overlay_vxlan_tx_checksum == "on"
    assert build_config({}, f, env={}).overlay_ip_masq is False
