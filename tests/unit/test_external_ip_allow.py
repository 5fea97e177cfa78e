"""externalIPAllowCIDRs (CVE-2020-8554): externalIPs outside the list never reach any proxy mode.

Covers: the setting from its flag and its YAML key into ProxyConfig; no list
means every externalIP is kept (kube-proxy's behaviour); with a list, an
externalIP outside it is removed from its Service port while the Service's
other addresses, ports and endpoints stay; IPv6 externalIPs need an IPv6
CIDR; the removals are listed once per (Service, address) in the state; the
iptables, nftables and IPVS renders of that state never mention the address;
the warning is logged once per change, not on every sync, naming the Service,
the address and the reason; and the gauge counts the current rejections.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path

import pytest

from netagent.config import build_config
from netagent.config_values import ConfigError
from netagent.model import (
    EndpointSliceInfo,
    IPFamily,
    NodeInfo,
    Protocol,
    ProxyConfig,
    ProxyState,
    RejectedExternalIP,
    ServicePort,
    ServicePortName,
    SliceEndpoint,
    SlicePort,
)
from netagent.observe.observability import Observability
from netagent.proxy.iptables.render import render_iptables
from netagent.proxy.ipvs.render import render_ipvs
from netagent.proxy.nftables.render import render_nftables
from netagent.runtime.node_sync import ExternalIPRejections, Snapshot, build_states
from netagent.state import allowed_external_ips, build_proxy_state

NODE = NodeInfo(name="node-a", addresses=(IPv4Address("192.0.2.2"),))
ALLOW = ProxyConfig(external_ip_allow_cidrs=(ip_network("198.51.100.0/24"),))
HTTP = ServicePortName("default", "ext", "http")
DNS = ServicePortName("default", "ext", "dns")
ALLOWED_IP = "198.51.100.10"
FOREIGN_IP = "192.0.2.100"  # e.g. another host's address: the CVE's target


def ext_ports(*external: str, cluster: tuple[str, ...] = ("10.96.0.21",)) -> list[ServicePort]:
    eips = tuple(ip_address(ip) for ip in external)
    cips = tuple(ip_address(ip) for ip in cluster)
    return [
        ServicePort(
            name=name, protocol=proto, port=port, cluster_ips=cips, external_ips=eips,
            node_port=node_port,
        )
        for name, proto, port, node_port in (
            (HTTP, Protocol.TCP, 80, 30080),
            (DNS, Protocol.UDP, 53, 0),
        )
    ]  # fmt: skip


def ext_slice() -> EndpointSliceInfo:
    return EndpointSliceInfo(
        namespace="default",
        name="ext-1",
        service_name="ext",
        address_type=IPFamily.IPV4,
        ports=(SlicePort("http", 8080, Protocol.TCP), SlicePort("dns", 5353, Protocol.UDP)),
        endpoints=(
            SliceEndpoint((ip_address("10.244.0.13"),), True, True, False, node_name="node-a"),
        ),
    )


def v4_state(config: ProxyConfig, *external: str) -> ProxyState:
    return build_proxy_state(ext_ports(*external), [ext_slice()], NODE, config, IPFamily.IPV4)


# ---- the setting ------------------------------------------------------------------------------


def test_the_flag_reaches_the_proxy_config() -> None:
    cfg = build_config(
        {"node_name": "n1", "external_ip_allow_cidrs": "198.51.100.0/24, 2001:db8::/64"}, env={}
    )
    want = (ip_network("198.51.100.0/24"), ip_network("2001:db8::/64"))
    assert cfg.external_ip_allow_cidrs == want
    assert cfg.proxy_config().external_ip_allow_cidrs == want


def test_the_yaml_key_is_a_list_like_node_port_addresses(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("nodeName: n1\nexternalIPAllowCIDRs: [198.51.100.0/24, 203.0.113.0/25]\n")
    cfg = build_config({}, config_file=path, env={})
    assert cfg.external_ip_allow_cidrs == (
        ip_network("198.51.100.0/24"),
        ip_network("203.0.113.0/25"),
    )


def test_a_bad_cidr_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("nodeName: n1\nexternalIPAllowCIDRs: [198.51.100.1/24]\n")
    with pytest.raises(ConfigError, match="externalIPAllowCIDRs"):
        build_config({}, config_file=path, env={})


def test_the_default_allows_every_external_ip() -> None:
    cfg = build_config({"node_name": "n1"}, env={})
    assert cfg.external_ip_allow_cidrs == ()
    state = v4_state(cfg.proxy_config(), ALLOWED_IP, FOREIGN_IP)
    assert {str(ip) for ip in state.services[HTTP].external_ips} == {ALLOWED_IP, FOREIGN_IP}
    assert state.rejected_external_ips == ()


# ---- filtering --------------------------------------------------------------------------------


def test_an_external_ip_outside_the_list_is_dropped_and_the_rest_kept() -> None:
    full = v4_state(ProxyConfig(), ALLOWED_IP, FOREIGN_IP)
    state = v4_state(ALLOW, ALLOWED_IP, FOREIGN_IP)
    for name in (HTTP, DNS):
        svc = state.services[name]
        assert [str(ip) for ip in svc.external_ips] == [ALLOWED_IP]
        # Nothing else about the Service changed.
        assert svc.cluster_ips == full.services[name].cluster_ips
        assert svc.node_port == full.services[name].node_port
    assert state.endpoints == full.endpoints
    # One entry per Service and address, not per Service port.
    assert state.rejected_external_ips == (
        RejectedExternalIP("default", "ext", ip_address(FOREIGN_IP)),
    )


def test_a_service_whose_only_external_ip_is_refused_keeps_its_cluster_ip() -> None:
    state = v4_state(ALLOW, FOREIGN_IP)
    svc = state.services[HTTP]
    assert svc.external_ips == ()
    assert [str(ip) for ip in svc.cluster_ips] == ["10.96.0.21"]
    assert state.endpoints[HTTP]


def test_allowed_external_ips_leaves_an_allowed_service_untouched() -> None:
    svc = ext_ports(ALLOWED_IP)[0]
    kept, rejected = allowed_external_ips(svc, ALLOW)
    assert kept is svc
    assert rejected == ()


def test_an_ipv6_external_ip_needs_an_ipv6_cidr_once_the_list_is_set() -> None:
    ports = ext_ports("2001:db8::10", "2001:db8:1::10", cluster=("fd00::21",))
    v4_only = build_proxy_state(ports, [], NODE, ALLOW, IPFamily.IPV6)
    assert v4_only.services[HTTP].external_ips == ()
    assert len(v4_only.rejected_external_ips) == 2
    both = ProxyConfig(
        external_ip_allow_cidrs=(ip_network("198.51.100.0/24"), ip_network("2001:db8::/64"))
    )
    allowed = build_proxy_state(ports, [], NODE, both, IPFamily.IPV6)
    assert [str(ip) for ip in allowed.services[HTTP].external_ips] == ["2001:db8::10"]
    assert [str(r.ip) for r in allowed.rejected_external_ips] == ["2001:db8:1::10"]


def test_each_rejection_is_found_in_its_own_family_only() -> None:
    ports = ext_ports(FOREIGN_IP, "2001:db8:1::10", cluster=("10.96.0.21", "fd00::21"))
    cfg = build_config(
        {"node_name": "node-a", "external_ip_allow_cidrs": "198.51.100.0/24,2001:db8::/64",
         "cluster_cidrs": "10.244.0.0/16,fd00:10::/56"},
        env={},
    )  # fmt: skip
    states = build_states(cfg, Snapshot(services=tuple(ports), nodes={"node-a": NODE}))
    assert [s.family for s in states] == [IPFamily.IPV4, IPFamily.IPV6]
    assert [[str(r.ip) for r in s.rejected_external_ips] for s in states] == [
        [FOREIGN_IP],
        ["2001:db8:1::10"],
    ]


# ---- every proxy mode ---------------------------------------------------------------------------


def test_no_proxy_mode_programs_a_refused_external_ip() -> None:
    state = v4_state(ALLOW, ALLOWED_IP, FOREIGN_IP)
    control = v4_state(ProxyConfig(), ALLOWED_IP, FOREIGN_IP)

    def texts(st: ProxyState) -> dict[str, str]:
        ipvs = render_ipvs(st, node_addresses=NODE.addresses)
        return {
            "iptables": render_iptables(st).save_text(),
            "nftables": repr(sorted(render_nftables(st).iter_elements())),
            "ipvs": repr(sorted(map(repr, ipvs.virtual_servers))) + repr(sorted(ipvs.addresses)),
        }

    for mode, text in texts(state).items():
        assert FOREIGN_IP not in text, mode
        assert ALLOWED_IP in text, mode
    # The control: without the list the same address is programmed in every mode.
    for mode, text in texts(control).items():
        assert FOREIGN_IP in text, mode


# ---- the log line and the metric ----------------------------------------------------------------


def test_the_warning_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    cfg = build_config(
        {"node_name": "node-a", "external_ip_allow_cidrs": "198.51.100.0/24"}, env={}
    )
    rejections = ExternalIPRejections(cfg)
    caplog.set_level(logging.INFO, logger="netagent.runtime.node_sync")
    one = [v4_state(cfg.proxy_config(), ALLOWED_IP, FOREIGN_IP)]
    for _ in range(5):  # five syncs of the same objects
        rejections.update(one)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    for needle in ("default/ext", FOREIGN_IP, "externalIPAllowCIDRs", "198.51.100.0/24"):
        assert needle in message, message

    caplog.clear()
    two = [v4_state(cfg.proxy_config(), FOREIGN_IP, "203.0.113.5")]
    rejections.update(two)
    rejections.update(two)
    assert [r.getMessage().split(":")[1].strip() for r in caplog.records] == [
        "externalIP 203.0.113.5 not programmed"
    ]

    caplog.clear()
    rejections.update([v4_state(cfg.proxy_config(), ALLOWED_IP)])
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    assert rejections.current == frozenset()


def test_the_gauge_counts_the_current_rejections() -> None:
    cfg = build_config(
        {"node_name": "node-a", "external_ip_allow_cidrs": "198.51.100.0/24"}, env={}
    )
    observe = Observability(cfg)
    try:
        state = v4_state(cfg.proxy_config(), ALLOWED_IP, FOREIGN_IP, "203.0.113.5")
        observe.synced([], [state])
        assert b"netagent_external_ips_rejected 2.0" in observe.metrics.exposition()
        observe.synced([], [v4_state(cfg.proxy_config(), ALLOWED_IP)])
        assert b"netagent_external_ips_rejected 0.0" in observe.metrics.exposition()
    finally:
        observe.stop()
