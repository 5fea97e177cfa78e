"""A directory of Service, EndpointSlice and Node manifests as the agent's object source.

Why a static source: it lets the agent run, and be tested end to end, without
an API server, with exactly the objects a user can write or dump with
``kubectl get -o yaml``. Every file is read on every load (the directory is
small; a full read is simpler and cannot drift from disk), and every object
crosses :mod:`netagent.translate` like an API object would.

Failure policy: one bad file or object never hides the others. A file that
does not parse, or an object that does not validate, is left out, logged
with one warning line that names it and says why, and listed in
``ManifestSnapshot.errors`` so the caller can report it. A file with a YAML
error part-way keeps the documents before the error. When two files define
the same object, the first in file-name order wins and the copy is an error.

What is read: every ``*.yaml``, ``*.yml`` and ``*.json`` file directly in the
directory, in sorted name order, skipping dot-files (editors' and atomic
writers' temporaries, and the ``..data`` links of a mounted ConfigMap).
Multi-document YAML and ``kind: List`` (or ``ServiceList`` and friends, whose
items carry no ``kind``) are understood; other kinds are ignored with a debug
message.

Why :class:`ManifestWatcher` polls instead of using inotify: inotify needs a
third-party binding or hand-written ctypes, misses changes on network and some
FUSE file systems, and has its own failure modes (queue overflow, watches lost
when a ConfigMap's ``..data`` link is swapped). The consumer rate-limits syncs
to one per ``minSyncPeriod`` (1 s) anyway, so a 0.5 s poll adds little
latency, and stat-ing a few files twice a second costs microseconds. Contents
are hashed only when the stat data moved, so a ``touch`` is not a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml

from netagent.model import EndpointSliceInfo, NodeInfo, ServicePort
from netagent.translate import InvalidObject, endpoint_slice, node_info, service_ports

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = frozenset({".yaml", ".yml", ".json"})
_MAX_LIST_DEPTH = 4  # a List inside a List inside ... is refused beyond this

try:  # libyaml is ~10x faster; PyYAML without it still works
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the PyYAML build
    _Loader = yaml.SafeLoader


class ManifestFileError(Exception):
    """A file (or a document in it) that could not be read; ``str()`` is one line.

    Formatted like a compiler message: ``path:line:column: message``.
    """

    def __init__(
        self, path: Path, message: str, line: int | None = None, column: int | None = None
    ) -> None:
        self.path = path
        self.message = message
        self.line = line
        self.column = column
        where = str(path)
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


ManifestError: TypeAlias = InvalidObject | ManifestFileError


@dataclass(frozen=True, slots=True)
class ManifestSnapshot:
    """Everything one load of the directory produced.

    ``services`` is flat (every port of every proxied Service), which is what
    :func:`netagent.state.build_proxy_state` takes; :meth:`ports_by_service`
    regroups it per Service.
    """

    services: tuple[ServicePort, ...] = ()
    slices: tuple[EndpointSliceInfo, ...] = ()
    nodes: tuple[NodeInfo, ...] = ()
    errors: tuple[ManifestError, ...] = ()
    files: tuple[Path, ...] = ()

    def ports_by_service(self) -> dict[str, tuple[ServicePort, ...]]:
        """``namespace/name`` -> that Service's ports, in spec order."""
        grouped: dict[str, list[ServicePort]] = {}
        for port in self.services:
            grouped.setdefault(port.name.service, []).append(port)
        return {key: tuple(ports) for key, ports in grouped.items()}


def manifest_files(directory: Path) -> list[Path]:
    """The files a load reads, in the order it reads them."""
    try:
        entries = list(os.scandir(directory))
    except OSError:  # missing, or not a directory: load_manifests reports it
        return []
    return sorted(
        Path(e.path)
        for e in entries
        if not e.name.startswith(".")
        and Path(e.name).suffix.lower() in MANIFEST_SUFFIXES
        and e.is_file()  # follows symlinks, as a ConfigMap mount needs
    )


@dataclass
class _Collector:
    """Accumulates one load; the first definition of an object wins."""

    services: dict[str, tuple[ServicePort, ...]] = field(default_factory=dict)
    slices: dict[str, EndpointSliceInfo] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    seen: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, ref) -> source
    errors: list[ManifestError] = field(default_factory=list)
    known_errors: Collection[str] = ()

    def _level(self, error: ManifestError) -> int:
        return logging.DEBUG if str(error) in self.known_errors else logging.WARNING

    def file_error(self, error: ManifestFileError) -> None:
        log.log(self._level(error), "skipping %s", error)
        self.errors.append(error)

    def object_error(self, error: InvalidObject, source: str) -> None:
        error.source = source
        log.log(
            self._level(error),
            "skipping %s %s (%s): %s",
            error.kind,
            error.ref,
            source,
            error.reason,
        )
        self.errors.append(error)

    def add(self, obj: Mapping[str, Any], source: str) -> None:
        kind = obj.get("kind")
        try:
            if kind == "Service":
                ports = service_ports(obj)
                if ports and self._first(kind, ports[0].name.service, source):
                    self.services[ports[0].name.service] = ports
            elif kind == "EndpointSlice":
                slice_ = endpoint_slice(obj)
                if slice_ is not None and self._first(kind, slice_.key, source):
                    self.slices[slice_.key] = slice_
            elif kind == "Node":
                node = node_info(obj)
                if self._first(kind, node.name, source):
                    self.nodes[node.name] = node
            else:
                log.debug("%s: ignoring kind %s", source, kind)
        except InvalidObject as exc:
            self.object_error(exc, source)

    def _first(self, kind: str, key: str, source: str) -> bool:
        """True for the first definition of an object; records a duplicate as an error."""
        first = self.seen.get((kind, key))
        if first is None:
            self.seen[kind, key] = source
            return True
        namespace, _, name = key.rpartition("/")
        self.object_error(
            InvalidObject(kind, namespace, name, f"duplicate of the one in {first}, ignored"),
            source,
        )
        return False


def _yaml_documents(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """(line, document) for each YAML document; raises ManifestFileError at a syntax error."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            yield node.start_mark.line + 1, loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split()) or "syntax error"
        context = getattr(exc, "context", None)
        message = f"{problem} ({context})" if context else str(problem)
        raise ManifestFileError(
            path,
            f"invalid YAML: {message}",
            line=mark.line + 1 if mark is not None else None,
            column=mark.column + 1 if mark is not None else None,
        ) from None
    finally:
        loader.dispose()


def _json_documents(path: Path, text: str) -> Iterator[tuple[int, object]]:
    try:
        yield 1, json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestFileError(
            path, f"invalid JSON: {exc.msg}", line=exc.lineno, column=exc.colno
        ) from None


def _add_document(
    collector: _Collector,
    path: Path,
    line: int,
    doc: object,
    default_kind: str = "",
    depth: int = 0,
) -> None:
    source = f"{path}:{line}"
    if doc is None:
        return  # an empty document, e.g. a trailing '---'
    if not isinstance(doc, Mapping):
        collector.file_error(
            ManifestFileError(path, f"document is a {type(doc).__name__}, not an object", line)
        )
        return
    kind = doc.get("kind") or default_kind
    if not isinstance(kind, str) or not kind:
        collector.file_error(ManifestFileError(path, "document has no kind", line))
        return
    if kind.endswith("List"):
        items = doc.get("items") or []
        if depth >= _MAX_LIST_DEPTH or not isinstance(items, list):
            collector.file_error(ManifestFileError(path, f"{kind} has no usable items", line))
            return
        item_kind = kind[: -len("List")]  # ServiceList items carry no kind
        for item in items:
            _add_document(collector, path, line, item, item_kind, depth + 1)
        return
    if kind != doc.get("kind"):
        doc = {**doc, "kind": kind}
    collector.add(doc, source)


def load_manifests(directory: Path, *, known_errors: Collection[str] = ()) -> ManifestSnapshot:
    """Read every manifest file in ``directory``; bad files and objects become errors.

    Each skipped file or object is logged as one warning line, except errors
    whose ``str()`` is in ``known_errors`` (pass the previous load's), which
    are logged at debug level: a bad object that stays bad is then warned about
    once, not on every periodic resync.
    """
    collector = _Collector(known_errors=known_errors)
    if not directory.is_dir():
        collector.file_error(ManifestFileError(directory, "is not a directory"))
    files = manifest_files(directory)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            collector.file_error(ManifestFileError(path, f"cannot be read: {exc}"))
            continue
        parse = _json_documents if path.suffix.lower() == ".json" else _yaml_documents
        try:
            for line, doc in parse(path, text):
                _add_document(collector, path, line, doc)
        except ManifestFileError as exc:
            collector.file_error(exc)
    return ManifestSnapshot(
        services=tuple(p for ports in collector.services.values() for p in ports),
        slices=tuple(collector.slices.values()),
        nodes=tuple(collector.nodes.values()),
        errors=tuple(collector.errors),
        files=tuple(files),
    )


# --------------------------------------------------------------------------- change detection

_StatKey = tuple[int, int, int]  # (mtime_ns, size, inode)


class ManifestWatcher:
    """Tells when the manifest directory's content changed, by polling.

    A change is a file added, removed, or whose bytes differ; the stat data
    (mtime, size, inode) only decides when to re-hash. A file modified within
    the last :attr:`RACY_SECONDS` is hashed on every poll, because a rewrite
    of the same size inside one timestamp tick leaves its stat data unchanged.
    The baseline is the directory as it is when the watcher is created.
    """

    RACY_SECONDS = 2.0

    def __init__(self, directory: Path, interval: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.directory = directory
        self.interval = interval
        self._stats: dict[Path, _StatKey] = {}
        self._hashes: dict[Path, bytes] = {}
        self.changed()

    def _stat_all(self) -> dict[Path, _StatKey]:
        stats: dict[Path, _StatKey] = {}
        for path in manifest_files(self.directory):
            try:
                st = path.stat()
            except OSError:  # removed between listing and stat
                continue
            stats[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return stats

    @staticmethod
    def _hash(path: Path) -> bytes | None:
        try:
            return hashlib.blake2b(path.read_bytes(), digest_size=16).digest()
        except OSError:
            return None

    def changed(self) -> bool:
        """True when the content differs from the previous call (or from creation)."""
        stats = self._stat_all()
        racy_after = time.time_ns() - int(self.RACY_SECONDS * 1e9)
        if stats == self._stats and all(mtime < racy_after for mtime, _, _ in stats.values()):
            return False
        hashes: dict[Path, bytes] = {}
        for path, key in stats.items():
            old = self._hashes.get(path)
            if old is not None and self._stats.get(path) == key and key[0] < racy_after:
                hashes[path] = old
                continue
            digest = self._hash(path)
            if digest is not None:
                hashes[path] = digest
        differs = hashes != self._hashes
        self._stats = {p: k for p, k in stats.items() if p in hashes}
        self._hashes = hashes
        return differs

    async def wait_for_change(self, stop_event: asyncio.Event) -> None:
        """Return once the content changed, or at once when ``stop_event`` is set."""
        while not stop_event.is_set():
            if await asyncio.to_thread(self.changed):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), timeout=self.interval)
