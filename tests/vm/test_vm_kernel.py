"""The VM's kernel has what netagent's IPVS work needs, proven with real traffic.

Runs inside the qemu VM (``scripts/ipvs-vm.sh``), never on the host: this
machine's kernel has no IPVS. Covers: ``modprobe ip_vs`` and its schedulers;
a virtual server made with pyroute2 in a fresh namespace, forwarding real TCP
connections from a client namespace to a real server in a third one (masq,
i.e. NAT), with the reply, the server's view of the client and IPVS' own
connection counters (pyroute2's dump and ``ipvsadm``) as evidence; the
per-namespace ``net.ipv4.vs`` sysctls; and ipset, nft and iptables (nft and
legacy) working inside a namespace.

Nothing is skipped: on a kernel without IPVS these tests fail. Every
namespace carries a fresh lab suffix, is recorded for the stale-run cleaner
and is deleted in ``finally``; nothing is configured in the root namespace.

Topology of the traffic test (192.168.x is avoided: the lab uses 10.244/16)::

    na-vmcl-S  eth0 10.250.1.2/24, default via 10.250.1.1
        | eth0 <-veth-> vc-S
    na-vmlb-S  vc-S 10.250.1.1/24, vs-S 10.250.2.1/24, ipvs0 (dummy) 10.250.100.10/32,
               ip_forward=1, IPVS: TCP 10.250.100.10:80 rr -> 10.250.2.2:8080 masq
        | vs-S <-veth-> eth0
    na-vmsv-S  eth0 10.250.2.2/24, default via 10.250.2.1, echo server "real-1" on 8080
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from netnslab import traffic
from netnslab.names import link_name
from netnslab.netns import exec_argv, ip_batch, ns_exec, run
from netnslab.scratch import scratch_namespaces

pytestmark = pytest.mark.vm

PYTHON = sys.executable
ECHO_SCRIPT = Path(traffic.__file__).with_name("echo_server.py")

CLIENT_IP = "10.250.1.2"
LB_CLIENT_SIDE = "10.250.1.1"
LB_SERVER_SIDE = "10.250.2.1"
SERVER_IP = "10.250.2.2"
VIP = "10.250.100.10"
VPORT = 80
RPORT = 8080

SCHEDULERS = ("rr", "wrr", "sh", "lc", "wlc", "mh")

#: Run with the test's interpreter inside the director's namespace: pyroute2's
#: IPVS socket works in the namespace of the process that opens it.
IPVS_HELPER = """
import json, socket, sys
from pyroute2 import IPVS, IPVSDest, IPVSService

action, vip, vport, rip, rport = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
ipvs = IPVS()
try:
    if action == "add":
        svc = IPVSService(addr=vip, port=vport, protocol=socket.IPPROTO_TCP, sched_name="rr")
        ipvs.service("add", service=svc)
        # LAB-RECIPES traps: fwd_method must be explicit (0 = masq; pyroute2's
        # default 3 is direct routing), and weight and both thresholds set.
        dest = IPVSDest(addr=rip, port=rport, fwd_method=0, weight=1, u_thresh=0, l_thresh=0)
        ipvs.dest("add", service=svc, dest=dest)
    elif action == "dump":
        out = []
        for msg in ipvs.service("dump"):
            service = IPVSService.from_message(msg)
            svc_attrs = dict(msg.get("IPVS_CMD_ATTR_SERVICE")["attrs"])
            for dmsg in ipvs.dest("dump", service=service):
                attrs = dict(dmsg.get("IPVS_CMD_ATTR_DEST")["attrs"])
                stats = dict(attrs["IPVS_DEST_ATTR_STATS"]["attrs"])
                out.append({
                    "service": f"{svc_attrs['IPVS_SVC_ATTR_ADDR']}:{svc_attrs['IPVS_SVC_ATTR_PORT']}",
                    "scheduler": svc_attrs["IPVS_SVC_ATTR_SCHED_NAME"],
                    "dest": f"{attrs['IPVS_DEST_ATTR_ADDR']}:{attrs['IPVS_DEST_ATTR_PORT']}",
                    "fwd_method": attrs["IPVS_DEST_ATTR_FWD_METHOD"],
                    "conns": stats["IPVS_STATS_ATTR_CONNS"],
                    "inpkts": stats["IPVS_STATS_ATTR_INPKTS"],
                    "outpkts": stats["IPVS_STATS_ATTR_OUTPKTS"],
                })
        print(json.dumps(out))
    else:
        raise SystemExit(f"unknown action {action}")
finally:
    ipvs.close()
"""


@contextmanager
def namespaces(*roles: str) -> Iterator[tuple[str, list[str]]]:
    """``(suffix, names)`` of fresh ``na-<role>-<suffix>`` namespaces, always deleted."""
    with scratch_namespaces(*roles) as names:
        yield names[0].rsplit("-", 1)[1], names


@contextmanager
def echo_server(ns: str, name: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The lab's echo server in ``ns`` on TCP ``port``, READY before the body runs."""
    argv = [PYTHON, "-I", "-S", str(ECHO_SCRIPT), "--name", name, "--tcp", str(port), "--udp", ""]
    proc = subprocess.Popen(
        exec_argv(ns, argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = traffic.LineReader(proc.stdout.fileno()).readline(30.0)
        assert line == "READY", f"echo server did not start: {line!r}"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5.0)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def ipvs_helper(ns: str, action: str) -> str:
    argv = [PYTHON, "-c", IPVS_HELPER, action, VIP, str(VPORT), SERVER_IP, str(RPORT)]
    return ns_exec(ns, argv, timeout=60.0).stdout


def test_kernel_has_ipvs() -> None:
    run(["modprobe", "ip_vs"])
    assert Path("/proc/net/ip_vs").exists(), "no /proc/net/ip_vs after modprobe ip_vs"
    for scheduler in SCHEDULERS:
        run(["modprobe", f"ip_vs_{scheduler}"])
    header = Path("/proc/net/ip_vs").read_text().splitlines()[0]
    assert header.startswith("IP Virtual Server version"), header


def test_ipvs_masq_forwards_real_tcp_through_the_vip() -> None:
    run(["modprobe", "ip_vs"])
    with namespaces("vmcl", "vmlb", "vmsv") as (suffix, (client, lb, server)):
        to_client, to_server = link_name("vc", suffix), link_name("vs", suffix)
        ip_batch(
            lb,
            [
                f"link add {to_client} type veth peer name eth0 netns {client}",
                f"link add {to_server} type veth peer name eth0 netns {server}",
                "link add ipvs0 type dummy",
                f"addr add {LB_CLIENT_SIDE}/24 dev {to_client}",
                f"addr add {LB_SERVER_SIDE}/24 dev {to_server}",
                f"addr add {VIP}/32 dev ipvs0",
                f"link set {to_client} up",
                f"link set {to_server} up",
                "link set ipvs0 up",
            ],
        )
        for ns, ip, gateway in (
            (client, CLIENT_IP, LB_CLIENT_SIDE),
            (server, SERVER_IP, LB_SERVER_SIDE),
        ):
            ip_batch(
                ns,
                [
                    f"addr add {ip}/24 dev eth0",
                    "link set eth0 up",
                    f"route add default via {gateway}",
                ],
            )
        ns_exec(lb, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

        with echo_server(server, "real-1", RPORT):
            # The VIP is local to the director and nothing listens on it: without
            # IPVS the kernel itself refuses the connection.
            (before,) = traffic.many_requests(
                client, "tcp", VIP, VPORT, 1, python=PYTHON, timeout=5.0
            )
            assert before.error == "refused", before

            ipvs_helper(lb, "add")
            listing = ns_exec(lb, ["ipvsadm", "-Ln"]).stdout
            assert f"TCP  {VIP}:{VPORT} rr" in listing, listing
            assert f"-> {SERVER_IP}:{RPORT}" in listing and "Masq" in listing, listing

            results = traffic.many_requests(
                client, "tcp", VIP, VPORT, 3, python=PYTHON, timeout=5.0
            )
            for result in results:
                assert result.ok, result
                assert result.pod == "real-1", result
                # Masq rewrites only the destination: the server sees the client itself.
                assert result.peer_ip == CLIENT_IP, result

        dumped: list[dict[str, Any]] = json.loads(ipvs_helper(lb, "dump"))
        assert len(dumped) == 1, dumped
        (dest,) = dumped
        assert dest["service"] == f"{VIP}:{VPORT}" and dest["dest"] == f"{SERVER_IP}:{RPORT}", dest
        assert dest["fwd_method"] == 0, dest
        assert dest["conns"] >= 3 and dest["inpkts"] > 0 and dest["outpkts"] > 0, dest

        stats = ns_exec(lb, ["ipvsadm", "-Ln", "--stats"]).stdout
        conns = [
            int(line.split()[2])
            for line in stats.splitlines()
            if line.split()[:2] == ["->", f"{SERVER_IP}:{RPORT}"]
        ]
        assert conns and conns[0] >= 3, stats


def test_ipvs_sysctls_are_per_namespace_and_writable() -> None:
    run(["modprobe", "ip_vs"])
    with namespaces("vmsys") as (_, (ns,)):
        for key in ("net.ipv4.vs.conntrack", "net.ipv4.vs.expire_nodest_conn"):
            ns_exec(ns, ["sysctl", "-q", "-w", f"{key}=1"])
            assert ns_exec(ns, ["sysctl", "-n", key]).stdout.strip() == "1"
    # The root namespace of the guest kept its default.
    assert Path("/proc/sys/net/ipv4/vs/conntrack").read_text().strip() == "0"


def test_ipset_in_a_namespace() -> None:
    with namespaces("vmipset") as (_, (ns,)):
        ns_exec(ns, ["ipset", "create", "NA-VM-PORTS", "hash:ip,port"])
        ns_exec(ns, ["ipset", "add", "NA-VM-PORTS", "10.250.3.4,tcp:80"])
        ns_exec(ns, ["ipset", "create", "NA-VM-BITMAP", "bitmap:port", "range", "0-65535"])
        ns_exec(ns, ["ipset", "add", "NA-VM-BITMAP", "30080"])
        ns_exec(ns, ["ipset", "test", "NA-VM-PORTS", "10.250.3.4,tcp:80"])
        missing = ns_exec(ns, ["ipset", "test", "NA-VM-PORTS", "10.250.3.4,tcp:81"], check=False)
        assert missing.returncode != 0
        saved = ns_exec(ns, ["ipset", "save"]).stdout
        assert "add NA-VM-PORTS 10.250.3.4,tcp:80" in saved, saved
        assert "add NA-VM-BITMAP 30080" in saved, saved
        # A /0 net is refused (IPSET_ERR_INVALID_CIDR), as netagent's fake refuses it.
        ns_exec(ns, ["ipset", "create", "NA-VM-NETS", "hash:ip,port,net"])
        ns_exec(ns, ["ipset", "add", "NA-VM-NETS", "10.250.3.4,tcp:80,10.0.0.0/8"])
        every = ns_exec(ns, ["ipset", "add", "NA-VM-NETS", "10.250.3.4,tcp:80,0.0.0.0/0"],
                        check=False)  # fmt: skip
        assert every.returncode != 0, every
        # Sets are per namespace: the guest's root namespace does not see them.
        assert "NA-VM-PORTS" not in run(["ipset", "list", "-n"]).stdout


NFT_RULESET = f"""\
table inet na_vm_test {{
  set services {{
    type ipv4_addr . inet_proto . inet_service
    elements = {{ {VIP} . tcp . 80 }}
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr . meta l4proto . th dport @services dnat ip to numgen inc mod 2 map {{ 0 : 10.250.2.2, 1 : 10.250.2.3 }}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ct status dnat masquerade
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    fib daddr type local counter accept
  }}
}}
"""


def test_nft_in_a_namespace() -> None:
    with namespaces("vmnft") as (_, (ns,)):
        ns_exec(ns, ["nft", "-f", "-"], input=NFT_RULESET)
        listed = ns_exec(ns, ["nft", "list", "table", "inet", "na_vm_test"]).stdout
        assert f"{VIP} . tcp . 80" in listed, listed
        assert "numgen inc mod 2" in listed, listed
        assert "masquerade" in listed and "fib daddr type local" in listed, listed
        assert "na_vm_test" not in run(["nft", "list", "tables"]).stdout


IPTABLES_RULES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:NA-VM-SERVICES - [0:0]
-A PREROUTING -m comment --comment "na-vm services" -m addrtype --dst-type LOCAL -j NA-VM-SERVICES
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
-A NA-VM-SERVICES -m set --match-set NA-VM-IPT dst,dst -j MARK --set-xmark 0x4000/0x4000
-A NA-VM-SERVICES -p tcp -m conntrack --ctstate NEW -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.250.2.2:8080
COMMIT
"""


@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_iptables_in_a_namespace(variant: str) -> None:
    with namespaces("vmipt") as (_, (ns,)):
        ns_exec(ns, ["ipset", "create", "NA-VM-IPT", "hash:ip,port"])
        ns_exec(ns, [f"iptables-{variant}-restore"], input=IPTABLES_RULES)
        saved = ns_exec(ns, [f"iptables-{variant}-save", "-t", "nat"]).stdout
        for line in IPTABLES_RULES.splitlines():
            if line.startswith("-A "):
                assert line in saved, f"{line!r} missing from\n{saved}"


def test_pyroute_ipvs_works_from_every_thread() -> None:
    """The daemon syncs in a thread pool; pyroute2's IPVS socket must not be shared across it.

    With one socket for all threads, every call from a thread other than the
    creator's read back a queued ECONNRESET (pyroute2 0.9.7); PyrouteIpvs now
    opens one socket per thread.
    """
    import ipaddress
    from concurrent.futures import ThreadPoolExecutor

    from netagent.proxy.ipvs.model import RealServer, VirtualServer
    from netagent.proxy.ipvs.netlink import PyrouteIpvs

    run(["modprobe", "ip_vs"])
    with namespaces("vmth") as (_, (ns,)):
        kernel = PyrouteIpvs(ns)
        vs = VirtualServer("TCP", ipaddress.ip_address("10.96.9.9"), 80)
        kernel.add_service(vs)
        kernel.add_dest(vs, RealServer(ipaddress.ip_address("10.244.9.9"), 8080))

        def round_trip(_: int) -> int:
            assert [s.key for s in kernel.services()] == [vs.key]
            return len(kernel.dests(vs))

        try:
            with ThreadPoolExecutor(max_workers=4) as pool:
                assert list(pool.map(round_trip, range(20))) == [1] * 20
        finally:
            kernel.close()


def test_pyroute_ipvs_sets_and_reads_the_namespaces_timeouts() -> None:
    from netagent.proxy.ipvs.model import KERNEL_DEFAULT_TIMEOUTS, IpvsTimeouts
    from netagent.proxy.ipvs.netlink import PyrouteIpvs

    run(["modprobe", "ip_vs"])
    with namespaces("vmto", "vmtp") as (_, (ns, other)):
        kernel = PyrouteIpvs(ns)
        try:
            assert kernel.timeouts() == KERNEL_DEFAULT_TIMEOUTS
            kernel.set_timeouts(IpvsTimeouts(tcp=0, tcp_fin=30, udp=7))
            assert kernel.timeouts() == IpvsTimeouts(900, 30, 7)
            shown = ns_exec(ns, ["ipvsadm", "-L", "--timeout"]).stdout
            assert "Timeout (tcp tcpfin udp): 900 30 7" in shown, shown
            # Per namespace: the other one still has the kernel's defaults.
            elsewhere = ns_exec(other, ["ipvsadm", "-L", "--timeout"]).stdout
            assert "Timeout (tcp tcpfin udp): 900 120 300" in elsewhere, elsewhere
        finally:
            kernel.close()
