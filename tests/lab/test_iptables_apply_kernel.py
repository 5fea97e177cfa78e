"""The proxy's kernel adapters against the real kernel, each test in fresh network namespaces.

Covers: SubprocessIptables round trips (nft and legacy, IPv4 and IPv6) and
its error reporting; backend detection; IptablesApplier full and partial
syncs landing exactly the rendered chains; the canary catching an external
flush and the next sync repairing it; foreign Docker-style chains and a
foreign PREROUTING rule keeping their exact iptables-save lines through
syncs and cleanup, which leaves no NETAGENT chain; a refused restore leaving
the previous rules in place; ConntrackTool deleting a real DNATed UDP flow
chosen by stale_udp_flows; ensure_proxy_sysctls inside a namespace.

Every command runs under ``ip netns exec`` (the runners' ``netns``), so the
host's root namespace is never touched; namespaces carry a fresh lab suffix,
are recorded for the stale-run cleaner and are deleted in ``finally``.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnslab.names import link_name
from netnslab.netns import ns_exec
from netnslab.scratch import scratch_namespaces

from netagent.model import (
    Endpoint,
    IPFamily,
    NodeInfo,
    Protocol,
    ProxyConfig,
    ProxyState,
    ServicePort,
    ServicePortName,
)
from netagent.proxy.conntrack import ConntrackTool, stale_udp_flows
from netagent.proxy.iptables.apply import CANARY_CHAIN, IptablesApplier
from netagent.proxy.iptables.rules import JumpRule, RenderedIptables
from netagent.proxy.iptables.runner import (
    Backend,
    IptablesError,
    SubprocessIptables,
    detect_backend,
    parse_save,
)

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
BACKENDS: tuple[Backend, ...] = ("nft", "legacy")
SERVICES_JUMP = '-m comment --comment "netagent service portals" -j NETAGENT-SERVICES'

#: Foreign state a node typically has before netagent starts (Docker, plus a
#: rule of someone else's in PREROUTING).
FOREIGN = """\
*filter
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-USER -j RETURN
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A PREROUTING -s 192.0.2.0/24 -p udp -m udp --dport 4789 -j RETURN
-A DOCKER -i docker0 -j RETURN
COMMIT
"""


namespaces = scratch_namespaces


@pytest.fixture
def netns() -> Iterator[str]:
    with namespaces("ipt") as names:
        yield names[0]


def ruleset(endpoints: dict[str, list[str]]) -> RenderedIptables:
    """A small proxy-like ruleset, written the way iptables-save prints it back."""
    nat: dict[str, tuple[str, ...]] = {}
    services = []
    for i, (name, ips) in enumerate(sorted(endpoints.items())):
        svc = f"NETAGENT-SVC-{name.upper()}"
        services.append(
            f"-A NETAGENT-SERVICES -d 10.96.0.{i + 1}/32 -p udp -m udp --dport 53 "
            f'-m comment --comment "default/{name}:dns" -j {svc}'
        )
        rules = []
        for j, addr in enumerate(ips):
            sep = f"NETAGENT-SEP-{name.upper()}-{j}"
            rules.append(f"-A {svc} -j {sep}")
            nat[sep] = (f"-A {sep} -p udp -m udp -j DNAT --to-destination {addr}:5353",)
        nat[svc] = tuple(rules)
    return RenderedIptables(
        family=IPFamily.IPV4,
        tables={
            "nat": {"NETAGENT-SERVICES": tuple(services), **nat},
            "filter": {
                "NETAGENT-FORWARD": ("-A NETAGENT-FORWARD -m mark --mark 0x4000 -j ACCEPT",)
            },
        },
        jumps=(
            JumpRule("nat", "PREROUTING", SERVICES_JUMP),
            JumpRule("nat", "OUTPUT", SERVICES_JUMP),
            JumpRule("filter", "FORWARD", "-j NETAGENT-FORWARD"),
        ),
    )


def owned_state(save_text: str) -> dict[str, dict[str, list[str]]]:
    """table -> owned chain -> rules, plus built-in chains' jump rules, from iptables-save."""
    out: dict[str, dict[str, list[str]]] = {}
    for table, saved in parse_save(save_text).items():
        chains = {
            chain: rules
            for chain, rules in saved.rules.items()
            if chain.startswith("NETAGENT-") or any("NETAGENT-" in r for r in rules)
        }
        chains = {c: [r for r in rules if c.startswith("NETAGENT-") or "NETAGENT-" in r]
                  for c, rules in chains.items()}  # fmt: skip
        if chains:
            out[table] = chains
    return out


def expected_state(rendered: RenderedIptables) -> dict[str, dict[str, list[str]]]:
    """What owned_state must show once ``rendered`` is applied."""
    out: dict[str, dict[str, list[str]]] = {}
    for table in ("mangle", "filter", "nat"):
        chains: dict[str, list[str]] = {CANARY_CHAIN: []}
        chains.update({c: list(r) for c, r in rendered.tables.get(table, {}).items()})
        for jump in rendered.jumps:
            if jump.table == table:
                chains.setdefault(jump.chain, []).append(f"-A {jump.chain} {jump.spec}")
        out[table] = chains
    return out


def foreign_lines(save_text: str) -> dict[str, list[str]]:
    """Per table, the exact iptables-save lines (declarations, rules) that are not netagent's.

    Tables holding nothing but empty built-in chains are left out: netagent's
    canary creates the mangle table under nft, which is not a change to
    anything foreign.
    """
    out: dict[str, list[str]] = {}
    table = ""
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith((":", "-A")) and "NETAGENT-" not in line:
            out.setdefault(table, []).append(line)
    return {
        table: lines
        for table, lines in out.items()
        if any(line.startswith("-A") or " - [" in line for line in lines)
    }


@pytest.mark.parametrize(
    ("backend", "family"),
    [("nft", IPFamily.IPV4), ("legacy", IPFamily.IPV4), ("nft", IPFamily.IPV6)],
)
def test_subprocess_runner_round_trip(netns: str, backend: Backend, family: IPFamily) -> None:
    runner = SubprocessIptables(family=family, backend=backend, netns=netns)
    assert runner.available()
    runner.restore(
        "*nat\n:NETAGENT-T - [0:0]\n-A NETAGENT-T -p udp -m udp --dport 53 -j RETURN\nCOMMIT\n"
    )
    assert runner.chain_exists("nat", "NETAGENT-T")
    assert not runner.chain_exists("nat", "NETAGENT-OTHER")
    assert not runner.chain_exists("raw", "NETAGENT-T")
    saved = parse_save(runner.save("nat"))
    assert saved["nat"].rules["NETAGENT-T"] == ["-A NETAGENT-T -p udp -m udp --dport 53 -j RETURN"]
    assert "NETAGENT-T" in runner.save()
    bad = "*nat\n:NETAGENT-T - [0:0]\n-A NETAGENT-T --no-such-option -j RETURN\nCOMMIT\n"
    with pytest.raises(IptablesError) as info:
        runner.restore(bad)
    assert info.value.line == 3
    assert info.value.line_text == "-A NETAGENT-T --no-such-option -j RETURN"
    assert "no-such-option" in info.value.stderr
    # The refused table was not touched: the flush in line 2 did not land.
    assert (
        parse_save(runner.save("nat"))["nat"].rules["NETAGENT-T"]
        == saved["nat"].rules["NETAGENT-T"]
    )


def test_detect_backend_follows_the_rules_present(netns: str) -> None:
    assert detect_backend(netns=netns) == "nft", "empty: nft wins the tie"
    ns_exec(netns, ["iptables-legacy", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"])
    assert detect_backend(netns=netns) == "legacy"
    for _ in range(2):
        ns_exec(netns, ["iptables-nft", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"])
    assert detect_backend(netns=netns) == "nft"


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_then_partial_sync_on_the_kernel(netns: str, backend: Backend) -> None:
    runner = SubprocessIptables(backend=backend, netns=netns)
    applier = IptablesApplier(runner)
    endpoints = {f"s{i}": [f"10.244.{i}.1", f"10.244.{i}.2"] for i in range(20)}
    full = applier.apply(ruleset(endpoints), full=False)
    assert full.full
    assert owned_state(runner.save()) == expected_state(ruleset(endpoints))

    endpoints["s3"] = ["10.244.3.1", "10.244.3.9"]
    del endpoints["s7"]
    partial = applier.apply(ruleset(endpoints), full=False)
    assert not partial.full
    assert (partial.chains_written, partial.chains_deleted) == (2, 3)
    # The services chain (20 rules) and one endpoint chain, out of 65 chains.
    assert partial.bytes_written * 3 < full.bytes_written
    assert owned_state(runner.save()) == expected_state(ruleset(endpoints))

    assert applier.apply(ruleset(endpoints), full=False).bytes_written == 0
    # A full sync over a kernel that already matches rewrites chains but no jumps.
    again = applier.apply(ruleset(endpoints), full=True)
    assert (again.jumps_inserted, again.jumps_deleted) == (0, 0)


def test_external_flush_is_detected_and_repaired(netns: str) -> None:
    runner = SubprocessIptables(backend="nft", netns=netns)
    applier = IptablesApplier(runner)
    rendered = ruleset({"dns": ["10.244.1.5"]})
    applier.apply(rendered, full=True)
    for table in ("mangle", "nat", "filter"):  # what a firewall reload does
        ns_exec(netns, ["iptables-nft", "-t", table, "-F"])
        ns_exec(netns, ["iptables-nft", "-t", table, "-X"])
    assert owned_state(runner.save()) == {}
    result = applier.apply(rendered, full=False)
    assert result.full and result.reason == "canary missing"
    assert owned_state(runner.save()) == expected_state(rendered)


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreign_chains_and_rules_survive_syncs_and_cleanup(netns: str, backend: Backend) -> None:
    runner = SubprocessIptables(backend=backend, netns=netns)
    runner.restore(FOREIGN)
    before = foreign_lines(runner.save())
    applier = IptablesApplier(runner)
    applier.apply(ruleset({"a": ["10.244.0.1"], "b": ["10.244.0.2"]}), full=True)
    assert foreign_lines(runner.save()) == before
    applier.apply(ruleset({"a": ["10.244.0.1"], "c": ["10.244.0.3"]}), full=False)
    applier.apply(ruleset({"a": ["10.244.0.1"]}), full=True)
    after_syncs = runner.save()
    assert foreign_lines(after_syncs) == before
    # Our jump sits above the foreign PREROUTING rules, which kept their order.
    prerouting = parse_save(after_syncs)["nat"].rules["PREROUTING"]
    assert prerouting[0] == f"-A PREROUTING {SERVICES_JUMP}"

    report = IptablesApplier.cleanup(runner)
    cleaned = runner.save()
    assert "NETAGENT" not in cleaned
    assert foreign_lines(cleaned) == before
    assert len(report.jumps_deleted) == 3
    assert IptablesApplier.cleanup(runner).bytes_written == 0


def test_cleanup_removes_leftovers_of_a_crashed_run(netns: str) -> None:
    runner = SubprocessIptables(backend="nft", netns=netns)
    runner.restore(FOREIGN)
    before = foreign_lines(runner.save())
    runner.restore(
        "*raw\n:NETAGENT-OLD - [0:0]\n"
        "-A PREROUTING -j NETAGENT-OLD\n-A PREROUTING -j NETAGENT-OLD\n"
        "COMMIT\n*nat\n:NETAGENT-A - [0:0]\n:NETAGENT-B - [0:0]\n-A NETAGENT-A -j NETAGENT-B\n"
        "-A NETAGENT-B -j NETAGENT-A\nCOMMIT\n"
    )
    report = IptablesApplier.cleanup(runner)
    assert sorted(report.chains_deleted) == ["nat/NETAGENT-A", "nat/NETAGENT-B", "raw/NETAGENT-OLD"]
    assert "NETAGENT" not in runner.save()
    assert foreign_lines(runner.save()) == before


class InjectingRunner(SubprocessIptables):
    """A real runner that, while ``armed``, adds a bad line before the payload's last COMMIT."""

    armed: bool = False

    def restore(self, payload: str) -> None:
        if self.armed:
            cut = payload.rindex("COMMIT\n")
            payload = payload[:cut] + "-A NETAGENT-SERVICES --bogus-option\n" + payload[cut:]
        super().restore(payload)


def test_refused_restore_leaves_previous_rules(
    netns: str, caplog: pytest.LogCaptureFixture
) -> None:
    runner = InjectingRunner(backend="nft", netns=netns)
    applier = IptablesApplier(runner)
    first = ruleset({"a": ["10.244.0.1"], "b": ["10.244.0.2"]})
    applier.apply(first, full=True)
    runner.armed = True
    second = ruleset({"a": ["10.244.0.9"], "c": ["10.244.0.3"]})
    with caplog.at_level(logging.ERROR), pytest.raises(IptablesError) as info:
        applier.apply(second, full=False)
    assert info.value.line_text == "-A NETAGENT-SERVICES --bogus-option"
    assert "--bogus-option" in caplog.text
    assert owned_state(runner.save()) == expected_state(first)
    assert applier.needs_full_sync
    runner.armed = False
    retry = applier.apply(second, full=False)
    assert retry.full
    assert owned_state(runner.save()) == expected_state(second)


def test_conntrack_tool_deletes_the_stale_udp_flow() -> None:
    with namespaces("ctnode", "ctpod") as (node, pod):
        suffix = node.rsplit("-", 1)[1]
        host_end, pod_end = link_name("vct", suffix), link_name("vcp", suffix)
        ns_exec(node, ["ip", "link", "add", host_end, "type", "veth", "peer", "name", pod_end])
        ns_exec(node, ["ip", "link", "set", pod_end, "netns", pod])
        ns_exec(node, ["ip", "addr", "add", "10.244.0.1/24", "dev", host_end])
        ns_exec(node, ["ip", "link", "set", host_end, "up"])
        ns_exec(pod, ["ip", "addr", "add", "10.244.0.5/24", "dev", pod_end])
        ns_exec(pod, ["ip", "link", "set", pod_end, "up"])
        ns_exec(node, ["ip", "route", "add", "10.96.0.0/16", "dev", host_end])
        runner = SubprocessIptables(backend="nft", netns=node)
        runner.restore(
            "*nat\n"
            "-A OUTPUT -d 10.96.0.10/32 -p udp -m udp --dport 53 "
            "-j DNAT --to-destination 10.244.0.5:5353\n"
            "-A OUTPUT -d 10.96.0.11/32 -p udp -m udp --dport 53 "
            "-j DNAT --to-destination 10.244.0.5:5353\n"
            "COMMIT\n"
        )
        for vip in ("10.96.0.10", "10.96.0.11"):
            ns_exec(node, ["bash", "-c", f"echo query > /dev/udp/{vip}/53"])

        def flows() -> list[str]:
            out = ns_exec(node, ["conntrack", "-L", "-p", "udp"]).stdout
            return sorted(line.split("dst=")[1].split()[0] for line in out.splitlines())

        assert flows() == ["10.96.0.10", "10.96.0.11"]

        name = ServicePortName("kube-system", "kube-dns", "dns")
        svc = ServicePort(
            name=name,
            protocol=Protocol.UDP,
            port=53,
            cluster_ips=(ipaddress.IPv4Address("10.96.0.10"),),
        )
        endpoint = Endpoint(ip=ipaddress.IPv4Address("10.244.0.5"), port=5353)
        old = ProxyState({name: svc}, {name: (endpoint,)}, NodeInfo(name="n"), ProxyConfig())
        new = ProxyState({name: svc}, {}, NodeInfo(name="n"), ProxyConfig())
        tool = ConntrackTool(family=IPFamily.IPV4, netns=node)
        deleted = [tool.delete(flow) for flow in stale_udp_flows(old, new)]
        assert deleted == [1]
        assert flows() == ["10.96.0.11"], "the other service's flow to the same pod stays"
        assert [tool.delete(flow) for flow in stale_udp_flows(old, new)] == [0]


def test_proxy_sysctls_in_a_namespace(netns: str) -> None:
    code = (
        "from netagent.proxy.sysctl import ProcSysctl, ensure_proxy_sysctls\n"
        "print(','.join(ensure_proxy_sysctls(ProcSysctl(), localhost_nodeports=True)))\n"
    )
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", code]

    def run() -> list[str]:
        proc = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=30, check=True
        )
        return [n for n in proc.stdout.strip().split(",") if n]

    first = run()
    assert "net/ipv4/ip_forward" in first
    assert "net/ipv4/conf/all/route_localnet" in first
    assert run() == [], "a second run writes nothing"
    values = ns_exec(
        netns, ["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet"]
    ).stdout.split()
    assert values == ["1", "1"]
