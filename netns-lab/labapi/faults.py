"""Fault injection and the request log: injected errors, pauses, and who asked what.

Why it exists: an agent's retry, backoff and resume logic only runs when the
API server misbehaves. Tests need to make it misbehave on demand (the next N
requests fail with 500 or 429 + Retry-After, requests hang for a while) and
then prove what the agent did about it by reading the request log.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass
class ErrorFault:
    status: int
    remaining: int
    retry_after: int | None
    path_prefix: str | None
    #: Only requests whose query carries a ``continue`` token: a list that fails
    #: midway through its pages.
    continued_only: bool = False
    #: Only watch requests (``?watch=true``): a watch that cannot reconnect
    #: while lists and writes still work.
    watch_only: bool = False


class Faults:
    """Thread-safe fault settings and the bounded request log."""

    def __init__(self, log_size: int = 10000) -> None:
        self._lock = threading.Lock()
        self._errors: list[ErrorFault] = []
        self._corrupt_events = 0
        self._silence_epoch = 0
        self._pause_until = 0.0
        self._resumed = threading.Condition(self._lock)
        self._log: deque[dict[str, Any]] = deque(maxlen=log_size)

    # -- injected errors ------------------------------------------------------------

    def inject_errors(self, status: int, count: int, retry_after: int | None = None,
                      path_prefix: str | None = None, continued_only: bool = False,
                      watch_only: bool = False) -> None:
        """The next ``count`` API requests (under ``path_prefix`` if given) get ``status``.

        With ``continued_only``, only list requests for a second or later page
        (a ``continue`` token in the query) count; with ``watch_only``, only watches.
        """
        if status < 400 or status > 599:
            raise ValueError(f"status must be an HTTP error code, not {status}")
        with self._lock:
            if count > 0:
                self._errors.append(
                    ErrorFault(status, count, retry_after, path_prefix, continued_only,
                               watch_only))

    def take_error(self, path: str, query: dict[str, str] | None = None) -> ErrorFault | None:
        """Consume one injected error matching ``path`` (and ``query``), if any."""
        with self._lock:
            for fault in self._errors:
                if fault.path_prefix and not path.startswith(fault.path_prefix):
                    continue
                if fault.continued_only and not (query or {}).get("continue"):
                    continue
                if fault.watch_only and (query or {}).get("watch") not in ("true", "1"):
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._errors.remove(fault)
                return ErrorFault(fault.status, 0, fault.retry_after, fault.path_prefix)
        return None

    def clear_errors(self) -> None:
        with self._lock:
            self._errors.clear()
            self._corrupt_events = 0

    # -- corrupt watch events -------------------------------------------------------

    def corrupt_events(self, count: int) -> None:
        """The next ``count`` watch events, on any stream, are each preceded by a
        line that is not JSON (a truncated event), as a broken proxy might send."""
        with self._lock:
            self._corrupt_events += max(0, count)

    def take_corrupt_event(self) -> bool:
        with self._lock:
            if self._corrupt_events <= 0:
                return False
            self._corrupt_events -= 1
            return True

    # -- silent watches -------------------------------------------------------------

    def silence_watches(self) -> int:
        """Every watch open now goes silent: no event, no bookmark, no end, until the
        client gives up on it, as when a load balancer or NAT on the way dropped the
        connection without a reset. Watches opened later are normal. Returns the epoch."""
        with self._lock:
            self._silence_epoch += 1
            return self._silence_epoch

    @property
    def silence_epoch(self) -> int:
        """Bumped by each :meth:`silence_watches`; a watch started in an older epoch is silent."""
        with self._lock:
            return self._silence_epoch

    # -- pauses ---------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold API requests that arrive during the next ``seconds``."""
        with self._lock:
            self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    def resume(self) -> None:
        with self._lock:
            self._pause_until = 0.0
            self._resumed.notify_all()

    def wait_if_paused(self) -> float:
        """Block while a pause is active; returns the seconds held."""
        start = time.monotonic()
        with self._lock:
            while True:
                left = self._pause_until - time.monotonic()
                if left <= 0:
                    break
                self._resumed.wait(left)
        return time.monotonic() - start

    # -- request log ----------------------------------------------------------------

    def record(self, when: float, method: str, path: str, query: str, status: int,
               watch: bool, client: str = "") -> None:
        """Log one request; ``client`` is the caller's address (whose request it was)."""
        with self._lock:
            self._log.append({"time": when, "method": method, "path": path, "query": query,
                              "status": status, "watch": watch, "client": client})

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._log]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()
