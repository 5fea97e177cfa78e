"""The overlay's masquerade and forward rules: exact text, parseability, and traced semantics.

Covers the exact iptables-restore payload and jump rules (golden text), the
ip_masq=false and no-local-subnet variants, that the project's parser accepts
every line, and, through the packet tracer, which flows are masqueraded:
pod→outside yes, pod→pod no, pod→multicast no, outside→local pod no,
host→remote pod yes, and proxy-marked packets left to the proxy.
"""

from __future__ import annotations

import ipaddress

import pytest

from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.iptables.overlay_render import (
    FORWARD_CHAIN,
    POSTROUTING_CHAIN,
    render_overlay_rules,
)
from netagent.proxy.iptables.parse import parse_ruleset
from netagent.proxy.iptables.rules import MAX_CHAIN_NAME, JumpRule, is_owned_chain
from netagent.proxy.iptables.trace import NodeView, Origin, Packet, trace_packet

NET = ipaddress.IPv4Network("10.244.0.0/16")
LOCAL = ipaddress.IPv4Network("10.244.1.0/24")
NODE = NodeView(local_ips=frozenset({ipaddress.ip_address("192.168.1.11")}))

GOLDEN = """\
*filter
:NETAGENT-OVERLAY-FWD - [0:0]
-A NETAGENT-OVERLAY-FWD -s 10.244.0.0/16 -m comment --comment "netagent overlay: from pods" -j ACCEPT
-A NETAGENT-OVERLAY-FWD -d 10.244.0.0/16 -m comment --comment "netagent overlay: to pods" -j ACCEPT
COMMIT
*nat
:NETAGENT-OVERLAY-POSTRTG - [0:0]
-A NETAGENT-OVERLAY-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "netagent overlay: masqueraded by the proxy" -j RETURN
-A NETAGENT-OVERLAY-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "netagent overlay: pod to pod, no NAT" -j RETURN
-A NETAGENT-OVERLAY-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "netagent overlay: to local pods, source kept" -j RETURN
-A NETAGENT-OVERLAY-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "netagent overlay: pod to outside" -j MASQUERADE --random-fully
-A NETAGENT-OVERLAY-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "netagent overlay: to remote pods from outside" -j MASQUERADE --random-fully
COMMIT
"""


def test_exact_restore_text_and_jumps() -> None:
    rules = render_overlay_rules(OverlayRules(NET, LOCAL, ip_masq=True))
    assert rules.restore_text() == GOLDEN
    assert rules.jumps == (
        JumpRule("filter", "FORWARD", '-m comment --comment "netagent overlay" -j NETAGENT-OVERLAY-FWD'),
        JumpRule("nat", "POSTROUTING", '-m comment --comment "netagent overlay" -j NETAGENT-OVERLAY-POSTRTG'),
    )
    assert render_overlay_rules(OverlayRules(NET, LOCAL, ip_masq=True)) == rules  # deterministic


def test_chain_names_are_owned_and_fit() -> None:
    for chain in (FORWARD_CHAIN, POSTROUTING_CHAIN):
        assert is_owned_chain(chain)
        assert len(chain) <= MAX_CHAIN_NAME


def test_ip_masq_off_keeps_an_empty_nat_chain() -> None:
    rules = render_overlay_rules(OverlayRules(NET, LOCAL, ip_masq=False))
    assert rules.chains("nat") == {POSTROUTING_CHAIN: ()}
    assert len(rules.chains("filter")[FORWARD_CHAIN]) == 2
    assert "MASQUERADE" not in rules.restore_text()


def test_without_local_subnet_the_local_return_is_left_out() -> None:
    rules = render_overlay_rules(OverlayRules(NET, None, ip_masq=True))
    nat = rules.chains("nat")[POSTROUTING_CHAIN]
    assert len(nat) == 4
    assert not any("source kept" in r for r in nat)


def test_custom_mark() -> None:
    rules = render_overlay_rules(OverlayRules(NET, LOCAL, ip_masq=True), masquerade_mark=0x8000)
    assert rules.chains("nat")[POSTROUTING_CHAIN][0].startswith(
        "-A NETAGENT-OVERLAY-POSTRTG -m mark --mark 0x8000/0x8000 "
    )


@pytest.mark.parametrize("ip_masq", [True, False])
def test_project_parser_accepts_every_rule(ip_masq: bool) -> None:
    rules = render_overlay_rules(OverlayRules(NET, LOCAL, ip_masq=ip_masq))
    parsed = parse_ruleset(rules.save_text())
    nat = parsed.chain("nat", POSTROUTING_CHAIN)
    assert nat is not None
    assert len(nat) == (5 if ip_masq else 0)
    post = parsed.chain("nat", "POSTROUTING")
    assert post is not None
    assert [r.target for r in post] == [POSTROUTING_CHAIN]
    fwd = parsed.chain("filter", FORWARD_CHAIN)
    assert fwd is not None
    assert [r.target for r in fwd] == ["ACCEPT", "ACCEPT"]
    if ip_masq:
        assert nat[3].target_args == {"--random-fully": ""}


def _trace(src: str, dst: str, origin: Origin, extra: str = "") -> tuple[str, bool]:
    text = render_overlay_rules(OverlayRules(NET, LOCAL, ip_masq=True)).save_text()
    if extra:  # extra nat PREROUTING rules, e.g. a proxy-style mark
        text = text.replace(":NETAGENT-OVERLAY-POSTRTG - [0:0]\n",
                            f":NETAGENT-OVERLAY-POSTRTG - [0:0]\n{extra}\n")
    result = trace_packet(text, Packet(src, dst, "tcp", 80, origin), NODE)
    return result.verdict, result.masquerade


@pytest.mark.parametrize(
    ("src", "dst", "origin", "masq"),
    [
        ("10.244.1.5", "8.8.8.8", Origin.POD, True),  # pod to the internet
        ("10.244.1.5", "192.168.1.20", Origin.POD, True),  # pod to another node's address
        ("10.244.1.5", "10.244.2.7", Origin.POD, False),  # pod to remote pod
        ("10.244.1.5", "10.244.1.6", Origin.POD, False),  # pod to local pod
        ("10.244.1.5", "239.1.1.1", Origin.POD, False),  # multicast
        ("203.0.113.9", "10.244.1.6", Origin.EXTERNAL, False),  # outside to a local pod
        ("203.0.113.9", "10.244.2.7", Origin.EXTERNAL, True),  # outside to a remote pod
        ("192.168.1.11", "10.244.2.7", Origin.HOST, True),  # host to a remote pod
        ("203.0.113.9", "198.51.100.1", Origin.EXTERNAL, False),  # not cluster traffic at all
    ],
)
def test_traced_masquerade(src: str, dst: str, origin: Origin, masq: bool) -> None:
    verdict, masqueraded = _trace(src, dst, origin)
    assert verdict == "ACCEPT"
    assert masqueraded is masq


def test_proxy_marked_packets_are_left_to_the_proxy() -> None:
    mark = "-A PREROUTING -s 10.244.1.5 -j MARK --or-mark 0x4000"
    assert _trace("10.244.1.5", "8.8.8.8", Origin.POD, mark) == ("ACCEPT", False)
    assert _trace("10.244.1.6", "8.8.8.8", Origin.POD, mark) == ("ACCEPT", True)


def test_forward_chain_accepts_pod_traffic_under_drop_policy() -> None:
    text = render_overlay_rules(OverlayRules(NET, LOCAL, ip_masq=True)).save_text().replace(
        ":FORWARD ACCEPT [0:0]", ":FORWARD DROP [0:0]"
    )
    def verdict(src: str, dst: str, origin: Origin) -> str:
        return trace_packet(text, Packet(src, dst, "tcp", 80, origin), NODE).verdict

    assert verdict("10.244.1.5", "8.8.8.8", Origin.POD) == "ACCEPT"
    assert verdict("203.0.113.9", "10.244.2.7", Origin.EXTERNAL) == "ACCEPT"
    assert verdict("203.0.113.9", "198.51.100.1", Origin.EXTERNAL) == "DROP"
