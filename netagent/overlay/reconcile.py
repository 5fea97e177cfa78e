"""Per-object reconciliation of the overlay against a kernel dump: update, delete, prune.

Why per object, not "rebuild everything": routes, neighbour and FDB entries
carry live traffic. Deleting and re-adding all of them on every sync would
drop packets for nothing, and one failing entry would block the rest. Each
pass therefore dumps only what netagent owns (see :mod:`netagent.overlay.kernel`),
compares it with the plan, and touches only the differences, one object at
a time: a failure is recorded with the object and the reason, and the pass
goes on. The next pass retries whatever is still different, which is also
how drift is repaired (an entry deleted by hand, a VXLAN device deleted or
reconfigured by someone else).

Order, because the kernel takes each entry at its word:

1. devices first (the bridge, then the VXLAN device: entries need them);
2. routes that must go are deleted before anything else changes, so no
   route ever points at a neighbour entry that is being removed;
3. then, per peer, FDB before neighbour before route: the route is the entry
   that attracts traffic, so it is added last, when the frame's inner
   destination MAC (neighbour) and the outer destination IP (FDB) are known;
   otherwise the first packets would be dropped or ARPed into the tunnel;
4. stale neighbour and FDB entries are removed last, in that order.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from dataclasses import dataclass, field

from netagent.overlay.kernel import LinkState, OverlayKernel
from netagent.overlay.model import RouteEntry
from netagent.overlay.plan import DesiredOverlay, VxlanDevice

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    """What one pass did: counts per (action, kind) and the failures."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    #: cbr0 exists as a bridge and holds its address: pods can be attached, so
    #: the CNI files (the CNI's "ready" signal) may be written.
    bridge_ok: bool = False

    def note(self, action: str, kind: str) -> None:
        """Count one change."""
        self.counts[f"{action} {kind}"] += 1

    @property
    def changed(self) -> bool:
        """Anything was written."""
        return bool(self.counts)

    def summary(self) -> str:
        """``added 2 route, removed 1 fdb`` and the failure count."""
        parts = [f"{k.split()[0]} {v} {k.split()[1]}" for k, v in sorted(self.counts.items())]
        if self.failures:
            parts.append(f"{len(self.failures)} failed")
        return ", ".join(parts) or "no changes"


def _vxlan_identity_differences(
    link: LinkState, want: VxlanDevice, underlay_index: int | None
) -> list[str]:
    """Settings only a new device can change (the kernel refuses them on a live one)."""
    if link.kind != "vxlan":
        return [f"it is a {link.kind or 'plain'} link, not vxlan"]
    wanted: list[tuple[str, object, object]] = [
        ("vni", link.vni, want.vni),
        ("port", link.port, want.port),
        ("local", link.local, want.local),
        ("learning", link.learning, False),
    ]
    if underlay_index is not None:
        wanted.append(("underlay ifindex", link.underlay_index, underlay_index))
    return [f"{name} {have} != {need}" for name, have, need in wanted if have != need]


def _vxlan_differences(
    link: LinkState, want: VxlanDevice, underlay_index: int | None
) -> list[str]:
    """Everything that differs: what keeps a device netagent did not create from being used.

    For netagent's own device, the identity settings mean recreating it, the
    rest (MTU, MAC, up, checksum offload) are repaired in place.
    """
    out = _vxlan_identity_differences(link, want, underlay_index)
    if link.kind != "vxlan":
        return out
    wanted: list[tuple[str, object, object]] = [("mtu", link.mtu, want.mtu)]
    if link.tx_checksum is not None:
        wanted.append(("tx checksum offload", link.tx_checksum, want.tx_checksum))
    if want.mac:
        wanted.append(("mac", link.mac.lower(), want.mac.lower()))
    out += [f"{name} {have} != {need}" for name, have, need in wanted if have != need]
    if not link.up:
        out.append("it is down")
    return out


class OverlayReconciler:
    """Brings the kernel to a :class:`DesiredOverlay`, one object at a time."""

    def __init__(self, kernel: OverlayKernel) -> None:
        self.kernel = kernel

    def _try(self, report: ReconcileReport, what: str, action: str, kind: str, fn: object) -> bool:
        try:
            fn()  # type: ignore[operator]
        except Exception as exc:
            report.failures.append(f"{action} {kind} {what}: {exc}")
            return False
        report.note(action, kind)
        return True

    def _addresses(
        self,
        report: ReconcileReport,
        device: str,
        want: ipaddress.IPv4Interface,
        network: ipaddress.IPv4Network,
    ) -> bool:
        """Ensure ``want`` on ``device``, drop stale cluster addresses; False if ``want`` failed."""
        have = self.kernel.addresses(device)
        ok = True
        if want not in have:
            ok = self._try(
                report,
                f"{want} on {device}",
                "added",
                "address",
                lambda: self.kernel.add_address(device, want),
            )
        for stale in sorted(have - {want}):
            # Only addresses from the cluster network (an old pod CIDR) are ours to remove.
            if stale.ip in network:
                self._try(
                    report,
                    f"{stale} on {device}",
                    "removed",
                    "address",
                    lambda stale=stale: self.kernel.delete_address(device, stale),
                )
        return ok

    def _bridge(self, report: ReconcileReport, desired: DesiredOverlay) -> bool:
        """Ensure cbr0; True when it is a bridge holding its address afterwards."""
        want = desired.bridge
        link = self.kernel.link(want.name)
        if link is None:
            if not self._try(
                report,
                want.name,
                "created",
                "bridge",
                lambda: self.kernel.create_bridge(want.name, want.mtu),
            ):
                return False
        elif link.kind != "bridge":
            report.failures.append(f"{want.name} exists and is a {link.kind or 'plain'} link")
            return False
        elif link.mtu != want.mtu or not link.up:
            self._try(
                report,
                want.name,
                "repaired",
                "bridge",
                lambda: self.kernel.set_link(want.name, mtu=want.mtu),
            )
        return self._addresses(report, want.name, want.address, desired.network)

    def _vxlan(self, report: ReconcileReport, desired: DesiredOverlay) -> bool:
        """Ensure (or remove) the VXLAN device; False when it is not usable."""
        want = desired.vxlan
        link = self.kernel.link(desired.vxlan_name)
        if want is None:
            if link is not None and link.owned:
                self._try(
                    report,
                    desired.vxlan_name,
                    "removed",
                    "vxlan",
                    lambda: self.kernel.delete_link(desired.vxlan_name),
                )
            return False
        underlay = self.kernel.link_index(want.underlay_device)
        if link is not None and not link.owned:
            # Someone else's device of this name (a CNI left-over, flannel's own):
            # used only as it is, never deleted, recreated or reconfigured.
            differs = _vxlan_differences(link, want, underlay)
            if differs:
                report.failures.append(
                    f"{want.name} exists, was not created by netagent and differs "
                    f"({', '.join(differs)}); delete it so netagent can create its own"
                )
                return False
            return True
        recreate = _vxlan_identity_differences(link, want, underlay) if link else []
        if link is not None and recreate:
            why = ", ".join(recreate)
            log.warning("VXLAN device %s is misconfigured (%s); recreating it", want.name, why)
            if not self._try(
                report, want.name, "removed", "vxlan", lambda: self.kernel.delete_link(want.name)
            ):
                return False
            link = None
        if link is None:
            if not self._try(
                report,
                want.name,
                "created",
                "vxlan",
                lambda: self.kernel.create_vxlan(
                    want.name,
                    vni=want.vni,
                    port=want.port,
                    local=want.local,
                    underlay_device=want.underlay_device,
                    mtu=want.mtu,
                    mac=want.mac,
                ),
            ):
                return False
            link = self.kernel.link(want.name)
            if link is None:
                report.failures.append(f"{want.name} vanished right after it was created")
                return False
        mac = want.mac if want.mac and want.mac.lower() != link.mac.lower() else None
        if link.mtu != want.mtu or mac is not None or not link.up:
            self._try(
                report,
                want.name,
                "repaired",
                "vxlan",
                lambda: self.kernel.set_link(want.name, mtu=want.mtu, mac=mac),
            )
        if link.tx_checksum is not None and link.tx_checksum != want.tx_checksum:
            # Not fatal: the device carries traffic either way (see VxlanSettings).
            self._try(
                report,
                want.name,
                "set" if want.tx_checksum else "cleared",
                "tx-checksum",
                lambda: self.kernel.set_tx_checksum(want.name, want.tx_checksum),
            )
        return True

    def reconcile(self, desired: DesiredOverlay) -> ReconcileReport:
        """One pass; never raises for a single object (see the report's failures)."""
        report = ReconcileReport()
        k = self.kernel
        report.bridge_ok = self._bridge(report, desired)
        vxlan_ok = self._vxlan(report, desired)
        if vxlan_ok and desired.vxlan is not None:
            self._addresses(report, desired.vxlan.name, desired.vxlan.address, desired.network)

        want_routes = {r.destination: r for r in desired.routes}
        have_routes = {r.destination: r for r in k.routes()}
        # 2. routes that must go, first.
        for dest, route in sorted(have_routes.items()):
            if dest not in want_routes:
                self._try(report, str(dest), "removed", "route", lambda r=route: k.delete_route(r))

        dev = desired.vxlan_name
        have_fdb = k.fdb(dev) if vxlan_ok else set()
        have_neigh = {n.address: n for n in k.neighbours(dev)} if vxlan_ok else {}
        # 3. FDB, then neighbour, then route, per peer.
        if vxlan_ok:
            for fdb_entry in desired.fdb:
                if fdb_entry not in have_fdb:
                    self._try(
                        report, fdb_entry.mac, "added", "fdb", lambda e=fdb_entry: k.add_fdb(e)
                    )
            for entry in desired.neigh:
                if have_neigh.get(entry.address) != entry:
                    self._try(
                        report,
                        str(entry.address),
                        "added",
                        "neigh",
                        lambda e=entry: k.replace_neigh(e),
                    )
        for route in desired.routes:
            if route.device == dev and not vxlan_ok:
                continue  # its device is missing; the next pass retries
            if have_routes.get(route.destination) != route:
                self._try(
                    report,
                    str(route.destination),
                    "added",
                    "route",
                    lambda r=route: k.replace_route(r),
                )
        # 4. stale neighbour and FDB entries, last.
        if vxlan_ok:
            wanted_neigh = {n.address for n in desired.neigh}
            for address, entry in sorted(have_neigh.items()):
                if address not in wanted_neigh:
                    self._try(
                        report,
                        str(address),
                        "removed",
                        "neigh",
                        lambda e=entry: k.delete_neigh(e),
                    )
            for stale in sorted(have_fdb - set(desired.fdb)):
                self._try(report, stale.mac, "removed", "fdb", lambda e=stale: k.delete_fdb(e))
        return report


def remove_all(kernel: OverlayKernel, *, vxlan_name: str, bridge: str) -> ReconcileReport:
    """``netagent cleanup``: every owned route, and the devices netagent created.

    A device of the same name that netagent did not create (no owner alias)
    is left alone, as are all routes of other protocols. An empty name means
    that device stays (``--overlay none`` keeps the bridge pods may be on).
    """
    report = ReconcileReport()
    for route in sorted(kernel.routes(), key=lambda r: (str(r.destination), r.device)):
        try:
            kernel.delete_route(route)
            report.note("removed", "route")
        except Exception as exc:
            report.failures.append(f"remove route {route.destination}: {exc}")
    for name in (vxlan_name, bridge):
        if not name:
            continue
        link = kernel.link(name)
        if link is None:
            continue
        if not link.owned:
            log.info("cleanup: leaving %s alone (netagent did not create it)", name)
            continue
        try:
            kernel.delete_link(name)
            report.note("removed", "link")
        except Exception as exc:
            report.failures.append(f"remove link {name}: {exc}")
    return report


__all__ = ["OverlayReconciler", "ReconcileReport", "RouteEntry", "remove_all"]
