"""The field table drives the flags of `netagent run`, the YAML paths and the checks."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from netagent.cli import build_parser
from netagent.config import AgentConfig, build_config, config_to_dict, flag_values
from netagent.config_fields import BY_PATH, FIELDS, GROUPS, RESERVED_GROUPS, FieldSpec

#: (flag, dest, boolean) of `netagent run` before the table existed: none may go away.
FLAGS_IN_USE = (
    ("--manifests", "manifests_dir", False),
    ("--node-name", "node_name", False),
    ("--cluster-cidr", "cluster_cidrs", False),
    ("--proxy-mode", "proxy_mode", False),
    ("--iptables-backend", "iptables_backend", False),
    ("--min-sync-period", "min_sync_period", False),
    ("--sync-period", "sync_period", False),
    ("--nodeport-addresses", "nodeport_addresses", False),
    ("--masquerade-all", "masquerade_all", True),
    ("--masquerade-bit", "masquerade_bit", False),
    ("--healthz-bind-address", "healthz_bind_address", False),
    ("--metrics-bind-address", "metrics_bind_address", False),
    ("--kubeconfig", "kubeconfig", False),
    ("--master", "master", False),
    ("--legacy-endpoints", "legacy_endpoints", True),
    ("--overlay", "overlay_backend", False),
    ("--iface", "overlay_iface", False),
    ("--public-ip", "overlay_public_ip", False),
    ("--subnet-len", "overlay_subnet_len", False),
    ("--direct-routing", "overlay_direct_routing", True),
    ("--annotation-prefix", "overlay_annotation_prefix", False),
    ("--subnet-file", "subnet_file", False),
    ("--cni-conf-file", "cni_conf_file", False),
    ("--vxlan-tx-checksum", "overlay_vxlan_tx_checksum", False),
    ("--ip-masq", "overlay_ip_masq", True),
    ("--localhost-nodeports", "localhost_nodeports", True),
)


def run_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o: a for a in sub.choices["run"]._actions for o in a.option_strings}


def test_the_table_covers_every_agent_config_attribute_once() -> None:
    attrs = [f.name for f in dataclasses.fields(AgentConfig) if f.name != "extra"]
    assert sorted(s.attr for s in FIELDS) == sorted(attrs)
    paths = [p for s in FIELDS for p in (s.path, *s.aliases)]
    assert len(paths) == len(set(paths)) == len(BY_PATH)
    flags = [f for s in FIELDS for f in s.flags]
    assert len(flags) == len(set(flags))


def test_groups_are_kube_proxys_plus_netagents_overlay() -> None:
    assert set(GROUPS) == {"clientConnection", "iptables", "ipvs", "overlay", *RESERVED_GROUPS}
    assert RESERVED_GROUPS == ("nftables",)
    assert all(s.path.count(".") <= 1 for s in FIELDS)


@pytest.mark.parametrize(("flag", "dest", "boolean"), FLAGS_IN_USE, ids=lambda x: str(x))
def test_every_flag_in_use_still_exists_with_its_dest(flag: str, dest: str, boolean: bool) -> None:
    actions = run_actions()
    assert actions[flag].dest == dest
    assert actions[flag].default is None  # not given: leaves the file's value alone
    if boolean:
        assert isinstance(actions[flag], argparse.BooleanOptionalAction)
        assert actions["--no-" + flag[2:]] is actions[flag]


@pytest.mark.parametrize("spec", FIELDS, ids=lambda s: s.path)
def test_each_flag_is_generated_from_its_row(spec: FieldSpec) -> None:
    actions = run_actions()
    for flag in spec.flags:
        action = actions[flag]
        assert action.dest == spec.attr
        assert (action.choices or ()) == spec.type.choices
        assert isinstance(action, argparse.BooleanOptionalAction) == spec.type.boolean
        assert action.help is not None and spec.path in action.help


def test_argparse_still_checks_choices_and_integers(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--proxy-mode", "kernel"], ["--masquerade-bit", "x"], ["--subnet-len", "x"]):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["run", *argv])
        assert info.value.code == 2
    assert "invalid choice: 'kernel'" in capsys.readouterr().err


def test_flag_values_hold_every_field_and_only_what_was_given() -> None:
    args = build_parser().parse_args(
        ["run", "--hostname-override", "n9", "--no-ip-masq", "--subnet-len", "26", "--once"]
    )
    flags = flag_values(args)
    assert set(flags) == {s.attr for s in FIELDS}
    assert {k: v for k, v in flags.items() if v is not None} == {
        "node_name": "n9",
        "overlay_ip_masq": False,
        "overlay_subnet_len": 26,
    }
    # What the CLI passes on is every parsed option that is not --config/--once.
    rest = {
        k: v for k, v in vars(args).items() if k not in ("command", "verbose", "config", "once")
    }
    assert rest == flags


#: One flag value per field, and what the config holds then (in config_to_dict's spelling).
FLAG_EXAMPLES = {
    "node_name": ("n1", "n1"),
    "cluster_cidrs": ("10.244.0.0/16", "10.244.0.0/16"),
    "proxy_mode": ("iptables", "iptables"),
    "iptables_backend": ("nft", "nft"),
    "ipvs_scheduler": ("wrr", "wrr"),
    "ipvs_strict_arp": (True, True),
    "ipvs_exclude_cidrs": ("10.0.0.0/8", "10.0.0.0/8"),
    "ipvs_tcp_timeout": ("15m", "900s"),
    "ipvs_tcp_fin_timeout": ("0", "0s"),
    "ipvs_udp_timeout": ("45", "45s"),
    "nodeport_addresses": ("192.0.2.0/24", ["192.0.2.0/24"]),
    "external_ip_allow_cidrs": ("198.51.100.0/24", ["198.51.100.0/24"]),
    "masquerade_all": (True, True),
    "masquerade_bit": ("3", 3),
    "localhost_nodeports": (False, False),
    "manifests_dir": ("/m", "/m"),
    "kubeconfig": ("/k", "/k"),
    "master": ("https://a:6443", "https://a:6443"),
    "legacy_endpoints": (True, True),
    "min_watch_timeout": ("4m", "240s"),
    "min_sync_period": ("2s", "2s"),
    "sync_period": ("1m", "60s"),
    "healthz_bind_address": ("127.0.0.1:1", "127.0.0.1:1"),
    "metrics_bind_address": ("127.0.0.1:2", "127.0.0.1:2"),
    "overlay_backend": ("none", "none"),
    "overlay_iface": ("eth1", "eth1"),
    "overlay_public_ip": ("192.0.2.9", "192.0.2.9"),
    "overlay_subnet_len": ("26", 26),
    "overlay_direct_routing": (True, True),
    "overlay_ip_masq": (False, False),
    "overlay_vxlan_tx_checksum": ("off", "off"),
    "overlay_annotation_prefix": ("x.example", "x.example"),
    "subnet_file": ("/s.env", "/s.env"),
    "cni_conf_file": ("", None),
}


def test_there_is_a_flag_example_per_field() -> None:
    assert set(FLAG_EXAMPLES) == {s.attr for s in FIELDS}


@pytest.mark.parametrize("spec", FIELDS, ids=lambda s: s.attr)
def test_each_flag_value_reaches_its_field(spec: FieldSpec) -> None:
    given, shown = FLAG_EXAMPLES[spec.attr]
    if isinstance(given, bool):
        argv = [spec.flags[0] if given else "--no-" + spec.flags[0][2:]]
    else:
        argv = [spec.flags[-1], given]
    args = build_parser().parse_args(["run", *argv])
    dumped = config_to_dict(build_config(flag_values(args), env={}))
    where = dumped[spec.group] if spec.group else dumped
    assert where[spec.key] == shown
