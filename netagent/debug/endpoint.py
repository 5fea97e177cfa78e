"""The running agent's ``/debug/…`` pages: the same reports as ``netagent debug``, from its memory.

Why: when the agent and a fresh look disagree, the operator needs the
agent's own view — the states and Nodes of its last sync and the proxiers
that programmed them — not a new LIST from the API. :func:`handle` serves
``/debug/services``, ``/debug/service``, ``/debug/overlay``, ``/debug/diff``
and ``/debug/trace`` from a :class:`DebugContext`; :func:`agent_handler`
builds that context from a :class:`~netagent.runtime.node_sync.NodeSync`
on every request. The metrics server mounts the handler on loopback only
(:mod:`netagent.observe.agent_endpoints`).

Answers are JSON by default (``?format=table`` or ``yaml`` for the other
renderings). A report that cannot be built answers its DebugError's status
with the one-line reason as text/plain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from netagent.debug.context import DebugContext, DebugError, node_kernel
from netagent.debug.output import FORMATS, render
from netagent.debug.reports import build

if TYPE_CHECKING:
    from netagent.runtime.node_sync import NodeSync

PREFIX = "/debug/"
_TYPES = {"json": "application/json", "yaml": "application/yaml", "table": "text/plain"}
_TEXT = "text/plain; charset=utf-8"


def handle(path: str, query: Mapping[str, str], context: DebugContext) -> tuple[int, str, bytes]:
    """Answer one ``/debug/<report>`` request: (status, content type, body)."""
    if not path.startswith(PREFIX):
        return 404, _TEXT, b"debug pages live under /debug/\n"
    fmt = query.get("format", "json")
    if fmt not in FORMATS:
        return 400, _TEXT, f"unknown format {fmt!r} (known: {', '.join(FORMATS)})\n".encode()
    try:
        report = build(path[len(PREFIX) :].strip("/"), context, query)
        body = render(report, fmt)
    except DebugError as exc:
        return exc.status, _TEXT, f"{exc}\n".encode()
    except Exception as exc:  # a debug page must answer, whatever went wrong
        return 500, _TEXT, f"{type(exc).__name__}: {exc}\n".encode()
    return 200, _TYPES[fmt], body.encode()


def agent_context(node_sync: NodeSync) -> DebugContext:
    """What the running agent knows, as a DebugContext (DebugError 503 before the first sync)."""
    from netagent.debug.trace import kernel_local_ips

    snapshot = node_sync.last_snapshot
    if snapshot is None or not node_sync.last_states:
        raise DebugError("the agent has not completed a sync yet", status=503)
    config = node_sync.config
    network: Any = node_sync.network
    intent = network.rules_intent() if hasattr(network, "rules_intent") else None

    kernel = node_kernel(config)
    return DebugContext(
        config=config,
        states=list(node_sync.last_states),
        nodes=dict(snapshot.nodes),
        proxiers=dict(node_sync.proxiers),
        source="the agent's last sync",
        overlay_rules=intent,  # exactly what the last sync rendered with
        overlay_kernel=kernel.overlay_kernel,
        underlay=kernel.underlay,
        ruleset=kernel.ruleset,
        local_ips=kernel_local_ips,
    )


def agent_handler(
    node_sync: NodeSync,
) -> Callable[[str, Mapping[str, str]], tuple[int, str, bytes]]:
    """The ``/debug/…`` handler of a running agent (what the metrics server calls)."""

    def handler(path: str, query: Mapping[str, str]) -> tuple[int, str, bytes]:
        try:
            context = agent_context(node_sync)
        except DebugError as exc:
            return exc.status, _TEXT, f"{exc}\n".encode()
        return handle(path, query, context)

    return handler
