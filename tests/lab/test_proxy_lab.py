"""netagent's service proxy end to end: real `netagent run` in the lab node, real traffic.

Why one suite for every proxy mode: a Service means the same thing whether
iptables or nftables carries it, so the semantic tests take the ``proxy_lab``
fixture and run once per mode (ids ``iptables`` and ``nftables``). They say
what traffic must do and read the kernel only through the lab's mode-aware
helpers (``programmed_text``, ``rules_mention_endpoint``), never through one
mode's rule syntax. A mode that gets a case wrong fails that case; nothing
is skipped per mode.

Semantic cases, each with traffic through the kernel of a fresh single-node
lab: ClusterIP load balancing over TCP and UDP (300 new connections, every
backend answers), NodePort and externalIPs from the outside client, ClientIP
session affinity and its expiry, externalTrafficPolicy Local (client IP kept,
local endpoints only) versus Cluster (masqueraded), internalTrafficPolicy
Local, loadBalancerSourceRanges, the fallback to serving terminating
endpoints, a Service without endpoints refused at once, hairpin, an endpoint
change picked up by the long-running agent without dropping an established
connection, and bad manifests logged by name and reason while the valid
Services keep working.

Mode-specific cases: iptables mode leaves foreign (Docker-style) chains
byte-for-byte alone; nftables mode leaves a kube-proxy-style iptables ruleset
and an unrelated nft table byte-for-byte alone through a one-shot sync, 100
syncs of a long-running agent and `netagent cleanup`, and writes no iptables
rule at all.
"""

from __future__ import annotations

import difflib
import re
import shlex
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import pytest
from netnslab import (
    BRIDGE_IP,
    CLIENT_IP,
    NODE_IP,
    OUTSIDE_IP,
    POD_IPS,
    AgentHandle,
    AgentRun,
    LabEndpoint,
    LabService,
    LabServicePort,
    SingleNodeLab,
)
from netnslab.patience import patience

pytestmark = pytest.mark.lab

PODS = ("pod-a", "pod-b", "pod-c")
HTTP = LabServicePort(name="http", port=80, protocol="TCP", target_port=8080)
DNS = LabServicePort(name="dns", port=53, protocol="UDP", target_port=5353)


def sync_once(
    lab: SingleNodeLab,
    services: Sequence[LabService],
    endpoints: Mapping[str, Sequence[str | LabEndpoint]],
    extra_files: Mapping[str, str] | None = None,
) -> AgentRun:
    """Write the manifests and run `netagent run --once`; it must exit 0."""
    lab.write_manifests(services=services, endpoints=endpoints, extra_files=extra_files)
    return lab.run_agent().check()


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``predicate`` every 100 ms; fail naming ``what`` after ``timeout`` seconds.

    The wait is for the agent to get somewhere, so it is stretched by the lab's
    patience (the TCG VM is several times slower than the host).
    """
    timeout = patience(timeout)
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def test_cluster_ip_balances_tcp_and_udp_over_every_backend(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    web = LabService(name="web", cluster_ip="10.96.0.10", ports=(HTTP, DNS))
    sync_once(lab, [web], {"web": list(PODS)})

    for proto, port, results in (
        ("tcp", 80, lab.many_tcp_requests("client", "10.96.0.10", 80, 300)),
        ("udp", 53, lab.many_udp_requests("client", "10.96.0.10", 53, 300)),
    ):
        failed = [r for r in results if not r.ok]
        assert not failed, f"{proto}/{port}: {len(failed)} failed, e.g. {failed[:3]}"
        counts = Counter(r.pod for r in results)
        assert set(counts) == set(PODS), counts
        assert min(counts.values()) >= 50, f"{proto}: uneven balancing {counts}"
        # From inside the cluster CIDR there is no masquerade: backends see the client.
        assert {r.peer_ip for r in results} == {CLIENT_IP}


def test_node_port_and_external_ip_from_the_outside_client(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    node_port = LabService(
        name="np",
        cluster_ip="10.96.0.20",
        type="NodePort",
        ports=(
            LabServicePort(name="http", port=80, target_port=8080, node_port=30080),
            LabServicePort(name="dns", port=53, protocol="UDP", target_port=5353, node_port=30053),
        ),
    )
    external = LabService(
        name="ext", cluster_ip="10.96.0.21", external_ips=("198.51.100.10",), ports=(HTTP,)
    )
    sync_once(lab, [node_port, external], {"np": list(PODS), "ext": ["pod-c"]})

    for results in (
        lab.many_tcp_requests("outside", NODE_IP, 30080, 60),
        lab.many_udp_requests("outside", NODE_IP, 30053, 60),
    ):
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
        assert len({r.pod for r in results}) >= 2, "NodePort traffic did not spread"
    reply = lab.tcp_request("outside", "198.51.100.10", 80)
    assert reply.split()[0] == "pod-c"


def test_session_affinity_pins_a_client_to_one_backend(proxy_lab: SingleNodeLab) -> None:
    lab = proxy_lab
    sticky = LabService(
        name="sticky",
        cluster_ip="10.96.0.30",
        ports=(HTTP,),
        session_affinity="ClientIP",
        affinity_timeout=300,
    )
    sync_once(lab, [sticky], {"sticky": list(PODS)})

    results = lab.many_tcp_requests("client", "10.96.0.30", 80, 30)
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    assert len({r.local for r in results}) == 30, "each request must be a new connection"
    pods = Counter(r.pod for r in results)
    assert len(pods) == 1, f"ClientIP affinity spread one client over {pods}"


def test_external_traffic_policy_local_keeps_the_client_ip_and_cluster_masquerades(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    other_node = "na-node-elsewhere"
    local = LabService(
        name="etp-local",
        cluster_ip="10.96.0.40",
        type="NodePort",
        external_traffic_policy="Local",
        ports=(LabServicePort(name="http", port=80, target_port=8080, node_port=30081),),
    )
    cluster = LabService(
        name="etp-cluster",
        cluster_ip="10.96.0.41",
        type="NodePort",
        external_traffic_policy="Cluster",
        ports=(LabServicePort(name="http", port=80, target_port=8080, node_port=30082),),
    )
    # pod-b is reachable on the bridge but claims another node: Local must skip it.
    backends: list[str | LabEndpoint] = ["pod-a", LabEndpoint("pod-b", node_name=other_node)]
    sync_once(lab, [local, cluster], {"etp-local": backends, "etp-cluster": ["pod-a"]})

    kept = lab.many_tcp_requests("outside", NODE_IP, 30081, 20)
    assert all(r.ok for r in kept), [r for r in kept if not r.ok][:3]
    assert {r.pod for r in kept} == {"pod-a"}, "Local policy used a non-local endpoint"
    assert {r.peer_ip for r in kept} == {OUTSIDE_IP}

    masq = lab.tcp_probe("outside", NODE_IP, 30082)
    assert masq.ok, masq
    assert masq.pod == "pod-a"
    assert masq.peer_ip == BRIDGE_IP, f"Cluster policy must masquerade, backend saw {masq.peer}"


def test_service_without_endpoints_is_refused_at_once(proxy_lab: SingleNodeLab) -> None:
    lab = proxy_lab
    empty = LabService(name="empty", cluster_ip="10.96.0.50", ports=(HTTP, DNS))
    sync_once(lab, [empty], {"empty": []})

    for result in (
        lab.tcp_probe("client", "10.96.0.50", 80, timeout=3.0),
        lab.udp_probe("client", "10.96.0.50", 53, timeout=3.0),
    ):
        assert result.error == "refused", result
        assert result.elapsed < 0.5, f"refusal took {result.elapsed:.3f}s"


def test_hairpin_pod_reaches_itself_through_its_service(proxy_lab: SingleNodeLab) -> None:
    lab = proxy_lab
    self_svc = LabService(name="self", cluster_ip="10.96.0.60", ports=(HTTP, DNS))
    sync_once(lab, [self_svc], {"self": ["pod-a"]})

    for result in (
        lab.tcp_probe("pod-a", "10.96.0.60", 80),
        lab.udp_probe("pod-a", "10.96.0.60", 53),
    ):
        assert result.ok, result
        assert result.pod == "pod-a"
        # Hairpin traffic is masqueraded, else pod-a would answer itself directly.
        assert result.peer_ip == BRIDGE_IP


def test_endpoint_change_is_applied_without_dropping_an_established_connection(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    web = LabService(name="web", cluster_ip="10.96.0.70", ports=(HTTP,))
    pod_b = POD_IPS["pod-b"]
    lab.write_manifests(services=[web], endpoints={"web": list(PODS)})
    agent = lab.start_agent()
    wait_until("pod-b's endpoint rule", lambda: lab.rules_mention_endpoint(pod_b, 8080))

    # Open connections until one lands on pod-a; keep that one, close the others.
    session = None
    for _ in range(40):
        candidate = lab.open_tcp_session("client", "10.96.0.70", 80)
        if candidate.request("first").startswith("pod-a "):
            session = candidate
            break
        candidate.close()
    assert session is not None, "no connection reached pod-a in 40 tries"

    lab.write_manifests(services=[web], endpoints={"web": ["pod-a", "pod-c"]})
    wait_until("pod-b's endpoint rule to go", lambda: not lab.rules_mention_endpoint(pod_b, 8080))

    assert session.request("second").startswith("pod-a "), "established connection was dropped"
    after = lab.many_tcp_requests("client", "10.96.0.70", 80, 30)
    assert all(r.ok for r in after), [r for r in after if not r.ok][:3]
    assert "pod-b" not in {r.pod for r in after}
    assert agent.running(), agent.log_text()
    assert agent.stop() == 0, agent.log_text()


#: A load balancer address; the outside client routes all of 198.51.100.0/24 to the node.
LB_IP = "198.51.100.20"


def test_load_balancer_source_ranges_admit_only_the_listed_clients(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab

    def lb(ranges: tuple[str, ...]) -> LabService:
        return LabService(
            name="lb",
            cluster_ip="10.96.0.100",
            type="LoadBalancer",
            ports=(LabServicePort(name="http", port=80, target_port=8080, node_port=30090),),
            load_balancer_ips=(LB_IP,),
            source_ranges=ranges,
        )

    sync_once(lab, [lb(("203.0.113.0/24", f"{OUTSIDE_IP}/32"))], {"lb": list(PODS)})
    admitted = lab.many_tcp_requests("outside", LB_IP, 80, 20)
    assert all(r.ok for r in admitted), [r for r in admitted if not r.ok][:3]
    assert {r.pod for r in admitted} <= set(PODS)

    # 192.0.2.128/25 is the upper half of the outside client's /24: a near miss.
    sync_once(lab, [lb(("203.0.113.0/24", "192.0.2.128/25"))], {"lb": list(PODS)})
    refused = lab.many_tcp_requests("outside", LB_IP, 80, 3, timeout=1.5)
    assert not any(r.ok for r in refused), f"a client outside every range got in: {refused}"
    # The ranges guard the load balancer address only, not the ClusterIP.
    inside = lab.tcp_probe("client", "10.96.0.100", 80)
    assert inside.ok, inside


def test_session_affinity_expires_after_its_timeout(proxy_lab: SingleNodeLab) -> None:
    lab = proxy_lab
    brief = LabService(
        name="brief",
        cluster_ip="10.96.0.110",
        ports=(HTTP,),
        session_affinity="ClientIP",
        affinity_timeout=2,
    )
    sync_once(lab, [brief], {"brief": list(PODS)})

    burst = lab.many_tcp_requests("client", "10.96.0.110", 80, 20)
    assert all(r.ok for r in burst), [r for r in burst if not r.ok][:3]
    pinned = Counter(r.pod for r in burst)
    assert len(pinned) == 1, f"ClientIP affinity spread one client over {pinned}"
    (pod,) = pinned
    time.sleep(1.0)  # still inside the 2 s window
    again = lab.tcp_probe("client", "10.96.0.110", 80)
    assert again.ok, again
    assert again.pod == pod, f"affinity ended after 1 s of a 2 s timeout: {again.pod} != {pod}"

    # Once the window has passed, the choice is free again: some later request,
    # each after a silence longer than the timeout, lands on another pod.
    seen: list[str] = []
    for _ in range(15):
        time.sleep(3.0)
        result = lab.tcp_probe("client", "10.96.0.110", 80)
        assert result.ok, result
        seen.append(result.pod)
        if result.pod != pod:
            break
    assert any(p != pod for p in seen), f"still pinned to {pod} after {len(seen)} expiries"


def _serving_terminating(pod: str) -> LabEndpoint:
    return LabEndpoint(pod, ready=False, serving=True, terminating=True)


def _not_serving_terminating(pod: str) -> LabEndpoint:
    return LabEndpoint(pod, ready=False, serving=False, terminating=True)


def test_terminating_endpoints_serve_only_as_a_fallback(proxy_lab: SingleNodeLab) -> None:
    lab = proxy_lab
    only_terminating = LabService(name="term-all", cluster_ip="10.96.0.120", ports=(HTTP,))
    mixed = LabService(name="term-mixed", cluster_ip="10.96.0.121", ports=(HTTP,))
    ready_first = LabService(name="term-ready", cluster_ip="10.96.0.122", ports=(HTTP,))
    sync_once(
        lab,
        [only_terminating, mixed, ready_first],
        {
            # No ready endpoint: the serving terminating ones carry the traffic.
            "term-all": [_serving_terminating("pod-a"), _serving_terminating("pod-b")],
            # A terminating endpoint that no longer serves is never used.
            "term-mixed": [_serving_terminating("pod-a"), _not_serving_terminating("pod-c")],
            # A ready endpoint wins over a serving terminating one.
            "term-ready": ["pod-b", _serving_terminating("pod-a")],
        },
    )

    for ip, count, expected in (
        ("10.96.0.120", 60, {"pod-a", "pod-b"}),
        ("10.96.0.121", 30, {"pod-a"}),
        ("10.96.0.122", 30, {"pod-b"}),
    ):
        results = lab.many_tcp_requests("client", ip, 80, count)
        assert all(r.ok for r in results), (ip, [r for r in results if not r.ok][:3])
        pods = Counter(r.pod for r in results)
        assert set(pods) == expected, f"{ip}: reached {dict(pods)}, expected {sorted(expected)}"


def test_internal_traffic_policy_local_uses_only_this_nodes_endpoints(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    elsewhere = "na-node-elsewhere"
    local = LabService(
        name="itp-mixed", cluster_ip="10.96.0.130", ports=(HTTP,), internal_traffic_policy="Local"
    )
    remote = LabService(
        name="itp-remote", cluster_ip="10.96.0.131", ports=(HTTP,), internal_traffic_policy="Local"
    )
    # pod-c answers on the bridge like the others but claims another node.
    sync_once(
        lab,
        [local, remote],
        {
            "itp-mixed": ["pod-a", "pod-b", LabEndpoint("pod-c", node_name=elsewhere)],
            "itp-remote": [LabEndpoint(pod, node_name=elsewhere) for pod in PODS],
        },
    )

    results = lab.many_tcp_requests("client", "10.96.0.130", 80, 60)
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    pods = Counter(r.pod for r in results)
    assert set(pods) == {"pod-a", "pod-b"}, f"Local policy reached {dict(pods)}"

    # Endpoints exist, but none on this node: the traffic is dropped.
    dropped = lab.many_tcp_requests("client", "10.96.0.131", 80, 3, timeout=1.5)
    assert not any(r.ok for r in dropped), f"non-local endpoints were used: {dropped}"


_COUNTERS = re.compile(r"\[\d+:\d+\]")

#: What Docker puts on a node, created with plain `iptables` before netagent runs.
DOCKER_RULES = (
    "-t nat -N DOCKER",
    "-t nat -A DOCKER -i docker0 -j RETURN",
    "-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
    "-t nat -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
    "-t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
    "-t filter -N DOCKER",
    "-t filter -N DOCKER-USER",
    "-t filter -A DOCKER-USER -j RETURN",
    "-t filter -A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp --dport 80 -j ACCEPT",
    "-t filter -A FORWARD -j DOCKER-USER",
    "-t filter -A FORWARD -o docker0 -j DOCKER",
)


def foreign_rules(save: str, *, tables: Sequence[str] = ("nat", "filter")) -> str:
    """iptables-save text of ``tables`` without netagent's lines, comments and counters."""
    out: list[str] = []
    current = ""
    for line in save.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("*"):
            current = line[1:]
        if current not in tables or "NETAGENT-" in line:
            continue
        out.append(_COUNTERS.sub("[0:0]", line))
    return "\n".join(out)


def test_foreign_chains_are_left_byte_for_byte(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    for rule in DOCKER_RULES:
        lab.ns_exec("node", ["iptables", *rule.split()])
    before = foreign_rules(lab.iptables_save())
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER" in before

    web = LabService(name="web", cluster_ip="10.96.0.80", ports=(HTTP,), type="NodePort")
    empty = LabService(name="empty", cluster_ip="10.96.0.81", ports=(HTTP,))
    sync_once(lab, [web, empty], {"web": list(PODS), "empty": []})
    synced = lab.iptables_save()
    assert "NETAGENT-" in synced, "the agent wrote nothing into the nft backend"
    assert foreign_rules(synced) == before
    assert lab.tcp_request("client", "10.96.0.80", 80).split()[0] in PODS

    sync_once(lab, [web], {"web": ["pod-a"]})
    assert foreign_rules(lab.iptables_save()) == before

    lab.netagent(["cleanup"]).check()
    cleaned = lab.iptables_save()
    assert "NETAGENT" not in cleaned, "cleanup left netagent rules behind"
    assert foreign_rules(cleaned) == before


#: What kube-proxy (iptables mode) leaves on a node, made with plain `iptables` (iptables-nft
#: on Debian 12) before netagent runs.
KUBE_PROXY_RULES = (
    "-t nat -N KUBE-SERVICES",
    "-t nat -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment"
    " --comment 'default/kubernetes:https cluster IP' -m tcp --dport 443 -j RETURN",
    "-t nat -A PREROUTING -m comment --comment 'kubernetes service portals' -j KUBE-SERVICES",
    "-t nat -A OUTPUT -m comment --comment 'kubernetes service portals' -j KUBE-SERVICES",
    "-t filter -N KUBE-FORWARD",
    "-t filter -A KUBE-FORWARD -m comment --comment 'kubernetes forwarding rules'"
    " -m mark --mark 0x4000/0x4000 -j ACCEPT",
    "-t filter -A FORWARD -m comment --comment 'kubernetes forwarding rules' -j KUBE-FORWARD",
)

#: An nft table of some other program, loaded with `nft -f` before netagent.
FOREIGN_NFT_TABLE = """\
table inet foreign {
    set s { type ipv4_addr; elements = { 192.0.2.1 } }
    chain c {
        type filter hook input priority 0; policy accept;
        ip saddr @s counter accept
    }
}
"""

_NFT_COUNTERS = re.compile(r"counter packets \d+ bytes \d+")
_NFT_HANDLES = re.compile(r"\s*# handle \d+")
_NETAGENT_TABLE = re.compile(r"^table (ip|ip6|inet) netagent$")

#: A long-running agent that syncs as often as it can: the manifest watcher polls every
#: 0.5 s, so rewrites alone give about two syncs a second; a 250 ms sync period adds
#: periodic (full) syncs between them. (minSyncPeriod must be positive: 0s is refused.)
FAST_SYNC = ("--min-sync-period", "10ms", "--sync-period", "250ms")
STRESS_SYNCS = 100
STRESS_SECONDS = 45.0


def _iptables_state(save: str) -> str:
    """iptables-save text without its comment lines and with zeroed counters."""
    lines = [line for line in save.splitlines() if not line.startswith("#")]
    return "\n".join(_COUNTERS.sub("[0:0]", line) for line in lines)


def foreign_state(lab: SingleNodeLab) -> dict[str, str]:
    """Everything on the node that is not netagent's, normalised for comparison."""
    legacy = lab.ns_exec("node", ["iptables-legacy-save"], check=False).stdout
    table = lab.ns_exec("node", ["nft", "list", "table", "inet", "foreign"]).stdout
    tables = lab.ns_exec("node", ["nft", "list", "tables"]).stdout.splitlines()
    return {
        "iptables-nft-save": _iptables_state(lab.ns_exec("node", ["iptables-nft-save"]).stdout),
        "iptables-legacy-save": _iptables_state(legacy),
        "nft list table inet foreign": _NFT_HANDLES.sub("", _NFT_COUNTERS.sub("counter", table)),
        "nft list tables (but netagent's)": "\n".join(
            t for t in tables if not _NETAGENT_TABLE.match(t.strip())
        ),
    }


def assert_unchanged(before: dict[str, str], after: dict[str, str], stage: str) -> None:
    """Fail with a unified diff of each foreign state that changed."""
    diffs = [
        "\n".join(difflib.unified_diff(before[k].splitlines(), after[k].splitlines(), k, k, n=2))
        for k in before
        if before[k] != after[k]
    ]
    assert not diffs, f"{stage} changed foreign state:\n" + "\n".join(diffs)


def assert_no_iptables_rules(lab: SingleNodeLab, stage: str) -> None:
    """nftables mode writes no iptables rule, in either backend."""
    lines = [line for line in lab.iptables_save_all_backends().splitlines() if "NETAGENT" in line]
    assert not lines, f"{stage}: nftables mode wrote iptables rules:\n" + "\n".join(lines)


def _synced_ipv4(agent: AgentHandle) -> int:
    return sum("synced IPv4" in line for line in agent.log_text().splitlines())


def test_nftables_mode_leaves_kube_proxy_rules_and_foreign_tables_byte_for_byte(
    nftables_lab: SingleNodeLab,
) -> None:
    lab = nftables_lab
    for rule in KUBE_PROXY_RULES:
        lab.ns_exec("node", ["iptables", *shlex.split(rule)])
    lab.ns_exec("node", ["nft", "-f", "-"], input=FOREIGN_NFT_TABLE)
    before = foreign_state(lab)
    assert "-A PREROUTING -m comment --comment" in before["iptables-nft-save"]
    assert "ip saddr @s counter accept" in before["nft list table inet foreign"]

    # Stage 1: one sync.
    web = LabService(name="web", cluster_ip="10.96.0.80", ports=(HTTP,), type="NodePort")
    empty = LabService(name="empty", cluster_ip="10.96.0.81", ports=(HTTP,))
    sync_once(lab, [web, empty], {"web": list(PODS), "empty": []})
    own = lab.ns_exec("node", ["nft", "list", "table", "ip", "netagent"], check=False)
    assert own.returncode == 0, f"no table ip netagent after a sync: {own.stderr}"
    assert lab.tcp_request("client", "10.96.0.80", 80).split()[0] in PODS
    assert_no_iptables_rules(lab, "one sync")
    assert_unchanged(before, foreign_state(lab), "one sync")

    # Stage 2: a long-running agent through many syncs, driven by manifest rewrites.
    other = LabService(name="other", cluster_ip="10.96.0.82", ports=(HTTP, DNS))
    variants: list[tuple[list[LabService], dict[str, list[str | LabEndpoint]]]] = [
        ([web], {"web": list(PODS)}),
        ([web, other], {"web": ["pod-a"], "other": ["pod-b", "pod-c"]}),
        ([web, empty], {"web": ["pod-b", "pod-c"], "empty": []}),
        ([web, other], {"web": [], "other": ["pod-a"]}),
    ]
    agent = lab.start_agent(extra=FAST_SYNC)
    agent.wait_for_log("synced IPv4", timeout=15.0)
    end = time.monotonic() + STRESS_SECONDS
    rewrites = 0
    while _synced_ipv4(agent) < STRESS_SYNCS and time.monotonic() < end and agent.running():
        services, endpoints = variants[rewrites % len(variants)]
        lab.write_manifests(services=services, endpoints=endpoints)
        rewrites += 1
        time.sleep(0.3)
    syncs = _synced_ipv4(agent)
    assert syncs >= STRESS_SYNCS, (
        f"{syncs} syncs in {STRESS_SECONDS}s ({rewrites} rewrites)\n{agent.log_text()[-3000:]}"
    )
    # The agent followed the rewrites: a last change shows up in the rules and in traffic.
    lab.write_manifests(services=[web], endpoints={"web": ["pod-b"]})
    wait_until(
        "only pod-b behind web",
        lambda: (
            lab.rules_mention_endpoint(POD_IPS["pod-b"], 8080)
            and not lab.rules_mention_endpoint(POD_IPS["pod-a"], 8080)
            and not lab.rules_mention_endpoint(POD_IPS["pod-c"], 8080)
        ),
    )
    assert {r.pod for r in lab.many_tcp_requests("client", "10.96.0.80", 80, 10)} == {"pod-b"}
    assert agent.running(), agent.log_text()[-3000:]
    assert agent.stop() == 0, agent.log_text()[-3000:]
    assert "sync failed" not in agent.log_text(), agent.log_text()[-3000:]
    assert_no_iptables_rules(lab, f"{syncs} syncs")
    assert_unchanged(before, foreign_state(lab), f"{syncs} syncs")

    # Stage 3: cleanup removes netagent's tables and nothing else.
    lab.netagent(["cleanup"]).check()
    tables = lab.ns_exec("node", ["nft", "list", "tables"]).stdout
    assert not re.search(r"\bnetagent\b", tables), f"cleanup left netagent's table:\n{tables}"
    assert_unchanged(before, foreign_state(lab), "cleanup")


def _logged(log: str, *needles: str) -> bool:
    """True when one WARNING/ERROR line holds every needle (case-insensitive)."""
    for line in log.splitlines():
        low = line.lower()
        if ("warning" in low or "error" in low) and all(n.lower() in low for n in needles):
            return True
    return False


def test_bad_manifests_are_logged_by_name_and_reason_and_the_rest_works(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    good = LabService(name="good", cluster_ip="10.96.0.90", ports=(HTTP,))
    bad = [
        LabService(
            name="bad-port",
            cluster_ip="10.96.0.91",
            ports=(LabServicePort(name="http", port=70000),),
        ),
        LabService(
            name="bad-proto",
            cluster_ip="10.96.0.92",
            ports=(LabServicePort(port=80, protocol="HTTP"),),
        ),
        LabService(name="bad-ip", cluster_ip="10.96.0.300", ports=(HTTP,)),
        LabService(
            name="dup-ports",
            cluster_ip="10.96.0.94",
            ports=(
                LabServicePort(name="http", port=80),
                LabServicePort(name="http", port=81, target_port=5353),
            ),
        ),
        LabService(name='bad"quote', cluster_ip="10.96.0.95", ports=(HTTP,)),
    ]
    broken = "apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n"
    run = sync_once(
        lab,
        [good, *bad],
        {"good": ["pod-a", "pod-b"], **{svc.name: ["pod-c"] for svc in bad}},
        extra_files={"lab-broken.yaml": broken},
    )
    log = run.log
    assert run.returncode == 0
    expected = {
        "port out of range": ("default/bad-port", "70000"),
        "unknown protocol": ("default/bad-proto", "HTTP"),
        "bad clusterIP": ("default/bad-ip", "10.96.0.300"),
        "duplicate port names": ("default/dup-ports", "duplicate"),
        "unparseable YAML": ("lab-broken.yaml",),
    }
    missing = [why for why, needles in expected.items() if not _logged(log, *needles)]
    # The name may be printed raw or escaped (JSON-style), but it must be there.
    quoted = _logged(log, "default/", 'bad"quote') or _logged(log, "default/", 'bad\\"quote')
    if not quoted:
        missing.append("quote in the name")
    assert not missing, f"no clear log line for: {', '.join(missing)}\n--- log ---\n{log}"

    results = lab.many_tcp_requests("client", "10.96.0.90", 80, 20)
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    assert {r.pod for r in results} <= {"pod-a", "pod-b"}
    # The invalid Services must not have been programmed; the valid one was.
    rules = lab.programmed_text()
    assert lab.rules_mention_address("10.96.0.90", rules), rules
    for ip in ("10.96.0.91", "10.96.0.92", "10.96.0.94", "10.96.0.95"):
        assert not lab.rules_mention_address(ip, rules), f"invalid service {ip} was programmed"
