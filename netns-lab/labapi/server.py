"""LabApiServer: the store, the EndpointSlice controller, faults and HTTP in one object.

Why it exists: tests and the lab CLI want one handle that starts a working API
server on a port (0 = ephemeral) in a background thread, exposes its URL and
store for direct inspection, offers the fault knobs as plain methods, and
stops cleanly.
"""

from __future__ import annotations

import threading
from typing import Any

from labapi.endpointslice_controller import EndpointSliceController
from labapi.faults import Faults
from labapi.http_server import LabHTTPServer
from labapi.store import Store


class LabApiServer:
    """A Kubernetes-compatible lab API server; call ``start()`` then use ``url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 service_cidr: str = "10.96.0.0/12",
                 nodeport_range: tuple[int, int] = (30000, 32767),
                 history: int = 1000, bookmark_interval: float = 1.0,
                 default_watch_timeout: float = 1800.0) -> None:
        self.host = host
        self._port = port
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.store = Store(service_cidr=service_cidr, nodeport_range=nodeport_range,
                           history=history)
        self.controller = EndpointSliceController(self.store)
        self.faults = Faults()
        self._httpd: LabHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> LabApiServer:
        """Bind the socket and serve in a daemon thread; returns once bound."""
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._httpd = LabHTTPServer((self.host, self._port), self.store, self.faults,
                                    bookmark_interval=self.bookmark_interval,
                                    default_watch_timeout=self.default_watch_timeout)
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name=f"labapi:{self._port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block in the calling thread until ``stop()`` (used by the CLI)."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.closing = True
        self.faults.resume()
        self.store.close_watches()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> LabApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    # -- faults (the same knobs as the /lab/ paths) --------------------------------------

    def close_watches(self, abrupt: bool = False) -> int:
        return self.store.close_watches(abrupt=abrupt)

    def inject_errors(self, status: int, count: int, retry_after: int | None = None,
                      path_prefix: str | None = None) -> None:
        self.faults.inject_errors(status, count, retry_after, path_prefix)

    def pause(self, seconds: float) -> None:
        self.faults.pause(seconds)

    def resume(self) -> None:
        self.faults.resume()

    def compact(self) -> int:
        return self.store.compact()

    def requests(self) -> list[dict[str, Any]]:
        return self.faults.requests()

    def clear_requests(self) -> None:
        self.faults.clear_requests()
