"""The daemon's task structure, shared by both object sources (manifests, the API).

Why a module of its own: ``netagent run`` is the same process whatever feeds
it objects. There is one sync function (load the desired state, render, apply
every family), one bounded-frequency runner that decides *when* it runs, one
:class:`netagent.observe.observability.Observability` that reports each outcome, and
one or more source tasks that wake the runner when something changed.

Tasks are named and guarded, in the way kopf does it: every task runs until
the stop event; the first task that ends on its own (a fatal error, or a
source that gave up) stops the others, which are cancelled in order, and the
process exits 1 with the task's name and error in the log. SIGTERM and SIGINT
set the stop event; the rules stay in the kernel on the way out (as
kube-proxy leaves them), and ``netagent cleanup`` removes them.

``ready`` gates the first write: until it returns True, a due sync does
nothing and says why (debug log), so an agent whose initial lists have not
completed never replaces a working ruleset with an empty one.

Any exception from a sync (an iptables-restore, the overlay's start-up or
reconcile, a Node annotation patch) makes the next sync full, whichever step
raised: a sync that failed part-way may have left the kernel between two
states (one family applied and not the other, routes changed and the rules
not), and only a full sync re-reads and rewrites everything netagent owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Protocol

from netagent.config import AgentConfig
from netagent.model import ProxyState
from netagent.observe.observability import Observability
from netagent.proxy.proxier import SyncResult
from netagent.runtime.sync_runner import BoundedFrequencyRunner, FullSyncSchedule

log = logging.getLogger(__name__)

#: A sync rewrites every chain at most this often (kube-proxy's full-sync period since its
#: partial restores), whether a change or the timer started it, so a busy cluster where
#: changes never let the timer fire still gets its hourly full sync; the other syncs are
#: partial and cheap. Changes
#: never wait for it: a failed sync (whatever raised), or a missing canary chain, forces a
#: full sync at once.
FULL_RESYNC_PERIOD = 3600.0


class Syncer(Protocol):
    """What the daemon syncs (:class:`netagent.runtime.node_sync.NodeSync` fits)."""

    def sync(self, *, full: bool) -> Sequence[SyncResult]:
        """Build the desired state and apply it; raise on failure."""
        ...

    def last_outcome(self) -> tuple[Sequence[ProxyState], Sequence[SyncResult]]:
        """The states and results of the last successful sync."""
        ...


@dataclass(frozen=True, slots=True)
class SourceTask:
    """A named coroutine that feeds changes: it calls ``wake()`` after each."""

    name: str
    run: Callable[[Callable[[], None], asyncio.Event], Coroutine[object, object, None]]


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set ``stop`` (no-op outside the main thread)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)


async def run_daemon(
    config: AgentConfig,
    syncer: Syncer,
    sources: Sequence[SourceTask],
    *,
    stop: asyncio.Event,
    observe: Observability,
    after_success: Callable[[float], None] = lambda now: None,
    ready: Callable[[], bool] = lambda: True,
    waiting_for: Callable[[], str] = lambda: "",
) -> int:
    """Run the sync runner and the sources until ``stop``; 0 on a clean stop, 1 on a fatal error."""
    schedule = FullSyncSchedule(max(config.sync_period, FULL_RESYNC_PERIOD))
    waited_since: list[float] = []
    previous_failed = False

    async def do_sync(periodic: bool) -> bool:
        nonlocal previous_failed
        if not ready():
            if not waited_since:
                waited_since.append(time.monotonic())
                log.info("not writing rules yet: waiting for %s", waiting_for() or "the sources")
            return True  # not a failure: the source wakes the runner when it is ready
        full = previous_failed or schedule.full_due()
        started = time.monotonic()
        try:
            results = await asyncio.to_thread(syncer.sync, full=full)
        except Exception as exc:
            log.error("sync failed, next sync will be full: %s", exc)
            previous_failed = True
            observe.failed()
            return False
        previous_failed = False
        if any(r.full for r in results):
            schedule.record_full(started, time.monotonic() - started)
        states, _ = syncer.last_outcome()
        observe.synced(results, states)
        after_success(time.time())
        return True

    runner = BoundedFrequencyRunner(
        "node-sync",
        do_sync,
        min_interval=config.min_sync_period,
        max_interval=config.sync_period,
    )

    def wake() -> None:
        observe.queued()
        runner.request()

    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(runner.run(stop), name="sync-runner"),
        *(asyncio.create_task(s.run(wake, stop), name=s.name) for s in sources),
    ]
    stopper: asyncio.Task[object] = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    status = 0
    for task in done:
        if task is stopper:
            continue
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed: %s: %s", task.get_name(), type(exc).__name__, exc)
            status = 1
        elif stopper not in done:
            log.error("task %s ended on its own; stopping", task.get_name())
            status = 1
    # Stop in order: the sources first (no new work), then the runner.
    for task in reversed(tasks):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    stopper.cancel()
    observe.stop()
    if status == 0:
        log.info("stopping; rules are left in place (use `netagent cleanup` to remove them)")
    return status
