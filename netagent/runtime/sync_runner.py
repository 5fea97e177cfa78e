"""A bounded-frequency sync runner: coalesce change bursts, never go stale.

Why: watch events arrive in bursts (a rollout changes hundreds of
EndpointSlices in a second). Syncing on every event would spend all the time
in iptables-restore; syncing on a fixed timer would add latency. Like
kube-proxy's BoundedFrequencyRunner, this runs the sync function

* as soon as a change is requested, but never sooner than ``min_interval``
  after the previous run started (bursts coalesce into one sync), and
* at least every ``max_interval`` even without requests (the periodic full
  resync that repairs drift).

The sync function tells the runner whether it succeeded; a failed run is
retried after ``min_interval`` (the sync function itself decides that the
retry must be a full sync).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class BoundedFrequencyRunner:
    """Runs ``fn`` on request, rate-limited by ``min_interval``, at least every ``max_interval``."""

    def __init__(
        self,
        name: str,
        fn: Callable[[bool], Awaitable[bool]],
        *,
        min_interval: float,
        max_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``fn(periodic)`` is awaited; ``periodic`` is True when no change was requested."""
        if min_interval > max_interval:
            raise ValueError("min_interval must not exceed max_interval")
        self.name = name
        self._fn = fn
        self._min = min_interval
        self._max = max_interval
        self._clock = clock
        self._wake = asyncio.Event()
        self._requested = False
        self._last_start: float | None = None
        self.runs = 0

    def request(self) -> None:
        """Ask for a sync soon (non-blocking, safe to call from event handlers)."""
        self._requested = True
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until ``stop`` is set. The first run happens at once."""
        self._requested = True
        while not stop.is_set():
            if self._last_start is not None:
                wait = self._min if self._requested else self._max
                delay = self._last_start + wait - self._clock()
                if delay > 0:
                    # Wakes early on stop, or on a request while waiting out
                    # max_interval; either way the deadline is recomputed.
                    await self._sleep(delay, stop)
                    continue
            periodic = not self._requested
            self._requested = False
            self._wake.clear()
            self._last_start = self._clock()
            self.runs += 1
            try:
                ok = await self._fn(periodic)
            except Exception:  # the sync owns its errors; keep the loop alive
                log.exception("%s: sync raised", self.name)
                ok = False
            if not ok:
                self._requested = True  # retry after min_interval

    async def _sleep(self, delay: float, stop: asyncio.Event) -> None:
        """Sleep up to ``delay``, waking early for stop or (for long waits) a request."""
        waiters = [asyncio.ensure_future(stop.wait())]
        if not self._requested:
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()


class FullSyncSchedule:
    """Decides whether a sync is a full one, keeping full syncs to a bounded share of time.

    A full sync rewrites every chain netagent owns. At 10,000 services x 10
    endpoints on iptables-nft 1.8.9 that takes 13 to 37 s (docs/performance.md),
    so running one every ``syncPeriod``
    would leave the agent in full syncs back to back, with every real change
    queued behind them. A sync (periodic or change-triggered: under a steady
    stream of changes the timer never fires) is therefore full only when at least
    ``max(sync_period, spacing x last full duration)`` has passed since the
    last full sync started; otherwise it is a partial sync (which still checks
    the canary and repairs an external flush with a full sync at once).
    """

    def __init__(
        self,
        sync_period: float,
        *,
        spacing: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._period = sync_period
        self._spacing = spacing
        self._clock = clock
        self._last_start: float | None = None
        self._last_duration = 0.0

    def full_due(self) -> bool:
        """Whether the next sync should be full."""
        if self._last_start is None:
            return True
        interval = max(self._period, self._spacing * self._last_duration)
        return self._clock() - self._last_start >= interval

    def record_full(self, started: float, duration: float) -> None:
        """A full sync that started at ``started`` (this schedule's clock) took ``duration``."""
        self._last_start = started
        self._last_duration = duration
