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
