"""A minimal JSON client for the lab API server, used by the lab itself.

Why not the kubernetes client here: the lab has to create Nodes and Pods
*with status* (there is no kubelet to fill it in), drive the lab-only fault
injection endpoints under ``/lab/``, and stay usable from plain scripts. Tests
that prove compatibility use the official client and kubectl instead; this
one only has to be small and predictable.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


class ApiError(RuntimeError):
    """A non-2xx answer; ``status`` is the HTTP code, the message the Status's."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status


class LabApiClient:
    """JSON over HTTP to one lab API server (``base`` like ``http://127.0.0.1:41234``)."""

    def __init__(self, base: str, *, timeout: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(raw) if raw.strip() else None

    def get(self, path: str) -> Any:
        """GET ``path``."""
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        """POST ``obj`` to the collection ``path``."""
        return self.request("POST", path, obj)

    def merge_patch(self, path: str, patch: dict[str, Any]) -> Any:
        """PATCH ``path`` with a JSON merge patch."""
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, path: str, *, missing_ok: bool = False) -> Any:
        """DELETE ``path``."""
        try:
            return self.request("DELETE", path)
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def wait_ready(self, deadline: float = 15.0) -> None:
        """Wait until ``/version`` answers."""
        end = time.monotonic() + deadline
        while True:
            try:
                self.get("/version")
                return
            except (OSError, ApiError) as exc:
                if time.monotonic() > end:
                    raise TimeoutError(f"lab API server at {self.base} not ready: {exc}") from exc
                time.sleep(0.1)

    # ---- the lab-only fault injection endpoints -------------------------------------------

    def close_watches(self) -> None:
        """End every open watch stream now."""
        self.request("POST", "/lab/faults/close-watches", {})

    def inject_errors(
        self,
        status: int,
        count: int,
        *,
        retry_after: int | None = None,
        path: str | None = None,
        continued_only: bool = False,
        watch_only: bool = False,
    ) -> None:
        """Answer the next ``count`` API requests (matching ``path``) with ``status``.

        ``continued_only``: only requests for a second or later list page;
        ``watch_only``: only watch requests.
        """
        body: dict[str, Any] = {"status": status, "count": count}
        if retry_after is not None:
            body["retryAfter"] = retry_after
        if path is not None:
            body["paths"] = path
        if continued_only:
            body["continuedOnly"] = True
        if watch_only:
            body["watchOnly"] = True
        self.request("POST", "/lab/faults/errors", body)

    def corrupt_events(self, count: int) -> None:
        """Precede each of the next ``count`` watch events with a line that is not JSON."""
        self.request("POST", "/lab/faults/corrupt-events", {"count": count})

    def pause(self, seconds: float) -> None:
        """Hold every API request arriving in the next ``seconds``."""
        self.request("POST", "/lab/faults/pause", {"seconds": seconds})

    def clear_faults(self) -> None:
        """Drop injected errors and end a pause."""
        self.request("DELETE", "/lab/faults")

    def silence_watches(self) -> None:
        """Every open watch goes silent (no event, bookmark or end) until its client leaves."""
        self.request("POST", "/lab/faults/silence-watches", {})

    def snapshot(self) -> str:
        """Back up every object and the resourceVersion (an etcd snapshot); returns the version."""
        result = self.request("POST", "/lab/snapshot", {})
        return str(result["resourceVersion"]) if isinstance(result, dict) else ""

    def restore(self) -> str:
        """Restore the last snapshot: objects and resourceVersion go back; watches drop."""
        result = self.request("POST", "/lab/restore", {})
        return str(result["resourceVersion"]) if isinstance(result, dict) else ""

    def compact(self) -> None:
        """Drop the watch history: watches from older versions get 410 Gone."""
        self.request("POST", "/lab/compact", {})

    def requests_log(self) -> list[dict[str, Any]]:
        """The server's request log."""
        result = self.get("/lab/requests")
        return list(result) if isinstance(result, list) else []

    def clear_requests_log(self) -> None:
        """Empty the request log."""
        self.request("DELETE", "/lab/requests")
