"""A loopback port in the host's namespace that forwards into a lab namespace.

Why: the lab API server listens inside the control-plane namespace, on the
lab's underlay, where the node agents reach it. The test process, kubectl
and a person at the shell live in the host's namespace, which the lab must
never configure (no addresses, routes or veths). A listening socket on
127.0.0.1 changes nothing there, so this forwarder offers one.

How: the forwarder *process* runs inside the control-plane namespace (``ip
netns exec``), so deleting the lab's namespaces kills it with everything
else, even for a detached lab whose creator is gone. Only its listening
socket lives in the host's namespace: a socket belongs to the namespace of
the thread that created it, for its whole life, so one short-lived thread
enters the caller's namespace with ``setns(2)`` (through ctypes; Python 3.11
has no ``os.setns``), creates and binds the listener, and ends. Outgoing
connections are made by the process's other threads, from the lab namespace.

Run as ``python -m netnslab.port_forward --listen-netns-of PID --to HOST:PORT``:
it prints ``forwarding 127.0.0.1:<port>`` once listening, then runs until
SIGTERM. Each connection is pumped byte for byte by two threads, so chunked
watch streams pass through unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in_namespace_of(pid: int, port: int = 0) -> socket.socket:
    """A TCP socket listening on 127.0.0.1:``port`` in the network namespace of ``pid``."""
    box: list[socket.socket | BaseException] = []

    def create() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                _setns(fd)  # this thread only; it ends right after
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            box.append(sock)
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=create, name="listen-in-host-netns")
    thread.start()
    thread.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _pump(src: socket.socket, dst: socket.socket, done: Callable[[], None]) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        done()


def _serve_one(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
        upstream.settimeout(None)
    except OSError:
        client.close()
        return
    remaining = [2]
    lock = threading.Lock()

    def done() -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last:
            client.close()
            upstream.close()

    for a, b in ((client, upstream), (upstream, client)):
        threading.Thread(target=_pump, args=(a, b, done), daemon=True).start()


def serve(listener: socket.socket, target: tuple[str, int]) -> None:
    """Forward every connection accepted on ``listener`` to ``target``; runs forever."""
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(client, target), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netnslab.port_forward")
    parser.add_argument("--listen-netns-of", type=int, required=True, help="a pid")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--to", required=True, help="HOST:PORT, reached from this namespace")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = listen_in_namespace_of(args.listen_netns_of, args.listen_port)
    print(f"forwarding 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    serve(listener, (host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
