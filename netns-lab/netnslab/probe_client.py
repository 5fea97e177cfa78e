"""The client half of lab traffic: runs inside a namespace and reports each attempt as JSON.

Why one helper process that loops instead of one process per connection:
the load-balancing tests open hundreds of new connections, and starting a
process per connection would cost more than the traffic itself. This script
is started once (``ip netns exec NS python -I -S probe_client.py ...``),
makes every attempt itself, and prints one JSON object per attempt:

    {"reply": "pod-a 10.244.0.20:40112", "error": null, "detail": "",
     "elapsed": 0.0012, "local": "10.244.0.20:40112"}

``error`` tells the failure kinds apart, because the tests do: ``refused``
(a REJECT or RST answered at once), ``timeout`` (nothing came back),
``reset``, ``unreachable``, ``closed`` (connected, but no reply line),
``deadline`` (not attempted: the overall time budget ran out) and ``error``.

Standard library only, so it starts fast and runs from any interpreter.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import time
from typing import Any

Result = dict[str, Any]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, ConnectionRefusedError):
        return "refused", str(exc)
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout", str(exc) or "timed out"
    if isinstance(exc, ConnectionResetError):
        return "reset", str(exc)
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable", str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


def _result(
    t0: float,
    reply: str | None = None,
    error: str | None = None,
    detail: str = "",
    local: str = "",
) -> Result:
    return {
        "reply": reply,
        "error": error,
        "detail": detail,
        "elapsed": round(time.monotonic() - t0, 6),
        "local": local,
    }


def _addr(sock: socket.socket) -> str:
    name = sock.getsockname()
    return f"{name[0]}:{name[1]}"


def _read_line(sock: socket.socket, deadline: float) -> str | None:
    """Read up to and including a newline; None when the peer closed first."""
    buf = b""
    while not buf.endswith(b"\n"):
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            return buf.decode(errors="replace").strip() or None
        buf += chunk
    return buf.decode(errors="replace").strip()


def tcp_attempt(host: str, port: int, payload: bytes, timeout: float) -> Result:
    """One new TCP connection: connect, send ``payload``, read one reply line."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    local = ""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
            local = _addr(sock)
            sock.sendall(payload)
            reply = _read_line(sock, deadline)
        except OSError as exc:
            kind, detail = _classify(exc)
            return _result(t0, error=kind, detail=detail, local=local)
    if reply is None:
        return _result(t0, error="closed", detail="no reply before the peer closed", local=local)
    return _result(t0, reply=reply, local=local)


def udp_attempt(
    host: str, port: int, payload: bytes, timeout: float, keep: list[socket.socket]
) -> Result:
    """One datagram from a fresh socket (a new source port) and its reply.

    The socket is connected so that an ICMP port-unreachable surfaces as
    ECONNREFUSED, and it is kept open in ``keep`` until the run ends so the
    kernel cannot hand the same source port to a later attempt.
    """
    t0 = time.monotonic()
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    keep.append(sock)
    local = ""
    try:
        sock.connect((host, port))
        local = _addr(sock)
        sock.settimeout(timeout)
        sock.send(payload)
        data = sock.recv(65535)
    except OSError as exc:
        kind, detail = _classify(exc)
        return _result(t0, error=kind, detail=detail, local=local)
    return _result(t0, reply=data.decode(errors="replace").strip(), local=local)


def _emit(result: Result) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def run_many(args: argparse.Namespace) -> int:
    """``tcp``/``udp`` modes: ``count`` new connections, one JSON line each."""
    payload = args.payload.encode()
    end = time.monotonic() + args.deadline
    keep: list[socket.socket] = []
    try:
        for _ in range(args.count):
            left = end - time.monotonic()
            if left <= 0:
                _emit(_result(time.monotonic(), error="deadline", detail="time budget spent"))
                continue
            timeout = min(args.timeout, left)
            if args.mode == "tcp":
                _emit(tcp_attempt(args.host, args.port, payload, timeout))
            else:
                _emit(udp_attempt(args.host, args.port, payload, timeout, keep))
    finally:
        for sock in keep:
            sock.close()
    return 0


def run_session(args: argparse.Namespace) -> int:
    """``session`` mode: one TCP connection; each stdin line is sent and its reply printed."""
    t0 = time.monotonic()
    with socket.socket(_family(args.host), socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(args.timeout)
            sock.connect((args.host, args.port))
        except OSError as exc:
            kind, detail = _classify(exc)
            _emit(_result(t0, error=kind, detail=detail))
            return 0
        local = _addr(sock)
        _emit(_result(t0, reply="", local=local))
        for line in sys.stdin.buffer:
            t1 = time.monotonic()
            try:
                sock.sendall(line if line.endswith(b"\n") else line + b"\n")
                reply = _read_line(sock, t1 + args.timeout)
            except OSError as exc:
                kind, detail = _classify(exc)
                _emit(_result(t1, error=kind, detail=detail, local=local))
                return 0
            if reply is None:
                _emit(_result(t1, error="closed", detail="peer closed", local=local))
                return 0
            _emit(_result(t1, reply=reply, local=local))
    return 0


def run_wait(args: argparse.Namespace) -> int:
    """``wait-tcp`` mode: retry connecting to each HOST:PORT until it accepts or time is up."""
    end = time.monotonic() + args.deadline
    for target in args.targets:
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        t0 = time.monotonic()
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=0.5) as sock:
                    _emit(_result(t0, reply=target, local=_addr(sock)))
                    break
            except OSError as exc:
                if time.monotonic() >= end:
                    kind, detail = _classify(exc)
                    _emit(_result(t0, error=kind, detail=f"{target}: {detail}"))
                    break
                time.sleep(0.02)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring for the modes."""
    p = argparse.ArgumentParser(description="lab traffic client")
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("tcp", "udp"):
        m = sub.add_parser(mode)
        m.add_argument("host")
        m.add_argument("port", type=int)
        m.add_argument("--count", type=int, default=1)
        m.add_argument("--payload", default="hello\n")
        m.add_argument("--timeout", type=float, default=2.0, help="per attempt")
        m.add_argument("--deadline", type=float, default=60.0, help="for all attempts")
        m.set_defaults(func=run_many)
    s = sub.add_parser("session")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--timeout", type=float, default=2.0)
    s.set_defaults(func=run_session)
    w = sub.add_parser("wait-tcp")
    w.add_argument("targets", nargs="+", metavar="HOST:PORT")
    w.add_argument("--deadline", type=float, default=5.0)
    w.set_defaults(func=run_wait)
    args = p.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
