"""The seam between the applier and the iptables tools: a Protocol, the real runner, backend choice.

Why a Protocol with few methods: the applier needs only an atomic write
(``iptables-restore --noflush``), a read (``iptables-save``) and a cheap
existence check for the canary chain. Keeping the seam this narrow lets
:class:`netagent.proxy.iptables.fake.FakeIptables` model it faithfully, so
the applier is tested without root, and lets the lab tests run the very same
applier against the kernel inside a network namespace (``netns``).

Atomicity, as the tools actually behave (checked on iptables 1.8.9, both
backends): a restore payload is applied *one table at a time*. Each
``COMMIT`` installs its table; an error discards the table being parsed and
everything after it, but tables committed earlier stay. The applier
therefore treats any failure as "kernel state unknown" and makes the next
sync a full one.

Backend choice (``auto``): the host's other components (kubelet, the CNI,
Docker, firewalld) already wrote rules with one of iptables-nft or
iptables-legacy, and rules written with the other would sit in a parallel
ruleset the kernel also evaluates, which is how duplicated or stale rules
appear (ANCHORS: complaint 7). Like kubernetes-sigs/iptables-wrappers, we
first look for kubelet's hint chains, then count the rules each backend
shows and pick the busier one, preferring nft when they tie (including when
both are empty).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from netagent.model import IPFamily

log = logging.getLogger(__name__)

Backend = Literal["nft", "legacy"]
BACKENDS: tuple[Backend, ...] = ("nft", "legacy")
BACKEND_SETTINGS = ("auto", "nft", "legacy")

#: Chains kubelet (>= 1.17) creates in the mangle table; their presence is the
#: strongest sign of which backend the node uses.
KUBELET_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")

#: Seconds a restore may take on top of its per-byte allowance (and the
#: whole timeout of save/check processes, which read a bounded amount).
RESTORE_TIMEOUT = 300.0
READ_TIMEOUT = 60.0
#: The slowest restore rate the timeout allows for, in payload bytes per second.
#: Measured here: about 3 MB/s for a 48 MB full sync at 10,000 services with the
#: table listed first (docs/performance.md); this floor is 30 times slower, so a
#: large payload gets a longer bound instead of a timeout that repeats on every
#: full sync.
RESTORE_MIN_BYTES_PER_SECOND = 100_000.0
#: Seconds a tool waits for the xtables lock (``--wait``) before it gives up. The
#: legacy backend takes ``/run/xtables.lock`` (``$XTABLES_LOCKFILE``); a program
#: that holds it (an admin's long iptables command, a stuck firewall script) then
#: fails one sync, which is reported and retried, instead of wedging the agent.
#: kube-proxy waits 5 s too. The nft backend takes no lock.
LOCK_WAIT = 5

# "Error occurred at line: 7" (parse errors) or "line 2 failed" (commit errors).
_FAILED_LINE_RE = re.compile(r"line:? (\d+)")


class IptablesError(RuntimeError):
    """An iptables tool failed or is missing.

    Attributes:
        stderr: What the tool printed on stderr ("" when it never ran).
        line: 1-based payload line the tool reported as failing, if any.
        line_text: The text of that payload line, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        stderr: str = "",
        line: int | None = None,
        line_text: str | None = None,
    ) -> None:
        self.stderr = stderr
        self.line = line
        self.line_text = line_text
        detail = message
        if line is not None:
            detail += f" (line {line}"
            detail += f": {line_text!r})" if line_text is not None else ")"
        super().__init__(detail)


class IptablesRunner(Protocol):
    """What the applier needs from iptables, for one address family."""

    @property
    def family(self) -> IPFamily:
        """The family this runner programs (iptables or ip6tables)."""
        ...

    @property
    def lists_tables_first(self) -> bool:
        """True when a large payload should start each table with ``-S`` (see below)."""
        ...

    def restore(self, payload: str) -> None:
        """Apply ``payload`` with ``iptables-restore --noflush``; raise IptablesError on failure.

        Whatever the tool prints on stdout (a ``-S`` listing) is discarded.
        """
        ...

    def save(self, table: str | None = None) -> str:
        """``iptables-save`` text of one table, or of every existing table when None."""
        ...

    def chain_exists(self, table: str, chain: str) -> bool:
        """True when ``chain`` exists in ``table`` (a missing table means False)."""
        ...


def failing_line(stderr: str, payload: str) -> tuple[int | None, str | None]:
    """The payload line an iptables-restore error message points at, and its text."""
    match = _FAILED_LINE_RE.search(stderr)
    if match is None:
        return None, None
    number = int(match.group(1))
    lines = payload.splitlines()
    text = lines[number - 1] if 0 < number <= len(lines) else None
    return number, text


def restore_timeout_for(payload_bytes: int, base: float = RESTORE_TIMEOUT) -> float:
    """Seconds a restore of ``payload_bytes`` may take: ``base`` plus the per-byte allowance."""
    return base + payload_bytes / RESTORE_MIN_BYTES_PER_SECOND


def tool_names(family: IPFamily, backend: Backend) -> tuple[str, str, str]:
    """``(restore, save, iptables)`` binary names for a family and backend."""
    stem = "iptables" if family is IPFamily.IPV4 else "ip6tables"
    return f"{stem}-{backend}-restore", f"{stem}-{backend}-save", f"{stem}-{backend}"


@dataclass
class SubprocessIptables:
    """The real runner: iptables[-nft|-legacy]-restore/-save as subprocesses.

    Attributes:
        family: IPv4 uses ``iptables-*``, IPv6 ``ip6tables-*``.
        backend: ``nft`` or ``legacy`` (resolve ``auto`` first with
            :func:`resolve_backend`).
        netns: When set, every command runs under ``ip netns exec NETNS``
            (lab tests, benchmarks). The agent itself runs with None, already
            inside its node's namespace.
    """

    family: IPFamily = IPFamily.IPV4
    backend: Backend = "nft"
    netns: str | None = None
    restore_timeout: float = RESTORE_TIMEOUT
    read_timeout: float = READ_TIMEOUT
    _tools: tuple[str, str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"iptables backend must be one of {BACKENDS}, got {self.backend!r}")
        self._tools = tool_names(self.family, self.backend)

    @property
    def lists_tables_first(self) -> bool:
        """The nft backend: a chainless ``-S`` makes the restore fetch each table once.

        Under ``--noflush``, iptables-nft-restore 1.8.9 keeps a sorted list
        of every chain name the payload touches and walks it for each line,
        so one large transaction costs the square of its chain count (22,000
        chains: 24 s; the same rules after ``-S``: 1.7 s). Listing the table
        first fills the tool's cache whole and skips that list. The legacy
        backend reads and writes whole tables anyway and gains nothing.
        """
        return self.backend == "nft"

    def available(self) -> bool:
        """True when this backend's restore, save and iptables binaries are installed."""
        return all(shutil.which(tool) is not None for tool in self._tools)

    def restore(self, payload: str) -> None:
        """Apply ``payload`` atomically per table; raise IptablesError with the failing line."""
        restore_tool = self._tools[0]
        timeout = restore_timeout_for(len(payload.encode()), self.restore_timeout)
        argv = [restore_tool, "--noflush", "--wait", str(LOCK_WAIT)]
        proc = self._run(argv, payload, timeout, stdout=False)
        if proc.returncode != 0:
            _raise_if_lock_busy(restore_tool, proc.stderr)
            line, text = failing_line(proc.stderr, payload)
            raise IptablesError(
                f"{restore_tool} exited {proc.returncode}: {_first_line(proc.stderr)}",
                stderr=proc.stderr,
                line=line,
                line_text=text,
            )

    def save(self, table: str | None = None) -> str:
        """``iptables-save`` of one table, or of all tables when ``table`` is None."""
        save_tool = self._tools[1]
        argv = [save_tool] if table is None else [save_tool, "-t", table]
        proc = self._run(argv, None, self.read_timeout)
        if proc.returncode != 0:
            raise IptablesError(
                f"{' '.join(argv)} exited {proc.returncode}: {_first_line(proc.stderr)}",
                stderr=proc.stderr,
            )
        return proc.stdout

    def chain_exists(self, table: str, chain: str) -> bool:
        """``iptables -t TABLE -S CHAIN``: exit 0 exists, exit 1 missing, anything else fails."""
        argv = [self._tools[2], "--wait", str(LOCK_WAIT), "-t", table, "-S", chain]
        proc = self._run(argv, None, self.read_timeout)
        if proc.returncode == 0:
            return True
        _raise_if_lock_busy(self._tools[2], proc.stderr)
        if proc.returncode == 1:
            # Legacy: "No chain/target/match by that name."; nft reports a chain of a
            # missing table as "incompatible". Both mean: not there.
            return False
        raise IptablesError(
            f"{' '.join(argv)} exited {proc.returncode}: {_first_line(proc.stderr)}",
            stderr=proc.stderr,
        )

    def _run(
        self, argv: Sequence[str], stdin: str | None, timeout: float, *, stdout: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one tool; with ``stdout=False`` its stdout goes to /dev/null (never into memory)."""
        if shutil.which(argv[0]) is None:
            raise IptablesError(
                f"{argv[0]} not found on PATH: install iptables with the {self.backend} "
                "backend or choose the other one (config iptables.backend, flag --iptables-backend)"
            )
        full = ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)
        try:
            return subprocess.run(
                full,
                input=stdin,
                stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise IptablesError(f"{shlex.join(full)} timed out after {timeout:.0f}s") from exc
        except OSError as exc:
            raise IptablesError(f"{shlex.join(full)} could not run: {exc}") from exc


class XtablesLockBusy(IptablesError):
    """The xtables lock stayed held by another program for :data:`LOCK_WAIT` seconds."""


def _raise_if_lock_busy(tool: str, stderr: str) -> None:
    if "xtables lock" in stderr:
        lockfile = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
        raise XtablesLockBusy(
            f"{tool}: another program held the xtables lock ({lockfile}) for more than "
            f"{LOCK_WAIT}s; nothing was written, the next sync retries",
            stderr=stderr,
        )


def _first_line(text: str) -> str:
    """A one-line summary of a tool's stderr.

    iptables-nft-restore often prints its version prefix on one line and the
    actual complaint on the next, and ends with a "Try ... --help" hint; keep
    the informative lines only.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Try ")]
    return " ".join(lines[:3])[:500] or "(no output)"


#: Runs one command and returns its stdout, or None when it failed or is missing.
CommandOutput = Callable[[Sequence[str]], str | None]


def _command_output(netns: str | None) -> CommandOutput:
    def run(argv: Sequence[str]) -> str | None:
        if shutil.which(argv[0]) is None:
            return None
        full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
        try:
            proc = subprocess.run(
                full, capture_output=True, text=True, timeout=READ_TIMEOUT, check=False
            )
        except (subprocess.TimeoutExpired, OSError):
            return None
        return proc.stdout if proc.returncode == 0 else None

    return run


def _rule_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-"))


def _has_kubelet_hint(text: str) -> bool:
    return any(line.startswith(f":{c} ") for line in text.splitlines() for c in KUBELET_HINT_CHAINS)


def detect_backend(*, netns: str | None = None, run: CommandOutput | None = None) -> Backend:
    """Guess which backend the node's other components use.

    1. kubelet's hint chains in nft's mangle table -> nft; in legacy -> legacy.
       (Legacy is read whole: ``-t mangle`` would create the table there.)
    2. Otherwise the backend showing more rules (IPv4 + IPv6) wins; a tie,
       including "both empty", picks nft.

    A backend whose tools are not installed is never chosen when the other
    one is; with neither installed this raises IptablesError.
    """
    run = run or _command_output(netns)
    installed = {
        b: run([tool_names(IPFamily.IPV4, b)[2], "--version"]) is not None for b in BACKENDS
    }
    if not any(installed.values()):
        raise IptablesError("neither iptables-nft nor iptables-legacy is installed")
    if not installed["legacy"]:
        return "nft"
    if not installed["nft"]:
        return "legacy"

    def saved(backend: Backend, *args: str) -> str:
        out = ""
        for family in (IPFamily.IPV4, IPFamily.IPV6):
            out += run([tool_names(family, backend)[1], *args]) or ""
        return out

    if _has_kubelet_hint(saved("nft", "-t", "mangle")):
        return "nft"
    legacy_text = saved("legacy")
    if _has_kubelet_hint(legacy_text):
        return "legacy"
    legacy_rules = _rule_count(legacy_text)
    nft_rules = _rule_count(saved("nft"))
    backend: Backend = "legacy" if legacy_rules > nft_rules else "nft"
    log.debug("iptables rules: legacy %d, nft %d -> %s", legacy_rules, nft_rules, backend)
    return backend


def resolve_backend(setting: str, *, netns: str | None = None) -> Backend:
    """``auto`` -> :func:`detect_backend`; ``nft``/``legacy`` are returned as given."""
    if setting == "auto":
        return detect_backend(netns=netns)
    if setting == "nft":
        return "nft"
    if setting == "legacy":
        return "legacy"
    raise ValueError(f"iptables backend must be one of {BACKEND_SETTINGS}, got {setting!r}")


# --- iptables-save text, as the applier reads it -------------------------------------------


@dataclass
class SavedTable:
    """One table of ``iptables-save`` output.

    Attributes:
        chains: Every chain in declaration order -> its policy (``-`` for user chains).
        rules: Chain -> its rule lines (``-A CHAIN ...``) in kernel order.
    """

    chains: dict[str, str] = field(default_factory=dict)
    rules: dict[str, list[str]] = field(default_factory=dict)


def parse_save(text: str) -> dict[str, SavedTable]:
    """Parse ``iptables-save`` output into tables; raise ValueError on lines it cannot place."""
    tables: dict[str, SavedTable] = {}
    current: SavedTable | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], SavedTable())
        elif current is None:
            raise ValueError(f"iptables-save line {number} outside a table: {line!r}")
        elif line == "COMMIT":
            current = None
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            current.chains[name] = rest.split(" ", 1)[0] or "-"
            current.rules.setdefault(name, [])
        elif line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            current.rules.setdefault(chain, []).append(line)
        else:
            raise ValueError(f"iptables-save line {number} not understood: {line!r}")
    return tables


def rule_target(rule: str) -> str | None:
    """The ``-j``/``-g`` target of a rule line, or None when it has none."""
    try:
        tokens = shlex.split(rule)
    except ValueError:
        tokens = rule.split()
    for i, token in enumerate(tokens[:-1]):
        if token in ("-j", "--jump", "-g", "--goto"):
            return tokens[i + 1]
    return None
