"""Reliability, case 2: faults in the kernel tools; the old rules serve, the first clean sync repairs.

Faults injected into a running agent, each while a change is pending:

- the restore tool (``iptables-nft-restore``, or ``nft`` in nftables mode)
  fails on every call while a flag file exists: a wrapper earlier in the
  agent's ``PATH`` (the agent finds its tools on ``PATH``). IPVS mode's
  iptables rules are constant, so it restores them at full syncs only, and
  a failed restore of the same rules does not hold back the virtual
  servers: every change is programmed despite the fault, each full sync
  reports the failure, and the first one after the fault repairs;
- another program holds the xtables lock (legacy backend; the lock file is
  moved to the test's directory with ``$XTABLES_LOCKFILE``, so the host's
  ``/run/xtables.lock`` is never taken), in the modes that write iptables
  rules (iptables; IPVS in the VM, where every sync fails on the lock but
  still programs its virtual servers; nftables mode takes no xtables lock).

Figures: syncs that failed during the fault, and syncs needed after it
cleared (target: the first one repairs everything); connections to the
unchanged Service during the fault (target: all answered by the old rules).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from netnslab import POD_IPS, LabService, LabServicePort, SingleNodeLab
from netnslab.patience import patience

pytestmark = pytest.mark.lab

PODS = ("pod-a", "pod-b", "pod-c")
HTTP = LabServicePort(name="http", port=80, target_port=8080)
WEB = LabService(name="web", cluster_ip="10.96.0.80", ports=(HTTP,))
NEW = LabService(name="new", cluster_ip="10.96.0.81", ports=(HTTP,))
NEWER = LabService(name="newer", cluster_ip="10.96.0.82", ports=(HTTP,))
SYNCED = r"synced IPv4"
FAILED = r"sync failed"


def wrapper(directory: Path, tool: str, flag: Path) -> Path:
    """A ``tool`` on a PATH directory that fails while ``flag`` exists, else runs the real one."""
    real = shutil.which(tool)
    assert real is not None, f"{tool} is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / tool
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{flag}" ]; then echo "injected fault: {tool} refuses" >&2; exit 1; fi\n'
        f'exec "{real}" "$@"\n'
    )
    script.chmod(0o755)
    return directory


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``predicate``; fail naming ``what`` after ``timeout`` s (stretched by the patience)."""
    timeout = patience(timeout)
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


def test_a_failing_restore_tool_keeps_the_old_rules_and_the_first_clean_sync_repairs(
    proxy_lab: SingleNodeLab, tmp_path: Path
) -> None:
    lab = proxy_lab
    ipvs = lab.proxy_mode == "ipvs"
    tool = "nft" if lab.proxy_mode == "nftables" else "iptables-nft-restore"
    flag = tmp_path / "fail"
    bindir = wrapper(tmp_path / "bin", tool, flag)
    lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
    # IPVS mode restores its (constant) iptables rules at full syncs only: a short sync
    # period brings the periodic full sync, and with it the fault, within seconds.
    periodic = ["--sync-period", "3s"] if ipvs else []
    agent = lab.start_agent(
        extra=["--iptables-backend", "nft", *periodic],
        env={"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"},
    )
    agent.wait_for_log(SYNCED, timeout=30)
    assert lab.tcp_request("client", "10.96.0.80", 80).split()[0] in PODS

    flag.touch()
    mark = len(agent.log_text())
    lab.write_manifests(services=[WEB, NEW], endpoints={"web": list(PODS), "new": ["pod-a"]})
    if ipvs:
        # A new Service changes ipsets and virtual servers, not the iptables rules, so the
        # partial sync that brings it needs no restore: it is programmed despite the fault.
        # (The manifests source may see the files half written first: wait for the Service
        # itself, not for the first partial sync.)
        wait_until("the new Service during the fault", lambda: lab.rules_mention_address(
            NEW.cluster_ip))  # fmt: skip
    agent.wait_for_log(FAILED, timeout=20, after=mark)
    if ipvs:
        # After a failed sync every sync is full and fails at the restore, but the rules it
        # would restore are the ones in the kernel: a change made now is programmed anyway.
        mark = len(agent.log_text())
        lab.write_manifests(
            services=[WEB, NEW, NEWER],
            endpoints={"web": list(PODS), "new": ["pod-a"], "newer": ["pod-b"]},
        )
        agent.wait_for_log(FAILED, timeout=20, after=mark)
        wait_until("a Service added during the fault", lambda: lab.rules_mention_address(
            NEWER.cluster_ip))  # fmt: skip
        assert lab.tcp_request("client", NEWER.cluster_ip, 80).split()[0] == "pod-b"
    time.sleep(3.0)  # a few retries fail meanwhile
    during = lab.many_tcp_requests("client", "10.96.0.80", 80, 30, timeout=2.0)
    assert all(r.error is None and r.reply.split()[0] in PODS for r in during if r.reply), during
    assert all(r.error is None for r in during), [r.error for r in during]
    if not ipvs:
        assert not lab.rules_mention_address(NEW.cluster_ip), "a change got through the fault"
    failed_during = count(FAILED, agent.log_text()[mark:])
    assert failed_during >= 2

    flag.unlink()
    cleared = len(agent.log_text())
    wait_until("the pending Service", lambda: lab.rules_mention_address(NEW.cluster_ip))
    agent.wait_for_log(SYNCED, timeout=20, after=cleared)  # the kernel can be ahead of the log
    after = agent.log_text()[cleared:]
    first = re.search(r"synced IPv4 \((full|partial)\)", after)
    assert first is not None and first.group(1) == "full", after
    # The sync in flight when the fault cleared may still report it, once; the first sync
    # after that repaired everything: no failure after it.
    assert count(FAILED, after[: first.start()]) <= 1, after
    assert count(FAILED, after[first.start() :]) == 0, after
    if ipvs:
        assert lab.tcp_request("client", NEWER.cluster_ip, 80).split()[0] == "pod-b"
    assert lab.tcp_request("client", "10.96.0.81", 80).split()[0] == "pod-a"
    assert lab.rules_mention_endpoint(POD_IPS["pod-c"], 8080)
    print(f"{lab.proxy_mode}: {failed_during} syncs failed during the fault; 1 sync repaired")


def test_a_held_xtables_lock_is_waited_for_a_bounded_time_reported_and_retried(
    xtables_lab: SingleNodeLab, tmp_path: Path
) -> None:
    lab = xtables_lab
    ipvs = lab.proxy_mode == "ipvs"
    lock = tmp_path / "xtables.lock"
    lock.touch()
    lab.write_manifests(services=[WEB], endpoints={"web": list(PODS)})
    # IPVS mode restores its constant iptables rules at full syncs only; a short
    # sync period brings one, and with it the lock, within seconds.
    periodic = ["--sync-period", "3s"] if ipvs else []
    agent = lab.start_agent(
        extra=["--iptables-backend", "legacy", *periodic], env={"XTABLES_LOCKFILE": str(lock)}
    )
    agent.wait_for_log(SYNCED, timeout=30)
    saved = lab.ns_exec("node", ["iptables-legacy-save", "-t", "nat"]).stdout
    assert "NETAGENT-SERVICES" in saved, saved

    def ipvs_has(service: LabService) -> bool:
        ipvsadm = lab.ns_exec("node", ["ipvsadm", "-Ln"]).stdout
        return f" {service.cluster_ip}:80 " in ipvsadm

    held = os.open(lock, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # what iptables-legacy takes (flock on the lock file)
    try:
        time.sleep(0.5)
        mark = len(agent.log_text())
        started = time.monotonic()
        lab.write_manifests(services=[WEB, NEW], endpoints={"web": list(PODS), "new": ["pod-a"]})
        if ipvs:
            # A new Service is ipsets and virtual servers, no iptables change: the sync
            # fails on the lock (its canary check), yet programs the virtual server.
            wait_until("a Service added while the lock is held", lambda: ipvs_has(NEW))
        line = agent.wait_for_log(r"xtables lock", timeout=30, after=mark)
        waited = time.monotonic() - started
        assert "held the xtables lock" in line and str(lock) in line, line
        assert "for more than 5s" in line
        assert waited < patience(20), f"the first lock failure took {waited:.1f}s"
        if ipvs:
            # Every sync now is full and fails on the lock, and each still programs the
            # virtual servers: a change made now is served before the release too.
            lab.write_manifests(
                services=[WEB, NEW, NEWER],
                endpoints={"web": list(PODS), "new": ["pod-a"], "newer": ["pod-b"]},
            )
            wait_until("a second Service while the lock is held", lambda: ipvs_has(NEWER))
            assert lab.tcp_request("client", NEWER.cluster_ip, 80).split()[0] == "pod-b"
            assert lab.tcp_request("client", NEW.cluster_ip, 80).split()[0] == "pod-a"
        assert agent.running(), "a held lock must never stop the agent"
        # The old rules serve meanwhile.
        assert lab.tcp_request("client", "10.96.0.80", 80).split()[0] in PODS
        failed = count(r"daemon: sync failed", agent.log_text()[mark:])
    finally:
        os.close(held)  # releases the lock
    cleared = len(agent.log_text())
    wait_until(
        "the new Service after the lock was released",
        lambda: lab.rules_mention_address(NEW.cluster_ip),
        timeout=30,
    )
    agent.wait_for_log(SYNCED, timeout=30, after=cleared)
    # At most the sync in flight at the release reports the lock once more.
    assert count(r"daemon: sync failed", agent.log_text()[cleared:]) <= 1
    assert lab.tcp_request("client", "10.96.0.81", 80).split()[0] == "pod-a"
    print(f"{lab.proxy_mode}: the lock was first reported {waited:.1f}s after the change; "
          f"{failed} syncs failed while it was held")  # fmt: skip
