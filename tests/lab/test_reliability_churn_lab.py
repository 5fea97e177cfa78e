"""Reliability, case 5 (the CI-sized run): a minute of churn through the lab API server.

The full run (10,000 Services, 10 changes per second for 10 minutes) is
``bench/programming_latency.py --churn`` and its figures are in
docs/reliability.md. Here the same script runs with 1,000 Services for 45 s
in each proxy mode of the run (iptables and nftables on the host; IPVS in the
qemu VM, with 300 Services: everything there is about 25 times slower):
every change either moves a Service's endpoint or deletes a Service and
creates a new one (20 %). It must report no change that never reached the
kernel, the agent's RSS must not grow by more than 10 %, and ``netagent
debug diff`` must exit 0 at the end (the kernel holds exactly what the API
says).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from netnslab.patience import patience

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


#: Services and changes per second, per mode. In the qemu VM (IPVS) the lab API server,
#: the change writer, the poller and the agent share one emulated CPU about 25 times
#: slower than the host's, and 10 changes a second outran the agent there (p50 47 s, 196
#: of 450 changes never seen), so the VM run is smaller and slower.
SIZE = {"iptables": (1000, 10), "nftables": (1000, 10), "ipvs": (300, 2)}
#: Seconds from the initial load to the start RSS. IPVS mode's first periodic full sync
#: (30 s after start; it dumps every virtual server's real servers) grows the heap once;
#: the baseline is taken after it, so the figure is growth under churn, not warm-up.
SETTLE = {"iptables": 3, "nftables": 3, "ipvs": 35}
#: Seconds after which a change counts as fallen behind: 5 s on the host (stretched by the
#: VM's patience there). In IPVS mode a periodic full sync dumps every virtual server's
#: real servers, which in the VM took up to 16 s at 300 Services with two CPUs (and a
#: change that arrives as it starts waits for all of it), so the bound there is 45 s.
FELL_BEHIND = {"iptables": patience(5.0), "nftables": patience(5.0), "ipvs": 45.0}


def test_a_minute_of_churn_programs_every_change_without_growing(
    lab_proxy_mode: str, tmp_path: Path
) -> None:
    out = tmp_path / "churn.json"
    services, rate = SIZE[lab_proxy_mode]
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "programming_latency.py"),
            "--services", str(services), "--rate", str(rate), "--duration", "45",
            "--churn", "0.2", "--proxy-mode", lab_proxy_mode, "--out", str(out),
            "--settle", str(SETTLE[lab_proxy_mode]),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    print(json.dumps(report))
    assert report["changes"] == 45 * rate
    assert report["services_deleted_and_created"] >= 45 * rate // 9
    assert report["missing"] == 0, report
    assert report["debug_diff_exit"] == 0, proc.stderr[-3000:]
    assert report["agent_rss_mib"]["growth_percent"] <= 10.0, report["agent_rss_mib"]
    # Not the performance target (that is the benchmark's): a change that took
    # longer than this to reach the kernel means the agent fell behind.
    assert report["kernel_observed"]["max_s"] < FELL_BEHIND[lab_proxy_mode], report
    assert proc.returncode == 0, proc.stderr[-3000:]
