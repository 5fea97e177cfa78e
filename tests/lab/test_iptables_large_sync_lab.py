"""Large iptables syncs on the real kernel: the ``-S`` listing, its cost shape, and live traffic.

What is pinned here, each in fresh namespaces:

- the two iptables 1.8.9 facts the fake models (tests/unit/test_iptables_list_first.py):
  after ``-S`` a rule cannot go into a built-in chain nft has not created
  yet; without it, or in an existing built-in chain, it can;
- the applier's listed payload leaves exactly the ruleset a plain restore of
  the same chains leaves;
- the cost of a listed full sync grows about linearly with the payload
  (doubling the services must not come near quadrupling the time, which is
  what the unlisted ``--noflush`` transaction does). This is a guard on the
  tool's behaviour, with a wide margin; the figures themselves come from
  bench/iptables_full_sync.py and are in docs/performance.md;
- no connection to a Service whose endpoints did not change fails or
  reaches a wrong backend while full syncs replace thousands of other
  services' chains.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
from netnslab import SingleNodeLab
from netnslab.netns import ns_exec
from netnslab.scratch import scratch_namespaces

from bench.synthetic import build_state
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
from netagent.proxy.iptables.apply import IptablesApplier
from netagent.proxy.iptables.render import render_iptables
from netagent.proxy.iptables.runner import IptablesError, SubprocessIptables

pytestmark = pytest.mark.lab


@contextmanager
def fresh_namespace(role: str) -> Iterator[str]:
    with scratch_namespaces(role) as names:
        yield names[0]


def restore(ns: str, tool: str, payload: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, tool, "--noflush"],
        input=payload,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def ruleset_text(ns: str, backend: str = "nft") -> str:
    """iptables-save without comments and counters, for comparing two namespaces."""
    out = ns_exec(ns, [f"iptables-{backend}-save"]).stdout
    lines = [line for line in out.splitlines() if line and not line.startswith("#")]
    return "\n".join(re.sub(r" \[\d+:\d+\]$", "", line) for line in lines)


def test_nft_listing_refuses_rules_into_builtin_chains_it_has_not_created() -> None:
    with fresh_namespace("lst") as ns:
        refused = restore(ns, "iptables-nft-restore", "*filter\n-S\n-A INPUT -j ACCEPT\nCOMMIT\n")
        assert refused.returncode != 0
        assert "RULE_APPEND failed (No such file or directory)" in refused.stderr
        assert "-A INPUT" not in ruleset_text(ns)
        plain = restore(ns, "iptables-nft-restore", "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n")
        assert plain.returncode == 0, plain.stderr
        # Now INPUT exists: a listed transaction may insert into it.
        listed = restore(
            ns, "iptables-nft-restore", "*filter\n-S\n-I INPUT 1 -j RETURN\nCOMMIT\n"
        )
        assert listed.returncode == 0, listed.stderr
        assert "-A INPUT -j ACCEPT" in listed.stdout  # -S printed the table
        text = ruleset_text(ns)
        assert text.index("-A INPUT -j RETURN") < text.index("-A INPUT -j ACCEPT")


def test_legacy_restore_accepts_a_listing_before_any_rule() -> None:
    with fresh_namespace("lgc") as ns:
        done = restore(ns, "iptables-legacy-restore", "*filter\n-S\n-A INPUT -j ACCEPT\nCOMMIT\n")
        assert done.returncode == 0, done.stderr
        assert "-A INPUT -j ACCEPT" in ruleset_text(ns, "legacy")


def test_a_listed_full_sync_leaves_what_a_plain_restore_leaves() -> None:
    rendered = render_iptables(build_state(300, 10, node_ports=True))
    with fresh_namespace("lsa") as listed_ns, fresh_namespace("lsb") as plain_ns:
        result = IptablesApplier(SubprocessIptables(backend="nft", netns=listed_ns)).apply(
            rendered, full=True
        )
        assert result.listed_first and "\n-S\n" in result.payload
        assert result.transactions == 5  # mangle, filter, nat; then filter and nat jumps
        plain = result.payload.replace("\n-S\n", "\n")
        done = restore(plain_ns, "iptables-nft-restore", plain)
        assert done.returncode == 0, done.stderr
        assert ruleset_text(listed_ns) == ruleset_text(plain_ns)
        assert ruleset_text(listed_ns).count("\n-A ") == plain.count("\n-A ") + plain.count("\n-I ")


def timed_full_sync(services: int) -> float:
    rendered = render_iptables(build_state(services, 10))
    best = float("inf")
    for _ in range(2):
        with fresh_namespace("lsc") as ns:
            applier = IptablesApplier(SubprocessIptables(backend="nft", netns=ns))
            t0 = time.perf_counter()
            assert applier.apply(rendered, full=True).listed_first
            best = min(best, time.perf_counter() - t0)
    return best


def test_listed_full_sync_cost_grows_about_linearly() -> None:
    small, large = timed_full_sync(1000), timed_full_sync(2000)
    # Linear is 2x; the unlisted transaction measured 4x per doubling (6.8 s -> 27.5 s).
    assert large / small < 3.0, f"1,000 services {small:.2f} s, 2,000 services {large:.2f} s"


STABLE = (
    ServicePortName("default", "stable-ab", "http"),
    ServicePortName("default", "stable-c", "http"),
)
STABLE_IPS = ("10.100.0.1", "10.100.0.2")
STABLE_BACKENDS = ({"pod-a", "pod-b"}, {"pod-c"})


def lab_state(lab: SingleNodeLab, synthetic: ProxyState) -> ProxyState:
    """``synthetic`` services plus two real ones whose endpoints are the lab's pods."""
    node = NodeInfo(
        name=lab.node_name,
        addresses=(ipaddress.IPv4Address("192.0.2.2"),),
        pod_cidrs=(ipaddress.IPv4Network("10.244.0.0/24"),),
    )
    services = dict(synthetic.services)
    endpoints = dict(synthetic.endpoints)
    for name, ip, pods in zip(STABLE, STABLE_IPS, STABLE_BACKENDS, strict=True):
        services[name] = ServicePort(
            name=name, protocol=Protocol.TCP, port=80, cluster_ips=(ipaddress.IPv4Address(ip),)
        )
        endpoints[name] = tuple(
            sorted(
                Endpoint(ip=ipaddress.IPv4Address(lab.pod_ips[p]), port=8080, node_name=node.name)
                for p in pods
            )
        )
    return ProxyState(
        services=services,
        endpoints=endpoints,
        node=node,
        config=ProxyConfig(cluster_cidrs=(ipaddress.IPv4Network("10.244.0.0/16"),)),
        family=IPFamily.IPV4,
    )


def moved_endpoints(state: ProxyState) -> ProxyState:
    """Every synthetic endpoint on another port: every endpoint chain is replaced."""
    return replace(
        state,
        endpoints={
            name: tuple(replace(e, port=9090) for e in eps) for name, eps in state.endpoints.items()
        },
    )


def test_no_connection_fails_while_full_syncs_replace_thousands_of_services(
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
    before = lab_state(lab, build_state(3000, 10))
    after = lab_state(lab, moved_endpoints(build_state(2700, 10)))
    first, second = render_iptables(before), render_iptables(after)
    applier = IptablesApplier(SubprocessIptables(backend="nft", netns=lab.node_ns))
    applier.apply(first, full=True)
    for ip, pods in zip(STABLE_IPS, STABLE_BACKENDS, strict=True):
        assert lab.tcp_request("client", ip, 80).split()[0] in pods

    done: list[object] = []

    def replace_twice() -> None:
        try:
            results = [applier.apply(second, full=True), applier.apply(first, full=True)]
            done.extend(results)
        except (IptablesError, AssertionError) as exc:  # reported below
            done.append(exc)

    worker = threading.Thread(target=replace_twice)
    worker.start()
    replies: list[tuple[int, str | None, str | None]] = []
    batches_during = 0
    try:
        for _ in range(500):  # bounded: the two syncs take seconds
            if not worker.is_alive():
                break
            for which, ip in enumerate(STABLE_IPS):
                for r in lab.many_tcp_requests("client", ip, 80, 10, timeout=2.0):
                    replies.append((which, r.reply, r.error))
            batches_during += 1
    finally:
        worker.join(timeout=300)
    assert not worker.is_alive()
    assert len(done) == 2 and all(not isinstance(d, Exception) for d in done), done
    assert all(getattr(d, "listed_first", False) for d in done)
    assert batches_during >= 5, "the syncs ended before traffic could overlap them"
    failed = [(w, e) for w, _, e in replies if e is not None]
    assert not failed, f"{len(failed)} of {len(replies)} connections failed: {failed[:5]}"
    wrong = [
        (w, reply)
        for w, reply, _ in replies
        if reply is None or reply.split()[0] not in STABLE_BACKENDS[w]
    ]
    assert not wrong, f"{len(wrong)} replies from a wrong backend: {wrong[:5]}"
    text = lab.iptables_save("nat")
    assert text.count("-A NETAGENT-SERVICES ") == len(first.tables["nat"]["NETAGENT-SERVICES"])
