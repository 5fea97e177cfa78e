"""The example config files in docs/examples/ load with the real loader, as `netagent run` does."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from netagent.cli import build_parser
from netagent.config import AgentConfig, ConfigError, build_config

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))

# Parsed options of `netagent run` that are not config values (see cli._cmd_run).
_NOT_CONFIG = ("command", "verbose", "config", "once")


def load_like_cli(path: Path, *extra_args: str, node_name: str = "node-1") -> AgentConfig:
    """Parse ``run --config path extra_args`` and build the config the way the CLI does."""
    args = build_parser().parse_args(["run", "--config", str(path), *extra_args])
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    return build_config(flags, args.config, env={"NODE_NAME": node_name})


def test_the_documented_examples_exist() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {"api-vxlan.yaml", "api-host-gw.yaml", "manifests.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_loads_and_leaves_the_node_name_to_the_node(path: Path) -> None:
    cfg = load_like_cli(path, node_name="node-7")
    assert cfg.node_name == "node-7"  # no example pins nodeName, so $NODE_NAME applies
    assert cfg.proxy_mode == "iptables"
    assert cfg.min_sync_period <= cfg.sync_period


def test_api_vxlan() -> None:
    cfg = load_like_cli(EXAMPLES / "api-vxlan.yaml")
    assert cfg.manifests_dir is None  # API mode
    assert cfg.kubeconfig is None and cfg.master is None  # in-cluster credentials
    assert cfg.overlay_backend == "vxlan"
    assert cfg.overlay_direct_routing is True
    assert cfg.overlay_subnet_len == 24
    assert cfg.cluster_cidrs == (ipaddress.ip_network("10.244.0.0/16"),)
    assert (cfg.min_sync_period, cfg.sync_period) == (1.0, 30.0)
    assert cfg.cni_conf_file == Path("/etc/cni/net.d/10-netagent.conflist")
    assert cfg.subnet_file == Path("/run/flannel/subnet.env")


def test_api_host_gw() -> None:
    cfg = load_like_cli(EXAMPLES / "api-host-gw.yaml")
    assert cfg.manifests_dir is None
    assert cfg.kubeconfig == Path("/etc/netagent/kubeconfig")
    assert cfg.overlay_backend == "host-gw"
    assert cfg.overlay_iface == "eth1"
    assert cfg.overlay_subnet_len == 25
    assert cfg.iptables_backend == "nft"
    assert (cfg.min_sync_period, cfg.sync_period) == (2.0, 60.0)
    assert cfg.nodeport_addresses == (ipaddress.ip_network("192.0.2.0/24"),)
    assert cfg.localhost_nodeports is False
    assert cfg.cni_conf_file is None  # cniConfFile: "" means: do not write one


def test_manifests() -> None:
    cfg = load_like_cli(EXAMPLES / "manifests.yaml")
    assert cfg.manifests_dir == Path("/etc/netagent/manifests")
    assert cfg.overlay_backend == "none"
    assert [n.version for n in cfg.cluster_cidrs] == [4, 6]
    assert (cfg.min_sync_period, cfg.sync_period) == (0.5, 10.0)
    assert cfg.masquerade_all is True
    assert cfg.proxy_config().masquerade_mark == "0x8000"
    assert cfg.iptables_backend == "legacy"
    assert cfg.metrics_bind_address == "[::1]:10249"


def test_flags_override_an_example() -> None:
    cfg = load_like_cli(EXAMPLES / "api-vxlan.yaml", "--sync-period", "45s", "--overlay", "host-gw")
    assert cfg.sync_period == 45.0
    assert cfg.overlay_backend == "host-gw"
    assert cfg.min_sync_period == 1.0  # still from the file


def test_the_overlay_is_refused_on_top_of_the_manifests_example() -> None:
    with pytest.raises(ConfigError) as info:
        load_like_cli(EXAMPLES / "manifests.yaml", "--overlay", "vxlan")
    assert info.value.key == "overlay.backend"
    assert "needs the Kubernetes API" in str(info.value)
