"""Sysctl adapter: ensure_sysctl writes only on difference; proxy settings and the optional bridge one."""

from __future__ import annotations

import pytest

from netagent.proxy.sysctl import (
    FakeSysctl,
    SysctlError,
    ensure_proxy_sysctls,
    ensure_sysctl,
)


def test_ensure_writes_only_when_different() -> None:
    fake = FakeSysctl(values={"net/ipv4/ip_forward": "0"})
    assert ensure_sysctl(fake, "net.ipv4.ip_forward", "1") is True
    assert ensure_sysctl(fake, "net/ipv4/ip_forward", "1") is False
    assert fake.writes == [("net/ipv4/ip_forward", "1")]


def test_missing_setting_is_an_error_naming_it() -> None:
    with pytest.raises(SysctlError, match=r"net\.ipv4\.nope"):
        ensure_sysctl(FakeSysctl(), "net.ipv4.nope", "1")


def test_proxy_sysctls_tolerate_missing_br_netfilter() -> None:
    fake = FakeSysctl(
        values={"net/ipv4/ip_forward": "0", "net/ipv4/conf/all/route_localnet": "0"}
    )
    written = ensure_proxy_sysctls(fake, localhost_nodeports=True)
    assert fake.values["net/ipv4/ip_forward"] == "1"
    assert fake.values["net/ipv4/conf/all/route_localnet"] == "1"
    assert len(written) == 2


def test_localhost_nodeports_off_leaves_route_localnet() -> None:
    fake = FakeSysctl(
        values={
            "net/ipv4/ip_forward": "1",
            "net/ipv4/conf/all/route_localnet": "0",
            "net/bridge/bridge-nf-call-iptables": "1",
        }
    )
    assert ensure_proxy_sysctls(fake, localhost_nodeports=False) == []
    assert fake.values["net/ipv4/conf/all/route_localnet"] == "0"


@pytest.mark.parametrize(
    ("release", "expected"),
    [("4.0.9", None), ("4.1.0", "0"), ("5.8.18-1", "0"), ("5.9.0", None), ("6.1.0-27-amd64", None)],
)
def test_conn_reuse_mode_is_zero_only_on_the_kernels_with_the_one_second_stall(
    release: str, expected: str | None
) -> None:
    from netagent.proxy.sysctl import conn_reuse_mode

    assert conn_reuse_mode(release) == expected


def test_ipvs_sysctls_and_strict_arp() -> None:
    from netagent.proxy.sysctl import ensure_ipvs_sysctls

    names = [
        "net/ipv4/vs/conntrack",
        "net/ipv4/vs/expire_nodest_conn",
        "net/ipv4/vs/expire_quiescent_template",
        "net/ipv4/vs/conn_reuse_mode",
        "net/ipv4/conf/all/arp_ignore",
        "net/ipv4/conf/all/arp_announce",
    ]
    fake = FakeSysctl(values={n: "0" for n in names})
    fake.values["net/ipv4/vs/conn_reuse_mode"] = "1"
    written = ensure_ipvs_sysctls(fake, strict_arp=False, release="6.1.0")
    assert written == names[:3]
    assert fake.values["net/ipv4/vs/conn_reuse_mode"] == "1"  # untouched on 6.1
    written = ensure_ipvs_sysctls(fake, strict_arp=True, release="5.4.0")
    assert written == names[3:]
    assert fake.values["net/ipv4/conf/all/arp_announce"] == "2"
