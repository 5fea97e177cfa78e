"""The packet tracer on small hand-written rulesets: hooks, targets, branching, and errors."""

from __future__ import annotations

import ipaddress

import pytest

from netagent.proxy.iptables.trace import NodeView, Origin, Packet, TraceError, trace_packet

NODE = NodeView(local_ips=frozenset({ipaddress.ip_address("192.0.2.2")}))


def rules(nat: str = "", filter_: str = "") -> str:
    out = ""
    if filter_:
        out += "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        out += filter_ + "COMMIT\n"
    out += "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    out += ":POSTROUTING ACCEPT [0:0]\n" + nat + "COMMIT\n"
    return out


LB = """\
:SVC - [0:0]
:SEP1 - [0:0]
:SEP2 - [0:0]
:MASQ - [0:0]
-A PREROUTING -j SVC
-A OUTPUT -j SVC
-A SVC -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -m statistic --mode random --probability 0.5 -j SEP1
-A SVC -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j SEP2
-A SEP1 -p tcp -j DNAT --to-destination 10.244.0.11:8080
-A SEP2 -s 10.244.0.12/32 -j MARK --or-mark 0x4000
-A SEP2 -p tcp -j DNAT --to-destination 10.244.0.12:8080
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQ
-A MASQ -j MASQUERADE --random-fully
"""


def pkt(src: str, dst: str, port: int = 80, origin: Origin = Origin.POD, proto: str = "tcp") -> Packet:
    return Packet(src=src, dst=dst, protocol=proto, dport=port, origin=origin)


def test_statistic_explores_both_branches() -> None:
    res = trace_packet(rules(LB), pkt("10.244.0.20", "10.96.0.1"), NODE)
    assert res.endpoints == {"10.244.0.11:8080", "10.244.0.12:8080"}
    assert res.verdict == "ACCEPT"
    assert res.masquerade is False
    assert "nat/SEP1" in res.chains and "nat/SEP2" in res.chains


def test_mark_set_before_dnat_drives_masquerade_in_postrouting() -> None:
    res = trace_packet(rules(LB), pkt("10.244.0.12", "10.96.0.1"), NODE)
    by_ep = {o.endpoint: o.masquerade for o in res.outcomes}
    assert by_ep == {"10.244.0.11:8080": False, "10.244.0.12:8080": True}
    with pytest.raises(TraceError, match="disagree"):
        _ = res.masquerade


def test_non_matching_port_and_protocol_pass_untouched() -> None:
    assert trace_packet(rules(LB), pkt("10.244.0.20", "10.96.0.1", 81), NODE).endpoints == set()
    udp = trace_packet(rules(LB), pkt("10.244.0.20", "10.96.0.1", proto="udp"), NODE)
    assert udp.endpoints == set() and udp.verdict == "ACCEPT"


def test_host_origin_uses_output() -> None:
    res = trace_packet(rules(LB), pkt("192.0.2.2", "10.96.0.1", origin=Origin.HOST), NODE)
    assert res.chains[0] == "nat/OUTPUT"
    assert len(res.endpoints) == 2


def test_dnat_changes_later_matches_and_routing() -> None:
    nat = ":X - [0:0]\n-A PREROUTING -d 198.51.100.1/32 -j DNAT --to-destination 192.0.2.2:22\n"
    filt = (
        "-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate DNAT -j REJECT\n"
        "-A FORWARD -j DROP\n"
    )
    res = trace_packet(rules(nat, filt), pkt("203.0.113.9", "198.51.100.1", 80, Origin.EXTERNAL), NODE)
    # DNAT to a local address: the packet is delivered locally (INPUT), not forwarded.
    assert res.verdict == "REJECT"
    assert "filter/INPUT" in res.chains and "filter/FORWARD" not in res.chains


def test_forwarded_packet_hits_forward_and_policy() -> None:
    filt = "-A FORWARD -s 203.0.113.0/24 -j DROP\n"
    res = trace_packet(rules("", filt), pkt("203.0.113.9", "10.244.0.11", 80, Origin.EXTERNAL), NODE)
    assert res.verdict == "DROP"
    ok = trace_packet(rules("", filt), pkt("10.244.0.20", "10.244.0.11"), NODE)
    assert ok.verdict == "ACCEPT" and ok.endpoints == set()


def test_goto_returns_to_the_callers_caller() -> None:
    nat = (
        ":A - [0:0]\n:B - [0:0]\n"
        "-A PREROUTING -j A\n"
        "-A PREROUTING -j DNAT --to-destination 10.0.0.9:1\n"
        "-A A -g B\n"
        "-A A -j DNAT --to-destination 10.0.0.8:1\n"
        "-A B -j RETURN\n"
    )
    res = trace_packet(rules(nat), pkt("10.244.0.20", "10.96.0.1"), NODE)
    assert res.endpoints == {"10.0.0.9:1"}  # after B returns, A's remaining rule is skipped


def test_recent_check_branches_and_input_interface() -> None:
    nat = (
        ":S - [0:0]\n"
        "-A PREROUTING -i cbr0 -j S\n"
        "-A S -m recent --name E1 --rcheck --seconds 10 --reap -j DNAT --to-destination 10.0.0.1:80\n"
        "-A S -j DNAT --to-destination 10.0.0.2:80\n"
    )
    pod = trace_packet(rules(nat), pkt("10.244.0.20", "10.96.0.1"), NODE)
    assert pod.endpoints == {"10.0.0.1:80", "10.0.0.2:80"}
    outside = trace_packet(rules(nat), pkt("203.0.113.9", "10.96.0.1", origin=Origin.EXTERNAL), NODE)
    assert outside.endpoints == set()


def test_set_xmark_and_xor_mark() -> None:
    nat = (
        "-A PREROUTING -j MARK --set-xmark 0x4000/0x4000\n"
        "-A PREROUTING -j MARK --xor-mark 0x4000\n"
        "-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n"
    )
    res = trace_packet(rules(nat), pkt("10.244.0.20", "10.244.0.11"), NODE)
    assert res.masquerade is False


def test_missing_chain_loop_and_misplaced_targets_are_errors() -> None:
    with pytest.raises(TraceError, match="missing chain"):
        trace_packet(rules("-A PREROUTING -j NOPE\n"), pkt("1.1.1.1", "2.2.2.2"), NODE)
    loop = ":L - [0:0]\n-A PREROUTING -j L\n-A L -j L\n"
    with pytest.raises(TraceError, match="deeper"):
        trace_packet(rules(loop), pkt("1.1.1.1", "2.2.2.2"), NODE)
    with pytest.raises(TraceError, match="MASQUERADE outside"):
        trace_packet(rules("-A PREROUTING -j MASQUERADE\n"), pkt("1.1.1.1", "2.2.2.2"), NODE)
    with pytest.raises(TraceError, match="output-interface"):
        trace_packet(rules("-A POSTROUTING -o eth0 -j MASQUERADE\n"), pkt("1.1.1.1", "2.2.2.2"), NODE)


def test_ipv6_dnat_endpoint_format() -> None:
    text = (
        "*nat\n:PREROUTING ACCEPT [0:0]\n"
        "-A PREROUTING -d fd00::1/128 -p tcp -j DNAT --to-destination [fd00:244::5]:8080\n"
        "COMMIT\n"
    )
    node = NodeView(local_ips=frozenset())
    res = trace_packet(text, pkt("fd00:244::9", "fd00::1"), node)
    assert res.endpoints == {"[fd00:244::5]:8080"}
