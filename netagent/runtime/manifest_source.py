"""The static-manifests directory as a snapshot source, and `netagent run --manifests`.

Why this shape: the data flows one way — this source yields a snapshot of
the directory's objects, :class:`netagent.runtime.node_sync.NodeSync` turns
it into the desired state and drives the proxiers. The loop itself only
decides *when* to sync (a change on disk, the periodic full resync, a retry
after a failure) through the daemon's bounded-frequency runner.

Failure policy: a sync that raises leaves the kernel as it was (the apply is
atomic), logs why, and the next sync is a full one. A bad object in the
manifests never stops the others: it is logged once per change and skipped,
and an object that was valid keeps its last valid version. The previous
rules stay in place on exit, as kube-proxy's do; ``netagent cleanup``
removes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from netagent.config import AgentConfig
from netagent.runtime.daemon import SourceTask, install_signal_handlers, run_daemon
from netagent.runtime.node_sync import NodeSync, Snapshot
from netagent.runtime.startup import (
    attach_debug,
    observability_for,
    prepare_node,
    proxier_factory,
)
from netagent.sources.manifests import ManifestSnapshot, ManifestWatcher, load_manifests
from netagent.translate import InvalidObject

log = logging.getLogger(__name__)


class ManifestSource:
    """A directory of Service/EndpointSlice/Node manifests, read afresh at every sync."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.last_errors: tuple[str, ...] = ()
        self._last_good: ManifestSnapshot | None = None

    def load(self) -> ManifestSnapshot:
        """Read the directory; new errors are logged as warnings, known ones at debug.

        An object that was valid on the previous load and is invalid now keeps
        its last valid version: a bad edit must not remove rules that are
        serving traffic. A deleted object (no longer in any file) does go.
        """
        # Errors seen on the previous load are logged at debug level, so a bad
        # object is reported once per change, not on every periodic resync.
        snapshot = load_manifests(self.directory, known_errors=self.last_errors)
        self.last_errors = tuple(str(e) for e in snapshot.errors)
        if self._last_good is not None:
            snapshot = keep_last_valid(snapshot, self._last_good)
        self._last_good = snapshot
        return snapshot

    def snapshot(self) -> Snapshot:
        """The directory's objects as one snapshot (manifests carry no trigger times)."""
        loaded = self.load()
        return Snapshot(
            services=tuple(loaded.services),
            slices=tuple(loaded.slices),
            nodes={n.name: n for n in loaded.nodes},
        )

    def programmed(self, snapshot: Snapshot) -> None:
        """Nothing to record: manifests have no change-trigger times."""


def manifest_sync(config: AgentConfig) -> NodeSync:
    """The node sync for ``config.manifests_dir`` with the configured proxy mode."""
    if config.manifests_dir is None:
        raise ValueError("a manifests sync needs config.manifests_dir")
    return NodeSync(
        config, ManifestSource(config.manifests_dir), proxier_factory=proxier_factory(config)
    )


def keep_last_valid(snapshot: ManifestSnapshot, previous: ManifestSnapshot) -> ManifestSnapshot:
    """``snapshot`` plus the previous version of every object that has turned invalid."""
    bad = {
        (e.kind, e.namespace, e.name) for e in snapshot.errors if isinstance(e, InvalidObject)
    }
    if not bad:
        return snapshot
    present = {p.name.service for p in snapshot.services}
    services = list(snapshot.services)
    for port in previous.services:
        ref = ("Service", port.name.namespace, port.name.name)
        if ref in bad and port.name.service not in present:
            services.append(port)
    slice_keys = {s.key for s in snapshot.slices}
    slices = list(snapshot.slices)
    for sl in previous.slices:
        if ("EndpointSlice", sl.namespace, sl.name) in bad and sl.key not in slice_keys:
            slices.append(sl)
    node_names = {n.name for n in snapshot.nodes}
    nodes = list(snapshot.nodes)
    for node in previous.nodes:
        if ("Node", "", node.name) in bad and node.name not in node_names:
            nodes.append(node)
    kept = (len(services) - len(snapshot.services), len(slices) - len(snapshot.slices))
    if kept != (0, 0) or len(nodes) != len(snapshot.nodes):
        log.warning(
            "keeping the last valid version of %d service ports, %d EndpointSlices and %d Nodes "
            "that are invalid now (see the errors above)",
            kept[0],
            kept[1],
            len(nodes) - len(snapshot.nodes),
        )
    return replace(snapshot, services=tuple(services), slices=tuple(slices), nodes=tuple(nodes))


def run_once(config: AgentConfig) -> int:
    """`netagent run --once`: one full sync, exit 0 on success, 1 on failure."""
    prepare_node(config)
    node_sync = manifest_sync(config)
    try:
        node_sync.sync(full=True)
    except Exception as exc:
        log.error("sync failed: %s", exc)
        return 1
    return 0


async def run_forever(config: AgentConfig, stop: asyncio.Event | None = None) -> int:
    """`netagent run --manifests DIR`: sync on change and periodically until SIGTERM/SIGINT."""
    await asyncio.to_thread(prepare_node, config)  # pyroute2 needs a thread without a loop
    stop = stop or asyncio.Event()
    install_signal_handlers(stop)
    node_sync = manifest_sync(config)
    assert config.manifests_dir is not None
    watcher = ManifestWatcher(config.manifests_dir)

    async def watch(wake: Callable[[], None], stop: asyncio.Event) -> None:
        while not stop.is_set():
            await watcher.wait_for_change(stop)
            if not stop.is_set():
                log.info("manifests changed in %s", config.manifests_dir)
                wake()

    observe = observability_for(config)
    attach_debug(observe, node_sync)
    observe.start()
    return await run_daemon(
        config,
        node_sync,
        [SourceTask("manifest-watch", watch)],
        stop=stop,
        observe=observe,
    )
