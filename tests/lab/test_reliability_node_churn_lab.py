"""Reliability, case 7: 50 Nodes join and leave; the overlay's kernel entries always match them.

A node namespace gets an underlay device (``eth0``, a veth) and netagent's
overlay reconciler, which runs once per step in a fresh process (as an agent
restarted at each step would: it works from the kernel dump alone). The
peers are not real namespaces; only their Node objects exist. Steps: 50
nodes join in groups, some leave, some come back with a new public IP and
VTEP MAC (a node re-created), all leave.

After every step the entries are read with iproute2, not with netagent's
own netlink code: ``bridge fdb`` (VXLAN), ``ip neigh`` (VXLAN) and
``ip route ... proto 78``. Figure: entries that do not match the current
Nodes (missing plus extra), per step. Target: 0 at every step, for both
backends. Foreign objects planted at the start (a route of another protocol,
and another VXLAN device with its own FDB and neighbour entries) must be
byte-for-byte the same at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnslab.netns import ns_exec
from netnslab.scratch import scratch_namespaces

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
NETWORK = "10.244.0.0/16"
LOCAL_IP = "192.0.2.2"
RECONCILE = """
import ipaddress, json, sys
from netagent.overlay.kernel import PyrouteOverlayKernel
from netagent.overlay.model import BackendType, LocalNode, OverlayConfig, RemoteNode
from netagent.overlay.plan import plan_overlay
from netagent.overlay.reconcile import OverlayReconciler

spec = json.loads(sys.argv[1])
backend = BackendType(spec["backend"])
config = OverlayConfig(network=ipaddress.ip_network(spec["network"]), backend=backend)
local = LocalNode(
    name="node-0", subnet=ipaddress.ip_network("10.244.0.0/24"),
    public_ip=ipaddress.ip_address(spec["local"]), underlay_device="eth0", underlay_mtu=1500,
    vtep_mac="02:00:00:00:00:01",
)
peers = [
    RemoteNode(name=p["name"], subnet=ipaddress.ip_network(p["subnet"]),
               public_ip=ipaddress.ip_address(p["ip"]), backend=backend, vtep_mac=p["mac"])
    for p in spec["peers"]
]
desired = plan_overlay(config, local, peers, [ipaddress.ip_network("192.0.2.0/24")])
kernel = PyrouteOverlayKernel()
try:
    report = OverlayReconciler(kernel).reconcile(desired)
finally:
    kernel.close()
print(json.dumps({"failures": len(report.failures), "summary": report.summary()}))
"""


def peer(i: int, generation: int = 0) -> dict[str, str]:
    """Node ``i`` (1..50); a later generation is the node re-created elsewhere."""
    host = 10 + i + 100 * generation
    return {
        "name": f"node-{i}",
        "subnet": f"10.244.{i}.0/24",
        "ip": f"192.0.2.{host}",
        "mac": f"02:00:00:{generation:02x}:00:{i:02x}",
    }


def steps() -> Iterator[tuple[str, list[dict[str, str]]]]:
    members: dict[int, dict[str, str]] = {}
    for start in range(1, 51, 10):
        members.update({i: peer(i) for i in range(start, start + 10)})
        yield f"join {start}-{start + 9}", list(members.values())
    for i in range(1, 51, 3):
        del members[i]
    yield "every third leaves", list(members.values())
    for i in range(2, 51, 4):
        members[i] = peer(i, generation=1)
    yield "some re-created with a new IP and MAC", list(members.values())
    for i in range(1, 51, 3):
        members[i] = peer(i)
    yield "the leavers come back", list(members.values())
    yield "all leave", []


def expected(backend: str, peers: list[dict[str, str]]) -> dict[str, set[str]]:
    if backend == "vxlan":
        return {
            "fdb": {f"{p['mac']} {p['ip']}" for p in peers},
            # flannel's layout: the peer's subnet address is its VTEP's neighbour and gateway.
            "neigh": {f"{p['subnet'].split('/')[0]} {p['mac']}" for p in peers},
            "route": {f"{p['subnet']} via {p['subnet'].split('/')[0]} dev flannel.1" for p in peers},
        }
    routes = {f"{p['subnet']} via {p['ip']} dev eth0" for p in peers}
    return {"fdb": set(), "neigh": set(), "route": routes}


def kernel_entries(ns: str, backend: str) -> dict[str, set[str]]:
    """What iproute2 shows: routes of protocol 78, and the entries on flannel.1."""
    routes = set()
    for line in ns_exec(ns, ["ip", "-4", "route", "show", "proto", "78"]).stdout.splitlines():
        m = re.match(r"(\S+) via (\S+) dev (\S+)", line)
        if m:
            routes.add(f"{m.group(1)} via {m.group(2)} dev {m.group(3)}")
    fdb: set[str] = set()
    neigh: set[str] = set()
    if backend == "vxlan":
        for line in ns_exec(ns, ["bridge", "fdb", "show", "dev", "flannel.1"]).stdout.splitlines():
            m = re.match(r"([0-9a-f:]{17}) dst (\S+) self permanent", line)
            if m:
                fdb.add(f"{m.group(1)} {m.group(2)}")
        shown = ns_exec(ns, ["ip", "-4", "neigh", "show", "dev", "flannel.1", "nud", "permanent"])
        for line in shown.stdout.splitlines():
            m = re.match(r"(\S+) lladdr (\S+)", line)
            if m:
                neigh.add(f"{m.group(1)} {m.group(2)}")
    return {"fdb": fdb, "neigh": neigh, "route": routes}


def reconcile(ns: str, backend: str, peers: list[dict[str, str]]) -> dict[str, object]:
    spec = json.dumps({"backend": backend, "network": NETWORK, "local": LOCAL_IP, "peers": peers})
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", RECONCILE, spec],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_fifty_nodes_join_and_leave_and_every_entry_matches_after_each_step(backend: str) -> None:
    with scratch_namespaces("churn") as (ns,):
        # The underlay: one end of a veth pair that stays inside the namespace (this
        # kernel has no dummy driver).
        ns_exec(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
        ns_exec(ns, ["ip", "addr", "add", f"{LOCAL_IP}/24", "dev", "eth0"])
        ns_exec(ns, ["ip", "link", "set", "eth0p", "up"])
        ns_exec(ns, ["ip", "link", "set", "eth0", "up"])
        first = reconcile(ns, backend, [])
        assert first["failures"] == 0, first
        # Foreign entries netagent must never touch.
        ns_exec(ns, ["ip", "route", "add", "10.244.250.0/24", "via", "192.0.2.250", "dev", "eth0"])
        foreign_before = ns_exec(ns, ["ip", "-4", "route", "show", "10.244.250.0/24"]).stdout
        # A foreign VXLAN device with its own FDB and neighbour entries. (Entries on
        # flannel.1 itself are netagent's by design: it owns that device whole.)
        ns_exec(ns, ["ip", "link", "add", "fvx0", "type", "vxlan", "id", "42", "dstport", "4790",
                     "dev", "eth0", "nolearning"])  # fmt: skip
        ns_exec(ns, ["ip", "link", "set", "fvx0", "up"])
        ns_exec(ns, ["bridge", "fdb", "append", "02:ff:00:00:00:01", "dev", "fvx0",
                     "dst", "192.0.2.251", "self", "permanent"])  # fmt: skip
        ns_exec(ns, ["ip", "neigh", "add", "10.244.250.1", "lladdr", "02:ff:00:00:00:01",
                     "dev", "fvx0", "nud", "permanent"])  # fmt: skip
        foreign_fdb = ns_exec(ns, ["bridge", "fdb", "show", "dev", "fvx0"]).stdout
        foreign_neigh = ns_exec(ns, ["ip", "neigh", "show", "dev", "fvx0"]).stdout
        figures = []
        for name, peers in steps():
            result = reconcile(ns, backend, peers)
            want = expected(backend, peers)
            have = kernel_entries(ns, backend)
            wrong = sum(len(want[k] ^ have[k]) for k in want)
            figures.append((name, len(peers), wrong, result["failures"]))
            assert result["failures"] == 0, (name, result)
            assert wrong == 0, (name, {k: (want[k] - have[k], have[k] - want[k]) for k in want})
        print(f"{backend}: " + "; ".join(f"{n} ({c} nodes): {w} wrong" for n, c, w, _ in figures))
        assert ns_exec(ns, ["ip", "-4", "route", "show", "10.244.250.0/24"]).stdout == foreign_before
        assert ns_exec(ns, ["bridge", "fdb", "show", "dev", "fvx0"]).stdout == foreign_fdb
        assert ns_exec(ns, ["ip", "neigh", "show", "dev", "fvx0"]).stdout == foreign_neigh
        assert "02:ff:00:00:00:01 dst 192.0.2.251 self permanent" in foreign_fdb
