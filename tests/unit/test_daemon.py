"""run_daemon: any failed sync makes the next one full, whatever raised; the hourly full sync
happens even when changes keep every sync change-triggered.

Driven like the daemon drives it in API mode: the real NodeSync over an ApiSource and
IptablesProxier over the stateful iptables fake, with a node network (the
overlay's place) that fails one sync the way a failed Node annotation patch
does, before any iptables-restore runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence

import pytest

from netagent.change_tracker import ChangeTracker
from netagent.config import AgentConfig, build_config
from netagent.model import NodeInfo, ProxyState
from netagent.observe.observability import Observability
from netagent.proxy.iptables.fake import FakeIptables
from netagent.proxy.iptables.proxier import IptablesProxier
from netagent.proxy.proxier import SyncResult
from netagent.runtime import daemon
from netagent.runtime.api_source import ApiSource
from netagent.runtime.daemon import SourceTask, run_daemon
from netagent.runtime.node_sync import NodeSync, NoOverlay
from netagent.translate import service_ports


class FailingOnce(NoOverlay):
    """Raises on the ``fail_on``-th sync, as the overlay does when a Node patch fails."""

    def __init__(self, fail_on: int) -> None:
        self.fail_on = fail_on
        self.calls = 0

    def sync(self, nodes: Mapping[str, NodeInfo]) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("patch Node n1: 503 Service Unavailable")


class Recorder:
    """The daemon's Syncer around a NodeSync, recording each call and its results."""

    def __init__(self, agent: NodeSync, stop_after: int) -> None:
        self.agent = agent
        self.stop_after = stop_after
        self.stop = asyncio.Event()
        self.requested: list[bool] = []  # the daemon's ``full`` argument
        self.applied: list[list[bool]] = []  # ``SyncResult.full`` of each successful sync

    def sync(self, *, full: bool) -> Sequence[SyncResult]:
        self.requested.append(full)
        if len(self.requested) >= self.stop_after:
            self.stop.set()
        results = self.agent.sync(full=full)
        self.applied.append([r.full for r in results])
        return results

    def last_outcome(self) -> tuple[Sequence[ProxyState], Sequence[SyncResult]]:
        return self.agent.last_outcome()


def daemon_config(*, sync_period: str) -> AgentConfig:
    """An API-mode config with a 10 ms minSyncPeriod (syncs as fast as the test asks)."""
    return build_config(
        {
            "node_name": "n1",
            "cluster_cidrs": "10.244.0.0/16",
            "min_sync_period": "10ms",
            "sync_period": sync_period,
        },
        env={},
    )


def run(
    config: AgentConfig,
    syncer: Recorder,
    changes: Callable[[Callable[[], None], asyncio.Event], Coroutine[object, object, None]],
) -> int:
    """run_daemon with one change source, until the syncer stops it (10 s at most)."""

    async def main() -> int:
        return await run_daemon(
            config,
            syncer,
            [SourceTask("changes", changes)],
            stop=syncer.stop,
            observe=Observability(config),
        )

    return asyncio.run(asyncio.wait_for(main(), 10))


def test_a_failure_outside_iptables_makes_the_next_sync_full() -> None:
    config = daemon_config(sync_period="30s")
    fake = FakeIptables()
    tracker = ChangeTracker(start_time=0.0)
    tracker.on_change(
        "Service",
        "default/web",
        None,
        service_ports(
            {
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.80", "ports": [{"port": 80, "protocol": "TCP"}]},
            }
        ),
    )
    network = FailingOnce(fail_on=2)
    agent = NodeSync(
        config,
        ApiSource(tracker),
        network=network,
        proxier_factory=lambda fam: IptablesProxier(runner=fake, conntrack=None, family=fam),
    )
    # 1: first sync (full: nothing applied yet, the schedule asks for it too); 2: a change sync, fails in the
    # network step before any restore; 3: the retry, which must be full;
    # 4: the next change sync, partial again.
    syncer = Recorder(agent, stop_after=4)

    async def changes(wake: Callable[[], None], stop: asyncio.Event) -> None:
        while len(syncer.requested) < 1:
            await asyncio.sleep(0.005)
        wake()  # sync 2
        while len(syncer.requested) < 3:
            await asyncio.sleep(0.005)
        wake()  # sync 4
        await stop.wait()

    assert run(config, syncer, changes) == 0
    assert network.calls == 4
    assert syncer.requested == [True, False, True, False]
    # The failed sync applied nothing; the retry rewrote every chain, the next change did not.
    assert syncer.applied == [[True], [True], [False]]


def test_full_sync_is_not_starved_by_a_steady_stream_of_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hourly full sync and syncPeriod, shrunk to 0.3 s. A change arrives every
    # 20 ms, so a change is always pending and no sync is ever a periodic one.
    monkeypatch.setattr(daemon, "FULL_RESYNC_PERIOD", 0.3)
    config = daemon_config(sync_period="300ms")
    fake = FakeIptables()
    tracker = ChangeTracker(start_time=0.0)
    agent = NodeSync(
        config,
        ApiSource(tracker),
        proxier_factory=lambda fam: IptablesProxier(runner=fake, conntrack=None, family=fam),
    )
    syncer = Recorder(agent, stop_after=10_000)
    started = time.monotonic()

    async def changes(wake: Callable[[], None], stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            ip = f"10.96.{n // 250}.{n % 250 + 1}"
            tracker.on_change(
                "Service",
                "default/web",
                None,
                service_ports(
                    {
                        "metadata": {"name": "web", "namespace": "default"},
                        "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]},
                    }
                ),
            )
            wake()
            await asyncio.sleep(0.02)
            if time.monotonic() - started > 1.0:
                syncer.stop.set()

    assert run(config, syncer, changes) == 0
    assert len(syncer.requested) >= 10  # many change-triggered syncs
    # The first sync, then at least one more full sync within the second, though
    # no sync was periodic; the others partial.
    assert syncer.requested[0] is True
    assert syncer.requested[1:].count(True) >= 1
    assert syncer.requested.count(False) >= len(syncer.requested) // 2
