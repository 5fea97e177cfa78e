"""Reflectors: keep a typed, validated copy of Services, EndpointSlices and Nodes from the API.

Why this module exists: the proxy must follow the API server's objects
through restarts of either side without ever programming a wrong ruleset on
the way. A reflector per resource does what client-go's reflector does for
kube-proxy: list, then watch from the list's resourceVersion, and hand each
real change to a callback, ``on_change(kind, key, old, new)``, with ``old`` and
``new`` already translated (:mod:`netagent.translate`) into the frozen model,
or ``None`` when the object is absent.

How the API is read, and why:

* **The official client, raw.** Calls go through ``CoreV1Api`` and
  ``DiscoveryV1Api`` with ``_preload_content=False``; the JSON is parsed
  here, not by the client's models. Deserialising 10,000 Services into
  pydantic models and back into dicts (which is what the translator reads)
  would cost more than the rest of a sync, and holding the raw response lets
  :meth:`Reflector.stop` shut the socket of a blocked watch, and lets errors
  keep their HTTP status and ``Retry-After``. ``kubernetes.watch.Watch``
  hides those, and swallows the end of a watch by starting another one.
* **A thread per reflector.** The client is blocking; a daemon thread per
  resource keeps a slow list of one resource from delaying the others. The
  callback runs in that thread: :class:`netagent.change_tracker.ChangeTracker`
  is thread-safe, and :func:`call_in_loop` wraps any other callback so it
  runs on an asyncio loop instead (``loop.call_soon_threadsafe``).
* **List, then watch.** Lists are paged (``limit``; a continue token that
  expired mid-way restarts the list unpaged) and read without a
  resourceVersion, i.e. a consistent read of the newest state. The watch
  starts at the list's resourceVersion with ``allowWatchBookmarks=true`` and
  a server-side ``timeoutSeconds`` drawn at random between 5 and 10 minutes,
  as client-go does, so that a fleet of agents does not reconnect in step.
  The client-side read timeout is that plus a margin, so a connection that
  died without a FIN is noticed.
* **Resuming.** A watch that ends (timeout, dropped connection, server
  error) resumes from the last resourceVersion seen (events and bookmarks
  advance it), without a list and without re-emitting anything. Only a
  410 Gone (HTTP 410, or an ERROR event with code 410) forces a relist, and
  so does a 504 "Too large resource version": the server's versions went
  backwards (etcd restored from a backup), so resuming could never succeed.
* **Silent watches.** A watch whose connection died without a FIN or reset
  (a load balancer's idle timeout, a NAT entry that expired) sends nothing.
  The client-side read timeout (the watch's own timeout plus a margin) gives
  up on it; the reflector then resumes from the last resourceVersion, and
  the events of the silent period arrive with the new watch.
* **Relist replaces, it does not flap.** A relist builds a new cache from the
  complete list and emits only the differences against the old one:
  additions, real updates and deletions. Nothing is emitted for objects that
  did not change, so the proxy never sees "everything deleted, then
  everything added". A failed or partial list changes nothing: the cache is
  only ever replaced by a complete, successful list.
* **Backoff.** Errors (failed lists or watches, dropped connections, a watch
  that closes at once with nothing in it) wait 0.8 s doubling to 30 s, each
  wait drawn at random from its upper half so that agents spread out; a 429's
  ``Retry-After`` (or a watch ERROR's ``retryAfterSeconds``) is honoured as a
  minimum. The backoff resets after a watch stayed healthy for a minute.

Invalid objects. An object that :mod:`netagent.translate` rejects is logged
once (one line naming it and why; again only if the reason changes) and:

* if a valid version of it is already cached, that version is **kept**:
  the guide's rule is that nothing already programmed is lost because of a
  bad update, and deleting the Service's rules would turn a typo into an
  outage. The bad update is simply not seen;
* otherwise it is treated as absent.

A deletion always deletes, valid or not. "Not proxied" is not "invalid":
a Service that becomes headless or ExternalName, or a slice that becomes
FQDN, translates to nothing and is emitted as deleted.

Legacy ``core/v1`` Endpoints (behind a flag, for clusters without
EndpointSlices) are turned into EndpointSliceInfo values here, one per
(port set, address family) group, the way the EndpointSlice mirroring
controller groups them: ``addresses`` are ready, ``notReadyAddresses`` are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import urllib3
from kubernetes.client import ApiClient, ApiException, CoreV1Api, DiscoveryV1Api

from netagent.model import EndpointSliceInfo, NodeInfo, ServicePort
from netagent.translate import (
    SERVICE_NAME_LABEL,
    TRIGGER_TIME_ANNOTATION,
    InvalidObject,
    as_dict,
    endpoint_slice,
    node_info,
    parse_ip,
    service_ports,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``on_change(kind, key, old, new)``; ``old``/``new`` are typed values or None.
ChangeHandler = Callable[[str, str, Any, Any], None]

SERVICE = "Service"
ENDPOINT_SLICE = "EndpointSlice"
NODE = "Node"
ENDPOINTS = "Endpoints"

_GONE = 410
_GATEWAY_TIMEOUT = 504
#: The cause an API server's watch cache gives when asked for a resourceVersion
#: newer than any it has: after an etcd restore, the versions went backwards.
_TOO_LARGE_CAUSE = "ResourceVersionTooLarge"
_TOO_MANY_REQUESTS = 429
_MAX_RETRY_AFTER = 300.0
_SHORT_WATCH = 1.0  # a watch that ends sooner than this, empty, counts as a failure
_READ_SIZE = 64 * 1024


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True, slots=True)
class Resource(Generic[T]):
    """One watched resource: where to list it and how to translate it.

    Attributes:
        kind: The Kubernetes kind; also the first argument of ``on_change``.
        api: Which client API class serves it (``core`` or ``discovery``).
        list_method: The API method that lists it across all namespaces.
        namespaced: Keys are ``namespace/name`` (else just ``name``).
        translate: Raw object -> typed value; None means "present but not
            proxied" (treated as absent); raises InvalidObject when invalid.
    """

    kind: str
    api: Literal["core", "discovery"]
    list_method: str
    namespaced: bool
    translate: Callable[[Mapping[str, Any]], T | None]


def _translate_service(obj: Mapping[str, Any]) -> tuple[ServicePort, ...] | None:
    return service_ports(obj) or None


def endpoints_to_slices(obj: object) -> tuple[EndpointSliceInfo, ...] | None:
    """A legacy core/v1 Endpoints object as EndpointSlices; None when it has no address.

    One slice per (port set, address family), all named after the Endpoints
    object (whose name is the Service's). Raises :class:`InvalidObject`
    naming the Endpoints object.
    """
    data = as_dict(obj)
    raw_meta = data.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "default")

    def invalid(reason: str) -> InvalidObject:
        return InvalidObject(ENDPOINTS, namespace, name, reason)

    subsets = data.get("subsets") or []
    if not isinstance(subsets, list):
        raise invalid("subsets is not a list")
    groups: dict[tuple[str, str], tuple[list[Any], list[dict[str, Any]]]] = {}
    for i, subset in enumerate(subsets):
        if not isinstance(subset, Mapping):
            raise invalid(f"subsets[{i}] is not an object")
        ports = subset.get("ports") or []
        if not isinstance(ports, list):
            raise invalid(f"subsets[{i}].ports is not a list")
        port_key = json.dumps(ports, sort_keys=True, default=str)
        for field_name, ready in (("addresses", True), ("notReadyAddresses", False)):
            addresses = subset.get(field_name) or []
            if not isinstance(addresses, list):
                raise invalid(f"subsets[{i}].{field_name} is not a list")
            for j, address in enumerate(addresses):
                path = f"subsets[{i}].{field_name}[{j}]"
                if not isinstance(address, Mapping):
                    raise invalid(f"{path} is not an object")
                ip = parse_ip(address.get("ip"))
                if ip is None:
                    raise invalid(f"{path}.ip {json.dumps(address.get('ip'))} is not an IP address")
                family = "IPv4" if ip.version == 4 else "IPv6"
                _, endpoints = groups.setdefault((port_key, family), (ports, []))
                entry: dict[str, Any] = {"addresses": [str(ip)], "conditions": {"ready": ready}}
                if address.get("nodeName"):
                    entry["nodeName"] = address["nodeName"]
                endpoints.append(entry)

    annotations: dict[str, Any] = {}
    raw_annotations = meta.get("annotations")
    if isinstance(raw_annotations, Mapping) and TRIGGER_TIME_ANNOTATION in raw_annotations:
        annotations[TRIGGER_TIME_ANNOTATION] = raw_annotations[TRIGGER_TIME_ANNOTATION]
    slices: list[EndpointSliceInfo] = []
    for (_, family), (ports, endpoints) in sorted(groups.items()):
        as_slice = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {SERVICE_NAME_LABEL: name},
                "annotations": annotations,
            },
            "addressType": family,
            "ports": ports,
            "endpoints": endpoints,
        }
        try:
            converted = endpoint_slice(as_slice)
        except InvalidObject as exc:
            raise invalid(f"as an EndpointSlice: {exc.reason}") from None
        if converted is not None:
            slices.append(converted)
    return tuple(slices) or None


SERVICES: Resource[tuple[ServicePort, ...]] = Resource(
    SERVICE, "core", "list_service_for_all_namespaces", True, _translate_service
)
ENDPOINT_SLICES: Resource[EndpointSliceInfo] = Resource(
    ENDPOINT_SLICE, "discovery", "list_endpoint_slice_for_all_namespaces", True, endpoint_slice
)
NODES: Resource[NodeInfo] = Resource(NODE, "core", "list_node", False, node_info)
LEGACY_ENDPOINTS: Resource[tuple[EndpointSliceInfo, ...]] = Resource(
    ENDPOINTS, "core", "list_endpoints_for_all_namespaces", True, endpoints_to_slices
)


# --------------------------------------------------------------------------- settings, backoff


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Timing of one reflector; the defaults are client-go's, tests shrink them.

    Attributes:
        watch_timeout: (min, max) seconds of the server-side ``timeoutSeconds``,
            drawn uniformly per watch.
        read_margin: Seconds added to it for the client-side read timeout.
        connect_timeout: Seconds to establish a connection.
        list_timeout: Seconds of read inactivity after which a list fails.
        page_size: ``limit`` of each list page; 0 lists in one request.
        backoff_initial: First wait after an error, in seconds.
        backoff_max: Longest wait after repeated errors.
        backoff_factor: Growth of the wait per consecutive error.
        backoff_jitter: Fraction of each wait that is random (0.5: the wait is
            drawn from the upper half of the current step).
        backoff_reset_after: A watch healthy for this long resets the backoff.
    """

    watch_timeout: tuple[float, float] = (300.0, 600.0)
    read_margin: float = 30.0
    connect_timeout: float = 10.0
    list_timeout: float = 60.0
    page_size: int = 500
    backoff_initial: float = 0.8
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    backoff_jitter: float = 0.5
    backoff_reset_after: float = 60.0

    @classmethod
    def for_min_timeout(cls, seconds: float) -> WatchSettings:
        """For `clientConnection.minWatchTimeout` s: watches of [s, 2s], margin min(s/2, 30)."""
        return cls(watch_timeout=(seconds, 2 * seconds), read_margin=min(30.0, seconds / 2))

    def __post_init__(self) -> None:
        low, high = self.watch_timeout
        if not 1 <= low <= high:
            raise ValueError(f"watch_timeout {self.watch_timeout} must be 1 <= min <= max")
        if not 0 <= self.backoff_jitter <= 1:
            raise ValueError("backoff_jitter must be between 0 and 1")
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")


class Backoff:
    """Exponential backoff with jitter: step n waits in [s*(1-jitter), s], s = min(max, i*f^n)."""

    def __init__(
        self,
        *,
        initial: float,
        maximum: float,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._step = initial
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        """The wait before the next attempt; grows with each call until :meth:`reset`."""
        step = self._step
        self._step = min(self.maximum, self._step * self.factor)
        self.failures += 1
        delay = step * (1.0 - self.jitter * self._rng.random())
        if retry_after is not None:
            delay = max(delay, min(retry_after, _MAX_RETRY_AFTER))
        return delay

    def reset(self) -> None:
        """Back to the initial wait (after a healthy period)."""
        self._step = self.initial
        self.failures = 0


# --------------------------------------------------------------------------- helpers


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    try:
        items = headers.items()
    except AttributeError:
        return None
    for key, value in items:
        if str(key).lower() == name.lower():
            return str(value)
    return None


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a 429/503's Retry-After header (seconds form only), or None."""
    if not isinstance(exc, ApiException):
        return None
    value = _header(exc.headers, "Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: rare from the API server; the backoff applies
    return seconds if seconds >= 0 else None


def _describe(exc: BaseException) -> str:
    """One line for a log: the HTTP status and reason, or the exception."""
    if isinstance(exc, ApiException):
        reason = " ".join(str(exc.reason or "").split())
        message = ""
        body = exc.body
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        if isinstance(body, str) and body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, Mapping) and parsed.get("message"):
                message = ": " + " ".join(str(parsed["message"]).split())
        return f"HTTP {exc.status} {reason}{message}".strip()
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _too_large_resource_version(status: object) -> bool:
    """Whether a Status (a watch ERROR object or an error body) says "Too large resource version".

    The watch cache answers a watch from a version it has not reached with 504
    and the cause ``ResourceVersionTooLarge`` (after waiting a few seconds for
    it). Resuming from that version again can never work once the server's
    versions went backwards (etcd restored from a backup); only a relist does,
    which is also what client-go's reflector ends up doing.
    """
    if not isinstance(status, Mapping) or status.get("code") != _GATEWAY_TIMEOUT:
        return False
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, Mapping) else None
    if isinstance(causes, list) and any(
        isinstance(c, Mapping) and c.get("reason") == _TOO_LARGE_CAUSE for c in causes
    ):
        return True
    return "too large resource version" in str(status.get("message") or "").lower()


def _error_status(exc: ApiException) -> object:
    """The Status object of an error response's body, or None."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _read_lines(response: Any, stopping: threading.Event) -> Iterator[bytes]:
    """Newline-separated records of a streaming response, as they arrive.

    ``read1`` returns whatever the socket has (chunked or not), so an event
    is handled as soon as its line is complete, not when a buffer fills.
    """
    buffer = b""
    while not stopping.is_set():
        chunk = response.read1(_READ_SIZE)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip() and not stopping.is_set():
        yield buffer


def _close(response: Any) -> None:
    for method in ("close", "release_conn"):
        # Best effort: the response may be half-dead already.
        with contextlib.suppress(Exception):
            getattr(response, method)()


def _shutdown(response: Any) -> None:
    """Unblock a thread reading ``response`` (closing the fd alone does not wake recv)."""
    try:
        response.shutdown()
        return
    except Exception:
        pass
    try:
        sock = response.connection.sock
        sock.shutdown(2)  # socket.SHUT_RDWR
    except Exception:
        pass


@dataclass
class WatchStats:
    """Counters for logs and tests: what the reflector has done so far."""

    lists: int = 0
    list_failures: int = 0
    relists_after_gone: int = 0
    relists_after_too_large: int = 0
    watches: int = 0
    watch_failures: int = 0
    events: int = 0
    bookmarks: int = 0
    emitted: int = 0
    backoff_delays: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _WatchEnd:
    reason: Literal["closed", "gone", "too-large", "error", "stopped"]
    detail: str = ""
    retry_after: float | None = None
    events: int = 0
    seconds: float = 0.0


class _Stopped(Exception):
    """Raised inside the reflector thread when stop() was called."""


# --------------------------------------------------------------------------- reflector


class Reflector(Generic[T]):
    """Lists and watches one resource, keeps its typed cache, reports real changes.

    ``api`` is the client API object serving ``resource`` (``CoreV1Api`` or
    ``DiscoveryV1Api``, or a fake with the same list method). ``on_change`` is
    called from the reflector's thread, never before the first list has
    completed; exceptions it raises are logged and do not stop the reflector.
    """

    def __init__(
        self,
        resource: Resource[T],
        api: Any,
        on_change: ChangeHandler,
        *,
        settings: WatchSettings | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resource = resource
        self.kind = resource.kind
        self.settings = settings or WatchSettings()
        self.stats = WatchStats()
        self._list_call = getattr(api, resource.list_method)
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._clock = clock
        self._backoff = Backoff(
            initial=self.settings.backoff_initial,
            maximum=self.settings.backoff_max,
            factor=self.settings.backoff_factor,
            jitter=self.settings.backoff_jitter,
            rng=self._rng,
        )
        self._lock = threading.Lock()
        self._cache: dict[str, T] = {}
        self._invalid: dict[str, str] = {}  # key -> reason already logged
        self._resource_version = ""
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- public

    @property
    def has_synced(self) -> bool:
        """True once the first complete list has been delivered to ``on_change``."""
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float) -> bool:
        """Block until :attr:`has_synced` (True) or ``timeout`` seconds pass (False)."""
        return self._synced.wait(timeout)

    @property
    def resource_version(self) -> str:
        """The last resourceVersion seen (list, event or bookmark)."""
        return self._resource_version

    def snapshot(self) -> dict[str, T]:
        """A copy of the cache: key -> typed value."""
        with self._lock:
            return dict(self._cache)

    def start(self) -> None:
        """Run in a daemon thread named after the kind."""
        if self._thread is not None:
            raise RuntimeError(f"{self.kind} reflector already started")
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.kind}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end and unblock a pending read; does not wait."""
        self._stopping.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait up to ``timeout`` seconds for the thread to end."""
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("%s reflector did not stop within %.1fs", self.kind, timeout)

    def run(self) -> None:
        """The blocking loop: list, watch, resume or relist, until :meth:`stop`."""
        with contextlib.suppress(_Stopped):
            self._run()
        log.debug("%s reflector stopped", self.kind)

    def _run(self) -> None:
        need_list = True
        while not self._stopping.is_set():
            try:
                if need_list:
                    self._list_and_replace()
                    need_list = False
                end = self._watch_once()
            except _Stopped:
                raise
            except Exception as exc:  # a list failure, or a bug: never kill the thread
                self.stats.list_failures += need_list
                retry_after = _retry_after(exc)
                delay = self._backoff.next_delay(retry_after)
                level = logging.WARNING
                expected = ApiException | urllib3.exceptions.HTTPError | OSError | ValueError
                if not isinstance(exc, expected):  # a bug: log the traceback
                    level = logging.ERROR
                log.log(
                    level,
                    "%s %s failed (%s); retrying in %.1fs",
                    self.kind,
                    "list" if need_list else "watch",
                    _describe(exc),
                    delay,
                    exc_info=level == logging.ERROR,
                )
                self._wait(delay)
                continue
            if end.reason == "stopped":
                return
            if end.seconds >= self.settings.backoff_reset_after:
                self._backoff.reset()
            if end.reason == "gone":
                log.info(
                    "%s watch from resourceVersion %s: 410 Gone (%s); relisting",
                    self.kind,
                    self._resource_version,
                    end.detail,
                )
                self.stats.relists_after_gone += 1
                need_list = True
            if end.reason == "too-large":
                log.warning(
                    "%s watch from resourceVersion %s: the API server has not reached that "
                    "version (%s); its versions went backwards (etcd restored?); relisting",
                    self.kind,
                    self._resource_version,
                    end.detail,
                )
                self.stats.relists_after_too_large += 1
                need_list = True
            short = end.events == 0 and end.seconds < _SHORT_WATCH
            if end.reason == "error" or short:
                self.stats.watch_failures += 1
                delay = self._backoff.next_delay(end.retry_after)
                log.warning(
                    "%s watch %s after %.1fs; retrying in %.1fs",
                    self.kind,
                    end.detail or "ended at once with no event",
                    end.seconds,
                    delay,
                )
                self._wait(delay)
            elif end.reason == "closed":
                log.debug("%s watch closed after %.1fs; resuming", self.kind, end.seconds)

    # ----------------------------------------------------------------- list

    def _wait(self, delay: float) -> None:
        self.stats.backoff_delays.append(delay)
        if self._stopping.wait(delay):
            raise _Stopped

    def _fetch(self, **kwargs: Any) -> Any:
        """One API call with ``_preload_content=False``; the response is tracked for stop()."""
        if self._stopping.is_set():
            raise _Stopped
        response = self._list_call(_preload_content=False, **kwargs)
        with self._lock:
            self._response = response
        if self._stopping.is_set():
            _close(response)
            raise _Stopped
        return response

    def _release(self, response: Any) -> None:
        with self._lock:
            if self._response is response:
                self._response = None
        _close(response)

    def _list(self) -> tuple[list[Mapping[str, Any]], str]:
        """Every object and the list's resourceVersion; raises on any failure (nothing kept)."""
        items: list[Mapping[str, Any]] = []
        limit: int | None = self.settings.page_size or None
        token: str | None = None
        timeout = (self.settings.connect_timeout, self.settings.list_timeout)
        while True:
            try:
                response = self._fetch(limit=limit, _continue=token, _request_timeout=timeout)
            except ApiException as exc:
                if exc.status == _GONE and token is not None:
                    # The continue token expired between pages: the pages read
                    # so far are from a snapshot that is gone; start over unpaged.
                    log.info("%s list: continue token expired; listing again unpaged", self.kind)
                    items, limit, token = [], None, None
                    continue
                raise
            try:
                body = json.loads(response.data)
            finally:
                self._release(response)
            if not isinstance(body, Mapping):
                raise ValueError(f"{self.kind} list response is not a JSON object")
            page = body.get("items") or []
            if not isinstance(page, list):
                raise ValueError(f"{self.kind} list response items is not a list")
            items.extend(item for item in page if isinstance(item, Mapping))
            meta = _metadata(body)
            token = meta.get("continue") or None
            if token is None:
                version = str(meta.get("resourceVersion") or "")
                if not version:
                    raise ValueError(f"{self.kind} list response has no metadata.resourceVersion")
                return items, version

    def _list_and_replace(self) -> None:
        items, version = self._list()
        self.stats.lists += 1
        new_cache: dict[str, T] = {}
        listed: set[str] = set()
        for obj in items:
            key = self._key(obj)
            if key is None:
                continue
            listed.add(key)
            with self._lock:
                previous = self._cache.get(key)
            value = self._translate(key, obj, previous)
            if value is not None:
                new_cache[key] = value
        with self._lock:
            old_cache = self._cache
            self._cache = new_cache
            self._resource_version = version
        for key in self._invalid.keys() - listed:
            del self._invalid[key]  # gone from the API: forget it was invalid
        changes = 0
        for key in sorted(old_cache.keys() | new_cache.keys()):
            old, new = old_cache.get(key), new_cache.get(key)
            if old != new:
                changes += 1
                self._emit(key, old, new)
        first = not self._synced.is_set()
        log.info(
            "%s %s: %d objects at resourceVersion %s, %d changes",
            self.kind,
            "listed" if first else "relisted",
            len(new_cache),
            version,
            changes,
        )
        self._synced.set()

    # ----------------------------------------------------------------- watch

    def _watch_once(self) -> _WatchEnd:
        low, high = self.settings.watch_timeout
        timeout = max(1, round(self._rng.uniform(low, high)))
        started = self._clock()
        self.stats.watches += 1
        try:
            response = self._fetch(
                watch=True,
                resource_version=self._resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=(
                    self.settings.connect_timeout,
                    timeout + self.settings.read_margin,
                ),
            )
        except ApiException as exc:
            seconds = self._clock() - started
            if exc.status == _GONE:
                return _WatchEnd("gone", _describe(exc), seconds=seconds)
            if exc.status == _GATEWAY_TIMEOUT and _too_large_resource_version(_error_status(exc)):
                return _WatchEnd("too-large", _describe(exc), seconds=seconds)
            return _WatchEnd("error", _describe(exc), _retry_after(exc), seconds=seconds)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return _WatchEnd("error", _describe(exc), seconds=self._clock() - started)

        events = 0
        try:
            for line in _read_lines(response, self._stopping):
                try:
                    event = json.loads(line)
                except ValueError:
                    return _WatchEnd(
                        "error",
                        f"sent a malformed event {line[:80]!r}",
                        events=events,
                        seconds=self._clock() - started,
                    )
                end = self._handle_event(event)
                events += 1
                if end is not None:
                    return _WatchEnd(
                        end.reason,
                        end.detail,
                        end.retry_after,
                        events,
                        self._clock() - started,
                    )
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if self._stopping.is_set():
                return _WatchEnd("stopped")
            return _WatchEnd(
                "error",
                f"broke: {_describe(exc)}",
                events=events,
                seconds=self._clock() - started,
            )
        finally:
            self._release(response)
        if self._stopping.is_set():
            return _WatchEnd("stopped")
        return _WatchEnd("closed", events=events, seconds=self._clock() - started)

    def _handle_event(self, event: object) -> _WatchEnd | None:
        """Apply one watch event; a _WatchEnd when the watch must end."""
        if not isinstance(event, Mapping):
            return _WatchEnd("error", "sent an event that is not an object")
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            return _WatchEnd("error", f"sent a {kind} event without an object")
        if kind == "ERROR":
            code = obj.get("code")
            message = " ".join(str(obj.get("message") or obj.get("reason") or "").split())
            details = obj.get("details")
            retry = details.get("retryAfterSeconds") if isinstance(details, Mapping) else None
            if code == _GONE:
                return _WatchEnd("gone", message)
            if _too_large_resource_version(obj):
                return _WatchEnd("too-large", message)
            return _WatchEnd(
                "error",
                f"sent ERROR {code}: {message}",
                float(retry) if isinstance(retry, int | float) else None,
            )
        version = str(_metadata(obj).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            self.stats.bookmarks += 1
            if version:
                self._resource_version = version
            return None
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("%s watch: ignoring event of unknown type %r", self.kind, kind)
            return None
        self.stats.events += 1
        key = self._key(obj)
        if key is not None:
            if kind == "DELETED":
                self._delete(key)
            else:
                self._upsert(key, obj)
        if version:
            self._resource_version = version
        return None

    def _upsert(self, key: str, obj: Mapping[str, Any]) -> None:
        with self._lock:
            old = self._cache.get(key)
        new = self._translate(key, obj, old)
        with self._lock:
            if new is None:
                self._cache.pop(key, None)
            else:
                self._cache[key] = new
        if old != new:
            self._emit(key, old, new)

    def _delete(self, key: str) -> None:
        self._invalid.pop(key, None)
        with self._lock:
            old = self._cache.pop(key, None)
        if old is not None:
            self._emit(key, old, None)

    # ----------------------------------------------------------------- objects

    def _key(self, obj: Mapping[str, Any]) -> str | None:
        meta = _metadata(obj)
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            log.warning("%s without metadata.name ignored", self.kind)
            return None
        if not self.resource.namespaced:
            return name
        namespace = meta.get("namespace")
        return f"{namespace if isinstance(namespace, str) and namespace else 'default'}/{name}"

    def _translate(self, key: str, obj: Mapping[str, Any], previous: T | None) -> T | None:
        """The typed value; on an invalid object, ``previous`` (logged once per reason)."""
        try:
            value = self.resource.translate(obj)
        except InvalidObject as exc:
            self._log_invalid(key, str(exc), previous is not None)
            return previous
        except Exception as exc:  # a translator bug must not stop the watch
            message = f"{self.kind} {key}: cannot translate: {exc!r}"
            self._log_invalid(key, message, previous is not None)
            return previous
        if self._invalid.pop(key, None) is not None:
            log.info("%s %s is valid again", self.kind, key)
        return value

    def _log_invalid(self, key: str, message: str, kept: bool) -> None:
        if self._invalid.get(key) == message:
            return
        self._invalid[key] = message
        outcome = "keeping its last valid version" if kept else "ignoring it"
        log.warning("invalid %s; %s", message, outcome)

    def _emit(self, key: str, old: T | None, new: T | None) -> None:
        self.stats.emitted += 1
        try:
            self._on_change(self.kind, key, old, new)
        except Exception:
            log.exception("%s change handler failed for %s", self.kind, key)


# --------------------------------------------------------------------------- wiring


def call_in_loop(loop: asyncio.AbstractEventLoop, handler: ChangeHandler) -> ChangeHandler:
    """A handler that runs ``handler`` on ``loop`` (safe to call from reflector threads)."""

    def schedule(kind: str, key: str, old: Any, new: Any) -> None:
        try:
            loop.call_soon_threadsafe(handler, kind, key, old, new)
        except RuntimeError:  # the loop is closed: the agent is shutting down
            log.debug("dropping %s %s change: event loop closed", kind, key)

    return schedule


class ApiWatch:
    """The reflectors the proxy needs, over one ApiClient.

    Services, EndpointSlices (or legacy Endpoints with ``legacy_endpoints``)
    and Nodes, each in its own thread, all reporting to ``on_change``.
    """

    def __init__(
        self,
        client: ApiClient,
        on_change: ChangeHandler,
        *,
        legacy_endpoints: bool = False,
        watch_nodes: bool = True,
        settings: WatchSettings | None = None,
    ) -> None:
        apis = {"core": CoreV1Api(client), "discovery": DiscoveryV1Api(client)}
        resources: list[Resource[Any]] = [
            SERVICES,
            LEGACY_ENDPOINTS if legacy_endpoints else ENDPOINT_SLICES,
        ]
        if watch_nodes:
            resources.append(NODES)
        self.reflectors: dict[str, Reflector[Any]] = {
            r.kind: Reflector(r, apis[r.api], on_change, settings=settings) for r in resources
        }
        self.endpoints_kind = ENDPOINTS if legacy_endpoints else ENDPOINT_SLICE

    def start(self) -> None:
        """Start every reflector thread."""
        for reflector in self.reflectors.values():
            reflector.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every reflector (in parallel: each stop unblocks its own read)."""
        for reflector in self.reflectors.values():
            reflector.request_stop()
        for reflector in self.reflectors.values():
            reflector.stop(timeout)

    @property
    def proxy_synced(self) -> bool:
        """Services and endpoints have both completed their first list (rules may be written)."""
        return (
            self.reflectors[SERVICE].has_synced and self.reflectors[self.endpoints_kind].has_synced
        )

    @property
    def all_synced(self) -> bool:
        """Every reflector has completed its first list."""
        return all(r.has_synced for r in self.reflectors.values())

    def not_synced(self) -> Sequence[str]:
        """Kinds still waiting for their first list, for log lines."""
        return [kind for kind, r in self.reflectors.items() if not r.has_synced]
