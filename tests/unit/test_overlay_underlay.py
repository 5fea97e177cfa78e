"""find_underlay against the host's own loopback (read-only netlink dumps, no root needed).

Covers: the flag/key each error names, and that ``--public-ip`` with
``--iface`` must be an address of that interface (it becomes the VXLAN
device's ``local`` address, which the kernel can only send from if it is ours).
"""

from __future__ import annotations

import ipaddress

import pytest
from pyroute2 import IPRoute

from netagent.overlay.underlay import UnderlayError, find_underlay

try:
    with IPRoute() as _ipr:
        _ipr.get_links()
except Exception as exc:  # pragma: no cover - sandboxes without rtnetlink
    pytest.skip(f"rtnetlink unavailable: {exc}", allow_module_level=True)

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
ELSEWHERE = ipaddress.IPv4Address("192.0.2.254")  # TEST-NET-1, on no interface of lo


def test_public_ip_on_the_chosen_iface_is_used() -> None:
    found = find_underlay(iface="lo", public_ip=LOOPBACK)
    assert (found.device, found.address) == ("lo", LOOPBACK)


def test_public_ip_not_on_the_chosen_iface_is_refused() -> None:
    with pytest.raises(UnderlayError) as info:
        find_underlay(iface="lo", public_ip=ELSEWHERE)
    assert info.value.key == "overlay.publicIP"
    assert str(info.value) == f"--public-ip {ELSEWHERE} is not an address of --iface lo"


def test_missing_iface_names_the_iface_key() -> None:
    with pytest.raises(UnderlayError) as info:
        find_underlay(iface="netagent-none0")
    assert info.value.key == "overlay.iface"
    assert str(info.value) == "--iface netagent-none0: no such interface"
