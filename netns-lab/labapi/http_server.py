"""HTTP front end: routes Kubernetes REST paths to the store and streams watches.

Why it exists: clients only ever see the API server through HTTP, so the
details matter as much as the data: HTTP/1.1 keep-alive, ``Status`` bodies with
the right code and reason, chunked newline-delimited JSON watch streams that
end cleanly on ``timeoutSeconds``, bookmarks, and the lab-only ``/lab/`` paths
for fault injection and the request log. Reads and watches answer with a
``meta.k8s.io`` Table when the Accept header asks for one, as ``kubectl get``
does (the columns come from ``table_printers``). Built on the standard
library's ThreadingHTTPServer (one daemon thread per connection).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import select
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from labapi import discovery, table_printers
from labapi.errors import ApiError, status_body
from labapi.faults import Faults
from labapi.patching import APPLY_PATCH
from labapi.resources import Resource, lookup
from labapi.store import Store

LOG = logging.getLogger(__name__)
JSON = "application/json"
#: Longest a silenced watch holds its connection (seconds).
SILENT_WATCH_LIMIT = 600.0


class LabHTTPServer(ThreadingHTTPServer):
    """The listening socket plus everything handlers need."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], store: Store, faults: Faults, *,
                 bookmark_interval: float = 1.0, default_watch_timeout: float = 1800.0) -> None:
        self.store = store
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.closing = False
        #: The last ``/lab/snapshot`` (an etcd backup), for ``/lab/restore``.
        self.snapshot: dict[str, Any] | None = None
        super().__init__(address, Handler)


class _Route:
    """A parsed REST path."""

    def __init__(self, res: Resource, namespace: str | None, name: str | None,
                 subresource: str | None, watch_path: bool) -> None:
        self.res = res
        self.namespace = namespace
        self.name = name
        self.subresource = subresource
        self.watch_path = watch_path


def _parse_resource_path(parts: list[str]) -> _Route | None:
    """``parts`` after /api/v1 or /apis/G/V, prefixed by (group, version)."""
    group, version, rest = parts[0], parts[1], parts[2:]
    watch_path = bool(rest) and rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    if not rest:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] != "status":
        namespace, rest = rest[1], rest[2:]
        res = lookup(group, version, rest[0])
        if res is None or not res.namespaced:
            return None
    else:
        res = lookup(group, version, rest[0])
        if res is None:
            return None
    name = rest[1] if len(rest) >= 2 else None
    sub = rest[2] if len(rest) >= 3 else None
    if len(rest) > 3 or (sub is not None and (sub != "status" or not res.has_status)):
        return None
    if name is not None and res.namespaced and namespace is None:
        return None
    return _Route(res, namespace, name, sub, watch_path)


class Handler(BaseHTTPRequestHandler):
    """One connection; methods map onto store verbs."""

    protocol_version = "HTTP/1.1"
    server: LabHTTPServer
    server_version = "labapi"

    def version_string(self) -> str:
        return "labapi"

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s " + format, self.address_string(), *args)

    # -- plumbing -------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, code: int, payload: Any, *, extra: dict[str, str] | None = None,
              content_type: str = JSON) -> None:
        data = payload if isinstance(payload, bytes) else (
            json.dumps(payload, separators=(",", ":")).encode() + b"\n")
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._status = code

    def _send_error(self, err: ApiError) -> None:
        self._send(err.code, err.status())

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        arrived = time.time()
        self._status = 0
        self._watch = False
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = self._read_body()
        if path == "/lab" or path.startswith("/lab/"):
            try:
                self._lab(path, body)
            except ApiError as err:
                self._send_error(err)
            return
        try:
            self.server.faults.wait_if_paused()
            fault = self.server.faults.take_error(path, query)
            if fault is not None:
                extra = {}
                if fault.retry_after is not None:
                    extra["Retry-After"] = str(fault.retry_after)
                msg = ("Too many requests, please try again later." if fault.status == 429
                       else "Internal error occurred: injected by the lab")
                self._send(fault.status, status_body(fault.status, msg,
                                                     retry_after=fault.retry_after), extra=extra)
            else:
                self._api(path, query, body)
        except ApiError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the lab server must still answer like a server
            LOG.exception("labapi: internal error on %s %s", self.command, self.path)
            with contextlib.suppress(OSError):
                self._send(500, status_body(500, f"Internal error occurred: {exc}"))
        finally:
            if self._status:
                self.server.faults.record(arrived, self.command, path, url.query,
                                          self._status, self._watch,
                                          client=str(self.client_address[0]))

    # -- lab paths ------------------------------------------------------------------

    def _lab(self, path: str, body: bytes) -> None:
        data: dict[str, Any] = {}
        if body.strip():
            try:
                loaded = json.loads(body)
            except ValueError as exc:
                raise ApiError(400, f"malformed JSON: {exc}", "BadRequest") from None
            if not isinstance(loaded, dict):
                raise ApiError(400, "the body must be a JSON object", "BadRequest")
            data = loaded
        faults, store, method = self.server.faults, self.server.store, self.command
        if path == "/lab/faults/close-watches" and method == "POST":
            n = store.close_watches(abrupt=bool(data.get("abrupt", False)))
            self._send(200, {"closed": n})
        elif path == "/lab/faults/errors" and method == "POST":
            try:
                status = int(data["status"])
                count = int(data.get("count", 1))
                ra = data.get("retryAfter")
                faults.inject_errors(status, count, None if ra is None else int(ra),
                                     data.get("paths") or data.get("pathPrefix"),
                                     bool(data.get("continuedOnly", False)),
                                     bool(data.get("watchOnly", False)))
            except (KeyError, TypeError, ValueError) as exc:
                raise ApiError(400, f"bad fault: {exc}", "BadRequest") from None
            self._send(200, {"injected": count})
        elif path == "/lab/faults/corrupt-events" and method == "POST":
            try:
                count = int(data.get("count", 1))
            except (TypeError, ValueError) as exc:
                raise ApiError(400, f"bad fault: {exc}", "BadRequest") from None
            faults.corrupt_events(count)
            self._send(200, {"corrupting": count})
        elif path == "/lab/faults/pause" and method == "POST":
            try:
                seconds = float(data["seconds"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ApiError(400, f"bad pause: {exc}", "BadRequest") from None
            faults.pause(seconds)
            self._send(200, {"paused": seconds})
        elif path == "/lab/faults/resume" and method == "POST":
            faults.resume()
            self._send(200, {"resumed": True})
        elif path == "/lab/faults" and method == "DELETE":
            faults.clear_errors()
            faults.resume()
            self._send(200, {"cleared": True})
        elif path == "/lab/faults/silence-watches" and method == "POST":
            self._send(200, {"silenced": store.watcher_count(),
                             "epoch": faults.silence_watches()})
        elif path == "/lab/snapshot" and method == "POST":
            self.server.snapshot = store.snapshot()
            self._send(200, {"resourceVersion": str(self.server.snapshot["rv"])})
        elif path == "/lab/restore" and method == "POST":
            if self.server.snapshot is None:
                raise ApiError(409, "no snapshot to restore: POST /lab/snapshot first", "Conflict")
            self._send(200, {"resourceVersion": str(store.restore(self.server.snapshot))})
        elif path == "/lab/compact" and method == "POST":
            self._send(200, {"compactedResourceVersion": str(store.compact())})
        elif path == "/lab/requests" and method == "GET":
            self._send(200, faults.requests())
        elif path == "/lab/requests" and method == "DELETE":
            faults.clear_requests()
            self._send(200, {"cleared": True})
        else:
            raise ApiError(404, f"no lab path {method} {path}", "NotFound")

    # -- API paths ------------------------------------------------------------------

    def _json_body(self, body: bytes) -> Any:
        if not body.strip():
            raise ApiError(400, "the request body is empty", "BadRequest")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"the body of the request was in an unknown format - "
                           f"accepted media types include: application/json ({exc})",
                           "BadRequest") from None

    def _yaml_body(self, body: bytes) -> Any:
        try:
            return yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise ApiError(400, f"the apply configuration is not valid YAML: {exc}",
                           "BadRequest") from None

    def _api(self, path: str, query: dict[str, str], body: bytes) -> None:
        parts = path.strip("/").split("/")
        method = self.command
        if method in ("GET", "HEAD"):
            doc = self._discovery(parts)
            if doc is not None:
                self._send(200, doc)
                return
            if parts[0] in ("healthz", "livez", "readyz"):
                self._send(200, b"ok", content_type="text/plain; charset=utf-8")
                return
        route: _Route | None = None
        if parts[:2] == ["api", "v1"]:
            route = _parse_resource_path(["", "v1", *parts[2:]])
        elif parts[0] == "apis" and len(parts) >= 3:
            route = _parse_resource_path(parts[1:])
        if route is None:
            raise ApiError(404, "the server could not find the requested resource",
                           "NotFound")
        store = self.server.store
        res, ns, name = route.res, route.namespace, route.name
        if name is None:
            watch = route.watch_path or query.get("watch", "") in ("true", "1")
            if method == "GET" and watch:
                self._stream_watch(route, query)
            elif method == "GET":
                limit = query.get("limit")
                self._send_read(res, store.list(
                    res, ns, label_selector=query.get("labelSelector"),
                    field_selector=query.get("fieldSelector"),
                    limit=int(limit) if limit and limit.isdigit() else None,
                    continue_token=query.get("continue") or None), query, is_list=True)
            elif method == "POST":
                if res.namespaced and ns is None:
                    raise ApiError(405, "the server does not allow this method on the "
                                   "requested resource", "MethodNotAllowed")
                self._send(201, store.create(res, ns, self._json_body(body)))
            elif method == "DELETE":
                listed = store.list(res, ns, label_selector=query.get("labelSelector"),
                                    field_selector=query.get("fieldSelector"))
                for item in listed["items"]:
                    md = item["metadata"]
                    with contextlib.suppress(ApiError):
                        store.delete(res, md.get("namespace"), md["name"])
                self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                 "status": "Success"})
            else:
                raise ApiError(405, "method not allowed", "MethodNotAllowed")
            return
        if route.watch_path:
            raise ApiError(404, "watch of a single object: use fieldSelector", "NotFound")
        sub = route.subresource
        if method in ("GET", "HEAD"):
            self._send_read(res, store.get(res, ns, name), query, is_list=False)
        elif method == "PUT":
            self._send(200, store.update(res, ns, name, self._json_body(body),
                                         subresource=sub))
        elif method == "PATCH":
            ctype = self.headers.get("Content-Type", "")
            if ctype.split(";")[0].strip().lower() == APPLY_PATCH:
                patch = self._yaml_body(body)
                existed = store.peek(res, ns, name) is not None
                out = store.patch(res, ns, name, ctype, patch, subresource=sub)
                self._send(200 if existed else 201, out)
            else:
                self._send(200, store.patch(res, ns, name, ctype, self._json_body(body),
                                            subresource=sub))
        elif method == "DELETE":
            pre: dict[str, Any] | None = None
            if body.strip():
                opts = self._json_body(body)
                if isinstance(opts, dict) and isinstance(opts.get("preconditions"), dict):
                    pre = opts["preconditions"]
            self._send(200, store.delete(res, ns, name, preconditions=pre))
        else:
            raise ApiError(405, "method not allowed", "MethodNotAllowed")

    # -- Table output (kubectl get) -------------------------------------------------

    def _table_request(self, query: dict[str, str]) -> tuple[str, str] | None:
        """(Table version, includeObject) when the Accept header asks for a Table."""
        version = table_printers.table_version(self.headers.get("Accept"))
        if version is None:
            return None
        include = query.get("includeObject", "")
        if include not in table_printers.INCLUDE_OBJECT_VALUES:
            raise ApiError(400, f"includeObject must be None, Metadata or Object, not "
                           f"{include!r}", "BadRequest")
        return version, include

    def _send_read(self, res: Resource, payload: dict[str, Any], query: dict[str, str], *,
                   is_list: bool) -> None:
        """Answer a get or list: the object or list itself, or a Table of it."""
        wanted = self._table_request(query)
        if wanted is None:
            self._send(200, payload)
            return
        version, include = wanted
        if is_list:
            table = table_printers.build_table(res.key, payload["items"],
                                               list_metadata=payload.get("metadata"),
                                               include_object=include, version=version)
        else:
            table = table_printers.object_table(res.key, payload, include_object=include,
                                                version=version)
        self._send(200, table, content_type=table_printers.content_type(version))

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        if parts == ["version"]:
            return discovery.version()
        if parts == ["api"]:
            host, port = self.server.server_address[:2]
            host_text = host.decode() if isinstance(host, bytes) else str(host)
            return discovery.api_versions(f"{host_text}:{port}")
        if parts == ["apis"]:
            return discovery.api_group_list()
        if len(parts) == 2 and parts[0] == "api":
            return discovery.resource_list("", parts[1])
        if len(parts) == 2 and parts[0] == "apis":
            return discovery.api_group(parts[1])
        if len(parts) == 3 and parts[0] == "apis":
            return discovery.resource_list(parts[1], parts[2])
        if parts == ["openapi", "v3"]:
            return discovery.openapi_v3_root()
        if len(parts) > 2 and parts[:2] == ["openapi", "v3"]:
            return discovery.openapi_v3_group_version("/".join(parts[2:]))
        return None

    # -- watch ----------------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            peeked: bytes = sock.recv(1, socket.MSG_PEEK)
            return peeked == b""
        except (OSError, ValueError):
            return True

    def _stream_watch(self, route: _Route, query: dict[str, str]) -> None:
        store = self.server.store
        res = route.res
        w = store.watch(res, route.namespace, resource_version=query.get("resourceVersion"),
                        label_selector=query.get("labelSelector"),
                        field_selector=query.get("fieldSelector"))
        timeout_q = query.get("timeoutSeconds")
        try:
            timeout = float(timeout_q) if timeout_q else self.server.default_watch_timeout
        except ValueError:
            store.stop_watch(w)
            raise ApiError(400, f"invalid timeoutSeconds {timeout_q!r}", "BadRequest") from None
        bookmarks = query.get("allowWatchBookmarks", "") in ("true", "1")
        try:
            table = self._table_request(query)
        except ApiError:
            store.stop_watch(w)
            raise
        headers = True  # a Table watch sends column definitions with its first row only
        self._watch = True
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", JSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        # This server closes the connection when a watch ends; saying so keeps
        # clients (urllib3's pool) from reusing a socket that is about to close.
        self.send_header("Connection", "close")
        self.end_headers()
        self._status = 200
        interval = self.server.bookmark_interval
        deadline = time.monotonic() + timeout
        epoch = self.server.faults.silence_epoch
        next_bookmark = time.monotonic() + interval
        try:
            while True:
                if self.server.faults.silence_epoch != epoch:
                    self._stay_silent()
                    return
                now = time.monotonic()
                if now >= deadline:
                    if bookmarks:
                        self._bookmark(res, store.bookmark_rv(w) or store.rv, table)
                    break
                wait = min(deadline - now, 0.5)
                if bookmarks:
                    wait = max(0.0, min(wait, next_bookmark - now))
                try:
                    item = w.items.get(timeout=wait)
                except queue.Empty:
                    item = None
                if item is None:
                    if self._client_gone() or self.server.closing:
                        break
                    if bookmarks and time.monotonic() >= next_bookmark:
                        rv = store.bookmark_rv(w)
                        if rv is not None:
                            self._bookmark(res, rv, table)
                        next_bookmark = time.monotonic() + interval
                    continue
                if self.server.faults.silence_epoch != epoch:
                    self._stay_silent()  # silenced while waiting: this item is never sent
                    return
                kind, a, b = item
                if kind == "event" and self.server.faults.take_corrupt_event():
                    self._write_chunk(b'{"type":"MODIFIED","object":{"kind":\n')
                if kind == "event":
                    if table is not None:
                        b = table_printers.object_table(res.key, b, version=table[0],
                                                        include_object=table[1],
                                                        headers=headers)
                        headers = False
                    self._write_chunk(json.dumps({"type": a, "object": b},
                                                 separators=(",", ":")).encode() + b"\n")
                elif kind == "error":
                    self._write_chunk(json.dumps({"type": "ERROR", "object": a},
                                                 separators=(",", ":")).encode() + b"\n")
                elif kind == "close":
                    if b:  # abrupt: drop the connection without ending the chunked body
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            store.stop_watch(w)

    def _stay_silent(self) -> None:
        """A silenced watch: send nothing more, not even its end, until the client leaves.

        Bounded (10 minutes) so that a client that never gives up cannot hold a
        server thread forever; then the connection is dropped without a clean end.
        """
        end = time.monotonic() + SILENT_WATCH_LIMIT
        while time.monotonic() < end and not self.server.closing and not self._client_gone():
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _bookmark(self, res: Resource, rv: int, table: tuple[str, str] | None = None) -> None:
        obj: dict[str, Any] = {"kind": res.kind, "apiVersion": res.api_version,
                               "metadata": {"resourceVersion": str(rv)}}
        if table is not None:  # a Table watch: an empty Table that carries the version
            obj = table_printers.build_table(res.key, [], version=table[0], headers=False,
                                             list_metadata=obj["metadata"])
        self._write_chunk(json.dumps({"type": "BOOKMARK", "object": obj},
                                     separators=(",", ":")).encode() + b"\n")
