"""Reliability case 4 (fuzzed objects) in IPVS mode, over the stateful fakes.

The host-side half of ``tests/lab/test_reliability_fuzz_lab.py``: this
machine's kernel has no IPVS, so :class:`FakeIpvs`, :class:`FakeIpsets`,
:class:`FakeDummy` and :class:`FakeIptables` stand in for it (the VM runs
the real-kernel half). Objects take the agent's own path: files in a
manifests directory, :class:`ManifestSource` (the boundary, where refused
objects are refused, and keep-last-valid), :class:`NodeSync` (own Node,
families, :func:`build_proxy_state`), then one :class:`IpvsProxier` per
family, both families on one node (one IPVS table, one dummy device, one
ipset namespace, as in the kernel).

For each hypothesis example, two hand-written Services (``web``: TCP
ClusterIP and NodePort over three pods; ``dns``: UDP over three pods) and
the node's Node sit among a fuzz batch ``A`` (legal, malformed and mangled
objects, from ``tests/fuzz_objects.py``) and a batch ``B`` of renamed
copies of some of ``A``'s Services and slices, which claim the same
virtual servers and win them (a manifests directory has no API server to
refuse the conflict). Files are JSON (see :func:`json_files`). Syncs:
full (``A``); partial (half of ``A`` dropped); partial (``B`` added:
frontends change hands); partial (the dropped half back, the rest and
``B`` gone); full again. In half the examples the fuzz Services' TCP real
servers hold a connection from the first sync on, so removed ones drain at
weight 0. After every sync:

* no exception; each family's result is an IPVS result, full or partial as
  asked, counting the virtual servers it committed;
* ``netagent debug diff``'s comparison holds: the proxier's
  ``kernel_objects()`` equal its ``render_objects()`` (a fresh render, so
  the memoised one is checked too), and, after the last sync, a fresh
  process's view (as ``debug diff`` builds one) agrees;
* real servers at weight 0 are exactly the ones draining;
* ``web`` and ``dns`` have their virtual servers (cluster IPs, and the node
  port on each node address) with exactly their three real servers;
* every member of every ipset is a valid, canonical member of its set;
* the foreign virtual servers, ipsets and iptables chains seeded before the
  first sync are unchanged.

After each partial sync (diffed from memory) the fakes, draining real
servers aside, equal those a fresh proxier's full sync of the same states
leaves on a fresh node; after the last one, a restarted proxier's full sync
(from a dump of the same fakes) writes nothing to IPVS, ipsets or
addresses, and neither does the final full sync.

``NETAGENT_FUZZ_EXAMPLES`` sets the examples (default 200); under
``CI=true`` generation is derandomized. Figures are printed (``-s``).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from fuzz_objects import SERVICE_NAME_LABEL, FuzzBatch, Obj, file_text, fuzz_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netagent.config import AgentConfig
from netagent.model import IPAddress, IPFamily, ProxyState
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.ipvs.fake import FakeDummy, FakeIpsets, FakeIpvs
from netagent.proxy.ipvs.model import IpsetSpec, RealServer, VirtualServer, VirtualServerKey
from netagent.proxy.ipvs.proxier import IpvsProxier
from netagent.proxy.ipvs.render import set_specs
from netagent.proxy.proxier import OwnedObject, SyncResult
from netagent.runtime.manifest_source import ManifestSource
from netagent.runtime.node_sync import NodeSync
from netagent.translate import InvalidObject, endpoint_slice, node_info, service_ports

EXAMPLES = int(os.environ.get("NETAGENT_FUZZ_EXAMPLES", "200"))
ip = ipaddress.ip_address
net = ipaddress.ip_network

# ---- the node and the hand-written objects (the lab's values) --------------------------------

NODE_NAME = "node-a"
NODE_IP = ip("192.0.2.2")
BRIDGE_IP = ip("10.244.0.1")  # cbr0: a local address, so node ports are bound on it too
NODE_IP6 = ip("2001:db8:2::2")
#: Every address of the node outside the dummy device (read_local_addresses' answer).
LOCAL: frozenset[IPAddress] = frozenset(
    {NODE_IP, BRIDGE_IP, ip("127.0.0.1"), NODE_IP6, ip("::1")}
)
NODE_PORT_IPS = (NODE_IP, BRIDGE_IP)
POD_IPS = ("10.244.0.11", "10.244.0.12", "10.244.0.13")
#: A dual-stack node: both families' proxiers share the one IPVS table, as in the kernel.
CONFIG = AgentConfig(
    node_name=NODE_NAME,
    cluster_cidrs=(net("10.244.0.0/16"), net("fd00:10:244::/56")),
    proxy_mode="ipvs",
)


def local_addresses() -> tuple[frozenset[IPAddress], frozenset[IPAddress]]:
    return LOCAL, LOCAL


def _service(name: str, cluster_ip: str, port: Obj, svc_type: str = "ClusterIP") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": svc_type,
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ports": [port],
            "sessionAffinity": "None",
        },
    }


def _slice(service: str, port: Obj) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-lab",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [port],
        "endpoints": [
            {
                "addresses": [addr],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": NODE_NAME,
                "targetRef": {"kind": "Pod", "name": f"pod-{'abc'[i]}", "namespace": "default"},
            }
            for i, addr in enumerate(POD_IPS)
        ],
    }


GOOD: list[Obj] = [
    {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE_NAME},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": str(NODE_IP)},
                {"type": "InternalIP", "address": str(NODE_IP6)},
                {"type": "Hostname", "address": NODE_NAME},
            ]
        },
    },
    _service(
        "web",
        "10.96.0.10",
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
        "NodePort",
    ),
    _slice("web", {"name": "http", "port": 8080, "protocol": "TCP"}),
    _service(
        "dns", "10.96.0.53", {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}
    ),
    _slice("dns", {"name": "dns", "port": 5353, "protocol": "UDP"}),
]
GOOD_FILE = "0000-lab.yaml"
#: The hand-written Services' virtual servers -> their real servers (weight 1, masq).
GOOD_SERVERS: dict[VirtualServerKey, frozenset[tuple[IPAddress, int]]] = {
    ("TCP", ip("10.96.0.10"), 80): frozenset((ip(a), 8080) for a in POD_IPS),
    **{("TCP", a, 30080): frozenset((ip(b), 8080) for b in POD_IPS) for a in NODE_PORT_IPS},
    ("UDP", ip("10.96.0.53"), 53): frozenset((ip(a), 5353) for a in POD_IPS),
}

# ---- the node's kernel, with foreign objects -------------------------------------------------

#: Virtual servers netagent does not own: not bound to its device, not a node port.
FOREIGN_SERVERS = (
    (VirtualServer("TCP", ip("192.0.2.99"), 8000, "wlc"), RealServer(ip("192.0.2.100"), 80)),
    (VirtualServer("UDP", NODE_IP, 9999), RealServer(ip("10.1.0.1"), 53, weight=3)),
    (VirtualServer("TCP", ip("2001:db8:2::99"), 443), RealServer(ip("2001:db8:2::100"), 8443)),
)
FOREIGN_KEYS = frozenset(vs.key for vs, _ in FOREIGN_SERVERS)
#: Sets of kube-proxy, and one whose name only looks like netagent's.
FOREIGN_SETS = (
    (IpsetSpec("KUBE-CLUSTER-IP", "hash:ip,port"), {"10.0.0.1,tcp:80"}),
    (IpsetSpec("KUBE-6-CLUSTER-IP", "hash:ip,port", family="inet6"), {"fd00::1,tcp:80"}),
    (IpsetSpec("NETAGENT-OTHER", "hash:ip"), {"10.0.0.2"}),
)
#: Someone else's chains, with their jumps from built-in chains: (table, chain, rule, jump).
FOREIGN_CHAINS = (
    ("filter", "FZ-FOREIGN", "-A FZ-FOREIGN -s 198.18.0.0/15 -j ACCEPT", "INPUT"),
    ("nat", "FZ-FOREIGN-NAT", "-A FZ-FOREIGN-NAT -p tcp --dport 2222 -j RETURN", "PREROUTING"),
)
FOREIGN_RULES = "".join(
    f"*{table}\n:{chain} - [0:0]\n{rule}\n-A {hook} -j {chain}\nCOMMIT\n"
    for table, chain, rule, hook in FOREIGN_CHAINS
)


#: A real server at weight 0: (virtual server, (address, port)).
Draining = tuple[VirtualServerKey, tuple[IPAddress, int]]


@dataclass
class Kernel:
    """One node's fakes: one IPVS, ipset and dummy device for both families, iptables per family."""

    ipvs: FakeIpvs = field(default_factory=FakeIpvs)
    ipsets: FakeIpsets = field(default_factory=FakeIpsets)
    dummy: FakeDummy = field(default_factory=FakeDummy)
    iptables: dict[IPFamily, FakeIptables] = field(
        default_factory=lambda: {f: FakeIptables(f) for f in IPFamily}
    )

    @classmethod
    def seeded(cls) -> Kernel:
        kernel = cls()
        for vs, rs in FOREIGN_SERVERS:
            kernel.ipvs.seed(vs, rs)
        for spec, members in FOREIGN_SETS:
            kernel.ipsets.seed(spec, members)
        for runner in kernel.iptables.values():
            runner.restore(FOREIGN_RULES)
        return kernel

    def proxier(self, family: IPFamily) -> IpvsProxier:
        """The agent's IPVS proxier (as registry._make_ipvs builds it) over these fakes,
        on a clock that stands still (no periodic full sync, no drain deadline)."""
        return IpvsProxier(
            ipvs=self.ipvs,
            ipsets=self.ipsets,
            dummy=self.dummy,
            iptables=self.iptables[family],
            local_addresses=local_addresses,
            conntrack=None,
            family=family,
            scheduler=CONFIG.ipvs_scheduler,
            exclude_cidrs=CONFIG.ipvs_exclude_cidrs,
            drift_check_period=CONFIG.sync_period,
            clock=lambda: 0.0,
        )

    def writes(self) -> int:
        """Writes attempted on IPVS, ipsets and the device, but ``ensure`` (a no-op if present)."""
        return (
            len(self.ipvs.calls)
            + len(self.ipsets.calls)
            + len([c for c in self.dummy.calls if c.method != "ensure"])
        )

    def state(self, draining: Iterable[Draining] = ()) -> dict[str, Any]:
        """Everything in the fakes, comparable; ``draining`` real servers left out."""
        skip = set(draining)
        servers = {
            vs.key: (
                vs,
                sorted(
                    (d.key, d.weight, d.forward)
                    for d in self.ipvs.dests(vs)
                    if (vs.key, d.key) not in skip
                ),
            )
            for vs in self.ipvs.services()
        }
        sets = {
            name: (spec, sorted(self.ipsets.members(name)))
            for name, spec in sorted(self.ipsets.list_sets().items())
        }
        addresses = sorted(self.dummy.addresses(), key=str) if self.dummy.exists() else None
        tables = {f.value: runner.save() for f, runner in self.iptables.items()}
        return {"ipvs": servers, "ipsets": sets, "addresses": addresses, "iptables": tables}


# ---- the checks after each sync -------------------------------------------------------------


def refusal(obj: Obj) -> InvalidObject | None:
    """The boundary's error for ``obj``, or None when it accepts it."""
    translate: dict[str, Callable[[Obj], object]] = {
        "Service": service_ports,
        "EndpointSlice": endpoint_slice,
        "Node": node_info,
    }
    try:
        translate[obj["kind"]](obj)
    except InvalidObject as exc:
        return exc
    return None


def json_files(objects: list[Obj], prefix: str) -> dict[str, tuple[str, Obj]]:
    """One ``.json`` file per object, sorting in list order: its text and the object read back.

    JSON only (unlike :func:`fuzz_objects.object_files`): the YAML path of the
    loader is ``test_fuzz_objects``' and the lab's business, and parsing a
    1,000-endpoint slice as YAML at every sync costs more than the syncs.
    """
    out = {}
    for i, obj in enumerate(objects):
        name = f"{prefix}{i:04d}.json"
        text = file_text(name, obj)
        out[name] = (text, json.loads(text))
    return out


def object_diff(want: Sequence[OwnedObject], have: Sequence[OwnedObject]) -> list[str]:
    """``debug diff``'s lines: missing, unexpected or different objects."""
    desired = {(o.kind, o.key): o for o in want}
    kernel = {(o.kind, o.key): o for o in have}
    out = []
    for key in sorted(desired.keys() | kernel.keys()):
        w, h = desired.get(key), kernel.get(key)
        if w is None:
            out.append(f"unexpected {key}")
        elif h is None:
            out.append(f"missing {key} ({w.owner})")
        elif w != h:
            out.append(f"different {key}: {h.content} ({h.owner}) != {w.content} ({w.owner})")
    return out


def contents(objects: Sequence[OwnedObject]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(o.kind, o.key, o.content) for o in objects]  # a fresh process knows no owner


def draining(proxiers: Iterable[IpvsProxier]) -> set[Draining]:
    return {t for p in proxiers for t in p.terminating}


def at_weight_zero(kernel: Kernel) -> set[Draining]:
    return {
        (vs.key, d.key)
        for vs in kernel.ipvs.services()
        if vs.key not in FOREIGN_KEYS
        for d in kernel.ipvs.dests(vs)
        if d.weight == 0
    }


def check_sync(
    kernel: Kernel,
    node_sync: NodeSync,
    results: Sequence[SyncResult],
    full: bool,
    *,
    fresh_process: bool = False,
) -> list[str]:
    """Every property of one sync; the problems found (empty: none)."""
    problems: list[str] = []
    states = node_sync.last_states
    assert [s.family for s in states] == [IPFamily.IPV4, IPFamily.IPV6]
    assert len(results) == len(states)
    proxiers: list[IpvsProxier] = []
    for state, result in zip(states, results, strict=True):
        proxier = node_sync.proxiers[state.family]
        assert isinstance(proxier, IpvsProxier)
        proxiers.append(proxier)
        committed = proxier.committed
        assert committed is not None
        if (result.mode, result.family, result.full) != ("ipvs", state.family, full):
            problems.append(f"result {result.mode} {result.family} full={result.full}")
        if result.rule_counts.get("virtual-servers") != len(committed.virtual_servers):
            problems.append(f"result counts {result.rule_counts}")
        # `netagent debug diff`: render against the kernel, in the agent's proxier ...
        want = proxier.render_objects(state)
        have = proxier.kernel_objects()
        problems += [f"{state.family.value}: {d}" for d in object_diff(want, have)]
        # ... and in a fresh process, which renders first, then reads.
        if fresh_process:
            fresh = kernel.proxier(state.family)
            if contents(fresh.render_objects(state)) != contents(want):
                problems.append(f"{state.family.value}: a fresh render differs")
            if contents(fresh.kernel_objects()) != contents(want):
                problems.append(f"{state.family.value}: a fresh process's kernel view differs")

    # Terminating real servers are exactly the weight-0 ones, and nothing else is at weight 0.
    terminating, at_zero = draining(proxiers), at_weight_zero(kernel)
    if at_zero != terminating:
        problems.append(f"weight 0: {sorted(at_zero ^ terminating, key=str)[:5]}")

    # The hand-written Services: their virtual servers, with exactly their real servers.
    services = {vs.key: vs for vs in kernel.ipvs.services()}
    for key, reals in GOOD_SERVERS.items():
        vs = services.get(key)
        if vs is None:
            problems.append(f"good virtual server {key} missing")
            continue
        dests = {(d.key, d.weight, d.forward) for d in kernel.ipvs.dests(vs)}
        if dests != {(r, 1, "masq") for r in reals}:
            problems.append(f"good virtual server {key}: {sorted(dests, key=str)}")
        if vs.scheduler != "rr" or vs.persistent:
            problems.append(f"good virtual server {key} is {vs}")
    bound = kernel.dummy.addresses()
    if not {ip("10.96.0.10"), ip("10.96.0.53")} <= bound:
        problems.append(f"good cluster IPs not bound: {sorted(bound, key=str)[:5]}")
    cluster_ips = kernel.ipsets.members("NETAGENT-CLUSTER-IP")
    if not {"10.96.0.10,tcp:80", "10.96.0.53,udp:53"} <= cluster_ips:
        problems.append("good cluster IPs not in NETAGENT-CLUSTER-IP")
    if "30080" not in kernel.ipsets.members("NETAGENT-NODE-PORT-TCP"):
        problems.append("good node port not in NETAGENT-NODE-PORT-TCP")

    # Every member of every set is a valid, canonical member of it.
    ours = {**set_specs(IPFamily.IPV4), **set_specs(IPFamily.IPV6)}
    for name, spec in kernel.ipsets.list_sets().items():
        if name in ours and spec != ours[name]:
            problems.append(f"set {name} is {spec}, not {ours[name]}")
        for member in kernel.ipsets.members(name):
            try:
                canonical = spec.entry(member).text()
            except ValueError as exc:
                problems.append(f"set {name}: invalid member {member!r}: {exc}")
                continue
            if canonical != member:
                problems.append(f"set {name}: {member!r} is not canonical ({canonical})")
    for family in IPFamily:
        version = 4 if family is IPFamily.IPV4 else 6
        name = next(n for n in set_specs(family) if n.endswith("IPVS-IPS"))
        on_device = {str(a) for a in bound if a.version == version}
        if kernel.ipsets.members(name) != on_device:
            problems.append(f"{name} is not the device's {family.value} addresses")

    problems += check_foreign(kernel)
    return problems


def check_foreign(kernel: Kernel) -> list[str]:
    problems = []
    services = {vs.key: vs for vs in kernel.ipvs.services()}
    for vs, rs in FOREIGN_SERVERS:
        if services.get(vs.key) != vs:
            problems.append(f"foreign virtual server {vs} changed: {services.get(vs.key)}")
        elif [d.server for d in kernel.ipvs.dests(vs)] != [rs]:
            problems.append(f"foreign real servers of {vs} changed")
    sets = kernel.ipsets.list_sets()
    for spec, members in FOREIGN_SETS:
        if sets.get(spec.name) != spec or kernel.ipsets.members(spec.name) != members:
            problems.append(f"foreign set {spec.name} changed")
    for runner in kernel.iptables.values():
        for table, chain, rule, hook in FOREIGN_CHAINS:
            if not runner.chain_exists(table, chain) or runner.rules(table, chain) != [rule]:
                problems.append(f"foreign chain {table} {chain} changed")
            if f"-A {hook} -j {chain}" not in runner.rules(table, hook):
                problems.append(f"foreign jump {table} {hook} -> {chain} gone")
    return problems


def check_memory_equals_dump(
    kernel: Kernel, states: Sequence[ProxyState], *, restart: bool
) -> list[str]:
    """After a partial sync: a fresh node's full sync of ``states`` leaves the same fakes
    (draining real servers aside), and (``restart``) a restarted proxier's full sync, from a
    dump of these fakes, writes nothing."""
    problems = []
    fresh = Kernel.seeded()
    for state in states:
        assert fresh.proxier(state.family).sync(state).full
    mine, theirs = kernel.state(at_weight_zero(kernel)), fresh.state()
    for part, value in mine.items():
        if value == theirs[part]:
            continue
        detail: list[object] = [value, theirs[part]]
        if isinstance(value, dict):
            other = theirs[part]
            keys = [k for k in value.keys() | other.keys() if value.get(k) != other.get(k)]
            detail = [(k, value.get(k), other.get(k)) for k in sorted(keys, key=str)[:3]]
        problems.append(f"partial sync != fresh full sync in {part}: {detail}")
    if not restart:
        return problems
    before, saved = kernel.writes(), kernel.state()
    for state in states:
        restarted = kernel.proxier(state.family)
        assert restarted.sync(state).full
    if kernel.writes() != before:
        calls = [*kernel.ipvs.calls, *kernel.ipsets.calls, *kernel.dummy.calls]
        problems.append(f"a restarted full sync wrote {kernel.writes() - before}: {calls[-5:]}")
    if kernel.state() != saved:
        problems.append("a restarted full sync changed the fakes")
    return problems


# ---- the test -------------------------------------------------------------------------------


class Directory:
    """The manifests directory: the hand-written file, and fuzz files by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        (path / GOOD_FILE).write_text(yaml.safe_dump_all(GOOD))

    def show(self, texts: dict[str, str]) -> None:
        """Exactly ``texts`` besides the hand-written file."""
        present = {p.name for p in self.path.iterdir() if p.name != GOOD_FILE}
        for name in present - texts.keys():
            (self.path / name).unlink()
        for name in texts.keys() - present:
            (self.path / name).write_text(texts[name])


@st.composite
def twins(draw: st.DrawFn, legal: list[Obj]) -> list[Obj]:
    """Batch ``B``: renamed copies of some of ``legal``'s Services and EndpointSlices.

    ``fz`` becomes ``fy`` (same length, still valid, and first in name order), so each
    copied Service claims its original's virtual servers, node ports and set entries and
    wins them while it is there: the frontends change hands, to a Service without
    endpoints when its slices were not copied, or with another affinity.
    """
    out = []
    for obj in legal:
        if obj["kind"] not in ("Service", "EndpointSlice") or not draw(st.booleans()):
            continue
        twin = copy.deepcopy(obj)
        twin["metadata"]["name"] = "fy" + twin["metadata"]["name"][2:]
        if obj["kind"] == "EndpointSlice":
            labels = twin["metadata"]["labels"]
            labels[SERVICE_NAME_LABEL] = "fy" + labels[SERVICE_NAME_LABEL][2:]
        elif twin["spec"]["type"] != "ExternalName" and draw(st.booleans()):
            twin["spec"]["sessionAffinity"] = "ClientIP"
            twin["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": 60}}
        out.append(twin)
    return out


FIGURES = ("examples", "objects", "refused", "syncs", "partial", "draining", "failures")


def test_fuzzed_objects_keep_the_ipvs_fakes_equal_to_the_render_and_spare_the_good_ones(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    figures = dict.fromkeys(FIGURES, 0)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=os.environ.get("CI", "").lower() == "true",
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=fuzz_batch(), data=st.data())
    def one_example(batch: FuzzBatch, data: st.DataObject) -> None:
        files_a = json_files(batch.objects, "1-fz-a-")
        files_b = json_files(data.draw(twins(batch.legal)), "1-fz-b-")
        files = files_a | files_b
        errors = {name: refusal(obj) for name, (_, obj) in files.items()}
        refused = {name: exc for name, exc in errors.items() if exc is not None}
        figures["examples"] += 1
        figures["objects"] += len(files)
        figures["refused"] += len(refused)

        kept = data.draw(st.lists(st.booleans(), min_size=len(files_a), max_size=len(files_a)))
        half = [n for n, keep in zip(files_a, kept, strict=True) if keep]
        other = [n for n, keep in zip(files_a, kept, strict=True) if not keep]
        drain = data.draw(st.booleans())
        phases = [
            (list(files_a), True),  # batch A
            (half, False),  # half of A gone
            (half + list(files_b), False),  # B's twins take frontends over
            (other, False),  # the dropped half back, the kept half and B gone
            (other, True),  # a full sync again
        ]

        kernel = Kernel.seeded()
        directory = Directory(tmp_path_factory.mktemp("fuzz-ipvs") / "manifests")
        source = ManifestSource(directory.path)
        config = replace(CONFIG, manifests_dir=directory.path)
        node_sync = NodeSync(config, source, proxier_factory=kernel.proxier)
        most_draining = 0
        for step, (names, full) in enumerate(phases):
            last = step == len(phases) - 1
            directory.show({n: files[n][0] for n in names})
            before = kernel.writes()
            try:
                results = node_sync.sync(full=full)
            except Exception:
                figures["failures"] += 1
                raise
            figures["syncs"] += 1
            figures["partial"] += not full
            # The boundary refused what it refuses, as the agent reports it.
            for name in names:
                exc = refused.get(name)
                assert exc is None or str(exc) in source.last_errors, (name, str(exc))
            problems = check_sync(kernel, node_sync, results, full, fresh_process=last)
            if last and kernel.writes() != before:
                problems.append(f"the last full sync wrote {kernel.writes() - before} objects")
            if not full:
                restart = phases[step + 1][1]  # before the final full sync, a restarted one
                problems += check_memory_equals_dump(kernel, node_sync.last_states, restart=restart)
            if problems:
                figures["failures"] += 1
            assert not problems, (step, problems[:10])
            proxiers = [p for p in node_sync.proxiers.values() if isinstance(p, IpvsProxier)]
            most_draining = max(most_draining, len(draining(proxiers)))
            if step == 0 and drain:
                # Connections on the fuzz Services' TCP real servers: removed ones drain.
                for vs in kernel.ipvs.services():
                    if vs.protocol != "TCP" or vs.key in GOOD_SERVERS or vs.key in FOREIGN_KEYS:
                        continue
                    for d in kernel.ipvs.dests(vs):
                        kernel.ipvs.set_connections(vs, d, active=1)
        figures["draining"] += most_draining

    try:
        one_example()
    finally:
        print(f"\nfuzz ipvs (fakes): {json.dumps(figures)}")
    assert figures["examples"] >= EXAMPLES
    assert figures["objects"] >= 200
    assert figures["failures"] == 0
