"""``python -m labapi serve``: run the lab API server in the foreground.

Why it exists: lab scripts start the server as a separate process (so agents in
network namespaces can reach it) and need a ready signal on stdout, an optional
kubeconfig file, and a clean exit on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from types import FrameType

from labapi.kubeconfig import write_kubeconfig
from labapi.server import LabApiServer
from labapi.store import dump_state, load_state


def _node_ports(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low), int(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labapi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the lab API until SIGTERM/SIGINT")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=6443)
    serve.add_argument("--service-cidr", default="10.96.0.0/12")
    serve.add_argument("--nodeport-range", type=_node_ports, default=(30000, 32767),
                       help="LOW-HIGH (default 30000-32767)")
    serve.add_argument("--history", type=int, default=1000)
    serve.add_argument("--bookmark-interval", type=float, default=1.0)
    serve.add_argument("--kubeconfig-out", default=None)
    serve.add_argument("--state-file", default=None,
                       help="keep objects across restarts: read at start, written at exit")
    args = parser.parse_args(argv)

    server = LabApiServer(args.host, args.port, service_cidr=args.service_cidr,
                          nodeport_range=args.nodeport_range, history=args.history,
                          bookmark_interval=args.bookmark_interval)
    if args.state_file and os.path.exists(args.state_file):
        with open(args.state_file) as fh:
            load_state(server.store, json.load(fh))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    if args.kubeconfig_out:
        write_kubeconfig(args.kubeconfig_out, server.url)
    host = args.host if ":" not in args.host else f"[{args.host}]"
    print(f"labapi listening on http://{host}:{server.port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        if args.state_file:
            tmp = args.state_file + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(dump_state(server.store), fh)
            os.replace(tmp, args.state_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
