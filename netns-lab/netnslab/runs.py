"""The run registry: which lab made which namespaces, and whether that lab is still alive.

Why a registry: a test run killed with SIGKILL cannot clean up, and its
namespaces would stay behind. Other runs on the same machine (another
developer's tests, a demo lab from ``python -m netnslab up``) use the same
``na-`` prefix, so a name match alone does not prove a namespace is stale.
Each lab therefore records itself in ``/run/netns-lab/runs/<suffix>.json``
*before* creating anything, with its owner process (pid and start time, so a
recycled pid does not look alive) and user id. :func:`cleanup_stale` removes
only namespaces whose record says: this user, owner dead, not a detached
demo lab.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from netnslab.names import PREFIX, is_suffix, parse_namespace
from netnslab.netns import delete_namespace, list_namespaces

log = logging.getLogger(__name__)

STATE_DIR = Path(os.environ.get("NETNSLAB_STATE_DIR", "/run/netns-lab"))


def runs_dir() -> Path:
    """Where run records live."""
    return STATE_DIR / "runs"


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" the fields start at field 3 (state); starttime is field 22.
    return int(fields[19])


@dataclass
class RunRecord:
    """What one lab created and who owns it.

    Attributes:
        suffix: The run suffix in every name.
        namespaces: Every namespace the lab creates (recorded before creation).
        owner_pid: The process that owns the lab (the test run), 0 if detached.
        owner_start: Its start time, to tell it from a recycled pid.
        uid: The user that made the lab.
        detached: A lab left running on purpose (``python -m netnslab up``).
        workdir: Logs and manifests of the lab.
        pids: Server and agent processes the lab started.
        extra: Free-form state (e.g. the CLI's manifest dir).
    """

    suffix: str
    namespaces: list[str]
    owner_pid: int
    owner_start: int | None
    uid: int
    detached: bool = False
    workdir: str = ""
    pids: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def for_this_process(suffix: str, namespaces: Sequence[str], workdir: str) -> RunRecord:
        """A record owned by the calling process."""
        pid = os.getpid()
        return RunRecord(
            suffix=suffix,
            namespaces=list(namespaces),
            owner_pid=pid,
            owner_start=process_start_time(pid),
            uid=os.getuid(),
            workdir=workdir,
        )

    @property
    def path(self) -> Path:
        """The record's file."""
        return runs_dir() / f"{self.suffix}.json"

    def owner_alive(self) -> bool:
        """True while the owning process runs (always True for a detached lab)."""
        if self.detached:
            return True
        start = process_start_time(self.owner_pid)
        return start is not None and start == self.owner_start

    def save(self) -> None:
        """Write the record atomically."""
        runs_dir().mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        """Delete the record (idempotent)."""
        self.path.unlink(missing_ok=True)

    @staticmethod
    def load(suffix: str) -> RunRecord | None:
        """The record of ``suffix``, or None when there is none (or it is unreadable)."""
        if not is_suffix(suffix):
            return None
        try:
            data = json.loads((runs_dir() / f"{suffix}.json").read_text())
            return RunRecord(**data)
        except (OSError, ValueError, TypeError) as exc:
            log.debug("no usable run record for %s: %s", suffix, exc)
            return None


def cleanup_stale(prefix: str = PREFIX, *, include_detached: bool = False) -> list[str]:
    """Delete namespaces left by dead lab runs of the current user; returns their names.

    A namespace is removed only when its name is ``<prefix><role>-<6 hex>``
    AND a run record for that suffix exists AND the record's uid is ours AND
    its owner process is gone (or, with ``include_detached``, it is a
    detached demo lab). Anything else, including ``na-`` namespaces without a
    record, is left alone and logged.
    """
    removed: list[str] = []
    by_suffix: dict[str, list[str]] = {}
    for name in list_namespaces():
        parsed = parse_namespace(name, prefix)
        if parsed is not None:
            by_suffix.setdefault(parsed[1], []).append(name)
    for suffix, names in sorted(by_suffix.items()):
        record = RunRecord.load(suffix)
        if record is None:
            log.info("leaving %s alone: no run record for suffix %s", ", ".join(names), suffix)
            continue
        if record.uid != os.getuid():
            log.info(
                "leaving %s alone: run %s belongs to uid %d", ", ".join(names), suffix, record.uid
            )
            continue
        if record.detached and not include_detached:
            log.info("leaving %s alone: detached lab (use `python -m netnslab down`)", suffix)
            continue
        if not record.detached and record.owner_alive():
            continue
        for name in names:
            if name in record.namespaces and delete_namespace(name):
                removed.append(name)
        record.remove()
    # Records whose namespaces are all gone are garbage too.
    if runs_dir().is_dir():
        for path in runs_dir().glob("*.json"):
            record = RunRecord.load(path.stem)
            if record is not None and record.suffix not in by_suffix and not record.owner_alive():
                record.remove()
    if removed:
        log.warning("removed stale lab namespaces: %s", ", ".join(removed))
    return removed
