"""netagent/proxy/iptables/inspect.py: canonical rules, owned objects desired and from iptables-save."""

from __future__ import annotations

import ipaddress

import pytest

from netagent.model import (
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ProxyConfig,
    ProxyState,
    ServicePort,
    ServicePortName,
    SessionAffinity,
)
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.iptables import chain_names as cn
from netagent.proxy.iptables.apply import CANARY_CHAIN
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.inspect import (
    canonical_rule,
    chain_owners,
    kernel_owned_objects,
    owned_objects,
)
from netagent.proxy.iptables.proxier import IptablesProxier, render_with_overlay
from netagent.proxy.iptables.render import render_iptables

ip = ipaddress.ip_address
SPN = ServicePortName("default", "web", "http")


def state(family: IPFamily = IPFamily.IPV4) -> ProxyState:
    v6 = family is IPFamily.IPV6
    svc = ServicePort(
        SPN,
        Protocol.TCP,
        80,
        cluster_ips=(ip("fd00::10" if v6 else "10.96.0.10"),),
        node_port=30080,
        session_affinity=SessionAffinity.CLIENT_IP,
    )
    eps = tuple(
        Endpoint(ip=ip(f"fd00:1::{i}" if v6 else f"10.244.1.{i}"), port=8080) for i in (5, 6, 7)
    )
    return ProxyState(
        services={SPN: svc},
        endpoints={SPN: eps},
        node=NodeInfo(name="n1"),
        config=ProxyConfig(
            cluster_cidrs=(ipaddress.ip_network("fd00::/48" if v6 else "10.244.0.0/16"),)
        ),
        family=family,
    )


@pytest.mark.parametrize(
    ("written", "saved"),
    [
        # -s/-d/-p move to the front, the comment is re-quoted.
        (
            '-A X -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m comment --comment "a b" -j DROP',
            '-A X ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "a b" -j DROP',
        ),
        # The kernel quantises probabilities to 31 bits and prints 11 decimals.
        (
            "-A X -m statistic --mode random --probability 0.3333333333 -j Y",
            "-A X -m statistic --mode random --probability 0.33333333349 -j Y",
        ),
        # MARK spellings.
        ("-A X -j MARK --or-mark 0x4000", "-A X -j MARK --set-xmark 0x4000/0x4000"),
        ("-A X -j MARK --xor-mark 0x4000", "-A X -j MARK --set-xmark 0x4000/0x0"),
        (
            "-A X -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A X -m mark ! --mark 0x4000/0x4000 -j RETURN",
        ),
        # Defaults iptables-save adds.
        ("-A X -p tcp -j REJECT", "-A X -p tcp -j REJECT --reject-with icmp-port-unreachable"),
        (
            "-A X -m recent --rcheck --seconds 10 --reap --name S -j S",
            "-A X -m recent --rcheck --seconds 10 --reap --name S --mask 255.255.255.255 --rsource -j S",
        ),
        (
            "-A X -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT",
            "-A X -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT",
        ),
        ("-A X -s 10.0.0.1 -j ACCEPT", "-A X -s 10.0.0.1/32 -j ACCEPT"),
        ("-A X -s fd00:0::1/128 -j ACCEPT", "-A X -s fd00::1/128 -j ACCEPT"),
    ],
)
def test_written_and_saved_spellings_compare_equal(written: str, saved: str) -> None:
    assert canonical_rule(written) == canonical_rule(saved)


def test_different_rules_stay_different() -> None:
    assert canonical_rule("-A X -s 10.0.0.1/32 -j ACCEPT") != canonical_rule(
        "-A X -s 10.0.0.2/32 -j ACCEPT"
    )
    assert canonical_rule("-A X -m mark --mark 0x1 -j A") != canonical_rule(
        "-A X -m mark ! --mark 0x1 -j A"
    )
    assert canonical_rule('-A X -m comment --comment "unbalanced -j A') == (
        '-A X -m comment --comment "unbalanced -j A'
    )


def test_chain_owners_names_every_per_service_and_endpoint_chain() -> None:
    owners = chain_owners(state())
    chains = cn.service_port_chains(SPN, Protocol.TCP)
    assert {owners[c] for c in chains} == {"default/web:http"}
    sep = cn.endpoint_chain(SPN, Protocol.TCP, "10.244.1.5:8080")
    assert owners[sep] == "default/web:http"
    v6 = chain_owners(state(IPFamily.IPV6))
    assert cn.endpoint_chain(SPN, Protocol.TCP, "[fd00:1::5]:8080") in v6


def test_owned_objects_of_a_render() -> None:
    st = state()
    overlay = OverlayRules(ipaddress.IPv4Network("10.244.0.0/16"), None, True)
    rendered = render_with_overlay(render_iptables(st), overlay, 14)
    objects = owned_objects(rendered, chain_owners(st))
    by_key = {(o.kind, o.key): o for o in objects}
    svc_chain = cn.service_chain(SPN, Protocol.TCP)
    assert by_key[("chain", f"nat {svc_chain}")].owner == "default/web:http"
    assert by_key[("chain", "nat NETAGENT-SERVICES")].owner == "node"
    assert by_key[("chain", "nat NETAGENT-OVERLAY-POSTRTG")].owner == "overlay"
    assert ("chain", f"mangle {CANARY_CHAIN}") in by_key  # the applier makes it too
    jump = by_key[("jump", "nat PREROUTING -> NETAGENT-SERVICES")]
    assert jump.content == (
        '-A PREROUTING -m comment --comment "netagent service portals" -j NETAGENT-SERVICES',
    )
    assert by_key[("jump", "filter FORWARD -> NETAGENT-OVERLAY-FWD")].owner == "overlay"
    assert list(objects) == sorted(objects)


@pytest.mark.parametrize("family", [IPFamily.IPV4, IPFamily.IPV6])
def test_a_synced_fake_kernel_equals_the_render(family: IPFamily) -> None:
    fake = FakeIptables(family)
    proxier = IptablesProxier(runner=fake, conntrack=None, family=family)
    st = state(family)
    proxier.sync(st, full=True)
    assert kernel_owned_objects(fake.save()) == tuple(proxier.render_objects(st))
    assert tuple(proxier.kernel_objects()) == tuple(proxier.render_objects(st))


def test_kernel_objects_ignore_foreign_chains_and_flag_duplicate_jumps() -> None:
    saved = "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":KUBE-SERVICES - [0:0]",
            ":NETAGENT-SERVICES - [0:0]",
            ":NETAGENT-SVC-AAAA - [0:0]",
            '-A PREROUTING -m comment --comment "netagent service portals" -j NETAGENT-SERVICES',
            '-A PREROUTING -m comment --comment "netagent service portals" -j NETAGENT-SERVICES',
            "-A PREROUTING -j KUBE-SERVICES",
            '-A NETAGENT-SVC-AAAA -m comment --comment "ns/a:p -> 1.2.3.4:80" -j DROP',
            "COMMIT",
        ]
    )
    objects = kernel_owned_objects(saved + "\n")
    keys = [(o.kind, o.key) for o in objects]
    assert ("chain", "nat KUBE-SERVICES") not in keys
    assert ("jump", "nat PREROUTING -> NETAGENT-SERVICES") in keys
    assert ("jump", "nat PREROUTING -> NETAGENT-SERVICES #2") in keys
    assert next(o for o in objects if o.key == "nat NETAGENT-SVC-AAAA").owner == "ns/a:p"
    with pytest.raises(ValueError):
        kernel_owned_objects("-A X -j Y\n")
