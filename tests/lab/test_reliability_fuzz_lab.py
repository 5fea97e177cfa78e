"""Reliability case 4 on the real kernel: fuzzed objects among working Services.

Two hand-written Services (``web``: TCP ClusterIP and NodePort; ``dns``: UDP)
with real echo pods are programmed first and answer. Then, for each
hypothesis example, the manifests directory gets them again plus a
generated batch of at least 70 objects (API-legal odd ones, malformed ones
and randomly mangled ones, from ``tests/fuzz_objects.py``) and the agent
runs a full sync into the node's kernel. After each example:

* the agent exited 0 and logged no traceback (crashes: target 0);
* every object the boundary refuses is named in a warning line, one per
  object, and nothing else is warned about;
* ``web`` and ``dns`` still answer real traffic from a pod (cluster IPs) and
  from outside (NodePort), each request reaching one of their own pods
  (valid Services that stopped working: target 0);
* ``netagent debug diff`` exits 0: the kernel holds exactly the desired
  rules for the whole batch, and nothing of the previous example's batch.

Three examples per proxy mode (``NETAGENT_FUZZ_LAB_EXAMPLES``), so each mode
sees at least 210 generated objects; derandomized under ``CI=true``. The
figures are printed (``-s``) for docs/reliability.md.
"""

from __future__ import annotations

import json
import os

import pytest
from fuzz_objects import FuzzBatch, Obj, as_read, file_text, fuzz_batch, object_files
from hypothesis import HealthCheck, Phase, given, settings
from netnslab import NODE_IP, LabService, LabServicePort, SingleNodeLab
from netnslab.manifests import FILE_PREFIX

from netagent.translate import InvalidObject, endpoint_slice, node_info, service_ports

pytestmark = pytest.mark.lab

PODS = ("pod-a", "pod-b", "pod-c")
WEB = LabService(
    name="web",
    cluster_ip="10.96.0.10",
    type="NodePort",
    ports=(LabServicePort(name="http", port=80, target_port=8080, node_port=30080),),
)
DNS = LabService(
    name="dns",
    cluster_ip="10.96.0.53",
    ports=(LabServicePort(name="dns", port=53, protocol="UDP", target_port=5353),),
)
EXAMPLES = int(os.environ.get("NETAGENT_FUZZ_LAB_EXAMPLES", "3"))


def refusal(obj: Obj) -> InvalidObject | None:
    """The boundary's error for ``obj``, or None when it accepts it."""
    translate = {"Service": service_ports, "EndpointSlice": endpoint_slice, "Node": node_info}
    try:
        translate[obj["kind"]](obj)
    except InvalidObject as exc:
        return exc
    return None


def assert_good_services_answer(lab: SingleNodeLab) -> int:
    """Real requests to ``web`` and ``dns``; returns how many failed or reached a stranger."""
    results = lab.many_tcp_requests("client", "10.96.0.10", 80, 10)
    results += lab.many_tcp_requests("outside", NODE_IP, 30080, 10)
    results += lab.many_udp_requests("client", "10.96.0.53", 53, 10)
    bad = [r for r in results if not r.ok or (r.reply or "").split()[:1] not in ([p] for p in PODS)]
    return len(bad)


def test_fuzzed_objects_never_crash_the_agent_nor_break_working_services(
    proxy_lab: SingleNodeLab,
) -> None:
    lab = proxy_lab
    good = {"web": list(PODS), "dns": list(PODS)}
    lab.write_manifests(services=[WEB, DNS], endpoints=good)
    lab.run_agent().check()
    assert assert_good_services_answer(lab) == 0
    keys = ("examples", "objects", "refused", "crashes", "bad_requests", "diff_failures")
    figures = dict.fromkeys(keys, 0)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=os.environ.get("CI", "").lower() == "true",
        database=None,
        phases=(Phase.generate,),  # shrinking would re-run the kernel many times
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzz_batch(services=(15, 18), malformed=(30, 35), mangled=(12, 15)))
    def one_batch(batch: FuzzBatch) -> None:
        files = object_files(batch.objects, f"{FILE_PREFIX}zz-")
        texts = {name: file_text(name, obj) for name, obj in files.items()}
        lab.write_manifests(services=[WEB, DNS], endpoints=good, extra_files=texts)
        objects = [as_read(name, obj) for name, obj in files.items()]
        run = lab.run_agent(timeout=180)
        figures["examples"] += 1
        figures["objects"] += len(objects)
        crashed = run.returncode != 0 or "Traceback" in run.log
        figures["crashes"] += crashed
        assert not crashed, run.log[-4000:]

        warnings = [line for line in run.log.splitlines() if "WARNING" in line]
        refused = [e for e in (refusal(obj) for obj in objects) if e is not None]
        figures["refused"] += len(refused)
        for exc in refused:
            naming = [w for w in warnings if f"skipping {exc.kind} {exc.ref} (" in w]
            assert naming, (str(exc), [w for w in warnings if exc.name[:12] in w])
        skipping = [w for w in warnings if "skipping " in w]
        duplicates = [w for w in skipping if "duplicate of the one in" in w]
        named = {f"skipping {e.kind} {e.ref} (" for e in refused}
        unexplained = [
            w for w in skipping if w not in duplicates and not any(n in w for n in named)
        ]
        assert not unexplained, unexplained
        assert len(skipping) - len(duplicates) == len(refused), [str(e) for e in refused]
        for w in duplicates:
            # Fuzz objects may repeat each other's names, never a hand-written one's.
            assert w.count(f"/{FILE_PREFIX}zz-") == 2, w

        bad = assert_good_services_answer(lab)
        figures["bad_requests"] += bad
        assert bad == 0
        diff = lab.netagent(["debug", "diff", *lab.agent_args(lab.manifest_dir, once=False)[1:]])
        figures["diff_failures"] += diff.returncode != 0
        assert diff.returncode == 0, diff.log[-4000:]

    one_batch()
    print(f"\nfuzz {lab.proxy_mode}: {json.dumps(figures)}")
    assert figures["examples"] == EXAMPLES
    assert figures["objects"] >= 70 * EXAMPLES
    assert figures["crashes"] == figures["bad_requests"] == figures["diff_failures"] == 0
