"""NftablesProxier against the real kernel, in-process, each test in a fresh network namespace.

Covers, with the real ``nft`` (SubprocessNft) and states built from the
model:

* after a full sync the kernel's listing of ``ip netagent`` equals the
  render (``kernel_objects() == render_objects(state)``) for services of
  every kind: ClusterIP, NodePort, externalIP, LoadBalancer with source
  ranges, externalTrafficPolicy=Local, internalTrafficPolicy=Local, ClientIP
  affinity, no endpoints, TCP, UDP and SCTP ports, with the overlay's
  chains; and the same for ``ip6 netagent``;
* an endpoint change is one transaction of element lines only, and the
  sync runs no ``nft list``;
* a refused transaction (an ``nft`` that fails, for one sync) raises and
  leaves the previous rules serving; the next sync with the real nft is full
  and lands the new render;
* drift (a hand-deleted element, a hand-flushed chain, the whole table
  deleted) is found by the drift check and repaired by a full sync;
* a full sync keeps the clients recorded in ClientIP-affinity sets.

Every command runs under ``ip netns exec`` (the runner's ``netns``), so the
host's root namespace is never touched; each namespace carries a fresh lab
suffix, is recorded for the stale-run cleaner and is deleted in ``finally``.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from netnslab.names import namespace_name, new_suffix
from netnslab.netns import add_namespace, delete_namespace, ns_exec
from netnslab.runs import RunRecord

from bench.synthetic import build_state, with_one_endpoint_changed
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
    TrafficPolicy,
)
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.nftables.proxier import NftablesProxier
from netagent.proxy.nftables.runner import NftError, SubprocessNft
from netagent.proxy.proxier import OwnedObject

pytestmark = pytest.mark.lab

ip = ipaddress.ip_address
net = ipaddress.ip_network

NODE4 = NodeInfo(
    name="node-a", addresses=(ip("192.0.2.2"),), pod_cidrs=(net("10.244.0.0/24"),), zone="z1"
)
CONFIG4 = ProxyConfig(cluster_cidrs=(net("10.244.0.0/16"),))
OVERLAY = OverlayRules(
    cluster_network=ipaddress.IPv4Network("10.244.0.0/16"),
    local_subnet=ipaddress.IPv4Network("10.244.0.0/24"),
    ip_masq=True,
)
NODE6 = NodeInfo(
    name="node-a",
    addresses=(ip("2001:db8::2"),),
    pod_cidrs=(net("fd00:10:244::/64"),),
    zone="z1",
)
CONFIG6 = ProxyConfig(cluster_cidrs=(net("fd00:10:244::/48"),))

#: The bench services mixed into the IPv4 state (``bench/svc-I:http``).
BENCH_SERVICES = 20


# ---- states ---------------------------------------------------------------------------------


def ep(addr: str, port: int = 8080, **kw: object) -> Endpoint:
    return Endpoint(ip=ip(addr), port=port, **kw)  # type: ignore[arg-type]


def name(svc: str, port: str = "p") -> ServicePortName:
    return ServicePortName("default", svc, port)


def every_kind(
    *,
    family: IPFamily,
    cluster: Sequence[str],
    external: Sequence[str],
    local: Sequence[str],
    remote: Sequence[str],
    node: NodeInfo,
    config: ProxyConfig,
    source_ranges: Sequence[str],
) -> ProxyState:
    """One service port of every kind the nftables table distinguishes, in one family.

    ``cluster``: 11 cluster IPs; ``external``: 5 external/LB addresses;
    ``local``/``remote``: 2 endpoint addresses each, on this node and another.
    """
    on_node = {"node_name": node.name, "zone": "z1", "is_local": True}
    elsewhere = {"node_name": "node-b", "zone": "z2"}
    l0, l1 = (ep(a, **on_node) for a in local)  # type: ignore[arg-type]
    r0, r1 = (ep(a, **elsewhere) for a in remote)  # type: ignore[arg-type]
    tcp, udp, sctp = Protocol.TCP, Protocol.UDP, Protocol.SCTP
    c = [ip(a) for a in cluster]
    x = [ip(a) for a in external]
    ranges = tuple(net(r) for r in source_ranges)
    services: dict[ServicePortName, ServicePort] = {}
    endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}

    def add(svc: ServicePort, eps: Sequence[Endpoint] = ()) -> None:
        services[svc.name] = svc
        if eps:
            endpoints[svc.name] = tuple(sorted(eps))

    add(ServicePort(name("web", "http"), tcp, 80, cluster_ips=(c[0],)), (l0, r0, r1))
    add(ServicePort(name("dns", "dns"), udp, 53, cluster_ips=(c[1],)), (replace(l1, port=5353),))
    add(ServicePort(name("dns", "dns-tcp"), tcp, 53, cluster_ips=(c[1],)), (replace(r0, port=53),))
    add(
        ServicePort(name("np"), tcp, 8080, cluster_ips=(c[2],), node_port=30080, type="NodePort"),
        (l0, r0),
    )
    add(
        ServicePort(name("np-udp"), udp, 9999, cluster_ips=(c[2],), node_port=30999),
        (replace(r1, port=9999),),
    )
    add(ServicePort(name("ext"), tcp, 443, cluster_ips=(c[3],), external_ips=(x[0],)), (r0, r1))
    add(
        ServicePort(
            name("lb"),
            tcp,
            443,
            cluster_ips=(c[4],),
            external_ips=(x[1],),
            load_balancer_ips=(x[2],),
            load_balancer_source_ranges=ranges,
            node_port=30443,
            external_traffic_policy=TrafficPolicy.LOCAL,
            health_check_node_port=32000,
            type="LoadBalancer",
        ),
        (l0, r0, r1),
    )
    add(
        ServicePort(
            name("lb-nolocal"),
            tcp,
            80,
            cluster_ips=(c[5],),
            load_balancer_ips=(x[3],),
            node_port=30081,
            external_traffic_policy=TrafficPolicy.LOCAL,
            type="LoadBalancer",
        ),
        (r0,),  # eTP=Local with no local endpoint: outside traffic is dropped
    )
    add(
        ServicePort(
            name("sticky"),
            tcp,
            80,
            cluster_ips=(c[6],),
            external_ips=(x[4],),
            node_port=30082,
            session_affinity=SessionAffinity.CLIENT_IP,
            sticky_seconds=600,
        ),
        (l0, r0),
    )
    add(
        ServicePort(
            name("sticky-local"),
            udp,
            5353,
            cluster_ips=(c[7],),
            node_port=30083,
            session_affinity=SessionAffinity.CLIENT_IP,
            sticky_seconds=30,
            external_traffic_policy=TrafficPolicy.LOCAL,
        ),
        (replace(l1, port=5353), replace(r1, port=5353)),
    )
    add(
        ServicePort(
            name("itp-local"),
            tcp,
            80,
            cluster_ips=(c[8],),
            internal_traffic_policy=TrafficPolicy.LOCAL,
        ),
        (l0, r0),
    )
    add(ServicePort(name("empty"), tcp, 80, cluster_ips=(c[9],), node_port=30084))
    add(ServicePort(name("sctp"), sctp, 9000, cluster_ips=(c[10],)), (replace(r0, port=9000),))
    add(ServicePort(name("sctp-empty"), sctp, 9001, cluster_ips=(c[10],)))
    add(
        ServicePort(name("terminating"), tcp, 81, cluster_ips=(c[0],)),
        (replace(r0, ready=False, serving=True, terminating=True),),
    )
    return ProxyState(services, endpoints, node, config, family)


def state4() -> ProxyState:
    """Every kind of service port in IPv4, plus bench's 20 ClusterIP services of 3 endpoints."""
    state = every_kind(
        family=IPFamily.IPV4,
        cluster=[f"10.96.1.{i}" for i in range(1, 12)],
        external=[f"198.51.100.{i}" for i in range(1, 6)],
        local=["10.244.0.5", "10.244.0.6"],
        remote=["10.244.1.5", "10.244.2.5"],
        node=NODE4,
        config=CONFIG4,
        source_ranges=["203.0.113.0/24", "192.0.2.0/24", "198.18.0.7/32"],
    )
    bench = build_state(BENCH_SERVICES, 3)
    return replace(
        state,
        services={**state.services, **bench.services},
        endpoints={**state.endpoints, **bench.endpoints},
    )


def state6() -> ProxyState:
    return every_kind(
        family=IPFamily.IPV6,
        cluster=[f"fd00:10:96::{i:x}" for i in range(1, 12)],
        external=[f"2001:db8:100::{i:x}" for i in range(1, 6)],
        local=["fd00:10:244::5", "fd00:10:244::6"],
        remote=["fd00:10:244:1::5", "fd00:10:244:2::5"],
        node=NODE6,
        config=CONFIG6,
        source_ranges=["2001:db8:200::/48", "2001:db8::/64", "2001:db8:300::7/128"],
    )


def changed(state: ProxyState) -> ProxyState:
    """``state`` with one endpoint of a bench service moved (an incremental change)."""
    return with_one_endpoint_changed(state, 7)


# ---- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace, recorded first and always deleted."""
    suffix = new_suffix()
    ns = namespace_name("nftk", suffix)
    record = RunRecord.for_this_process(suffix, [ns], workdir="")
    record.save()
    try:
        add_namespace(ns)
        ns_exec(ns, ["ip", "link", "set", "lo", "up"])
        yield ns
    finally:
        delete_namespace(ns)
        record.remove()


@pytest.fixture
def nft(netns: str) -> SubprocessNft:
    runner = SubprocessNft(netns=netns)
    assert runner.available()
    return runner


def proxier_for(
    runner: SubprocessNft, family: IPFamily = IPFamily.IPV4, **kw: float
) -> NftablesProxier:
    return NftablesProxier(runner=runner, conntrack=None, family=family, **kw)


def difference(kernel: Sequence[OwnedObject], want: Sequence[OwnedObject]) -> str:
    """Readable: what only the kernel holds and what only the render holds."""
    have, wanted = set(kernel), set(want)
    only_kernel = sorted(have - wanted)
    only_render = sorted(wanted - have)
    lines = ["kernel only:", *map(repr, only_kernel), "render only:", *map(repr, only_render)]
    return "\n".join(lines)


def assert_kernel_equals_render(
    proxier: NftablesProxier, state: ProxyState, overlay: OverlayRules | None = None
) -> None:
    kernel = list(proxier.kernel_objects())
    want = list(proxier.render_objects(state, overlay))
    assert kernel, "the kernel holds no table"
    assert kernel == want, difference(kernel, want)


def nft_in(netns: str, *args: str) -> str:
    return ns_exec(netns, ["nft", *args]).stdout


def call_kinds(runner: SubprocessNft, since: int) -> list[str]:
    return [call[0] for call in runner.calls[since:]]


# ---- a full sync lands exactly the render ---------------------------------------------------


def test_full_sync_ipv4_kernel_listing_equals_the_render(nft: SubprocessNft, netns: str) -> None:
    state = state4()
    proxier = proxier_for(nft)
    result = proxier.sync(state, overlay=OVERLAY)
    assert result.full
    assert_kernel_equals_render(proxier, state, OVERLAY)
    # The comparison is not vacuous: the render holds every kind of object, the listing too.
    want = proxier.render_objects(state, OVERLAY)
    chains = {o.key for o in want if o.kind == "chain"}
    assert {"services", "masquerading", "overlay-postrouting", "overlay-forward"} <= chains
    assert {"cluster-tcp-3", "cluster-udp-1", "cluster-sctp-1", "nodeport-tcp-2"} <= chains
    assert {"external-tcp-2", "external-local-tcp-3-1", "nodeport-local-tcp-3-1"} <= chains
    assert any(c.startswith("sticky-") and "-ep-" in c for c in chains)
    keys = {o.key for o in want}
    assert "service-ips 10.96.1.5 . tcp . 443" in keys  # the LB's cluster IP
    assert "firewall-ips 198.51.100.3 . tcp . 443" in keys
    assert "firewall-allow 198.51.100.3 . tcp . 443 . 203.0.113.0/24" in keys
    assert "firewall-allow 198.51.100.3 . tcp . 443 . 198.18.0.7" in keys
    # The node's own address is in a source range: the LB address itself is allowed.
    assert "firewall-allow 198.51.100.3 . tcp . 443 . 198.51.100.3" in keys
    assert "no-endpoint-services 10.96.1.10 . tcp . 80" in keys
    assert "no-endpoint-nodeports tcp . 30084" in keys
    assert "no-endpoint-services 10.96.1.11 . sctp . 9001" in keys
    assert "no-endpoint-services 198.51.100.4 . tcp . 80" in keys  # eTP=Local, none local
    assert "service-nodeports udp . 30999" in keys
    listing = nft_in(netns, "list", "table", "ip", "netagent")
    assert "type nat hook prerouting priority dstnat; policy accept;" in listing
    assert "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random" in listing
    # A second full sync of the same state changes nothing.
    assert proxier.sync(state, full=True, overlay=OVERLAY).full
    assert_kernel_equals_render(proxier, state, OVERLAY)


def test_full_sync_ipv6_kernel_listing_equals_the_render(nft: SubprocessNft, netns: str) -> None:
    state = state6()
    proxier = proxier_for(nft, IPFamily.IPV6)
    assert proxier.sync(state).full
    assert_kernel_equals_render(proxier, state)
    tables = nft_in(netns, "list", "tables").split("\n")
    assert "table ip6 netagent" in tables and "table ip netagent" not in tables
    want = proxier.render_objects(state)
    keys = {o.key for o in want}
    assert "service-ips fd00:10:96::5 . tcp . 443" in keys
    assert "firewall-allow 2001:db8:100::3 . tcp . 443 . 2001:db8:200::/48" in keys
    assert "no-endpoint-services fd00:10:96::a . tcp . 80" in keys
    assert any(o.key.startswith("sticky-") for o in want if o.kind == "chain")
    listing = nft_in(netns, "list", "table", "ip6", "netagent")
    assert "type ipv6_addr" in listing and "dnat ip6 to" in listing
    # An endpoint change in IPv6 lands incrementally too.
    web = name("web", "http")
    moved = replace(
        state,
        endpoints={**state.endpoints, web: (*state.endpoints[web][:2], ep("fd00:10:244:9::9"))},
    )
    result = proxier.sync(moved)
    assert not result.full, proxier.last_payload
    assert_kernel_equals_render(proxier, moved)


# ---- incremental ----------------------------------------------------------------------------


def test_endpoint_change_is_an_element_only_transaction_without_listing(
    nft: SubprocessNft,
) -> None:
    state = state4()
    proxier = proxier_for(nft)
    proxier.sync(state, overlay=OVERLAY)
    before = len(nft.calls)
    new = changed(state)
    result = proxier.sync(new, overlay=OVERLAY)
    assert not result.full, result.summary
    assert call_kinds(nft, before) == ["run"], nft.calls[before:]
    lines = [line for line in proxier.last_payload.splitlines() if line.strip()]
    assert lines, "the change sent no transaction"
    assert all(line.startswith(("add element ", "delete element ")) for line in lines), lines
    assert any("10.244.255.254 . 8080" in line for line in lines), lines
    assert_kernel_equals_render(proxier, new, OVERLAY)
    # An unchanged state sends nothing at all.
    before = len(nft.calls)
    proxier.sync(new, overlay=OVERLAY)
    assert nft.calls[before:] == []


# ---- a refused transaction ------------------------------------------------------------------


def failing_nft(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for nft that fails every command without touching the kernel; its log."""
    log = tmp_path / "failing-nft.log"
    script = tmp_path / "failing-nft"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        'if [ "$1" = "-f" ]; then cat >/dev/null; fi\n'
        "echo 'Error: failure injected by the test' >&2\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    return script, log


def test_failed_transaction_keeps_the_old_rules_and_the_next_sync_is_full(
    nft: SubprocessNft, tmp_path: Path
) -> None:
    state = state4()
    proxier = proxier_for(nft)
    proxier.sync(state, overlay=OVERLAY)
    old_listing = nft.list_table("ip", "netagent")
    new = changed(state)
    script, log = failing_nft(tmp_path)
    nft.nft = str(script)
    try:
        with pytest.raises(NftError, match="failure injected by the test"):
            proxier.sync(new, overlay=OVERLAY)
    finally:
        nft.nft = "nft"
    assert log.read_text().splitlines()[0] == "-f -", "the failing nft was not used"
    assert proxier.needs_full_sync
    # The previous rules still serve, untouched.
    assert nft.list_table("ip", "netagent") == old_listing
    kernel = list(proxier.kernel_objects())
    assert kernel == list(proxier.render_objects(state, OVERLAY))
    assert kernel != list(proxier.render_objects(new, OVERLAY))
    # The next sync, with the real nft, is full and lands the new render.
    result = proxier.sync(new, overlay=OVERLAY)
    assert result.full, result.summary
    assert_kernel_equals_render(proxier, new, OVERLAY)


# ---- drift ----------------------------------------------------------------------------------


def wait_past_drift_rate_limit(nft: SubprocessNft) -> None:
    """The drift check runs at most every 10x its last duration: wait that out, generously."""
    t0 = time.perf_counter()
    nft.list_table("ip", "netagent")
    time.sleep(max(0.5, 30 * (time.perf_counter() - t0)))


def test_drift_is_found_and_repaired_by_a_full_sync(nft: SubprocessNft, netns: str) -> None:
    state = state4()
    proxier = proxier_for(nft, drift_check_period=0)
    proxier.sync(state, overlay=OVERLAY)
    want = list(proxier.render_objects(state, OVERLAY))
    # An element and a chain's rules deleted by hand.
    nft_in(netns, "delete", "element", "ip", "netagent", "service-ips", "{ 10.96.1.1 . tcp . 80 }")
    nft_in(netns, "flush", "chain", "ip", "netagent", "services")
    assert list(proxier.kernel_objects()) != want
    wait_past_drift_rate_limit(nft)
    result = proxier.sync(state, overlay=OVERLAY)
    assert result.full and "drift" in result.summary, result.summary
    assert_kernel_equals_render(proxier, state, OVERLAY)
    # The whole table deleted by hand: the next sync restores it.
    wait_past_drift_rate_limit(nft)
    nft_in(netns, "delete", "table", "ip", "netagent")
    assert nft.list_table("ip", "netagent") is None
    result = proxier.sync(state, overlay=OVERLAY)
    assert result.full and "table is gone" in result.summary, result.summary
    assert_kernel_equals_render(proxier, state, OVERLAY)
    # Without drift, the check finds nothing and the sync sends nothing.
    wait_past_drift_rate_limit(nft)
    before = len(nft.calls)
    result = proxier.sync(state, overlay=OVERLAY)
    assert not result.full, result.summary
    assert call_kinds(nft, before) == ["list"], nft.calls[before:]


# ---- ClientIP affinity memory ---------------------------------------------------------------


def test_full_sync_keeps_the_clients_of_affinity_sets(nft: SubprocessNft, netns: str) -> None:
    state = state4()
    proxier = proxier_for(nft)
    proxier.sync(state, overlay=OVERLAY)
    committed = proxier.committed
    assert committed is not None
    sticky = sorted(n for n, s in committed.all_sets().items() if s.dynamic)
    assert len(sticky) == 4, sticky  # two affinity ports of two endpoints each
    target = sticky[0]
    nft_in(netns, "add", "element", "ip", "netagent", target, "{ 10.0.0.1 }")
    assert "10.0.0.1" in nft_in(netns, "list", "set", "ip", "netagent", target)
    result = proxier.sync(state, full=True, overlay=OVERLAY)
    assert result.full
    assert "flush" in proxier.last_payload and f"flush set ip netagent {target}" not in (
        proxier.last_payload
    )
    listed = nft_in(netns, "list", "set", "ip", "netagent", target)
    assert "10.0.0.1" in listed, listed
    assert_kernel_equals_render(proxier, state, OVERLAY)
    # A full sync after a change that needs one (an endpoint change among others) keeps it too.
    result = proxier.sync(changed(state), full=True, overlay=OVERLAY)
    assert result.full
    assert "10.0.0.1" in nft_in(netns, "list", "set", "ip", "netagent", target)
