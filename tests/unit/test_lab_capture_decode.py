"""The lab's capture decoder: VXLAN on port 8472 is dissected, outer and inner addresses kept."""

from __future__ import annotations

from netnslab.capture import VXLAN_PORT, Captured, decode
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import bind_layers


def test_vxlan_frame_on_8472_is_decoded_with_inner_addresses() -> None:
    bind_layers(UDP, VXLAN, dport=VXLAN_PORT)
    inner = Ether() / IP(src="10.244.1.11", dst="10.244.2.11") / ICMP()
    frame = (
        Ether()
        / IP(src="192.0.2.11", dst="192.0.2.12")
        / UDP(sport=40000, dport=VXLAN_PORT)
        / VXLAN(vni=1)
        / inner
    )
    record = decode(Ether(bytes(frame)))
    assert record is not None
    got = Captured(**record)
    assert (got.src, got.dst, got.udp_dport, got.vni) == ("192.0.2.11", "192.0.2.12", 8472, 1)
    assert (got.inner_src, got.inner_dst, got.inner_proto) == ("10.244.1.11", "10.244.2.11", 1)
    assert got.is_vxlan


def test_plain_ip_packet_has_no_inner_part_and_arp_is_skipped() -> None:
    plain = Ether() / IP(src="10.244.1.11", dst="10.244.2.11") / ICMP()
    got = Captured(**(decode(Ether(bytes(plain))) or {}))
    assert (got.src, got.dst, got.proto) == ("10.244.1.11", "10.244.2.11", 1)
    assert got.vni is None and got.inner_src is None and not got.is_vxlan
    assert decode(Ether() / ARP()) is None
