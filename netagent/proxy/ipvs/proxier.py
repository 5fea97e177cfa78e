"""The IPVS proxier: ipsets, then iptables, then addresses and virtual servers, then removals.

Why this order: IPVS mode spans four kernel interfaces that cannot be
changed in one transaction. Each sync therefore adds before it removes, so
no packet meets a half-programmed node: new set members first (the iptables
rules match sets), then the constant iptables rules (one atomic
iptables-restore, with the overlay's chains), then the dummy device's
addresses and the virtual and real servers, and only then what went away:
real servers, virtual servers, addresses, set members. Any failure raises;
the next sync is full.

Why a failed iptables step does not always stop the sync: the iptables rules
are a constant set, so once a sync has written them a later render wants the
very same rules. When iptables then fails (another program holds the xtables
lock, the restore tool breaks), the rules in the kernel are still the right
ones as far as netagent knows, and holding back the virtual servers would
only keep the node's Services stale. So the sync goes on, programs the
virtual servers, and then raises the iptables error: the sync is reported as
failed and the next one is full. When the wanted iptables rules differ from
the last ones written (the first sync, a configuration or overlay change),
the error stops the sync before any virtual server changes, as before.
(kube-proxy's IPVS mode, too, programs its virtual servers before its
iptables-restore.)

Why memory and dumps both: a full sync (the first, after a failure, and at
most once per ``drift_check_period``) dumps what netagent owns in each
interface and reconciles it object by object, so a real server deleted with
``ipvsadm`` or an address removed by hand comes back. A partial sync diffs
the new render against the committed one and sends only the changes
(constant in the number of services), plus one destination dump per
virtual server that has a terminating real server.

Ownership: a virtual server is netagent's when its address is bound to
``netagent-ipvs0`` (or is about to be), or when it is a node port (an
address of this node, a port in the node-port range). Anything else, such
as a virtual server someone made with ``ipvsadm`` on another address, is
never touched; nor is anything inside ``ipvs.excludeCIDRs``.

Graceful termination (kube-proxy's): a TCP real server that goes away gets
weight 0, so no new connection reaches it, and is deleted once it has no
active and no inactive connection, or after :data:`TERMINATION_LIMIT`
seconds. UDP and SCTP real servers are deleted at once and their stale
conntrack flows removed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from netagent.model import IPAddress, IPFamily, IPNetwork, ProxyState
from netagent.overlay.rules_intent import OverlayRules
from netagent.proxy.conntrack import Conntrack, delete_stale_udp
from netagent.proxy.iptables.apply import ApplyResult, IptablesApplier
from netagent.proxy.iptables.overlay_render import render_overlay_rules
from netagent.proxy.iptables.proxier import rule_counts
from netagent.proxy.iptables.runner import IptablesError, IptablesRunner
from netagent.proxy.ipvs.dummy import DummyDevice
from netagent.proxy.ipvs.ipsets import IpsetKernel, ipset_diff
from netagent.proxy.ipvs.model import RealServer, VirtualServer, VirtualServerKey
from netagent.proxy.ipvs.netlink import IpvsKernel
from netagent.proxy.ipvs.render import (
    IpvsFrontend,
    IpvsRenderer,
    RenderedIpvs,
    nodeport_addresses,
    owned_address,
    set_prefix,
    set_specs,
)
from netagent.proxy.proxier import CleanupResult, OwnedObject, SyncResult

log = logging.getLogger(__name__)

MODE = "ipvs"
#: A terminating real server is deleted at the latest this long after it went away.
TERMINATION_LIMIT = 900.0
#: Node ports are in Kubernetes' default service-node-port-range.
NODE_PORT_RANGE = range(30000, 32768)

#: (node's own addresses, addresses on interfaces other than the dummy device).
LocalAddresses = Callable[[], tuple[frozenset[IPAddress], frozenset[IPAddress]]]


@dataclass(slots=True)
class _Counters:
    written: int = 0
    deleted: int = 0


class IpvsProxier:
    """Programs one address family's Services with IPVS: the ``ipvs`` mode's Proxier."""

    mode = MODE

    def __init__(
        self,
        *,
        ipvs: IpvsKernel,
        ipsets: IpsetKernel,
        dummy: DummyDevice,
        iptables: IptablesRunner,
        local_addresses: LocalAddresses,
        conntrack: Conntrack | None,
        family: IPFamily = IPFamily.IPV4,
        scheduler: str = "rr",
        exclude_cidrs: Sequence[IPNetwork] = (),
        drift_check_period: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.family = family
        self._ipvs = ipvs
        self._ipsets = ipsets
        self._dummy = dummy
        self._iptables = iptables
        self._applier = IptablesApplier(iptables)
        self._local = local_addresses
        self._conntrack = conntrack
        self._scheduler = scheduler
        self._exclude = tuple(exclude_cidrs)
        self._drift_period = drift_check_period
        self._clock = clock
        self._next_full = 0.0
        self._committed: RenderedIpvs | None = None
        #: The virtual servers the last render_objects() wanted (what `debug` compares).
        self._inspected: frozenset[VirtualServerKey] = frozenset()
        self._renderer = IpvsRenderer()
        self._node_addresses: frozenset[IPAddress] = frozenset()
        self._previous: ProxyState | None = None
        self._force_full = True
        #: (virtual server, real server) -> deadline, for TCP real servers at weight 0.
        self.terminating: dict[tuple[VirtualServerKey, tuple[IPAddress, int]], float] = {}

    @property
    def needs_full_sync(self) -> bool:
        """Before the first sync, after a failure."""
        return self._force_full or self._committed is None

    # ---- render -------------------------------------------------------------------------

    def _render(
        self,
        state: ProxyState,
        overlay: OverlayRules | None,
        renderer: IpvsRenderer | None = None,
    ) -> RenderedIpvs:
        """A sync's render (memoised); ``renderer`` for one outside the sync's memo."""
        node, other = self._local()
        self._node_addresses = node  # the same reading serves this sync's ownership checks
        extra = None
        if overlay is not None and self.family is IPFamily.IPV4:
            extra = render_overlay_rules(overlay, masquerade_mark=1 << state.config.masquerade_bit)
        return (renderer or self._renderer).render(
            state,
            node_addresses=node,
            other_interface_addresses=other,
            scheduler=self._scheduler,
            overlay_rules=extra,
        )

    # ---- sync ---------------------------------------------------------------------------

    def sync(
        self, state: ProxyState, *, full: bool = False, overlay: OverlayRules | None = None
    ) -> SyncResult:
        """Render ``state`` and reconcile every interface; raise on failure (next sync full)."""
        if state.family is not self.family:
            raise ValueError(f"proxier for {self.family.value} got a {state.family.value} state")
        now = self._clock()
        periodic = self._drift_period is not None and now >= self._next_full
        full = full or self.needs_full_sync or periodic
        t0 = time.perf_counter()
        desired = self._render(state, overlay)
        t1 = time.perf_counter()
        counters = _Counters()
        iptables_failure: IptablesError | None = None
        try:
            self._sync_sets(desired, full, counters, removals=False)
            try:
                result = self._applier.apply(desired.iptables, full=full)
            except IptablesError as exc:
                if self._committed is None or self._committed.iptables != desired.iptables:
                    raise
                # The constant rules were written before and are wanted unchanged: program
                # the virtual servers anyway, then report the failure (module docstring).
                iptables_failure = exc
                result = ApplyResult(full=full, bytes_written=0, chains_written=0, chains_deleted=0)
            counters.written += result.chains_written
            self._sync_addresses(desired, full, counters, removals=False)
            self._sync_servers(desired, full, counters)
            self._finish_terminating(counters)
            self._sync_addresses(desired, full, counters, removals=True)
            self._sync_sets(desired, full, counters, removals=True)
        except Exception:
            self._force_full = True
            raise
        t2 = time.perf_counter()
        self._committed = desired
        deletes = 0
        if self._conntrack is not None:
            deletes = delete_stale_udp(self._conntrack, self._previous, state)
        self._previous = state
        if iptables_failure is not None:
            self._force_full = True
            log.error(
                "IPVS %s: virtual servers and sets programmed, but iptables failed (its "
                "rules are the same as the last ones written, which stay): %s",
                self.family.value,
                iptables_failure,
            )
            raise iptables_failure
        self._force_full = False
        if full and self._drift_period is not None:
            self._next_full = self._clock() + self._drift_period
        counts = rule_counts(desired.iptables)
        counts["virtual-servers"] = len(desired.virtual_servers)
        counts["real-servers"] = sum(len(f.real_servers) for f in desired.virtual_servers.values())
        return SyncResult(
            mode=MODE,
            family=self.family,
            full=full,
            render_seconds=t1 - t0,
            apply_seconds=t2 - t1,
            bytes_written=result.bytes_written,
            objects_written=counters.written,
            objects_deleted=counters.deleted,
            conntrack_deletes=deletes,
            rule_counts=counts,
            summary=(
                f"{counters.written} objects written, {counters.deleted} deleted;"
                f" {len(desired.virtual_servers)} virtual servers,"
                f" {len(self.terminating)} real servers terminating"
            ),
        )

    # ---- ipsets -------------------------------------------------------------------------

    def _sync_sets(
        self, desired: RenderedIpvs, full: bool, counters: _Counters, *, removals: bool
    ) -> None:
        specs = set_specs(self.family)
        existing = self._ipsets.list_sets() if full and not removals else None
        for name, wanted in desired.ipsets.items():
            if existing is not None and name not in existing:
                self._ipsets.create(specs[name])
                counters.written += 1
            if full:
                current = self._ipsets.members(name)
            elif self._committed is not None:
                committed = self._committed.ipsets.get(name)
                if committed is wanted:
                    continue  # the renderer reused the set: nothing in it changed
                current = set(committed or frozenset())
            else:  # pragma: no cover - a partial sync always has a committed render
                current = set()
            to_add, to_delete = ipset_diff(current, set(wanted))
            if not removals:
                for entry in to_add:
                    self._ipsets.add(name, entry)
                counters.written += len(to_add)
            else:
                for entry in to_delete:
                    self._ipsets.delete(name, entry)
                counters.deleted += len(to_delete)

    # ---- addresses ----------------------------------------------------------------------

    def _sync_addresses(
        self, desired: RenderedIpvs, full: bool, counters: _Counters, *, removals: bool
    ) -> None:
        if not removals:
            self._dummy.ensure()
        if full:
            current = {a for a in self._dummy.addresses() if a.version == self._version}
        elif self._committed is not None:
            if self._committed.addresses is desired.addresses:
                return  # the renderer reused the addresses: none came or went
            current = set(self._committed.addresses)
        else:  # pragma: no cover
            current = set()
        if not removals:
            for addr in sorted(desired.addresses - current, key=int):
                self._dummy.add_address(addr)
                counters.written += 1
        else:
            for addr in sorted(current - desired.addresses, key=int):
                self._dummy.delete_address(addr)
                counters.deleted += 1

    @property
    def _version(self) -> int:
        return 4 if self.family is IPFamily.IPV4 else 6

    # ---- virtual and real servers -------------------------------------------------------

    def _owned(self, vs: VirtualServer, bound: set[IPAddress], node: set[IPAddress]) -> bool:
        if vs.address.version != self._version or not owned_address(vs.address, self._exclude):
            return False
        return vs.address in bound or (vs.address in node and vs.port in NODE_PORT_RANGE)

    def _sync_servers(self, desired: RenderedIpvs, full: bool, counters: _Counters) -> None:
        wanted = desired.virtual_servers
        if full:
            node = self._node_addresses
            bound = set(desired.addresses)
            with contextlib.suppress(Exception):  # the device was just ensured; a race is fine
                bound |= self._dummy.addresses()
            node_ips = set(nodeport_addresses_all(node))
            # A frontend on an address of another interface (an LB IP on lo, say) is not
            # bound to the device, yet it is netagent's while wanted or last programmed.
            claimed = set(wanted)
            if self._committed is not None:
                claimed.update(self._committed.virtual_servers)
            kernel = {
                vs.key: vs
                for vs in self._ipvs.services()
                if vs.key in claimed or self._owned(vs, bound, node_ips)
            }
            current_dests = {
                key: {d.key: d.server for d in self._ipvs.dests(vs)} for key, vs in kernel.items()
            }
        else:
            self._sync_servers_partial(desired, counters)
            return
        for key, frontend in wanted.items():
            vs = frontend.server
            have = kernel.get(key)
            if have is None:
                self._ipvs.add_service(vs)
                counters.written += 1
                have_dests: dict[tuple[IPAddress, int], RealServer] = {}
            else:
                if have != vs:
                    self._ipvs.update_service(vs)
                    counters.written += 1
                have_dests = current_dests.get(key, {})
            self._sync_dests(vs, frontend.real_servers, have_dests, counters)
        for key, vs in kernel.items():
            if key not in wanted:
                self._ipvs.delete_service(vs)
                counters.deleted += 1
                for term in [t for t in self.terminating if t[0] == key]:
                    del self.terminating[term]

    def _sync_servers_partial(self, desired: RenderedIpvs, counters: _Counters) -> None:
        """Against the committed render: a frontend identical to it (the renderer's memo
        returns the very object for an unchanged service port) is skipped unread, and when
        the renderer can say which frontends it touched, only those are looked at."""
        assert self._committed is not None
        wanted = desired.virtual_servers
        old = self._committed.virtual_servers
        draining: dict[VirtualServerKey, list[tuple[IPAddress, int]]] = {}
        for vs_key, rs_key in self.terminating:
            draining.setdefault(vs_key, []).append(rs_key)
        touched = self._renderer.changed_between(self._committed, desired)
        if touched is None:
            candidates: Iterable[tuple[VirtualServerKey, IpvsFrontend]] = wanted.items()
            gone: Iterable[tuple[VirtualServerKey, IpvsFrontend]] = (
                (k, f) for k, f in old.items() if k not in wanted
            )
        else:  # the renderer knows what it touched: every other frontend is the same object
            order = sorted(touched, key=_key_order)
            candidates = [(k, wanted[k]) for k in order if k in wanted]
            gone = [(k, old[k]) for k in order if k in old and k not in wanted]
        for key, frontend in candidates:
            before = old.get(key)
            if before is frontend:
                continue
            vs = frontend.server
            if before is None:
                self._ipvs.add_service(vs)
                counters.written += 1
                have: dict[tuple[IPAddress, int], RealServer] = {}
            else:
                if before.server != vs:
                    self._ipvs.update_service(vs)
                    counters.written += 1
                have = {rs.key: rs for rs in before.real_servers}
                # Real servers at weight 0 are in the kernel, not in the committed render.
                for rs_key in draining.get(key, ()):
                    have.setdefault(rs_key, RealServer(rs_key[0], rs_key[1], weight=0))
            self._sync_dests(vs, frontend.real_servers, have, counters)
        for key, before in list(gone):
            self._ipvs.delete_service(before.server)
            counters.deleted += 1
            for term in [t for t in self.terminating if t[0] == key]:
                del self.terminating[term]

    def _sync_dests(
        self,
        vs: VirtualServer,
        wanted: Iterable[RealServer],
        have: dict[tuple[IPAddress, int], RealServer],
        counters: _Counters,
    ) -> None:
        want = {rs.key: rs for rs in wanted}
        for rs_key, rs in want.items():
            current = have.get(rs_key)
            if current is None:
                self._ipvs.add_dest(vs, rs)
                counters.written += 1
            elif current != rs:
                self._ipvs.update_dest(vs, rs)  # e.g. back from weight 0
                counters.written += 1
            self.terminating.pop((vs.key, rs_key), None)
        for rs_key, rs in have.items():
            if rs_key in want:
                continue
            if vs.protocol == "TCP":
                if (vs.key, rs_key) not in self.terminating:
                    if rs.weight != 0:
                        self._ipvs.update_dest(vs, RealServer(rs.address, rs.port, weight=0))
                        counters.written += 1
                    self.terminating[(vs.key, rs_key)] = self._clock() + TERMINATION_LIMIT
            else:
                self._ipvs.delete_dest(vs, rs)
                counters.deleted += 1

    def _finish_terminating(self, counters: _Counters) -> None:
        """Delete weight-0 real servers without connections (or past their deadline)."""
        if not self.terminating:
            return
        by_server: dict[VirtualServerKey, list[tuple[IPAddress, int]]] = {}
        for vs_key, rs_key in self.terminating:
            by_server.setdefault(vs_key, []).append(rs_key)
        now = self._clock()
        for vs_key, rs_keys in by_server.items():
            vs = VirtualServer(vs_key[0], vs_key[1], vs_key[2], scheduler=self._scheduler)
            stats = {d.key: d for d in self._ipvs.dests(vs)}
            for rs_key in rs_keys:
                d = stats.get(rs_key)
                deadline = self.terminating[(vs_key, rs_key)]
                if d is None:
                    del self.terminating[(vs_key, rs_key)]
                elif d.connections == 0 or now >= deadline:
                    self._ipvs.delete_dest(vs, d)
                    counters.deleted += 1
                    del self.terminating[(vs_key, rs_key)]

    # ---- inspection ---------------------------------------------------------------------

    def render_objects(
        self, state: ProxyState, overlay: OverlayRules | None = None
    ) -> Sequence[OwnedObject]:
        """What a sync of ``state`` leaves in the kernel (reads the node's addresses)."""
        rendered = self._render(state, overlay, IpvsRenderer())
        self._inspected = frozenset(rendered.virtual_servers)
        return owned_objects(rendered)

    def kernel_objects(self) -> Sequence[OwnedObject]:
        """Owned virtual servers with their real servers, addresses, set members, chains."""
        from netagent.proxy.iptables import inspect

        node, _ = self._local()
        bound = self._dummy.addresses() if self._dummy.exists() else set()
        node_ips = set(nodeport_addresses_all(node))
        objects: list[OwnedObject] = []
        owners = {}
        if self._committed is not None:
            owners = {k: str(f.owner) for k, f in self._committed.virtual_servers.items()}
        # Frontends on another interface's address are netagent's while programmed or wanted
        # (as in a full sync); a fresh `debug` process knows them from render_objects().
        claimed = set(owners) | self._inspected
        for vs in self._ipvs.services():
            if vs.key not in claimed and not self._owned(vs, bound, node_ips):
                continue
            dests = sorted(str(d.server) for d in self._ipvs.dests(vs) if d.weight > 0)
            objects.append(
                OwnedObject(
                    "virtual-server", _vs_key(vs), (str(vs), *dests), owners.get(vs.key, "node")
                )
            )
        objects += [OwnedObject("address", str(a), ()) for a in bound if a.version == self._version]
        existing = self._ipsets.list_sets()
        for name in set_specs(self.family):
            if name in existing:
                objects += [
                    OwnedObject("set-member", f"{name} {m}", ()) for m in self._ipsets.members(name)
                ]
        objects += inspect.kernel_owned_objects(self._iptables.save())
        return sorted(objects)

    def describe(self) -> Sequence[OwnedObject]:
        """What the last successful sync programmed."""
        return owned_objects(self._committed) if self._committed is not None else ()

    @property
    def committed(self) -> RenderedIpvs | None:
        """The render the kernel holds since the last successful sync."""
        return self._committed

    def cleanup(self) -> CleanupResult:
        """Remove this family's virtual servers, addresses, sets and chains of IPVS mode."""
        return cleanup_ipvs(
            self._ipvs, self._ipsets, self._dummy, self._iptables, self.family, self._local
        )


def _key_order(key: VirtualServerKey) -> tuple[int, int, int, str]:
    """The order of :meth:`VirtualServer.sort_key`, from the key alone."""
    protocol, address, port = key
    return (address.version, int(address), port, protocol)


def _vs_key(vs: VirtualServer) -> str:
    host = f"[{vs.address}]" if vs.address.version == 6 else str(vs.address)
    return f"{vs.protocol} {host}:{vs.port}"


def nodeport_addresses_all(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    """Every address a node port could be bound on (ownership ignores nodePortAddresses)."""
    from netagent.model import ProxyConfig

    out: list[IPAddress] = []
    for family in (IPFamily.IPV4, IPFamily.IPV6):
        out += nodeport_addresses(ProxyConfig(), addresses, family)
    return out


def owned_objects(rendered: RenderedIpvs) -> list[OwnedObject]:
    """A render as comparable objects (see :meth:`IpvsProxier.kernel_objects`)."""
    from netagent.proxy.iptables import inspect

    objects: list[OwnedObject] = []
    for frontend in rendered.virtual_servers.values():
        dests = sorted(str(rs) for rs in frontend.real_servers)
        objects.append(
            OwnedObject(
                "virtual-server",
                _vs_key(frontend.server),
                (str(frontend.server), *dests),
                str(frontend.owner),
            )
        )
    objects += [OwnedObject("address", str(a), ()) for a in rendered.addresses]
    for name, members in rendered.ipsets.items():
        objects += [OwnedObject("set-member", f"{name} {m}", ()) for m in members]
    objects += inspect.owned_objects(rendered.iptables, {})
    return sorted(objects)


def cleanup_ipvs(
    ipvs: IpvsKernel,
    ipsets: IpsetKernel,
    dummy: DummyDevice,
    iptables: IptablesRunner,
    family: IPFamily,
    local: LocalAddresses,
    keep: Callable[[str], bool] | None = None,
) -> CleanupResult:
    """Everything IPVS mode made in ``family``, and nothing else; ``keep`` spares chains."""
    removed = 0
    failures: list[str] = []
    version = 4 if family is IPFamily.IPV4 else 6
    bound = {a for a in dummy.addresses() if a.version == version} if dummy.exists() else set()
    node, _ = local()
    node_ips = {a for a in nodeport_addresses_all(node) if a.version == version}
    for vs in ipvs.services():
        if vs.address.version != version:
            continue
        if vs.address in bound or (vs.address in node_ips and vs.port in NODE_PORT_RANGE):
            try:
                ipvs.delete_service(vs)
                removed += 1
            except Exception as exc:
                failures.append(f"virtual server {vs}: {exc}")
    report = (
        IptablesApplier.cleanup(iptables, keep=keep) if keep else IptablesApplier.cleanup(iptables)
    )
    removed += len(report.chains_deleted) + len(report.jumps_deleted)
    prefix = set_prefix(family)
    for name in ipsets.list_sets():
        if name.startswith(prefix) and name in set_specs(family):
            try:
                ipsets.destroy(name)
                removed += 1
            except Exception as exc:
                failures.append(f"ipset {name}: {exc}")
    if family is IPFamily.IPV4 and dummy.exists():
        # One device for both families: the IPv4 cleaner removes it with every address.
        dummy.delete()
        removed += 1
    elif bound:
        for addr in bound:
            dummy.delete_address(addr)
            removed += 1
    return CleanupResult(
        removed=removed,
        summary=f"{removed} IPVS objects (virtual servers, chains, sets, addresses) removed",
        failures=tuple(failures),
    )
