"""Sending lab traffic from a namespace and reading back what happened.

Why typed results and distinct exceptions: the proxy tests must tell "the
connection was refused at once" (a REJECT for a Service without endpoints)
from "nothing answered" (a DROP, or broken rules), and must know which pod
answered and which source address it saw. :class:`ProbeResult` carries all
of that, parsed from the JSON lines of :mod:`netnslab.probe_client`, which
runs inside the namespace so the traffic really leaves from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netnslab.netns import LabCommandError, exec_argv, ns_exec

PROBE_SCRIPT = Path(__file__).with_name("probe_client.py")


class ProbeError(Exception):
    """A request did not get a reply; ``result`` says how it failed."""

    def __init__(self, message: str, result: ProbeResult) -> None:
        super().__init__(message)
        self.result = result


class ProbeRefused(ProbeError, ConnectionRefusedError):
    """The connection was actively refused (RST or ICMP port unreachable)."""


class ProbeTimeout(ProbeError, TimeoutError):
    """Nothing came back within the timeout."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One attempt as seen by the client.

    Attributes:
        reply: The echo server's reply line (``pod-a 10.244.0.20:40112``), or
            None on failure.
        error: None on success, else ``refused``, ``timeout``, ``reset``,
            ``unreachable``, ``closed``, ``deadline`` or ``error``.
        detail: The OS error text, for assertion messages.
        elapsed: Seconds the attempt took, measured inside the namespace.
        local: The client's own ``ip:port``.
    """

    reply: str | None
    error: str | None
    detail: str
    elapsed: float
    local: str

    @staticmethod
    def from_json(line: str) -> ProbeResult:
        """Parse one line printed by the probe client."""
        data: dict[str, Any] = json.loads(line)
        return ProbeResult(
            reply=data["reply"],
            error=data["error"],
            detail=data.get("detail", ""),
            elapsed=float(data.get("elapsed", 0.0)),
            local=data.get("local", ""),
        )

    @property
    def ok(self) -> bool:
        """True when a reply arrived."""
        return self.error is None

    @property
    def pod(self) -> str:
        """The name of the pod that answered ('' on failure)."""
        return self.reply.split()[0] if self.reply else ""

    @property
    def peer(self) -> str:
        """The ``ip:port`` the backend saw as its peer ('' on failure)."""
        parts = self.reply.split() if self.reply else []
        return parts[1] if len(parts) > 1 else ""

    @property
    def peer_ip(self) -> str:
        """The source IP the backend saw ('' on failure)."""
        return self.peer.rpartition(":")[0]

    def raise_for_error(self, what: str) -> str:
        """The reply, or the matching :class:`ProbeError` naming ``what``."""
        if self.error is None:
            return self.reply or ""
        message = f"{what}: {self.error} after {self.elapsed:.3f}s ({self.detail})"
        if self.error == "refused":
            raise ProbeRefused(message, self)
        if self.error in ("timeout", "deadline"):
            raise ProbeTimeout(message, self)
        raise ProbeError(message, self)


def probe_argv(python: str, *args: str) -> list[str]:
    """The probe client's argv (isolated interpreter, no site-packages: fast start)."""
    return [python, "-I", "-S", str(PROBE_SCRIPT), *args]


def many_requests(
    ns: str,
    proto: str,
    ip: str,
    port: int,
    count: int,
    *,
    python: str,
    payload: str = "hello\n",
    timeout: float = 1.0,
    deadline: float = 60.0,
) -> list[ProbeResult]:
    """``count`` new connections (TCP) or new source ports (UDP) from ``ns``, one process."""
    if proto not in ("tcp", "udp"):
        raise ValueError(f"proto must be tcp or udp, got {proto!r}")
    argv = probe_argv(
        python,
        proto,
        ip,
        str(port),
        "--count",
        str(count),
        "--payload",
        payload,
        "--timeout",
        str(timeout),
        "--deadline",
        str(deadline),
    )
    proc = ns_exec(ns, argv, timeout=deadline + timeout + 10.0)
    results = [ProbeResult.from_json(line) for line in proc.stdout.splitlines() if line]
    if len(results) != count:
        raise LabCommandError(argv, proc.returncode, proc.stdout, proc.stderr or "short output")
    return results


def wait_tcp(ns: str, targets: Sequence[str], *, python: str, deadline: float = 5.0) -> None:
    """Wait until every ``ip:port`` in ``targets`` accepts a connection from ``ns``."""
    proc = ns_exec(
        ns,
        probe_argv(python, "wait-tcp", *targets, "--deadline", str(deadline)),
        timeout=deadline + 10.0,
    )
    failed = [r for r in map(ProbeResult.from_json, proc.stdout.splitlines()) if not r.ok]
    if failed:
        raise TimeoutError("not accepting connections: " + "; ".join(r.detail for r in failed))


class LineReader:
    """Reads newline-terminated lines from a pipe with a deadline (no thread)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._eof = False

    def readline(self, timeout: float) -> str | None:
        """The next line without its newline; None at EOF; TimeoutError when none came."""
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if self._eof:
                if not self._buf:
                    return None
                line, self._buf = self._buf, b""
                return line.decode(errors="replace")
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line within {timeout}s")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                if chunk:
                    self._buf += chunk
                else:
                    self._eof = True
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")


class TcpSession:
    """One long-lived TCP connection from a namespace; each :meth:`request` reuses it.

    Used to prove that an established connection survives a rule change.
    """

    def __init__(self, ns: str, ip: str, port: int, *, python: str, timeout: float = 2.0) -> None:
        self.target = f"{ip}:{port}"
        self._timeout = timeout
        self._proc = subprocess.Popen(
            exec_argv(ns, probe_argv(python, "session", ip, str(port), "--timeout", str(timeout))),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._proc.stdout is not None
        self._reader = LineReader(self._proc.stdout.fileno())
        first = self._next(timeout + 5.0)
        if not first.ok:
            self.close()
        first.raise_for_error(f"TCP session to {self.target}")
        self.local = first.local

    def _next(self, timeout: float) -> ProbeResult:
        line = self._reader.readline(timeout)
        if line is None:
            return ProbeResult(None, "closed", "session helper exited", 0.0, "")
        return ProbeResult.from_json(line)

    def request_result(self, line: str = "hello") -> ProbeResult:
        """Send one line on the open connection and return the typed result."""
        stdin = self._proc.stdin
        if stdin is None or stdin.closed or self._proc.poll() is not None:
            return ProbeResult(None, "closed", "session already closed", 0.0, "")
        stdin.write(line.rstrip("\n").encode() + b"\n")
        stdin.flush()
        return self._next(self._timeout + 5.0)

    def request(self, line: str = "hello") -> str:
        """Send one line on the open connection; the reply, or a :class:`ProbeError`."""
        return self.request_result(line).raise_for_error(f"TCP session to {self.target}")

    def close(self) -> None:
        """Close the connection and reap the helper (idempotent)."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=3.0)
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> TcpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
