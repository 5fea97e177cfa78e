"""Running the real ``netagent`` command inside the lab node's namespace.

Why through the command line and not by importing netagent: the lab tests
prove what a user gets from ``netagent run --manifests DIR``: flag parsing,
logging, exit codes, backend detection, the kernel tools on PATH. The agent
is started as ``<python> -m netagent`` with the interpreter running the
tests, so it works from any virtualenv without knowing where ``bin/`` is.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from netnslab.netns import exec_argv
from netnslab.patience import patience

log = logging.getLogger(__name__)


def netagent_argv(python: str, args: Sequence[str]) -> list[str]:
    """``<python> -m netagent ARGS``."""
    return [python, "-m", "netagent", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True, slots=True)
class AgentRun:
    """The outcome of one blocking netagent command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def log(self) -> str:
        """Everything it printed (logging goes to stderr)."""
        return self.stderr + self.stdout

    def check(self) -> AgentRun:
        """Self, or AssertionError carrying the log when the exit status is not 0."""
        if self.returncode != 0:
            raise AssertionError(
                f"{' '.join(self.argv)} exited {self.returncode}\n--- log ---\n{self.log}"
            )
        return self


def run_netagent(ns: str, python: str, args: Sequence[str], *, timeout: float = 60.0) -> AgentRun:
    """Run one netagent command in ``ns`` to completion (``timeout`` stretched by patience)."""
    timeout = patience(timeout)
    argv = exec_argv(ns, netagent_argv(python, args))
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=_env(), check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise AssertionError(f"{' '.join(argv)} did not finish in {timeout}s\n{out}") from exc
    return AgentRun(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


class AgentHandle:
    """A long-running ``netagent run`` in the node namespace, its log in a file."""

    def __init__(
        self,
        ns: str,
        python: str,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = exec_argv(ns, netagent_argv(python, args))
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**_env(), **(env or {})},
            )
        log.debug("started agent pid %d: %s", self.proc.pid, " ".join(self.argv))

    @property
    def pid(self) -> int:
        """The agent's pid (``ip netns exec`` execs, so it is the agent itself)."""
        return self.proc.pid

    def running(self) -> bool:
        """True while the agent process lives."""
        return self.proc.poll() is None

    def log_text(self) -> str:
        """The agent's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, *, timeout: float = 15.0, after: int = 0) -> str:
        """Wait for a log line matching regex ``pattern`` at or after offset ``after``.

        Returns the line; raises TimeoutError (with the log) when none came or
        the agent exited first. ``timeout`` is stretched by the lab's patience.
        """
        regex = re.compile(pattern)
        timeout = patience(timeout)
        end = time.monotonic() + timeout
        while True:
            text = self.log_text()[after:]
            for line in text.splitlines():
                if regex.search(line):
                    return line
            if not self.running():
                raise TimeoutError(
                    f"agent exited ({self.proc.returncode}) before logging /{pattern}/:\n{text}"
                )
            if time.monotonic() >= end:
                raise TimeoutError(f"agent did not log /{pattern}/ within {timeout}s:\n{text}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status (idempotent)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("agent pid %d ignored SIGTERM; killing it", self.proc.pid)
                self.proc.kill()
                self.proc.wait(timeout=5.0)
        return self.proc.returncode
