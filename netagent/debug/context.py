"""What every ``netagent debug`` report is built from (:class:`DebugContext`), and its error type.

Why one context type: the same report builders run in two places — the
``netagent debug`` command (desired state freshly listed from the API or
read from manifests, the kernel of the namespace it runs in) and the
running agent's ``/debug/…`` pages (the states and Nodes of its last sync,
its own proxiers). Each place fills a :class:`DebugContext`; the builders
read only the context, so both answer with the same JSON.

Why one error type: bad input (an unknown service, an unreachable API
server, a node netagent has not programmed) must reach the operator as one
line, never a traceback. Builders raise :class:`DebugError` with that line;
the CLI prints it on stderr and exits non-zero, the endpoint answers it
with a 4xx/5xx status.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netagent.model import IPAddress, IPFamily, NodeInfo, ProxyState

if TYPE_CHECKING:  # pyroute2 and the config machinery load only where a report needs them
    from netagent.config import AgentConfig
    from netagent.overlay.kernel import OverlayKernel
    from netagent.overlay.rules_intent import OverlayRules
    from netagent.overlay.underlay import Underlay
    from netagent.proxy.proxier import Proxier


class DebugError(RuntimeError):
    """A report cannot be built; ``str()`` is one line for the operator.

    ``status`` is the HTTP status the debug endpoint answers with (404 for
    an unknown name, 503 for state that is not there yet, 400 for bad input).
    """

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DebugContext:
    """What a report may look at.

    Attributes:
        config: The agent's configuration (node name, cluster CIDRs, overlay settings).
        states: The desired :class:`ProxyState` per family (IPv4 first).
        nodes: Every Node by name (this node's own, and the overlay's peers).
        proxiers: The proxier per family: ``render_objects`` for what netagent
            would write, ``kernel_objects`` for what the kernel holds.
        source: Where the desired state came from, for headers and errors.
        overlay_rules: The overlay's packet-filter intent (IPv4 only), which
            rides in the same ruleset as the Service rules.
        overlay_kernel: Opens the overlay's kernel interface (netlink).
        underlay: Finds this node's underlay device (the overlay's plan needs it).
        ruleset: ``iptables-save`` text of one family, for packet traces;
            None when the proxy mode has no iptables ruleset.
        local_ips: Addresses of this network namespace (``--dst-type LOCAL``).
    """

    config: AgentConfig
    states: Sequence[ProxyState]
    nodes: Mapping[str, NodeInfo]
    proxiers: Mapping[IPFamily, Proxier]
    source: str = ""
    overlay_rules: OverlayRules | None = None
    overlay_kernel: Callable[[], OverlayKernel] | None = None
    underlay: Callable[[], Underlay] | None = None
    ruleset: Callable[[IPFamily], str] | None = None
    local_ips: Callable[[], frozenset[IPAddress]] = field(default=lambda: frozenset())

    @property
    def node_name(self) -> str:
        """This node's name."""
        return self.config.node_name

    def state(self, family: IPFamily) -> ProxyState | None:
        """The desired state of ``family``, if this node proxies it."""
        return next((s for s in self.states if s.family is family), None)

    def proxier(self, family: IPFamily) -> Proxier:
        """The proxier of ``family``; DebugError when there is none."""
        proxier = self.proxiers.get(family)
        if proxier is None:
            raise DebugError(f"no {family.value} proxier on this node", status=503)
        return proxier


def service_key(name: str) -> str:
    """``ns/name`` from ``ns/name`` or a bare ``name`` (namespace default, as kubectl)."""
    name = name.strip()
    if not name or name.count("/") > 1 or name.startswith("/") or name.endswith("/"):
        raise DebugError(f"bad service name {name!r}: expected NAMESPACE/NAME", status=400)
    return name if "/" in name else f"default/{name}"


@dataclass(frozen=True, slots=True)
class NodeKernel:
    """How a report reaches this network namespace's kernel (same for CLI and agent)."""

    overlay_kernel: Callable[[], OverlayKernel]
    underlay: Callable[[], Underlay]
    ruleset: Callable[[IPFamily], str] | None


def node_kernel(config: AgentConfig) -> NodeKernel:
    """The real kernel interfaces for ``config`` (imported late: netlink and subprocesses)."""

    def open_overlay_kernel() -> OverlayKernel:
        from netagent.overlay.kernel import PyrouteOverlayKernel

        return PyrouteOverlayKernel()

    def find_underlay() -> Underlay:
        from netagent.overlay.underlay import find_underlay as find

        return find(iface=config.overlay_iface, public_ip=config.overlay_public_ip)

    def ruleset(family: IPFamily) -> str:
        from netagent.proxy.iptables.runner import SubprocessIptables, resolve_backend

        backend = resolve_backend(config.iptables_backend)
        return SubprocessIptables(family=family, backend=backend).save()

    # Both iptables-based modes keep an iptables ruleset to trace through.
    has_ruleset = config.proxy_mode in ("iptables", "none")
    return NodeKernel(open_overlay_kernel, find_underlay, ruleset if has_ruleset else None)
