"""Where pyroute2 looks for a named network namespace, checked before a socket is opened.

Why: pyroute2 resolves ``netns="name"`` to ``/var/run/netns/name`` (a path
is used as it is) and, with its default flags, *creates* a namespace that
is missing. The adapters pass ``flags=0`` so that cannot happen, but a
socket class that then fails in its constructor leaves its asyncio event
loop unclosed. Checking first gives a clean error and leaks nothing.
"""

from __future__ import annotations

import os

#: pyroute2's ``NETNS_RUN_DIR``, the directory ``ip netns add`` uses.
NETNS_RUN_DIR = "/var/run/netns"


def netns_path(netns: str) -> str:
    """The file pyroute2 opens for ``netns``."""
    return netns if os.path.dirname(netns) else os.path.join(NETNS_RUN_DIR, netns)


def netns_exists(netns: str) -> bool:
    """Whether the named (or given-by-path) network namespace exists."""
    return os.path.exists(netns_path(netns))
