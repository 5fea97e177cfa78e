"""The overlay on the three-node lab: real agents, real kernel, real traffic between pods.

Every claim of the overlay issue is checked here against the kernel and the
wire, never against a fake: pod-to-pod ICMP/TCP/UDP across nodes in VXLAN
and host-gw mode, pod-to-node and node-to-pod, what the underlay carries
(a scapy capture: UDP/8472, VNI 1, the pods' own addresses inside; nothing
encapsulated in host-gw mode), masquerade to the outside but never between
pods, the MTU edge (a don't-fragment packet that exactly fills the pod MTU
crosses; one byte more is answered with ICMP fragmentation-needed), drift
repair of hand-deleted entries and of the VXLAN device, restarts that keep
the subnet and the VTEP MAC, node removal, concurrent subnet claims by six
agents, a Service whose endpoints are on another node, and foreign routes
and links that stay untouched through sync and ``netagent cleanup``.

The cross-node Service and the masquerade tests run in both proxy modes: in
``--proxy-mode nftables`` the overlay's masquerade and forward rules live in
netagent's ``ip netagent`` table, and no node holds a single ``NETAGENT``
line in any iptables backend (nft or legacy, IPv4 or IPv6).

The VXLAN and host-gw clusters are built once per module (read-mostly tests
share them; the drift tests restore what they break and wait for it).
Destructive scenarios get their own cluster.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netnslab.agent_process import run_netagent
from netnslab.capture import Capture
from netnslab.cluster import CLUSTER_CIDR, OUTSIDE_IP, ClusterLab, read_subnet_env

pytestmark = pytest.mark.lab

SYNC_PERIOD = 3.0
AGENT_ARGS = ["--min-sync-period", "0.2s", "--sync-period", f"{SYNC_PERIOD:g}s"]
PREFIX = "flannel.alpha.coreos.com"
ECHO_TCP = 8080
ECHO_UDP = 5353
PROXY_MODES = ("iptables", "nftables")


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ClusterLab]]:
    """``clusters("vxlan")``: the module's cluster of that overlay, built on first use.

    Extra agent flags make a different cluster: ``clusters("vxlan", "--direct-routing")``.
    """
    built: dict[tuple[str, ...], ClusterLab] = {}

    def get(overlay: str, *extra: str) -> ClusterLab:
        key = (overlay, *extra)
        if key not in built:
            lab = ClusterLab(
                overlay=overlay,
                workdir=tmp_path_factory.mktemp(f"overlay-{overlay}"),
                keep_workdir=True,
                agent_args=[*AGENT_ARGS, *extra],
            )
            built[key] = lab
            lab.up()
        return built[key]

    try:
        yield get
    finally:
        for lab in built.values():
            lab.down()


# ---- helpers --------------------------------------------------------------------------------


def mode_cluster(
    clusters: Callable[..., ClusterLab], overlay: str, proxy_mode: str, *extra: str
) -> ClusterLab:
    """The module's cluster of ``overlay`` whose agents run in ``proxy_mode``."""
    if proxy_mode == "iptables":
        return clusters(overlay, *extra)  # the default mode: the same cluster as other tests
    return clusters(overlay, "--proxy-mode", proxy_mode, *extra)


def wait_for_service_rules(
    lab: ClusterLab, node: str, proxy_mode: str, ip: str, port: int, endpoints: int
) -> None:
    """Wait until ``node`` sends the cluster IP ``ip:port`` (TCP) to its ``endpoints``."""
    if proxy_mode == "nftables":
        # The verdict into the balancing chain of that many endpoints (a Service still
        # without endpoints has only its ``no-endpoint-services`` element instead).
        lab.wait_for_nft(node, f"{ip} . tcp . {port} : goto cluster-tcp-{endpoints}")
    else:
        lab.wait_for_rules(node, f"{ip}/32")


def assert_nftables_only(lab: ClusterLab) -> None:
    """On every node: no iptables rule of netagent's in any backend; the overlay in nft."""
    for node in lab.nodes:
        for tool, text in lab.iptables_save_backends(node).items():
            lines = [line for line in text.splitlines() if "NETAGENT" in line]
            assert not lines, f"{tool} on {node} in nftables mode: {lines}"
        listing = lab.nft_list(node, "ip")
        assert listing is not None, f"no table ip netagent on {node}"
        assert "\tchain overlay-postrouting {" in listing, listing
        assert "\tchain overlay-forward {" in listing, listing
        assert "jump overlay-postrouting" in listing and "jump overlay-forward" in listing
        assert f"ip saddr {CLUSTER_CIDR} ip daddr != 224.0.0.0/4 masquerade fully-random" in (
            listing
        )
        assert f"ip saddr {CLUSTER_CIDR} accept" in listing


def ip_json(lab: ClusterLab, where: str, *args: str) -> Any:
    return json.loads(lab.ns_exec(where, ["ip", "-j", "-d", *args]).stdout or "[]")


def ping(
    lab: ClusterLab, from_: str, ip: str, *, size: int | None = None, df: bool = False
) -> tuple[bool, str]:
    argv = ["ping", "-n", "-c", "1", "-W", "2"]
    if df:
        argv += ["-M", "do"]
    if size is not None:
        argv += ["-s", str(size)]
    proc = lab.ns_exec(from_, [*argv, ip], check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr


def reply(lab: ClusterLab, proto: str, from_: str, ip: str, port: int) -> tuple[str, str]:
    """(who answered, which source address it saw)."""
    name, peer = lab.request(proto, from_, ip, port).split()
    return name, peer.rsplit(":", 1)[0]


def owned_routes(lab: ClusterLab, node: str) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in ip_json(lab, node, "route", "show", "proto", "78")}


def fdb(lab: ClusterLab, node: str) -> set[tuple[str, str]]:
    entries = json.loads(
        lab.ns_exec(node, ["bridge", "-j", "fdb", "show", "dev", "flannel.1"]).stdout or "[]"
    )
    return {(e["mac"], e["dst"]) for e in entries if "dst" in e and "permanent" in e["state"]}


def neighbours(lab: ClusterLab, node: str) -> set[tuple[str, str]]:
    entries = ip_json(lab, node, "neigh", "show", "dev", "flannel.1")
    return {(n["dst"], n["lladdr"]) for n in entries if "PERMANENT" in n.get("state", [])}


def node_object(lab: ClusterLab, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = lab.api.get(f"/api/v1/nodes/{name}")
    return obj


def vtep_mac(lab: ClusterLab, name: str) -> str:
    data = json.loads(node_object(lab, name)["metadata"]["annotations"][f"{PREFIX}/backend-data"])
    return str(data["VtepMAC"])


def tx_checksum(lab: ClusterLab, node: str) -> str:
    """``on`` or ``off``: tx-checksum-ip-generic of flannel.1, as ``ethtool -k`` reports it."""
    out = lab.ns_exec(node, ["ethtool", "-k", "flannel.1"]).stdout
    (value,) = re.findall(r"^\s*tx-checksum-ip-generic: (on|off)", out, re.M)
    return value


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check``; the seconds it took. Fails with ``what`` on timeout."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what} within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - start


def expected_vxlan_entries(
    lab: ClusterLab, node: str, gone: tuple[str, ...] = ()
) -> tuple[dict[str, str], set[Any], set[Any]]:
    """The routes, FDB and neighbour entries ``node`` must hold for its peers."""
    routes, fdbs, neighs = {}, set(), set()
    for peer in lab.nodes.values():
        if peer.name == node or peer.name in gone:
            continue
        gateway = str(ipaddress.ip_network(peer.pod_cidr).network_address)
        routes[peer.pod_cidr] = gateway
        fdbs.add((vtep_mac(lab, peer.name), peer.ip))
        neighs.add((gateway, vtep_mac(lab, peer.name)))
    return routes, fdbs, neighs


def vxlan_entries_match(lab: ClusterLab, node: str, gone: tuple[str, ...] = ()) -> bool:
    routes, fdbs, neighs = expected_vxlan_entries(lab, node, gone)
    have = owned_routes(lab, node)
    return (
        {d: r.get("gateway") for d, r in have.items()} == routes
        and fdb(lab, node) == fdbs
        and neighbours(lab, node) == neighs
    )


# ---- VXLAN: plumbing as flannel users know it -------------------------------------------------


def test_vxlan_node_plumbing_matches_flannel(clusters: Callable[..., ClusterLab]) -> None:
    lab = clusters("vxlan")
    subnets = {n.name: ipaddress.ip_network(n.pod_cidr) for n in lab.nodes.values()}
    assert len(set(subnets.values())) == 3
    for net in subnets.values():
        assert net.subnet_of(ipaddress.ip_network(CLUSTER_CIDR)) and net.prefixlen == 24
    n1 = lab.node("node-1")
    # The Node object: claimed pod CIDR, flannel's annotations.
    obj = node_object(lab, "node-1")
    assert obj["spec"]["podCIDR"] == n1.pod_cidr
    annotations = obj["metadata"]["annotations"]
    assert annotations[f"{PREFIX}/backend-type"] == "vxlan"
    assert annotations[f"{PREFIX}/public-ip"] == n1.ip
    data = json.loads(annotations[f"{PREFIX}/backend-data"])
    assert data["VNI"] == 1 and re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", data["VtepMAC"])
    # flannel.1: VNI 1, port 8472, learning off, local = public IP, on eth0, MTU 1500 - 50.
    (link,) = ip_json(lab, "node-1", "link", "show", "flannel.1")
    info = link["linkinfo"]["info_data"]
    assert info["id"] == 1 and info["port"] == 8472 and info["learning"] is False
    assert info["local"] == n1.ip and info["link"] == "eth0"
    assert link["mtu"] == 1450 and link["address"] == data["VtepMAC"]
    assert link["ifalias"] == "netagent"
    # Transmit checksum offload stays on: this kernel has the 5.7 fix (vxlanTxChecksum auto).
    assert tx_checksum(lab, "node-1") == "on"
    net = subnets["node-1"]
    addrs = ip_json(lab, "node-1", "addr", "show", "flannel.1")[0]["addr_info"]
    v4 = [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"]
    assert v4 == [(str(net.network_address), 32)]
    # cbr0 holds the first IP of the pod CIDR.
    cbr0 = ip_json(lab, "node-1", "addr", "show", "cbr0")[0]
    assert (str(net.network_address + 1), 24) in {
        (a["local"], a["prefixlen"]) for a in cbr0["addr_info"] if a["family"] == "inet"
    }
    # Per peer: route via .0 onlink on flannel.1 (proto 78), FDB and a permanent neighbour.
    routes = owned_routes(lab, "node-1")
    for peer in ("node-2", "node-3"):
        cidr = lab.node(peer).pod_cidr
        gateway = str(ipaddress.ip_network(cidr).network_address)
        assert routes[cidr]["gateway"] == gateway and routes[cidr]["dev"] == "flannel.1"
        assert "onlink" in routes[cidr]["flags"]
    assert vxlan_entries_match(lab, "node-1")
    # CNI hand-off: subnet.env and the conflist.
    env = read_subnet_env(n1.subnet_file)
    assert env == {
        "FLANNEL_NETWORK": CLUSTER_CIDR,
        "FLANNEL_SUBNET": f"{net.network_address + 1}/24",
        "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "true",
    }
    conf = json.loads(n1.cni_file.read_text())
    bridge = next(p for p in conf["plugins"] if p["type"] == "bridge")
    assert bridge["bridge"] == "cbr0" and bridge["hairpinMode"] is True
    assert bridge["mtu"] == 1450 and bridge["ipam"]["type"] == "host-local"
    assert bridge["ipam"]["ranges"][0][0]["subnet"] == n1.pod_cidr
    assert lab.ns_exec("node-1", ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


@pytest.mark.parametrize("overlay", ["vxlan", "host-gw"])
def test_pod_to_pod_across_nodes(clusters: Callable[..., ClusterLab], overlay: str) -> None:
    lab = clusters(overlay)
    client = lab.pods["client-1"]
    for target in ("echo-2a", "echo-3b", "echo-1a"):
        ip = lab.pods[target].ip
        ok, out = ping(lab, "client-1", ip)
        assert ok, f"ICMP client-1 -> {target} ({ip}): {out}"
        for proto, port in (("tcp", ECHO_TCP), ("udp", ECHO_UDP)):
            # The answer comes from that pod, which saw the client's own pod IP.
            assert reply(lab, proto, "client-1", ip, port) == (target, client.ip)
    # And between two remote nodes, in the other direction.
    assert reply(lab, "tcp", "echo-3a", lab.pods["echo-2b"].ip, ECHO_TCP) == (
        "echo-2b",
        lab.pods["echo-3a"].ip,
    )


@pytest.mark.parametrize("overlay", ["vxlan", "host-gw"])
def test_pod_to_node_and_node_to_pod(clusters: Callable[..., ClusterLab], overlay: str) -> None:
    lab = clusters(overlay)
    for node in lab.nodes.values():
        ok, out = ping(lab, "client-1", node.ip)
        assert ok, f"client-1 -> {node.name} underlay IP {node.ip}: {out}"
        ok, out = ping(lab, "client-1", node.bridge_ip)
        assert ok, f"client-1 -> {node.name} cbr0 {node.bridge_ip}: {out}"
    # A host-network process on node-2 reaches a pod on node-3.
    name, _ = reply(lab, "tcp", "node-2", lab.pods["echo-3a"].ip, ECHO_TCP)
    assert name == "echo-3a"


def test_vxlan_underlay_carries_udp_8472_vni_1_with_pod_addresses(
    clusters: Callable[..., ClusterLab],
) -> None:
    lab = clusters("vxlan")
    client, target = lab.pods["client-1"], lab.pods["echo-2a"]
    with Capture(lab.ns("node-2"), "eth0", python=lab.python, bpf="udp", timeout=8) as cap:
        for _ in range(3):
            ok, out = ping(lab, "client-1", target.ip)
            assert ok, out
        assert reply(lab, "udp", "client-1", target.ip, ECHO_UDP)[0] == "echo-2a"
    tunnelled = [p for p in cap.packets if p.udp_dport == 8472]
    assert tunnelled, f"no UDP/8472 on node-2's underlay: {cap.packets}"
    assert {p.vni for p in tunnelled} == {1}
    inner = {(p.src, p.dst, p.inner_src, p.inner_dst, p.inner_proto) for p in tunnelled}
    n1, n2 = lab.node("node-1").ip, lab.node("node-2").ip
    assert (n1, n2, client.ip, target.ip, 1) in inner  # ICMP echo request
    assert (n2, n1, target.ip, client.ip, 1) in inner  # and its reply
    assert (n1, n2, client.ip, target.ip, 17) in inner  # the UDP request
    # No pod address appears unencapsulated on the underlay.
    assert not [p for p in cap.packets if p.src == client.ip or p.dst == client.ip]


def test_host_gw_underlay_carries_pod_packets_unencapsulated(
    clusters: Callable[..., ClusterLab],
) -> None:
    lab = clusters("host-gw")
    client, target = lab.pods["client-1"], lab.pods["echo-2a"]
    bpf = f"host {client.ip} or udp port 8472"
    with Capture(lab.ns("node-2"), "eth0", python=lab.python, bpf=bpf, timeout=6) as cap:
        for _ in range(3):
            ok, out = ping(lab, "client-1", target.ip)
            assert ok, out
    plain = {(p.src, p.dst, p.proto) for p in cap.packets}
    assert (client.ip, target.ip, 1) in plain and (target.ip, client.ip, 1) in plain
    assert not [p for p in cap.packets if p.udp_dport == 8472 or p.is_vxlan]


def test_host_gw_plumbing(clusters: Callable[..., ClusterLab]) -> None:
    lab = clusters("host-gw")
    links = {x["ifname"] for x in ip_json(lab, "node-1", "link", "show")}
    assert "cbr0" in links and "flannel.1" not in links, "host-gw must not create a VXLAN device"
    routes = owned_routes(lab, "node-1")
    want = {lab.node(p).pod_cidr: lab.node(p).ip for p in ("node-2", "node-3")}
    assert {d: (r["gateway"], r["dev"]) for d, r in routes.items()} == {
        d: (gw, "eth0") for d, gw in want.items()
    }
    annotations = node_object(lab, "node-1")["metadata"]["annotations"]
    assert annotations[f"{PREFIX}/backend-type"] == "host-gw"
    assert read_subnet_env(lab.node("node-1").subnet_file)["FLANNEL_MTU"] == "1500"


@pytest.mark.parametrize("proxy_mode", PROXY_MODES)
@pytest.mark.parametrize("overlay", ["vxlan", "host-gw"])
def test_outside_traffic_is_masqueraded_pod_traffic_is_not(
    clusters: Callable[..., ClusterLab], overlay: str, proxy_mode: str
) -> None:
    lab = mode_cluster(clusters, overlay, proxy_mode)
    lab.serve_outside()
    node1 = lab.node("node-1").ip
    for proto, port in (("tcp", ECHO_TCP), ("udp", ECHO_UDP)):
        assert reply(lab, proto, "client-1", OUTSIDE_IP, port) == ("outside", node1)
        target = lab.pods["echo-3a"]
        assert reply(lab, proto, "client-1", target.ip, port) == (
            "echo-3a",
            lab.pods["client-1"].ip,
        )
    # The rules that do it live in netagent's own chains, applied with the proxy's rules:
    # in nftables mode in netagent's table, and not a single iptables rule on any node.
    if proxy_mode == "nftables":
        assert_nftables_only(lab)
        return
    nat = lab.iptables_save("node-1", "nat")
    assert "-A POSTROUTING" in nat and "NETAGENT-OVERLAY-POSTRTG" in nat
    assert "NETAGENT-OVERLAY-FWD" in lab.iptables_save("node-1", "filter")


def test_no_ip_masq_lets_pods_reach_the_outside_with_their_own_address(
    clusters: Callable[..., ClusterLab],
) -> None:
    """``--no-ip-masq`` (flannel's ``--ip-masq=false``): for networks that route the pod CIDR."""
    lab = clusters("vxlan", "--no-ip-masq")
    lab.serve_outside()
    node1 = lab.node("node-1")
    # The outside network routes the pod CIDR (to node-1 here), as such networks do.
    lab.ns_exec("outside", ["ip", "route", "add", CLUSTER_CIDR, "via", node1.ip])
    client = lab.pods["client-1"].ip
    for proto, port in (("tcp", ECHO_TCP), ("udp", ECHO_UDP)):
        assert reply(lab, proto, "client-1", OUTSIDE_IP, port) == ("outside", client)
        assert reply(lab, proto, "client-1", lab.pods["echo-3a"].ip, port) == ("echo-3a", client)
    assert read_subnet_env(node1.subnet_file)["FLANNEL_IPMASQ"] == "false"
    nat = lab.iptables_save("node-1", "nat")
    assert not [line for line in nat.splitlines() if line.startswith("-A NETAGENT-OVERLAY-POSTRTG")]
    assert "NETAGENT-OVERLAY-FWD" in lab.iptables_save("node-1", "filter")


def test_forward_drop_policy_does_not_break_pod_traffic(
    clusters: Callable[..., ClusterLab],
) -> None:
    lab = clusters("vxlan")
    lab.ns_exec("node-2", ["iptables", "-P", "FORWARD", "DROP"])
    try:
        target = lab.pods["echo-2b"]
        assert reply(lab, "tcp", "client-1", target.ip, ECHO_TCP) == (
            "echo-2b",
            lab.pods["client-1"].ip,
        )
    finally:
        lab.ns_exec("node-2", ["iptables", "-P", "FORWARD", "ACCEPT"])


def test_mtu_edge_crosses_and_one_byte_more_gets_frag_needed(
    clusters: Callable[..., ClusterLab],
) -> None:
    lab = clusters("vxlan")
    pod_mtu = lab.node("node-1").pod_mtu
    assert pod_mtu == 1450
    target = lab.pods["echo-2a"].ip
    fill = pod_mtu - 28  # IPv4 20 + ICMP 8
    ok, out = ping(lab, "client-1", target, size=fill, df=True)
    assert ok, f"a DF packet of exactly {pod_mtu} bytes did not cross: {out}"
    # A pod that knows its MTU refuses one byte more itself ...
    ok, out = ping(lab, "client-1", target, size=fill + 1, df=True)
    assert not ok and "mtu=1450" in out.lower().replace(" ", ""), out
    # ... and a sender that does not (an interface left at 1500) is told by the node.
    # scapy sends the DF packet and waits for ICMP type 3 code 4 (fragmentation needed).
    big = lab.add_pod("bigmtu-1", "node-1", server=False, register=False)
    lab.ns_exec("node-1", ["ip", "link", "set", big.host_veth, "mtu", "1500"])
    lab.ns_exec(big.ns, ["ip", "link", "set", "eth0", "mtu", "1500"])
    script = (
        "import sys\n"
        "from scapy.all import IP, ICMP, Raw, sr1, conf\n"
        "conf.verb = 0\n"
        "p = IP(dst=sys.argv[1], flags='DF') / ICMP() / Raw(b'x' * int(sys.argv[2]))\n"
        "r = sr1(p, timeout=3)\n"
        "print('none' if r is None else f'{r[IP].src} {r[ICMP].type} {r[ICMP].code} "
        '{getattr(r[ICMP], "nexthopmtu", 0)}\')\n'
    )
    out = lab.ns_exec(big.ns, [lab.python, "-c", script, target, str(fill + 1)], timeout=20)
    src, icmp_type, code, mtu = out.stdout.split()
    assert (icmp_type, code, mtu) == ("3", "4", "1450"), out.stdout
    assert src == lab.node("node-1").bridge_ip
    # And the packet that fits still gets its echo reply from that pod.
    out = lab.ns_exec(big.ns, [lab.python, "-c", script, target, str(fill)], timeout=20)
    assert out.stdout.split()[1:3] == ["0", "0"], out.stdout


@pytest.mark.parametrize("proxy_mode", PROXY_MODES)
def test_service_with_endpoints_on_another_node(
    clusters: Callable[..., ClusterLab], proxy_mode: str
) -> None:
    lab = mode_cluster(clusters, "vxlan", proxy_mode)
    svc = lab.create_service(
        "remote-only",
        {"app": "echo", "node": "node-3"},
        [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
    )
    try:
        ip = svc["spec"]["clusterIP"]
        wait_for_service_rules(lab, "node-1", proxy_mode, ip, 80, endpoints=2)
        seen = set()
        for _ in range(20):
            name, source = reply(lab, "tcp", "client-1", ip, 80)
            seen.add(name)
            assert source == lab.pods["client-1"].ip  # pod to pod through a Service: no SNAT
        assert seen == {"echo-3a", "echo-3b"}
        if proxy_mode == "nftables":
            assert_nftables_only(lab)
    finally:
        lab.delete_service("remote-only")


def test_vxlan_tx_checksum_off_is_applied_kept_and_carries_service_traffic(
    clusters: Callable[..., ClusterLab],
) -> None:
    """``--vxlan-tx-checksum off``: the kubernetes#88986 workaround, owned and repaired."""
    lab = clusters("vxlan", "--vxlan-tx-checksum", "off")
    for node in lab.nodes:
        assert tx_checksum(lab, node) == "off"
    # Traffic still flows: pod to pod, and through a Service DNATed to another node.
    target = lab.pods["echo-3a"]
    for proto, port in (("tcp", ECHO_TCP), ("udp", ECHO_UDP)):
        assert reply(lab, proto, "client-1", target.ip, port)[0] == "echo-3a"
    svc = lab.create_service(
        "csum-remote",
        {"app": "echo", "node": "node-3"},
        [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
    )
    ip = svc["spec"]["clusterIP"]
    lab.wait_for_rules("node-1", f"{ip}/32")
    assert {reply(lab, "tcp", "client-1", ip, 80)[0] for _ in range(10)} <= {"echo-3a", "echo-3b"}
    # Turned back on by hand: the next sync turns it off again.
    lab.ns_exec("node-2", ["ethtool", "-K", "flannel.1", "tx-checksum-ip-generic", "on"])
    assert tx_checksum(lab, "node-2") == "on"
    wait_until(lambda: tx_checksum(lab, "node-2") == "off", 15, "checksum offload repaired")
    lab.delete_service("csum-remote")


def test_direct_routing_uses_plain_routes_to_same_segment_peers(
    clusters: Callable[..., ClusterLab],
) -> None:
    lab = clusters("vxlan", "--direct-routing")
    # Every lab node shares the underlay segment, so every peer gets a plain route ...
    routes = owned_routes(lab, "node-1")
    want = {lab.node(p).pod_cidr: (lab.node(p).ip, "eth0") for p in ("node-2", "node-3")}
    assert {d: (r["gateway"], r["dev"]) for d, r in routes.items()} == want
    assert fdb(lab, "node-1") == set() and neighbours(lab, "node-1") == set()
    # ... while the VXLAN device still exists for peers that are not (and pods keep MTU - 50).
    assert ip_json(lab, "node-1", "link", "show", "flannel.1")[0]["mtu"] == 1450
    client = lab.pods["client-1"]
    with Capture(lab.ns("node-2"), "eth0", python=lab.python, bpf="icmp or udp", timeout=5) as cap:
        ok, out = ping(lab, "client-1", lab.pods["echo-2a"].ip)
        assert ok, out
    assert (client.ip, lab.pods["echo-2a"].ip) in {(p.src, p.dst) for p in cap.packets}
    assert not [p for p in cap.packets if p.udp_dport == 8472]


# ---- VXLAN: drift repair, device recreation, restart ------------------------------------------


def test_hand_deleted_route_fdb_and_neighbour_are_restored(
    clusters: Callable[..., ClusterLab],
) -> None:
    lab = clusters("vxlan")
    assert vxlan_entries_match(lab, "node-1")
    peer = lab.node("node-2")
    gateway = str(ipaddress.ip_network(peer.pod_cidr).network_address)
    mac = vtep_mac(lab, "node-2")
    lab.ns_exec("node-1", ["ip", "route", "del", peer.pod_cidr])
    lab.ns_exec("node-1", ["bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", peer.ip])
    lab.ns_exec("node-1", ["ip", "neigh", "del", gateway, "dev", "flannel.1"])
    assert not vxlan_entries_match(lab, "node-1")
    took = wait_until(
        lambda: vxlan_entries_match(lab, "node-1"),
        SYNC_PERIOD + 5,
        "route, FDB and neighbour entry restored",
    )
    assert took <= SYNC_PERIOD + 5
    assert reply(lab, "tcp", "client-1", lab.pods["echo-2a"].ip, ECHO_TCP)[0] == "echo-2a"
    log = lab.node("node-1").agent.log_text()  # type: ignore[union-attr]
    assert re.search(r"overlay reconciled: .*added 1 fdb.*added 1 neigh.*added 1 route", log)


def test_foreign_route_to_a_peer_subnet_is_left_alone_until_removed(
    clusters: Callable[..., ClusterLab],
) -> None:
    """``ip route replace`` would overwrite it; netagent reports it and waits instead."""
    lab = clusters("vxlan")
    peer = lab.node("node-3")
    # Someone routes node-3's pods their own way (plain via its underlay IP, proto static).
    lab.ns_exec(
        "node-1", ["ip", "route", "replace", peer.pod_cidr, "via", peer.ip, "proto", "static"]
    )
    agent = lab.node("node-1").agent
    assert agent is not None
    wait_until(
        lambda: (
            f"a route to {peer.pod_cidr} (via {peer.ip} dev eth0, proto static) exists"
            in agent.log_text()
        ),
        SYNC_PERIOD + 5,
        "the foreign route reported",
    )
    time.sleep(SYNC_PERIOD + 1)  # at least one more sync: still not overwritten
    (route,) = ip_json(lab, "node-1", "route", "show", peer.pod_cidr)
    assert (route["gateway"], route["dev"], route["protocol"]) == (peer.ip, "eth0", "static")
    assert agent.log_text().count(f"overlay: added route {peer.pod_cidr}") == 1  # warned once
    # It works, so traffic flows meanwhile; once removed, netagent's own route is back.
    assert reply(lab, "tcp", "client-1", lab.pods["echo-3a"].ip, ECHO_TCP)[0] == "echo-3a"
    lab.ns_exec("node-1", ["ip", "route", "del", peer.pod_cidr])
    wait_until(
        lambda: vxlan_entries_match(lab, "node-1"), SYNC_PERIOD + 5, "netagent's route restored"
    )
    assert reply(lab, "tcp", "client-1", lab.pods["echo-3a"].ip, ECHO_TCP)[0] == "echo-3a"


def test_deleted_and_misconfigured_vxlan_device_is_recreated(
    clusters: Callable[..., ClusterLab],
) -> None:
    lab = clusters("vxlan")
    mac = vtep_mac(lab, "node-1")

    def device_ok() -> bool:
        links = ip_json(lab, "node-1", "link", "show")
        link = next((x for x in links if x["ifname"] == "flannel.1"), None)
        if link is None:
            return False
        info = link["linkinfo"]["info_data"]
        return (
            link["address"] == mac
            and link["mtu"] == 1450
            and info["learning"] is False
            and "UP" in link["flags"]
        ) and vxlan_entries_match(lab, "node-1")

    lab.ns_exec("node-1", ["ip", "link", "del", "flannel.1"])
    wait_until(device_ok, SYNC_PERIOD + 5, "flannel.1 recreated with its entries")
    assert reply(lab, "udp", "echo-2a", lab.pods["echo-1b"].ip, ECHO_UDP)[0] == "echo-1b"
    # Misconfigured in place: learning turned on is recreated, a wrong MTU is repaired.
    lab.ns_exec("node-1", ["ip", "link", "set", "flannel.1", "type", "vxlan", "learning"])
    lab.ns_exec("node-1", ["ip", "link", "set", "flannel.1", "mtu", "1400"])
    assert not device_ok()
    wait_until(device_ok, SYNC_PERIOD + 5, "flannel.1 repaired")
    assert reply(lab, "tcp", "client-1", lab.pods["echo-3a"].ip, ECHO_TCP)[0] == "echo-3a"


def test_agent_restart_keeps_subnet_mac_and_traffic(clusters: Callable[..., ClusterLab]) -> None:
    lab = clusters("vxlan")
    node = lab.node("node-2")
    before = (node_object(lab, "node-2")["spec"]["podCIDR"], vtep_mac(lab, "node-2"))
    assert lab.stop_agent("node-2") == 0
    # With the agent gone, its node's dataplane stays as it was.
    assert reply(lab, "tcp", "client-1", lab.pods["echo-2a"].ip, ECHO_TCP)[0] == "echo-2a"
    agent = lab.start_agent("node-2")
    agent.wait_for_log(r"pod CIDR of node-2: ", timeout=30)
    agent.wait_for_log(r"synced IPv4", timeout=30)
    after = (node_object(lab, "node-2")["spec"]["podCIDR"], vtep_mac(lab, "node-2"))
    assert after == before
    assert read_subnet_env(node.subnet_file)["FLANNEL_SUBNET"] == f"{node.bridge_ip}/24"
    for peer in ("node-1", "node-3"):
        assert vxlan_entries_match(lab, peer)
    assert reply(lab, "tcp", "echo-2b", lab.pods["echo-3b"].ip, ECHO_TCP)[0] == "echo-3b"


# ---- destructive scenarios: their own clusters ------------------------------------------------


def _foreign_state(lab: ClusterLab) -> str:
    link = ip_json(lab, "node-1", "link", "show", "foreign0")[0]
    link = {k: link.get(k) for k in ("ifindex", "ifname", "flags", "mtu", "address", "master")}
    addrs = lab.ns_exec("node-1", ["ip", "-4", "addr", "show", "dev", "foreign0"]).stdout
    route = lab.ns_exec("node-1", ["ip", "-d", "route", "show", "203.0.113.0/24"]).stdout
    return json.dumps(link, sort_keys=True) + addrs + route


def test_node_removal_foreign_objects_and_cleanup(tmp_path: Path) -> None:
    lab = ClusterLab(
        overlay="vxlan",
        workdir=tmp_path / "lab",
        keep_workdir=True,
        agent_args=AGENT_ARGS,
        start_agents=False,
    )
    try:
        lab.up()
        # Foreign objects made before netagent starts: a link, its address and a static route.
        lab.ns_exec("node-1", ["ip", "link", "add", "foreign0", "type", "bridge"])
        lab.ns_exec("node-1", ["ip", "addr", "add", "198.51.100.1/24", "dev", "foreign0"])
        lab.ns_exec("node-1", ["ip", "link", "set", "foreign0", "up"])
        lab.ns_exec(
            "node-1",
            ["ip", "route", "add", "203.0.113.0/24", "via", "198.51.100.254", "proto", "static"],
        )
        before = _foreign_state(lab)
        for node in lab.nodes.values():
            lab.start_agent(node.name)
        lab.wait_for_pod_networks()
        wait_until(
            lambda: all(vxlan_entries_match(lab, n) for n in lab.nodes),
            15,
            "every node programmed for its peers",
        )
        time.sleep(SYNC_PERIOD + 1)  # at least one periodic sync after the first
        assert _foreign_state(lab) == before

        # Node removal: node-3 goes away (agent stopped, Node deleted); its peers drop it.
        node3_cidr = lab.node("node-3").pod_cidr
        assert lab.stop_agent("node-3") == 0
        node3_mac = vtep_mac(lab, "node-3")
        lab.api.delete("/api/v1/nodes/node-3")
        for peer in ("node-1", "node-2"):
            wait_until(
                lambda peer=peer: (
                    node3_cidr not in owned_routes(lab, peer)
                    and vxlan_entries_match(lab, peer, gone=("node-3",))
                ),
                SYNC_PERIOD + 5,
                f"{peer} forgets node-3",
            )
            assert node3_mac not in {mac for mac, _ in fdb(lab, peer)}
            assert node3_mac not in {mac for _, mac in neighbours(lab, peer)}

        # Cleanup on node-1: everything netagent made goes, the foreign objects stay.
        node1 = lab.node("node-1")
        assert lab.stop_agent("node-1") == 0
        assert owned_routes(lab, "node-1")
        result = run_netagent(
            node1.ns,
            lab.python,
            [
                "cleanup",
                "--subnet-file",
                str(node1.subnet_file),
                "--cni-conf-file",
                str(node1.cni_file),
            ],
        )
        assert result.returncode == 0, result
        assert owned_routes(lab, "node-1") == {}
        links = {x["ifname"] for x in ip_json(lab, "node-1", "link", "show")}
        assert "flannel.1" not in links and "cbr0" not in links and "foreign0" in links
        assert not node1.subnet_file.exists() and not node1.cni_file.exists()
        saved = lab.iptables_save("node-1")
        assert "NETAGENT" not in saved
        assert _foreign_state(lab) == before
    finally:
        lab.down()


def test_six_agents_started_at_once_claim_distinct_subnets(tmp_path: Path) -> None:
    lab = ClusterLab(
        nodes=6, overlay="vxlan", workdir=tmp_path / "lab", keep_workdir=True, agent_args=AGENT_ARGS
    )
    try:
        lab.up(pods_per_node=0, client=False)
        claimed = {n: node_object(lab, n)["spec"].get("podCIDR") for n in lab.nodes}
        assert all(claimed.values()), claimed
        assert len(set(claimed.values())) == 6, f"duplicate subnets: {claimed}"
        nets = [ipaddress.ip_network(c) for c in claimed.values()]
        assert not any(a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
        for node in lab.nodes.values():
            assert node.pod_cidr == claimed[node.name]  # what subnet.env says
        wait_until(
            lambda: all(vxlan_entries_match(lab, n) for n in lab.nodes),
            20,
            "every node programmed for its 5 peers",
        )
        # A claim race loses only to a 409, which the loser retries: the logs show it.
        logs = "".join(n.agent.log_text() for n in lab.nodes.values() if n.agent is not None)
        assert logs.count("pod CIDR of node-") == 6
    finally:
        lab.down()


def test_foreign_flannel_1_with_other_settings_is_left_alone_until_deleted(
    tmp_path: Path,
) -> None:
    """A flannel.1 netagent did not create (flannel's, say) is never reconfigured or deleted."""
    lab = ClusterLab(
        nodes=2,
        overlay="vxlan",
        workdir=tmp_path / "lab",
        keep_workdir=True,
        agent_args=AGENT_ARGS,
        start_agents=False,
    )
    try:
        lab.up()
        n1, n2 = lab.node("node-1"), lab.node("node-2")
        lab.ns_exec(
            "node-1",
            ["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "7", "dstport", "4789",
             "dev", "eth0", "local", n1.ip],
        )  # fmt: skip
        before = ip_json(lab, "node-1", "link", "show", "flannel.1")
        for node in lab.nodes.values():
            lab.start_agent(node.name)
        lab.wait_for_pod_networks()  # cbr0 and the CNI files do not depend on flannel.1
        agent = n1.agent
        assert agent is not None
        wait_until(
            lambda: (
                "flannel.1 exists, was not created by netagent and differs (vni 7 != 1, "
                "port 4789 != 8472" in agent.log_text()
            ),
            15,
            "the foreign flannel.1 reported",
        )
        time.sleep(SYNC_PERIOD + 1)  # another sync: still untouched
        after = ip_json(lab, "node-1", "link", "show", "flannel.1")
        assert after == before
        assert "ifalias" not in after[0]
        assert lab.node("node-2").pod_cidr not in owned_routes(lab, "node-1")
        # node-2 is fine on its own side (it programs node-1 as a peer).
        assert vxlan_entries_match(lab, "node-2")
        # Once it is deleted by hand, the next sync creates netagent's own; traffic flows.
        lab.ns_exec("node-1", ["ip", "link", "del", "flannel.1"])
        wait_until(lambda: vxlan_entries_match(lab, "node-1"), SYNC_PERIOD + 5, "flannel.1 built")
        (link,) = ip_json(lab, "node-1", "link", "show", "flannel.1")
        assert link["ifalias"] == "netagent" and link["linkinfo"]["info_data"]["id"] == 1
        lab.ns_exec("node-1", ["ping", "-c", "1", "-W", "2", n2.bridge_ip])
    finally:
        lab.down()


def test_multi_nic_nodes_use_the_interface_they_are_told(tmp_path: Path) -> None:
    """A second link between the nodes; ``--iface``/``--public-ip`` move the overlay onto it."""
    lab = ClusterLab(
        nodes=2,
        overlay="vxlan",
        workdir=tmp_path / "lab",
        keep_workdir=True,
        agent_args=AGENT_ARGS,
        start_agents=False,
    )
    try:
        lab.up()
        n1, n2 = lab.node("node-1"), lab.node("node-2")
        lab.ns_exec(
            "node-1",
            ["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", n2.ns],
        )
        for node, address in ((n1, "198.18.7.1/24"), (n2, "198.18.7.2/24")):
            lab.ns_exec(node.name, ["ip", "addr", "add", address, "dev", "eth1"])
            lab.ns_exec(node.name, ["ip", "link", "set", "eth1", "up"])
        # One node by interface name, the other by address alone.
        lab.start_agent("node-1", ["--iface", "eth1"])
        lab.start_agent("node-2", ["--public-ip", "198.18.7.2"])
        lab.wait_for_pod_networks()
        for name, ip in (("node-1", "198.18.7.1"), ("node-2", "198.18.7.2")):
            annotations = node_object(lab, name)["metadata"]["annotations"]
            assert annotations[f"{PREFIX}/public-ip"] == ip
            info = ip_json(lab, name, "link", "show", "flannel.1")[0]["linkinfo"]["info_data"]
            assert (info["local"], info["link"]) == (ip, "eth1")
        wait_until(
            lambda: fdb(lab, "node-1") == {(vtep_mac(lab, "node-2"), "198.18.7.2")},
            10,
            "node-1 sends node-2's pods to its eth1 address",
        )
        a = lab.add_pod("echo-1a", "node-1", labels={"app": "echo"})
        b = lab.add_pod("echo-2a", "node-2", labels={"app": "echo"})
        with Capture(n2.ns, "eth1", python=lab.python, bpf="udp port 8472", timeout=5) as cap:
            assert reply(lab, "tcp", "echo-1a", b.ip, ECHO_TCP) == ("echo-2a", a.ip)
        assert {(p.src, p.dst, p.inner_src, p.inner_dst) for p in cap.packets} >= {
            ("198.18.7.1", "198.18.7.2", a.ip, b.ip)
        }
    finally:
        lab.down()
