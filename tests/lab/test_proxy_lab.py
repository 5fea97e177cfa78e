"""netagent's service proxy end to end: real `netagent run` in the lab node, real traffic.

Covers, each with traffic through the kernel of a fresh single-node lab:
ClusterIP load balancing over TCP and UDP (300 new connections, every backend
answers), NodePort and externalIPs from the outside client, ClientIP session
affinity, externalTrafficPolicy Local (client IP kept, local endpoints only)
versus Cluster (masqueraded), a Service without endpoints refused at once,
hairpin, an endpoint change picked up by the long-running agent without
dropping an established connection, foreign (Docker-style) chains left
byte-for-byte alone by syncs and by `netagent cleanup`, and bad manifests
logged by name and reason while the valid Services keep working.
"""

from __future__ import annotations

import re
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
    AgentRun,
    LabEndpoint,
    LabService,
    LabServicePort,
    SingleNodeLab,
)

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
    """Poll ``predicate`` every 100 ms; fail naming ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def node_rules(lab: SingleNodeLab) -> str:
    """The node's rules from both iptables backends (whichever the agent detected)."""
    legacy = lab.ns_exec("node", ["iptables-legacy-save"], check=False).stdout
    return lab.iptables_save() + legacy


def test_cluster_ip_balances_tcp_and_udp_over_every_backend(
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
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
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
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


def test_session_affinity_pins_a_client_to_one_backend(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
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
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
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


def test_service_without_endpoints_is_refused_at_once(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
    empty = LabService(name="empty", cluster_ip="10.96.0.50", ports=(HTTP, DNS))
    sync_once(lab, [empty], {"empty": []})

    for result in (
        lab.tcp_probe("client", "10.96.0.50", 80, timeout=3.0),
        lab.udp_probe("client", "10.96.0.50", 53, timeout=3.0),
    ):
        assert result.error == "refused", result
        assert result.elapsed < 0.5, f"refusal took {result.elapsed:.3f}s"


def test_hairpin_pod_reaches_itself_through_its_service(single_node_lab: SingleNodeLab) -> None:
    lab = single_node_lab
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
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
    web = LabService(name="web", cluster_ip="10.96.0.70", ports=(HTTP,))
    pod_b = f"{POD_IPS['pod-b']}:8080"
    lab.write_manifests(services=[web], endpoints={"web": list(PODS)})
    agent = lab.start_agent()
    wait_until("pod-b's DNAT rule", lambda: pod_b in node_rules(lab))

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
    wait_until("pod-b's DNAT rule to go", lambda: pod_b not in node_rules(lab))

    assert session.request("second").startswith("pod-a "), "established connection was dropped"
    after = lab.many_tcp_requests("client", "10.96.0.70", 80, 30)
    assert all(r.ok for r in after), [r for r in after if not r.ok][:3]
    assert "pod-b" not in {r.pod for r in after}
    assert agent.running(), agent.log_text()
    assert agent.stop() == 0, agent.log_text()


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


def _logged(log: str, *needles: str) -> bool:
    """True when one WARNING/ERROR line holds every needle (case-insensitive)."""
    for line in log.splitlines():
        low = line.lower()
        if ("warning" in low or "error" in low) and all(n.lower() in low for n in needles):
            return True
    return False


def test_bad_manifests_are_logged_by_name_and_reason_and_the_rest_works(
    single_node_lab: SingleNodeLab,
) -> None:
    lab = single_node_lab
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
    # The invalid Services must not have been programmed.
    rules = node_rules(lab)
    for ip in ("10.96.0.91", "10.96.0.92", "10.96.0.94", "10.96.0.95"):
        assert f"-d {ip}/32" not in rules, f"invalid service {ip} was programmed"
