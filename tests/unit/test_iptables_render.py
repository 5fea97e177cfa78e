"""render_iptables: golden rulesets, determinism, the per-service memo, families and invariants.

Golden files (tests/unit/golden/*.rules) hold the ``iptables-save`` form of a
few small states covering every rule shape; regenerate them with
``UPDATE_GOLDEN=1 pytest tests/unit/test_iptables_render.py`` and review the
diff. The invariant tests check every golden state for properties any
ruleset must have (valid chain names, no dangling jumps, nothing the nat
table refuses), and the memo tests prove that reusing a previous render
never changes the output. A lab test feeds the golden payloads to the real
iptables-restore (nft and legacy) inside a throwaway network namespace.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

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
    TrafficPolicy,
)
from netagent.proxy.iptables import chain_names as cn
from netagent.proxy.iptables.apply import IptablesApplier
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.render import IptablesRenderer, probability, render_iptables
from netagent.proxy.iptables.rules import RenderedIptables

GOLDEN = Path(__file__).parent / "golden"
ip = ipaddress.ip_address
net = ipaddress.ip_network
LOCAL = TrafficPolicy.LOCAL

NODE = NodeInfo(
    name="node-a",
    addresses=(ip("192.168.1.10"), ip("fd00::10")),
    zone="zone-a",
    resource_version="100",
)
CONFIG = ProxyConfig(cluster_cidrs=(net("10.244.0.0/16"), net("fd00:244::/56")))


def spn(name: str, port: str = "") -> ServicePortName:
    return ServicePortName("default", name, port)


def endpoint(addr: str, port: int = 8080, *, local: bool = False, **kw: object) -> Endpoint:
    return Endpoint(
        ip=ip(addr),
        port=port,
        node_name="node-a" if local else "node-b",
        is_local=local,
        **kw,  # type: ignore[arg-type]
    )


def cluster_basic() -> ProxyState:
    """Cluster policy: a NodePort service, a UDP service, and one with no endpoints."""
    web, dns, gone = spn("web", "http"), spn("dns", "dns"), spn("gone")
    services = {
        web: ServicePort(
            name=web,
            protocol=Protocol.TCP,
            port=80,
            cluster_ips=(ip("10.96.0.10"),),
            node_port=30080,
            type="NodePort",
        ),
        dns: ServicePort(name=dns, protocol=Protocol.UDP, port=53, cluster_ips=(ip("10.96.0.53"),)),
        gone: ServicePort(
            name=gone,
            protocol=Protocol.TCP,
            port=443,
            cluster_ips=(ip("10.96.0.99"),),
            node_port=30443,
            external_ips=(ip("198.51.100.7"),),
            type="NodePort",
        ),
    }
    endpoints = {
        web: (endpoint("10.244.1.5"), endpoint("10.244.2.5", local=True), endpoint("10.244.3.5")),
        dns: (endpoint("10.244.1.53", 53), endpoint("10.244.2.53", 53)),
    }
    return ProxyState(services=services, endpoints=endpoints, node=NODE, config=CONFIG)


def local_policies() -> ProxyState:
    """Local policies, an LB with source ranges, affinity, drops and the terminating fallback."""
    lb, nolocal, itp, term = spn("lb", "https"), spn("nolocal"), spn("itp"), spn("term")
    services = {
        lb: ServicePort(
            name=lb,
            protocol=Protocol.TCP,
            port=443,
            cluster_ips=(ip("10.96.1.1"),),
            node_port=31443,
            load_balancer_ips=(ip("203.0.113.10"),),
            load_balancer_source_ranges=(net("198.51.100.0/24"), net("192.168.1.0/24")),
            session_affinity=SessionAffinity.CLIENT_IP,
            sticky_seconds=600,
            external_traffic_policy=LOCAL,
            health_check_node_port=32001,
            type="LoadBalancer",
        ),
        nolocal: ServicePort(
            name=nolocal,
            protocol=Protocol.TCP,
            port=80,
            cluster_ips=(ip("10.96.1.2"),),
            node_port=31080,
            external_ips=(ip("198.51.100.8"),),
            external_traffic_policy=LOCAL,
            health_check_node_port=32002,
            type="NodePort",
        ),
        itp: ServicePort(
            name=itp,
            protocol=Protocol.TCP,
            port=80,
            cluster_ips=(ip("10.96.1.3"),),
            internal_traffic_policy=LOCAL,
        ),
        term: ServicePort(
            name=term, protocol=Protocol.TCP, port=80, cluster_ips=(ip("10.96.1.4"),)
        ),
    }
    endpoints = {
        lb: (
            endpoint("10.244.1.10", 8443),
            endpoint("10.244.2.10", 8443, local=True),
            endpoint("10.244.3.10", 8443),
        ),
        nolocal: (endpoint("10.244.1.11"),),
        itp: (endpoint("10.244.1.12"),),
        term: (
            endpoint("10.244.1.13", ready=False, serving=True, terminating=True),
            endpoint("10.244.1.14", ready=False, serving=False, terminating=True),
        ),
    }
    return ProxyState(services=services, endpoints=endpoints, node=NODE, config=CONFIG)


def options() -> ProxyState:
    """masquerade_all, nodeport_addresses, no localhost NodePorts, two pod CIDRs."""
    web = spn("web")
    services = {
        web: ServicePort(
            name=web,
            protocol=Protocol.SCTP,
            port=9000,
            cluster_ips=(ip("10.96.2.1"),),
            node_port=30900,
            external_traffic_policy=LOCAL,
            type="NodePort",
        )
    }
    endpoints = {web: (endpoint("10.244.2.20", 9000, local=True), endpoint("10.245.1.20", 9000))}
    config = ProxyConfig(
        cluster_cidrs=(net("10.244.0.0/16"), net("10.245.0.0/16")),
        nodeport_addresses=(net("192.168.1.0/24"), net("127.0.0.0/8"), net("fd00::/64")),
        masquerade_all=True,
        localhost_nodeports=False,
    )
    return ProxyState(services=services, endpoints=endpoints, node=NODE, config=config)


def ipv6() -> ProxyState:
    """An IPv6 state; the IPv4 addresses mixed in must not be rendered."""
    web = spn("web", "http")
    services = {
        web: ServicePort(
            name=web,
            protocol=Protocol.TCP,
            port=80,
            cluster_ips=(ip("fd00:96::10"), ip("10.96.0.10")),
            node_port=30080,
            external_ips=(ip("2001:db8::7"), ip("198.51.100.7")),
            type="NodePort",
        )
    }
    endpoints = {
        web: (
            endpoint("fd00:244:0:1::5"),
            endpoint("fd00:244:0:2::5", local=True),
            endpoint("10.244.1.5"),
        )
    }
    return ProxyState(
        services=services, endpoints=endpoints, node=NODE, config=CONFIG, family=IPFamily.IPV6
    )


STATES = {
    "cluster_basic": cluster_basic,
    "local_policies": local_policies,
    "options": options,
    "ipv6": ipv6,
}


def rules_of(rendered: RenderedIptables) -> list[tuple[str, str, str]]:
    """(table, chain, rule) for every rule, jump rules included."""
    out = [
        (t, c, r) for t, chains in rendered.tables.items() for c, rs in chains.items() for r in rs
    ]
    out += [(j.table, j.chain, f"-A {j.chain} {j.spec}") for j in rendered.jumps]
    return out


def target(rule: str) -> str | None:
    tokens = shlex.split(rule)
    return tokens[tokens.index("-j") + 1] if "-j" in tokens else None


# --- golden files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STATES))
def test_golden(name: str) -> None:
    text = render_iptables(STATES[name]()).save_text()
    path = GOLDEN / f"{name}.rules"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing; run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text()


# --- determinism and the memo ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STATES))
def test_identical_input_gives_identical_output(name: str) -> None:
    state = STATES[name]()
    renderer = IptablesRenderer()
    first = renderer.render(state).save_text()
    assert renderer.render(state).save_text() == first  # memo hit, same objects
    assert render_iptables(STATES[name]()).save_text() == first  # cold, new objects
    shuffled = ProxyState(
        services=dict(reversed(state.services.items())),
        endpoints={k: tuple(reversed(v)) for k, v in reversed(state.endpoints.items())},
        node=state.node,
        config=state.config,
        family=state.family,
    )
    assert render_iptables(shuffled).save_text() == first


def test_memo_never_changes_output_after_edits() -> None:
    state = local_policies()
    renderer = IptablesRenderer()
    renderer.render(state)
    lb = spn("lb", "https")
    edited = replace(
        state,
        services={**state.services, lb: replace(state.services[lb], sticky_seconds=30)},
        endpoints={**state.endpoints, spn("term"): (endpoint("10.244.1.15"),)},
    )
    warm = renderer.render(edited).save_text()
    assert render_iptables(edited).save_text() == warm
    assert "--seconds 30 " in warm and "10.244.1.15:8080" in warm
    assert "--seconds 600 " not in warm


def test_config_change_invalidates_memo() -> None:
    state = cluster_basic()
    renderer = IptablesRenderer()
    before = renderer.render(state)
    after = renderer.render(replace(state, config=replace(state.config, masquerade_all=True)))
    assert after.tables != before.tables
    masq_all = replace(state, config=replace(state.config, masquerade_all=True))
    assert render_iptables(masq_all).tables == after.tables


def test_node_status_churn_does_not_change_output() -> None:
    state = cluster_basic()
    renderer = IptablesRenderer()
    before = renderer.render(state).save_text()
    churned = replace(state, node=replace(state.node, resource_version="101"))
    assert renderer.render(churned).save_text() == before


def test_renderers_do_not_share_their_memo() -> None:
    """Two renderers (two proxiers, or debug next to the agent) never see each other's entries."""
    state = local_policies()
    first, second = IptablesRenderer(), IptablesRenderer()
    first.render(state)
    masq_all = replace(state, config=replace(state.config, masquerade_all=True))
    second.render(masq_all)
    assert first.render(state).save_text() == render_iptables(state).save_text()
    assert second.render(masq_all).save_text() == render_iptables(masq_all).save_text()


# --- rule shapes ------------------------------------------------------------------------------


def test_probabilities_and_unconditional_last_rule() -> None:
    web = spn("web")
    state = ProxyState(
        services={web: ServicePort(web, Protocol.TCP, 80, cluster_ips=(ip("10.96.0.1"),))},
        endpoints={web: tuple(endpoint(f"10.244.0.{i}") for i in range(1, 5))},
        node=NODE,
        config=CONFIG,
    )
    svc_chain = cn.service_chain(web, Protocol.TCP)
    rules = render_iptables(state).tables["nat"][svc_chain]
    balance = [r for r in rules if "-> " in r]
    assert [r.split("--probability ")[1].split()[0] for r in balance[:-1]] == [
        "0.2500000000",
        "0.3333333333",
        "0.5000000000",
    ]
    assert "statistic" not in balance[-1]
    assert [target(r) for r in balance] == [
        cn.endpoint_chain(web, Protocol.TCP, f"10.244.0.{i}:8080") for i in range(1, 5)
    ]
    assert probability(1000) == "0.0010000000"


def test_no_endpoints_reject_in_filter_only() -> None:
    rendered = render_iptables(cluster_basic())
    comment = '"default/gone has no endpoints"'
    filter_rules = [r for c in rendered.tables["filter"].values() for r in c if comment in r]
    assert len(filter_rules) == 3  # cluster IP, external IP, NodePort
    assert all(target(r) == "REJECT" for r in filter_rules)
    nat_text = "\n".join(r for c in rendered.tables["nat"].values() for r in c)
    assert "default/gone" not in nat_text


def test_ipv4_state_ignores_ipv6_addresses() -> None:
    state = replace(ipv6(), family=IPFamily.IPV4)
    text = render_iptables(state).save_text()
    assert "fd00:" not in text and "2001:db8" not in text
    assert "-d 10.96.0.10/32" in text and "-d 198.51.100.7/32" in text
    assert "--to-destination 10.244.1.5:8080" in text


def test_ipv6_shapes() -> None:
    text = render_iptables(ipv6()).save_text()
    assert "-d fd00:96::10/128" in text
    assert "--to-destination [fd00:244:0:1::5]:8080" in text
    assert "-s fd00:244:0:2::5/128" in text
    assert "10.96.0.10" not in text and "10.244.1.5" not in text
    assert "! -d ::1/128" in text  # localhost NodePorts never work on IPv6
    assert "127.0.0.0/8" not in text


def test_service_without_cluster_ip_of_family_renders_nothing() -> None:
    web = spn("web")
    state = ProxyState(
        services={web: ServicePort(web, Protocol.TCP, 80, cluster_ips=(ip("fd00::1"),))},
        endpoints={web: (endpoint("10.244.0.1"),)},
        node=NODE,
        config=CONFIG,
    )
    assert "default/web" not in render_iptables(state).save_text()


def test_health_check_port_accepted_once_per_service() -> None:
    lb = spn("lb", "https")
    state = local_policies()
    other = spn("lb", "http")
    state.services[other] = replace(state.services[lb], name=other, port=80, node_port=31080)
    rules = render_iptables(state).tables["filter"][cn.NODEPORTS]
    assert sum("--dport 32001 -j ACCEPT" in r for r in rules) == 1


def test_nodeport_addresses_restrict_dispatch() -> None:
    nat = render_iptables(options()).tables["nat"][cn.SERVICES]
    dispatch = [r for r in nat if target(r) in (cn.NODEPORTS, "RETURN")]
    assert dispatch == [
        f'-A {cn.SERVICES} -d 192.168.1.0/24 -m comment --comment "netagent service nodeports;'
        f' must stay the last rules" -m addrtype --dst-type LOCAL -j {cn.NODEPORTS}'
    ]
    assert nat[-1] == dispatch[-1]


def test_default_nodeport_dispatch_is_last_rule() -> None:
    for name, build in STATES.items():
        nat = render_iptables(build()).tables["nat"][cn.SERVICES]
        assert target(nat[-1]) == cn.NODEPORTS, name
        assert sum(target(r) == cn.NODEPORTS for r in nat) == 1, name


# --- invariants over every golden state --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STATES))
def test_invariants(name: str) -> None:
    rendered = render_iptables(STATES[name]())
    for chains in rendered.tables.values():
        for chain, rules in chains.items():
            assert cn.is_valid_chain_name(chain), chain
            for rule in rules:
                assert rule.startswith(f"-A {chain} "), rule
                assert "\n" not in rule
    referenced: set[tuple[str, str]] = set()
    for table, _chain, rule in rules_of(rendered):
        tgt = target(rule)
        assert tgt is not None, rule
        if tgt.startswith(cn.CHAIN_PREFIX):
            assert tgt in rendered.tables[table], f"{table}: {rule} jumps to a missing chain"
            referenced.add((table, tgt))
        if table == "nat":
            assert tgt not in ("DROP", "REJECT", "ACCEPT"), rule
        tokens = shlex.split(rule)
        if "--comment" in tokens:
            assert '--comment "' in rule, rule
    for table, chains in rendered.tables.items():
        for chain in chains:
            if chain.startswith(cn.PER_SERVICE_PREFIXES):
                assert (table, chain) in referenced, f"{table}/{chain} is never jumped to"


@pytest.mark.parametrize("name", sorted(STATES))
def test_fake_kernel_accepts_ruleset(name: str) -> None:
    state = STATES[name]()
    fake = FakeIptables(state.family)
    IptablesApplier(fake).apply(render_iptables(state), full=True)
    assert fake.chain_exists("nat", cn.SERVICES)


@pytest.mark.lab
@pytest.mark.parametrize("tool", ["iptables-restore", "iptables-legacy-restore"])
def test_kernel_accepts_golden_payloads(tool: str) -> None:
    # A lab test may not skip: a missing tool is a failure (scripts/install-deps.sh installs it).
    assert shutil.which(tool) is not None, f"{tool} not installed"
    netns = f"na-render-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        for name, build in sorted(STATES.items()):
            state = build()
            command = (
                tool if state.family is IPFamily.IPV4 else tool.replace("iptables", "ip6tables")
            )
            payload = render_iptables(state).save_text()
            result = subprocess.run(
                ["ip", "netns", "exec", netns, command, "--test"],
                input=payload,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, f"{name}: {result.stderr}"
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def test_several_pod_cidrs_use_the_non_pod_chain() -> None:
    state = replace(options(), config=replace(options().config, masquerade_all=False))
    nat = render_iptables(state).tables["nat"]
    web = spn("web")
    first = nat[cn.service_chain(web, Protocol.SCTP)][0]
    assert "-d 10.96.2.1/32" in first and target(first) == cn.MARK_MASQ_NON_POD
    assert [target(r) for r in nat[cn.MARK_MASQ_NON_POD]] == ["RETURN", "RETURN", cn.MARK_MASQ]
    assert cn.MARK_MASQ_NON_POD not in render_iptables(options()).tables["nat"]
