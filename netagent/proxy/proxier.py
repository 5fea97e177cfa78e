"""The seam between the node sync and a proxy backend: the :class:`Proxier` Protocol.

Why a Protocol: netagent programs Services with more than one kernel
interface (iptables today; IPVS and nftables next). Everything above the
backend (the node sync, the daemon, health, metrics, ``netagent debug``)
speaks only this interface, so a new mode is a new package beside
``netagent/proxy/iptables/`` plus one line in :mod:`netagent.proxy.registry`,
and nothing else changes.

One proxier programs one address family. Its contract:

* :meth:`Proxier.sync` turns a complete desired :class:`ProxyState` (and,
  for IPv4, the overlay's backend-neutral :class:`OverlayRules`) into kernel
  state in **one atomic apply**, and raises if that apply failed, leaving the
  previous state serving. It remembers on its own that the next sync must be
  full after a failure; ``full=True`` forces one.
* :meth:`Proxier.render_objects` is pure: what this backend *would* write
  for a state, as :class:`OwnedObject` values. :meth:`Proxier.kernel_objects`
  reads what the kernel holds of what this backend owns, in the same shape,
  so ``netagent debug diff`` compares the two without knowing the backend.
* :meth:`Proxier.cleanup` removes everything this mode ever created (and
  nothing else); the registry runs it for every *other* mode at start, so a
  node switched between modes keeps no stale rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from netagent.model import IPFamily, ProxyState
from netagent.overlay.rules_intent import OverlayRules


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync of one family did, in terms every backend can fill in.

    Attributes:
        mode: The proxy mode that synced (``iptables``, ...).
        family: The address family.
        full: Whether the sync rewrote everything the backend owns.
        render_seconds: Time spent building the desired kernel state (pure).
        apply_seconds: Time spent writing it to the kernel.
        bytes_written: Size of the payload sent to the kernel (0 when nothing
            changed and nothing was sent).
        objects_written: Kernel objects (re)written: chains, virtual servers,
            set or map elements.
        objects_deleted: Kernel objects removed.
        conntrack_deletes: Stale conntrack flows deleted after the apply.
        rule_counts: Per-table (or per-kind) counts of what is programmed
            now, for the ``*_rules_total`` metrics.
        summary: One human line about the apply, for the log.
    """

    mode: str
    family: IPFamily
    full: bool
    render_seconds: float
    apply_seconds: float
    bytes_written: int = 0
    objects_written: int = 0
    objects_deleted: int = 0
    conntrack_deletes: int = 0
    rule_counts: Mapping[str, int] = field(default_factory=dict)
    summary: str = ""


@dataclass(frozen=True, slots=True, order=True)
class OwnedObject:
    """One thing a backend owns in the kernel, comparable between desired and kernel.

    Attributes:
        kind: What it is: ``chain`` and ``jump`` for iptables; other backends
            add their own (``virtual-server``, ``element``, ...).
        key: Unique within ``kind``, e.g. ``nat NETAGENT-SVC-…``.
        content: Its normalised contents (rule lines, real servers, ...), in
            the order that matters to the kernel.
        owner: What it belongs to, for people: ``ns/name:port`` of a service
            port, ``overlay``, or ``node`` for the shared skeleton.
    """

    kind: str
    key: str
    content: tuple[str, ...] = ()
    owner: str = "node"


@dataclass(frozen=True, slots=True)
class CleanupResult:
    """What :meth:`Proxier.cleanup` removed; ``failures`` name what could not be."""

    removed: int
    summary: str
    failures: tuple[str, ...] = ()


class Proxier(Protocol):
    """Programs one address family's Services with one kernel interface."""

    @property
    def mode(self) -> str:
        """The proxy mode's name, as ``--proxy-mode`` spells it."""
        ...

    @property
    def family(self) -> IPFamily:
        """The address family this proxier programs."""
        ...

    @property
    def needs_full_sync(self) -> bool:
        """True before the first sync, after a failure, or after drift was detected."""
        ...

    def sync(
        self, state: ProxyState, *, full: bool = False, overlay: OverlayRules | None = None
    ) -> SyncResult:
        """Apply ``state`` (plus the overlay's rules) atomically; raise on failure."""
        ...

    def render_objects(
        self, state: ProxyState, overlay: OverlayRules | None = None
    ) -> Sequence[OwnedObject]:
        """Pure: what :meth:`sync` would leave in the kernel for ``state``."""
        ...

    def kernel_objects(self) -> Sequence[OwnedObject]:
        """What the kernel holds now of what this backend owns (reads the kernel)."""
        ...

    def describe(self) -> Sequence[OwnedObject]:
        """What the last successful sync programmed (empty before the first)."""
        ...

    def cleanup(self) -> CleanupResult:
        """Remove everything this mode created in this family, and nothing else."""
        ...
