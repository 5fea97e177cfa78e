"""BoundedFrequencyRunner: bursts coalesce, min interval holds, periodic runs happen, failures retry."""

from __future__ import annotations

import asyncio
import time

from netagent.runtime.sync_runner import BoundedFrequencyRunner


def run(coro_fn, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro_fn(), timeout))


def test_burst_of_requests_coalesces_and_respects_min_interval() -> None:
    starts: list[float] = []
    periodic_flags: list[bool] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def fn(periodic: bool) -> bool:
            starts.append(time.monotonic())
            periodic_flags.append(periodic)
            return True

        r = BoundedFrequencyRunner("t", fn, min_interval=0.2, max_interval=10)
        task = asyncio.create_task(r.run(stop))
        await asyncio.sleep(0.05)  # first run happens at once
        for _ in range(50):
            r.request()
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.4)
        stop.set()
        await task

    run(main)
    assert len(starts) == 2, starts  # initial run + one coalesced run for 50 requests
    assert starts[1] - starts[0] >= 0.2 - 0.01
    assert periodic_flags == [False, False]


def test_periodic_run_without_requests() -> None:
    flags: list[bool] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def fn(periodic: bool) -> bool:
            flags.append(periodic)
            return True

        r = BoundedFrequencyRunner("t", fn, min_interval=0.01, max_interval=0.1)
        task = asyncio.create_task(r.run(stop))
        await asyncio.sleep(0.35)
        stop.set()
        await task

    run(main)
    assert flags[0] is False
    assert flags[1:] and all(flags[1:]), flags
    assert 3 <= len(flags) <= 5


def test_failure_is_retried_after_min_interval() -> None:
    calls: list[float] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def fn(periodic: bool) -> bool:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise RuntimeError("boom")
            return True

        r = BoundedFrequencyRunner("t", fn, min_interval=0.05, max_interval=100)
        task = asyncio.create_task(r.run(stop))
        await asyncio.sleep(0.2)
        stop.set()
        await task

    run(main)
    assert len(calls) == 2  # the failure was retried once, then nothing until max_interval
    assert calls[1] - calls[0] >= 0.05 - 0.01


def test_stop_interrupts_long_wait() -> None:
    async def main() -> float:
        stop = asyncio.Event()

        async def fn(periodic: bool) -> bool:
            return True

        r = BoundedFrequencyRunner("t", fn, min_interval=1, max_interval=100)
        task = asyncio.create_task(r.run(stop))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        stop.set()
        await task
        return time.monotonic() - t0

    assert run(main) < 1.0


def test_full_sync_schedule_spaces_slow_full_syncs() -> None:
    from netagent.runtime.sync_runner import FullSyncSchedule

    now = [0.0]
    sched = FullSyncSchedule(30.0, spacing=10.0, clock=lambda: now[0])
    assert sched.full_due()  # nothing recorded yet
    sched.record_full(started=0.0, duration=1.0)
    now[0] = 29.0
    assert not sched.full_due()
    now[0] = 30.0
    assert sched.full_due()  # fast full syncs follow syncPeriod
    sched.record_full(started=30.0, duration=60.0)  # a slow one: 60 s
    now[0] = 30.0 + 599.0
    assert not sched.full_due()  # at most 10% of the time in full syncs
    now[0] = 30.0 + 600.0
    assert sched.full_due()
