"""Reliability, case 6: other software's rules, tables, routes and devices survive 1,000 syncs.

A node namespace is seeded with what other software leaves on a node: Docker's
chains and rules and a kube-proxy-style chain set (iptables, nft backend), a
foreign nftables table, a static route, a foreign VXLAN device and a foreign
ipset; in IPVS mode also foreign IPVS virtual servers (one on another
address, one on the node's own address outside the node-port range, a UDP
one), each with a real server. Then, per proxy mode of the run (iptables and
nftables on the host, IPVS in the qemu VM), netagent's proxier runs 1,000
syncs (100 in CI's VM) in which services and endpoints change (every tenth
of them a full sync), is replaced by a
new proxier (an agent restart: its first sync is full and reads the kernel),
and finally cleans up.

Figure: bytes of the foreign state that differ from the seeded state, read
after the syncs, after the restart and after the cleanup. Target: 0 each
time. (One thing is left that was not there: iptables-nft creates the mangle
table for netagent's canary chain, and after cleanup it is an empty table,
which is not compared.) The foreign state is read with the kernel's own tools
(``iptables-save`` without netagent's lines, ``nft list table``, ``ip route``,
``ip -d link``, ``ipset save``, ``ipvsadm -Ln`` per foreign virtual server),
with packet counters left in: no traffic flows, so any change at all shows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from netnslab.netns import ns_exec
from netnslab.scratch import scratch_namespaces

from bench.synthetic import build_state, endpoint_ip
from netagent.model import Endpoint, ProxyState, ServicePortName
from netagent.proxy.iptables.proxier import IptablesProxier
from netagent.proxy.iptables.runner import SubprocessIptables
from netagent.proxy.nftables.proxier import NftablesProxier
from netagent.proxy.nftables.runner import SubprocessNft
from netagent.proxy.proxier import Proxier

pytestmark = pytest.mark.lab

#: Syncs with changes before the restart, per mode; ``$NETAGENT_COEX_SYNCS`` sets them by
#: hand. In the qemu VM a sync with these changes takes IPVS mode about 1.8 s (netlink under
#: TCG), so CI runs 100 there; the 1,000-sync figure is from a run by hand
#: (docs/reliability.md).
SYNCS = {"iptables": 1000, "nftables": 1000, "ipvs": 100}

FOREIGN_IPTABLES = """\
*filter
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:KUBE-FIREWALL - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j RETURN
-A DOCKER-USER -j RETURN
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
*nat
:DOCKER - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-SEP-QRSTUVWXYZ012345 - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A KUBE-SERVICES -d 10.100.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SVC-ABCDEFGHIJKLMNOP -j KUBE-SEP-QRSTUVWXYZ012345
-A KUBE-SEP-QRSTUVWXYZ012345 -p tcp -m tcp -j DNAT --to-destination 192.0.2.10:6443
COMMIT
"""

FOREIGN_NFT = """\
table inet foreign {
    set blocked { type ipv4_addr; elements = { 203.0.113.7 } }
    chain input {
        type filter hook input priority 10; policy accept;
        ip saddr @blocked counter drop
    }
}
"""


#: Other software's IPVS virtual servers (IPVS mode): (service, real server).
FOREIGN_IPVS = (
    ("-t 198.51.100.9:80", "192.0.2.50:80"),
    ("-t 192.0.2.2:8443", "192.0.2.51:443"),  # the node's address, below the node-port range
    ("-u 198.51.100.9:53", "192.0.2.52:53"),
)


def foreign_state(ns: str, mode: str) -> str:
    """Everything of others' the node holds, as the kernel's tools print it."""
    saved = []
    for tool in ("iptables-nft-save", "iptables-legacy-save"):
        out = ns_exec(ns, [tool]).stdout
        lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
        saved.extend(ln for ln in _without_empty_tables(lines) if "NETAGENT" not in ln)
    nft = ns_exec(ns, ["nft", "list", "table", "inet", "foreign"]).stdout
    # IPv4 only: IPv6 link-local addresses and routes appear on their own after link-up.
    # Not the local routes of the addresses IPVS mode binds to its own dummy device.
    routes = "\n".join(
        line
        for line in ns_exec(ns, ["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines()
        if "dev netagent-ipvs0 " not in f"{line} "
    )
    link = ns_exec(ns, ["ip", "-d", "link", "show", "fvx0"]).stdout
    ipset = ns_exec(ns, ["ipset", "save", "foreign-allow"]).stdout
    ipvs = [
        ns_exec(ns, ["ipvsadm", "-Ln", *service.split()]).stdout
        for service, _ in (FOREIGN_IPVS if mode == "ipvs" else ())
    ]
    return "\n".join([*saved, nft, routes, link, ipset, *ipvs])


def _without_empty_tables(lines: list[str]) -> list[str]:
    """iptables-save lines minus tables that hold nothing but built-in chains at ACCEPT.

    netagent's canary chain makes iptables-nft create the mangle table; after
    cleanup that table is empty, and an empty table filters nothing. Every
    other line, of every table that holds anything, is compared as it is.
    """
    out: list[str] = []
    block: list[str] = []
    for line in lines:
        block.append(line)
        if line == "COMMIT":
            body = [ln for ln in block[1:-1] if "NETAGENT" not in ln]
            if any(not (ln.startswith(":") and " ACCEPT [" in ln) for ln in body):
                out.extend(block)
            block = []
    return out + block


def seed(ns: str, mode: str) -> None:
    ns_exec(ns, ["iptables-nft-restore", "--noflush"], input=FOREIGN_IPTABLES)
    ns_exec(ns, ["nft", "-f", "-"], input=FOREIGN_NFT)
    ns_exec(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
    ns_exec(ns, ["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"])
    for dev in ("eth0", "eth0p"):
        ns_exec(ns, ["ip", "link", "set", dev, "up"])
    ns_exec(ns, ["ip", "route", "add", "198.18.0.0/16", "via", "192.0.2.1", "proto", "static"])
    ns_exec(ns, ["ip", "link", "add", "fvx0", "type", "vxlan", "id", "7", "dstport", "4789",
                 "dev", "eth0", "nolearning"])  # fmt: skip
    ns_exec(ns, ["ipset", "create", "foreign-allow", "hash:ip", "comment"])
    ns_exec(ns, ["ipset", "add", "foreign-allow", "203.0.113.7", "comment", "someone else's"])
    if mode == "ipvs":
        for service, real in FOREIGN_IPVS:
            ns_exec(ns, ["ipvsadm", "-A", *service.split(), "-s", "wrr"])
            ns_exec(ns, ["ipvsadm", "-a", *service.split(), "-r", real, "-m", "-w", "3"])


def changed(base: ProxyState, step: int) -> ProxyState:
    """Sync ``step``'s state: services come and go, endpoints move."""
    services = dict(base.services)
    endpoints = dict(base.endpoints)
    for i in range(step % 7):  # up to six services disappear for a while
        name = ServicePortName("bench", f"svc-{(step + i) % len(base.services)}", "http")
        services.pop(name, None)
        endpoints.pop(name, None)
    name = ServicePortName("bench", f"svc-{step % 50}", "http")
    if name in endpoints:
        ip = endpoint_ip(step, 0, 1) + 4096
        extra = Endpoint(ip=ipaddress.IPv4Address(ip), port=8080, node_name="other")
        endpoints[name] = tuple(sorted((*endpoints[name][1:], extra)))
    return replace(base, services=services, endpoints=endpoints)


@contextlib.contextmanager
def make(mode: str, ns: str) -> Iterator[Proxier]:
    """A proxier of ``mode`` programming namespace ``ns`` (its sockets closed afterwards)."""
    if mode == "iptables":
        yield IptablesProxier(runner=SubprocessIptables(backend="nft", netns=ns), conntrack=None)
    elif mode == "nftables":
        yield NftablesProxier(runner=SubprocessNft(netns=ns), conntrack=None)
    else:
        from netagent.proxy.ipvs.dummy import PyrouteDummy
        from netagent.proxy.ipvs.ipsets import PyrouteIpset
        from netagent.proxy.ipvs.local_addresses import read_local_addresses
        from netagent.proxy.ipvs.netlink import PyrouteIpvs
        from netagent.proxy.ipvs.proxier import IpvsProxier

        sockets = (PyrouteIpvs(netns=ns), PyrouteIpset(netns=ns), PyrouteDummy(ns))
        try:
            yield IpvsProxier(
                ipvs=sockets[0],
                ipsets=sockets[1],
                dummy=sockets[2],
                iptables=SubprocessIptables(backend="nft", netns=ns),
                local_addresses=lambda: read_local_addresses(ns),
                conntrack=None,
            )
        finally:
            for sock in sockets:
                with contextlib.suppress(Exception):
                    sock.close()


def test_foreign_state_is_byte_for_byte_the_same_after_1000_syncs_a_restart_and_cleanup(
    lab_proxy_mode: str,
) -> None:
    mode = lab_proxy_mode
    syncs = int(os.environ.get("NETAGENT_COEX_SYNCS", SYNCS[mode]))
    full_every = max(1, syncs // 10)
    base = build_state(60, 3, node_ports=True)
    with scratch_namespaces("coex") as (ns,), contextlib.ExitStack() as proxiers:
        seed(ns, mode)
        before = foreign_state(ns, mode)
        assert "KUBE-SEP-QRSTUVWXYZ012345" in before and "table inet foreign" in before
        assert "203.0.113.7" in before and ("192.0.2.51:443" in before) == (mode == "ipvs")
        proxier = proxiers.enter_context(make(mode, ns))
        full = 0
        started = time.monotonic()
        for step in range(syncs):
            result = proxier.sync(changed(base, step), full=step % full_every == 0)
            full += result.full
        took = time.monotonic() - started
        assert full >= syncs // full_every
        after_syncs = foreign_state(ns, mode)
        restarted = proxiers.enter_context(make(mode, ns))
        assert restarted.sync(changed(base, syncs)).full
        after_restart = foreign_state(ns, mode)
        assert restarted.kernel_objects(), "netagent's objects are in the kernel"
        restarted.cleanup()
        after_cleanup = foreign_state(ns, mode)
        assert not restarted.kernel_objects(), "cleanup left netagent objects"
        figures = {
            name: sum(a != b for a, b in zip(before, text, strict=False))
            + abs(len(before) - len(text))
            for name, text in (
                ("syncs", after_syncs),
                ("restart", after_restart),
                ("cleanup", after_cleanup),
            )
        }
        print(f"{mode}: {syncs} syncs in {took:.0f}s; bytes changed {figures}")
        assert after_syncs == before
        assert after_restart == before
        assert after_cleanup == before
