"""Running commands in network namespaces, and creating and deleting them.

Why a thin layer over iproute2 instead of netlink calls from this process:
nothing here may touch the host's root namespace, and a subprocess that
enters the namespace (``ip netns exec``, ``ip -n``) cannot leak a setns()
into the test process by mistake. Every call has a timeout, so a wedged
command fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0


class LabCommandError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{' '.join(argv)} exited {returncode}: {stderr.strip() or stdout.strip()}"
        )


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one command with a timeout; raise :class:`LabCommandError` when ``check`` fails."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabCommandError(argv, -1, "", f"timed out after {timeout}s") from exc
    if check and proc.returncode != 0:
        raise LabCommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def ns_exec(
    ns: str,
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside network namespace ``ns``."""
    return run(exec_argv(ns, argv), check=check, timeout=timeout, input=input)


def ip_batch(ns: str, commands: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Run several ``ip`` commands in ``ns`` with one process (``ip -n NS -batch -``)."""
    run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n", timeout=timeout)


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = run(["ip", "netns", "list"]).stdout
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_namespace(name: str) -> None:
    """Create a named network namespace; fails if it already exists."""
    run(["ip", "netns", "add", name])


def namespace_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name``."""
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_namespace_processes(name: str, *, grace: float = 2.0) -> int:
    """SIGTERM, then SIGKILL, every process living in namespace ``name``.

    Only called for namespaces this lab created: whatever runs in them was
    started by the lab (servers, clients, the agent and their children).
    Returns how many processes were signalled.
    """
    pids = namespace_pids(name)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    return len(pids)


def delete_namespace(name: str) -> bool:
    """Kill what runs in ``name`` and delete it; False when it did not exist."""
    if name not in list_namespaces():
        return False
    kill_namespace_processes(name)
    run(["ip", "netns", "delete", name])
    log.debug("deleted namespace %s", name)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its netns is already released.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
