"""The command line: bad flags and config stop the agent with exit 2 and a message naming the field."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from netagent import cli
from netagent.cli import main
from netagent.config import AgentConfig
from netagent.overlay import kernel as overlay_kernel
from netagent.overlay import underlay
from netagent.overlay.kernel_fake import FakeOverlayKernel
from netagent.overlay.model import RouteEntry
from netagent.overlay.underlay import Underlay, UnderlayError
from netagent.runtime import api_source


def test_invalid_cluster_cidr_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = main(["run", "--manifests", str(tmp_path), "--node-name", "n1", "--cluster-cidr", "10.0.0.0/33", "--once"])
    assert rc == 2
    assert "config field clusterCIDR" in caplog.text


def test_missing_node_name_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["run", "--manifests", str(tmp_path), "--once"]) == 2
    assert "config field nodeName: required" in caplog.text


def test_missing_manifests_dir_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = main(["run", "--manifests", str(tmp_path / "nope"), "--node-name", "n1", "--once"])
    assert rc == 2
    assert "manifestsDir" in caplog.text and "not a directory" in caplog.text


def test_config_file_error_names_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("syncPeriod: -5s\n")
    rc = main(["run", "--config", str(cfg), "--manifests", str(tmp_path), "--node-name", "n1"])
    assert rc == 2
    assert "config field syncPeriod" in caplog.text


def test_debug_trace_on_a_rules_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.write_text(
        "*nat\n:PREROUTING ACCEPT [0:0]\n"
        "-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.0.11:8080\n"
        "COMMIT\n"
    )
    rc = main(
        ["debug", "trace", "--src", "10.244.0.20", "--dst", "10.96.0.10", "--port", "80",
         "--rules", str(rules), "--local-ip", "192.0.2.2"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "ACCEPT -> 10.244.0.11:8080" in out
    assert "possible endpoints: 10.244.0.11:8080" in out


def test_debug_trace_reports_unparseable_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.write_text("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m owner --uid-owner 0 -j ACCEPT\nCOMMIT\n")
    rc = main(["debug", "trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--port", "1",
               "--rules", str(rules), "--local-ip", "10.0.0.3"])
    assert rc == 1
    assert "unknown match module 'owner'" in capsys.readouterr().out


def overlay_run(*extra: str) -> list[str]:
    return [
        "run", "--node-name", "n1", "--master", "http://127.0.0.1:9",
        "--overlay", "vxlan", "--cluster-cidr", "10.244.0.0/16", *extra,
    ]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[AgentConfig]:
    """Replaces the API daemon: records the configs it would have run with."""
    runs: list[AgentConfig] = []

    async def fake_run_api(config: AgentConfig, **kwargs: object) -> int:
        runs.append(config)
        return 0

    monkeypatch.setattr(api_source, "run_api", fake_run_api)
    return runs


@pytest.mark.parametrize(
    ("flags", "message", "key", "expected"),
    [
        (
            ("--iface", "eth9"),
            "--iface eth9: no such interface",
            None,  # the default key
            "config field overlay.iface: --iface eth9: no such interface",
        ),
        (
            ("--iface", "eth1"),
            "--iface eth1 has no IPv4 address",
            "overlay.iface",
            "config field overlay.iface: --iface eth1 has no IPv4 address",
        ),
        (
            ("--iface", "eth1", "--public-ip", "192.0.2.99"),
            "--public-ip 192.0.2.99 is not an address of --iface eth1",
            "overlay.publicIP",
            "config field overlay.publicIP: --public-ip 192.0.2.99 is not an address of --iface eth1",
        ),
    ],
)
def test_bad_underlay_is_refused_before_the_daemon_starts(
    flags: tuple[str, ...],
    message: str,
    key: str | None,
    expected: str,
    started: list[AgentConfig],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    asked: list[dict[str, Any]] = []

    def bad_underlay(**kwargs: Any) -> Underlay:
        asked.append(kwargs)
        raise UnderlayError(message) if key is None else UnderlayError(message, key=key)

    monkeypatch.setattr(underlay, "find_underlay", bad_underlay)
    assert main(overlay_run(*flags)) == 2
    assert started == []
    assert expected in caplog.text
    public_ip = ipaddress.IPv4Address("192.0.2.99") if "--public-ip" in flags else None
    assert asked == [{"iface": flags[1], "public_ip": public_ip}]


def test_good_underlay_starts_the_daemon(
    started: list[AgentConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    found = Underlay("eth1", ipaddress.IPv4Address("192.0.2.2"), 1500, ())
    monkeypatch.setattr(underlay, "find_underlay", lambda **_: found)
    assert main(overlay_run("--iface", "eth1")) == 0
    assert [c.overlay_iface for c in started] == ["eth1"]


@pytest.mark.parametrize(
    ("file_text", "flags", "expected"),
    [
        ("", (), (False, False, False, True, True)),
        (
            "legacyEndpoints: true\n"
            "iptables: {masqueradeAll: true, localhostNodePorts: false}\n"
            "overlay: {directRouting: true, ipMasq: false}\n",
            (),
            (True, True, True, False, False),
        ),
        (
            "legacyEndpoints: true\n"
            "iptables: {masqueradeAll: true, localhostNodePorts: false}\n"
            "overlay: {directRouting: true, ipMasq: false}\n",
            (
                "--no-masquerade-all",
                "--no-legacy-endpoints",
                "--no-direct-routing",
                "--ip-masq",
                "--localhost-nodeports",
            ),
            (False, False, False, True, True),
        ),
        (
            "",
            ("--masquerade-all", "--legacy-endpoints", "--direct-routing", "--no-ip-masq"),
            (True, True, True, False, True),
        ),
    ],
)
def test_every_boolean_flag_overrides_the_file_either_way(
    file_text: str,
    flags: tuple[str, ...],
    expected: tuple[bool, ...],
    tmp_path: Path,
    started: list[AgentConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = Underlay("eth0", ipaddress.IPv4Address("192.0.2.2"), 1500, ())
    monkeypatch.setattr(underlay, "find_underlay", lambda **_: found)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(file_text or "{}\n")
    assert main(overlay_run("--config", str(config_file), *flags)) == 0
    (config,) = started
    assert (
        config.masquerade_all,
        config.legacy_endpoints,
        config.overlay_direct_routing,
        config.overlay_ip_masq,
        config.localhost_nodeports,
    ) == expected


KUBEADM_KUBE_PROXY = Path(__file__).parent / "fixtures" / "config" / "kubeadm-kube-proxy.yaml"


def test_kubeadms_kube_proxy_configmap_runs_the_agent(
    started: list[AgentConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    clients: list[AgentConfig] = []
    monkeypatch.setattr(api_source, "api_client", lambda config: clients.append(config))
    argv = ["run", "--config", str(KUBEADM_KUBE_PROXY), "--node-name", "n1", "--sync-period", "9s"]
    assert main(argv) == 0
    (config,) = started
    assert clients == [config]
    assert config.kubeconfig == Path("/var/lib/kube-proxy/kubeconfig.conf")
    assert config.cluster_cidrs == (ipaddress.ip_network("10.244.0.0/16"),)
    assert (config.sync_period, config.min_sync_period) == (9.0, 1.0)  # the flag, the default


def test_a_kube_proxy_setting_netagent_cannot_do_exits_2(
    tmp_path: Path, started: list[AgentConfig], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "kube-proxy.yaml"
    text = KUBEADM_KUBE_PROXY.read_text()
    cfg.write_text(text.replace("ipvs:\n  excludeCIDRs: null\n  minSyncPeriod: 0s", "ipvs:\n  excludeCIDRs: null\n  minSyncPeriod: 5s"))
    assert main(["run", "--config", str(cfg), "--node-name", "n1"]) == 2
    assert started == []
    assert "config field ipvs.minSyncPeriod: not supported by netagent (set to" in caplog.text


def test_no_underlay_lookup_without_overlay(
    started: list[AgentConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unexpected(**_: Any) -> Underlay:
        raise AssertionError("find_underlay called without an overlay")

    monkeypatch.setattr(underlay, "find_underlay", unexpected)
    assert main(["run", "--node-name", "n1", "--master", "http://127.0.0.1:9"]) == 0
    assert len(started) == 1


# ---- netagent cleanup: every part runs, whatever fails ------------------------------------


class ClosableFakeKernel(FakeOverlayKernel):
    """The overlay kernel fake with what cleanup leaves behind, and PyrouteOverlayKernel's close()."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.add_foreign_link("eth0", addresses=(ipaddress.IPv4Interface("192.0.2.2/24"),))
        self.create_bridge("cbr0", 1450)
        self.create_vxlan(
            "flannel.1",
            vni=1,
            port=8472,
            local=ipaddress.IPv4Address("192.0.2.2"),
            underlay_device="eth0",
            mtu=1450,
            mac=None,
        )
        self.replace_route(
            RouteEntry(
                ipaddress.IPv4Network("10.244.7.0/24"),
                ipaddress.IPv4Address("10.244.7.0"),
                "flannel.1",
                onlink=True,
            )
        )

    def close(self) -> None:
        self.closed = True

    def cleaned(self) -> bool:
        return self.closed and self.routes() == set() and self.link_names() == ["eth0"]


FAKE_SAVE = "*nat\n:PREROUTING ACCEPT [0:0]\n:NETAGENT-SERVICES - [0:0]\nCOMMIT\n"


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A node after `netagent run`: overlay kernel state (fake), files, and fake iptables tools.

    PATH holds only iptables-nft-save (prints a NETAGENT chain), iptables-nft-restore
    (records its payload) and iptables-nft, for both families: nothing real is touched.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    restored = tmp_path / "restored"
    for stem in ("iptables", "ip6tables"):
        tools = {
            f"{stem}-nft-save": f"printf '{FAKE_SAVE}'",
            f"{stem}-nft-restore": f'while IFS= read -r l; do echo "$l" >> {restored}; done',
            f"{stem}-nft": "exit 0",
        }
        for name, body in tools.items():
            tool = bin_dir / name
            tool.write_text(f"#!/bin/sh\n{body}\n")
            tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    kernel = ClosableFakeKernel()
    monkeypatch.setattr(overlay_kernel, "PyrouteOverlayKernel", lambda: kernel)
    subnet_file = tmp_path / "subnet.env"
    subnet_file.write_text("FLANNEL_NETWORK=10.244.0.0/16\n")
    conflist = tmp_path / "10-netagent.conflist"
    conflist.write_text("{}\n")
    return {
        "bin": bin_dir,
        "restored": restored,
        "kernel": kernel,
        "args": ["cleanup", "--subnet-file", str(subnet_file), "--cni-conf-file", str(conflist)],
        "files": (subnet_file, conflist),
    }


def test_cleanup_removes_rules_overlay_and_files(node: dict[str, Any]) -> None:
    assert main(node["args"]) == 0
    assert node["restored"].read_text().count("-X NETAGENT-SERVICES") == 2  # IPv4 and IPv6
    assert node["kernel"].cleaned()
    assert not any(f.exists() for f in node["files"])


def test_cleanup_with_empty_cni_conf_file_removes_no_conflist(
    node: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    subnet_file, conflist = node["files"]
    assert main(["cleanup", "--subnet-file", str(subnet_file), "--cni-conf-file", ""]) == 0
    assert not subnet_file.exists()
    assert conflist.exists()  # "" means no conflist, as with `run --cni-conf-file ""`
    assert node["kernel"].cleaned()


def test_cleanup_without_iptables_tools_still_removes_the_overlay(
    node: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    for tool in node["bin"].iterdir():
        tool.unlink()
    assert main(node["args"]) == 1
    assert "iptables tools are not installed" in caplog.text
    assert node["kernel"].cleaned()
    assert not any(f.exists() for f in node["files"])


def test_cleanup_reports_a_failing_iptables_part_and_runs_the_others(
    node: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> bool:
        raise RuntimeError("iptables-nft-save: permission denied")

    monkeypatch.setattr(cli, "_cleanup_iptables", broken)
    assert main(node["args"]) == 1
    assert "cleanup of iptables rules failed: RuntimeError: iptables-nft-save" in caplog.text
    assert "cleanup incomplete: iptables rules" in caplog.text
    assert node["kernel"].cleaned()
    assert not any(f.exists() for f in node["files"])


def test_cleanup_reports_a_failing_overlay_part_and_runs_the_others(
    node: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_netlink() -> FakeOverlayKernel:
        raise PermissionError("netlink: operation not permitted")

    monkeypatch.setattr(overlay_kernel, "PyrouteOverlayKernel", no_netlink)
    assert main(node["args"]) == 1
    assert "cleanup of overlay routes and devices failed: PermissionError" in caplog.text
    assert "-X NETAGENT-SERVICES" in node["restored"].read_text()
    assert not any(f.exists() for f in node["files"])
