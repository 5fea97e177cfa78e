"""The seam between the nftables proxier and the kernel: a Protocol, the real ``nft`` runner.

Why a Protocol with four methods: the proxier needs one atomic write (an
``nft -f -`` transaction), a read of its own table (``nft list table``), a
cheap "is my table still the one I wrote?" probe (the table's handle, which
the kernel changes when a table is deleted and re-created, e.g. by a
firewall reload running ``nft flush ruleset``) and an availability check.
Keeping the seam this narrow lets :class:`netagent.proxy.nftables.fake.FakeNft`
model it faithfully without root, and lets the lab tests drive the real
runner and the fake with the same transactions and compare the outcomes.

Atomicity, as nft actually behaves (nftables 1.0.6): a payload passed with
``-f`` is one kernel transaction; when any command in it is refused, nothing
of it is applied. nft names the refused command as ``/dev/stdin:LINE:COLS:
Error: MESSAGE``, which :func:`nft_error` turns into an :class:`NftError`
carrying that payload line, so the sync log says which rule the kernel
refused rather than only that "nft failed".
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

#: Seconds a transaction may take regardless of its size, and the extra
#: seconds per byte of payload (1 s per 200 KB): a sync of a large cluster
#: writes megabytes and must not be killed half-way, while a wedged nft must
#: not hang the sync loop forever.
RUN_TIMEOUT_BASE = 60.0
RUN_TIMEOUT_PER_BYTE = 1.0 / 200_000
#: Seconds before a listing is considered wedged.
READ_TIMEOUT = 60.0

# "/dev/stdin:7:22-28: Error: Could not process rule: No such file or directory"
# (nft names the input "/dev/stdin" for "-f -"; accept any file name and a
# single column as well as a column range).
_LOCATED_ERROR_RE = re.compile(r"^(?P<file>\S*?):(?P<line>\d+):\d+(?:-\d+)?: Error: (?P<msg>.*)$")
# "netlink: Error: set is not a map", "Error: No such file or directory".
_ERROR_RE = re.compile(r"Error: (?P<msg>.*)$")


class NftError(RuntimeError):
    """nft refused a transaction or a listing, or could not run.

    Attributes:
        stderr: What nft printed on stderr ("" when it never ran).
        message: nft's own complaint, e.g. ``Could not process rule: File exists``.
        line: 1-based payload line nft complained about first, if it named one.
        payload_line: The text of that line (stripped), if known.
    """

    def __init__(
        self,
        message: str,
        *,
        stderr: str = "",
        line: int | None = None,
        payload_line: str | None = None,
        command: str = "nft",
    ) -> None:
        self.stderr = stderr
        self.message = message
        self.line = line
        self.payload_line = payload_line
        detail = f"{command}: {message}"
        if line is not None:
            where = f"line {line}"
            if payload_line is not None:
                where += f" {payload_line!r}"
            detail = f"{command} refused {where}: {message}"
        super().__init__(detail)


def nft_error(stderr: str, payload: str | None = None, *, command: str = "nft -f -") -> NftError:
    """The NftError for what nft printed; the first located error names the payload line.

    nft reports every command it refused, each as ``FILE:LINE:COLS: Error:
    MESSAGE`` followed by the offending line and carets; the first one is
    what the kernel tripped over first, so that is the one the error names.
    """
    lines = stderr.splitlines()
    for text in lines:
        located = _LOCATED_ERROR_RE.match(text.strip())
        if located is None:
            continue
        number = int(located.group("line"))
        source = payload.splitlines() if payload is not None else []
        payload_line = source[number - 1].strip() if 0 < number <= len(source) else None
        return NftError(
            located.group("msg").strip(),
            stderr=stderr,
            line=number,
            payload_line=payload_line,
            command=command,
        )
    for text in lines:
        unlocated = _ERROR_RE.search(text)
        if unlocated is not None:
            return NftError(unlocated.group("msg").strip(), stderr=stderr, command=command)
    summary = " ".join(t.strip() for t in lines if t.strip())[:500] or "(no output)"
    return NftError(summary, stderr=stderr, command=command)


def run_timeout(payload_bytes: int) -> float:
    """Seconds an ``nft -f -`` of ``payload_bytes`` bytes may take."""
    return RUN_TIMEOUT_BASE + payload_bytes * RUN_TIMEOUT_PER_BYTE


class NftRunner(Protocol):
    """What the nftables proxier needs from nft, for every table it owns."""

    def run(self, payload: str) -> None:
        """Apply ``payload`` as one atomic ``nft -f -`` transaction.

        Raises NftError when nft refuses it; then nothing of it was applied.
        """
        ...

    def list_table(self, family: str, table: str, *, terse: bool = False) -> str | None:
        """``nft [-t] list table FAMILY TABLE`` text, or None when the table does not exist.

        ``terse`` leaves out set and map elements, which is most of the text.
        """
        ...

    def table_handle(self, family: str, table: str) -> int | None:
        """The kernel handle of the table (from ``nft -j list tables``), None when missing.

        Cheap compared with a listing; a changed handle means the table was
        deleted and re-created behind the proxier's back.
        """
        ...

    def available(self) -> bool:
        """True when nft can be run at all."""
        ...


@dataclass
class SubprocessNft:
    """The real runner: ``nft`` as a subprocess, the payload on its stdin.

    Attributes:
        netns: When set, every command runs under ``ip netns exec NETNS``
            (lab tests, benchmarks). The agent itself runs with None, already
            inside its node's namespace.
        nft: The nft binary to run.
        read_timeout: Seconds a listing may take.
        calls: Every command started, as ``(kind, *argv)`` with kind one of
            ``run``, ``list`` or ``tables`` and argv the full command line
            (including the ``ip netns exec`` prefix); tests use it to assert,
            for example, that a partial sync listed nothing.
    """

    netns: str | None = None
    nft: str = "nft"
    read_timeout: float = READ_TIMEOUT
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def available(self) -> bool:
        """True when the nft binary (and ``ip``, for a netns) is on PATH; runs nothing."""
        if self.netns is not None and shutil.which("ip") is None:
            return False
        return shutil.which(self.nft) is not None

    def run(self, payload: str) -> None:
        """``nft -f -`` with ``payload`` on stdin; raise NftError naming the refused line."""
        timeout = run_timeout(len(payload.encode()))
        proc = self._exec("run", ["-f", "-"], payload, timeout)
        if proc.returncode != 0:
            raise nft_error(proc.stderr, payload, command=f"{self.nft} -f -")

    def list_table(self, family: str, table: str, *, terse: bool = False) -> str | None:
        """``nft [-t] list table FAMILY TABLE``; None when nft says the table does not exist."""
        args = ["-t"] if terse else []
        args += ["list", "table", family, table]
        proc = self._exec("list", args, None, self.read_timeout)
        if proc.returncode == 0:
            return proc.stdout
        if "No such file or directory" in proc.stderr:
            return None
        raise nft_error(proc.stderr, command=shlex.join([self.nft, *args]))

    def table_handle(self, family: str, table: str) -> int | None:
        """The table's handle from ``nft -j list tables``, or None when there is no such table."""
        args = ["-j", "list", "tables"]
        proc = self._exec("tables", args, None, self.read_timeout)
        command = shlex.join([self.nft, *args])
        if proc.returncode != 0:
            raise nft_error(proc.stderr, command=command)
        try:
            items = json.loads(proc.stdout)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise NftError(f"unreadable JSON: {exc}", stderr=proc.stderr, command=command) from exc
        for item in items:
            found = item.get("table") if isinstance(item, dict) else None
            if (
                isinstance(found, dict)
                and found.get("family") == family
                and found.get("name") == table
            ):
                return int(found["handle"])
        return None

    def _exec(
        self, kind: str, args: Sequence[str], stdin: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.nft, *args]
        full = ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv
        self.calls.append((kind, *full))
        if shutil.which(full[0]) is None:
            raise NftError(f"{full[0]} not found on PATH", command=shlex.join(argv))
        try:
            return subprocess.run(
                full, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise NftError(
                f"timed out after {timeout:.0f}s (whether it was applied is unknown)",
                command=shlex.join(full),
            ) from exc
        except OSError as exc:
            raise NftError(f"could not run: {exc}", command=shlex.join(full)) from exc
