"""A tiny TCP+UDP "who answered, and whom did it see" server for lab pods.

Why this reply format: every proxy test asks two questions of a reply —
which backend handled the connection (load balancing, affinity, local
policy) and which source address the backend saw (masquerade or not). The
server answers each request line (TCP) or datagram (UDP) with
``<pod-name> <peer-ip>:<peer-port>\\n``, so both answers are in the reply.

It is run as a script (``python -I -S echo_server.py``) inside a pod's
namespace and uses the standard library only, so it starts fast and does not
depend on the venv. It prints ``READY`` on stdout once every socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import cast


def reply_for(name: str, peer: tuple[str, int]) -> bytes:
    """The reply line for one request from ``peer``."""
    return f"{name} {peer[0]}:{peer[1]}\n".encode()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport does not subclass DatagramTransport
        # on every Python version, so the type is asserted rather than checked.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(reply_for(self.name, addr), addr)


async def _tcp_client(
    name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    peer = writer.get_extra_info("peername")
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(reply_for(name, (peer[0], peer[1])))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(name: str, host: str, tcp_ports: list[int], udp_ports: list[int]) -> None:
    """Bind every port, print READY, and serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = [
        await asyncio.start_server(
            lambda r, w: _tcp_client(name, r, w), host=host, port=port, reuse_address=True
        )
        for port in tcp_ports
    ]
    transports = [
        (await loop.create_datagram_endpoint(lambda: _UdpEcho(name), local_addr=(host, port)))[0]
        for port in udp_ports
    ]
    print("READY", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    for transport in transports:
        transport.close()


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def main(argv: list[str] | None = None) -> int:
    """``echo_server.py --name pod-a --tcp 8080,5353 --udp 8080,5353``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--name", required=True, help="the name put in every reply")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--tcp", type=_ports, default=[8080, 5353])
    p.add_argument("--udp", type=_ports, default=[8080, 5353])
    args = p.parse_args(argv)
    asyncio.run(serve(args.name, args.host, args.tcp, args.udp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
