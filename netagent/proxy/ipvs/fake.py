"""Stateful in-memory fakes of the IPVS kernel layer: IPVS, ipsets and the dummy device.

Why fakes and not mocks: what the IPVS proxier promises (a sync changes
only what differs, graceful termination waits for connections to drain,
sets are destroyed only once unreferenced, a virtual server netagent did
not create survives every sync) is about kernel *state*. These fakes keep
that state and copy the real adapters' semantics, including their errors,
so the proxier's unit tests run anywhere; tests/unit/test_ipvs_fakes.py
pins the semantics and tests/lab/test_ipset_kernel.py checks the ipset fake
against the kernel on the same scripted sequence.

Semantics copied (see the real modules' docstrings for the kernel's side):

* :class:`FakeIpvs`: EEXIST for a duplicate service or destination, ENOENT
  for a scheduler the "kernel" cannot load (:attr:`FakeIpvs.schedulers`),
  ESRCH for any command on a missing service, ENOENT to set or delete a
  missing destination, EINVAL for a masq destination of the other address
  family; deleting a service deletes its destinations; dumping the
  destinations of a missing service returns []. Counters are set with
  :meth:`FakeIpvs.set_connections` and survive weight changes, as in the
  kernel, so graceful termination can be driven step by step.
* :class:`FakeIpsets`: entries are parsed exactly as :class:`PyrouteIpset`
  parses them (type and family checked, canonical text stored), with the
  kernel's codes for duplicates, missing members, missing sets, bitmap
  ranges and full hashes; a name in :attr:`FakeIpsets.referenced` stands for
  a set an iptables rule uses, so destroying it is ``IPSET_ERR_BUSY``;
  swap exchanges contents and specs but not references, as the kernel.
* :class:`FakeDummy`: one device, DOWN when created, host addresses only,
  EEXIST / EADDRNOTAVAIL / ENODEV as the kernel; :meth:`FakeDummy.occupy`
  puts a link of another kind under the name, which every call then refuses.

Test helpers common to all three: :attr:`calls` is the ordered log of every
write attempted (including refused ones), and ``fail(method, code)`` makes
the next call(s) of a method raise that code.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import replace
from typing import NamedTuple

from netagent.proxy.ipvs.dummy import DEVICE_NAME, DummyError
from netagent.proxy.ipvs.ipsets import (
    IPSET_ERR_BUSY,
    IPSET_ERR_EXIST,
    IPSET_ERR_EXIST_SETNAME2,
    IPSET_ERR_FIND_TYPE,
    IPSET_ERR_INVALID_CIDR,
    IPSET_ERR_TYPE_MISMATCH,
    IPSET_ERR_TYPE_SPECIFIC,
    IpsetError,
    check_set_name,
)
from netagent.proxy.ipvs.model import (
    BITMAP_PORT,
    KERNEL_DEFAULT_TIMEOUTS,
    KNOWN_SCHEDULERS,
    SUPPORTED_IPSET_TYPES,
    IPAddress,
    IpsetEntry,
    IpsetEntryError,
    IpsetSpec,
    IpvsTimeouts,
    RealServer,
    RealServerKey,
    RealServerStats,
    VirtualServer,
    VirtualServerKey,
    address_sort_key,
)
from netagent.proxy.ipvs.netlink import IpvsError


class Call(NamedTuple):
    """One write attempted on a fake: the method's name and its arguments."""

    method: str
    args: tuple[object, ...]


class _Recorder:
    """The call log and failure injection the three fakes share."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._failures: dict[str, list[int]] = {}

    def fail(self, method: str, code: int, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``code``."""
        self._failures.setdefault(method, []).extend([code] * times)

    def _record(self, method: str, *args: object) -> int | None:
        """Log the call; the injected code to raise, if any."""
        self.calls.append(Call(method, args))
        pending = self._failures.get(method)
        return pending.pop(0) if pending else None


# ---- IPVS -----------------------------------------------------------------------------


class FakeIpvs(_Recorder):
    """An in-memory :class:`~netagent.proxy.ipvs.netlink.IpvsKernel`.

    ``schedulers`` are the ones the "kernel" can use (all mainline ones by
    default); ``inventory`` is what :meth:`schedulers_available` reports
    (the same by default), so a test can make the module files disagree
    with the kernel.
    """

    def __init__(
        self,
        schedulers: Iterable[str] = KNOWN_SCHEDULERS,
        inventory: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        self.schedulers = set(schedulers)
        self.inventory = set(self.schedulers if inventory is None else inventory)
        self._services: dict[VirtualServerKey, VirtualServer] = {}
        self._dests: dict[VirtualServerKey, dict[RealServerKey, RealServerStats]] = {}
        self._timeouts = KERNEL_DEFAULT_TIMEOUTS

    # -- helpers for tests -------------------------------------------------------------------

    def seed(self, vs: VirtualServer, *dests: RealServer) -> None:
        """Put a service (someone else's, say) and its destinations in place, unlogged."""
        self._services[vs.key] = vs
        self._dests[vs.key] = {rs.key: _stats(rs) for rs in dests}

    def set_connections(
        self, vs: VirtualServer, rs: RealServer | RealServerStats, active: int, inactive: int = 0
    ) -> None:
        """Set a destination's connection counters (what traffic would do)."""
        dests = self._dests.get(vs.key, {})
        if rs.key not in dests:
            raise KeyError(f"{rs.address}:{rs.port} is not a destination of {vs}")
        dests[rs.key] = replace(dests[rs.key], active_conns=active, inactive_conns=inactive)

    def _check(self, method: str, obj: object, *args: object) -> None:
        code = self._record(method, obj, *args)
        if code is not None:
            raise IpvsError(method, str(obj), code, "injected")

    def _existing(self, op: str, vs: VirtualServer) -> dict[RealServerKey, RealServerStats]:
        if vs.key not in self._services:
            raise IpvsError(op, str(vs), errno.ESRCH)
        return self._dests[vs.key]

    # -- IpvsKernel --------------------------------------------------------------------------

    def services(self) -> list[VirtualServer]:
        return sorted(self._services.values(), key=VirtualServer.sort_key)

    def add_service(self, vs: VirtualServer) -> None:
        self._check("add_service", vs)
        if vs.key in self._services:
            raise IpvsError("add", str(vs), errno.EEXIST)
        if vs.scheduler not in self.schedulers:
            raise IpvsError("add", str(vs), errno.ENOENT)
        self._services[vs.key] = vs
        self._dests[vs.key] = {}

    def update_service(self, vs: VirtualServer) -> None:
        self._check("update_service", vs)
        self._existing("set", vs)
        if vs.scheduler not in self.schedulers:
            raise IpvsError("set", str(vs), errno.ENOENT)
        self._services[vs.key] = vs

    def delete_service(self, vs: VirtualServer) -> None:
        self._check("delete_service", vs)
        self._existing("delete", vs)
        del self._services[vs.key]
        del self._dests[vs.key]

    def dests(self, vs: VirtualServer) -> list[RealServerStats]:
        found = self._dests.get(vs.key, {}).values()
        return sorted(found, key=lambda d: (*address_sort_key(d.address), d.port))

    def add_dest(self, vs: VirtualServer, rs: RealServer) -> None:
        self._check("add_dest", vs, rs)
        obj = f"{rs} in {vs}"
        dests = self._existing("add", vs)
        if rs.address.version != vs.address.version and rs.forward != "tunnel":
            raise IpvsError("add", obj, errno.EINVAL)
        if rs.key in dests:
            raise IpvsError("add", obj, errno.EEXIST)
        dests[rs.key] = _stats(rs)

    def update_dest(self, vs: VirtualServer, rs: RealServer) -> None:
        self._check("update_dest", vs, rs)
        dests = self._existing("set", vs)
        if rs.key not in dests:
            raise IpvsError("set", f"{rs} in {vs}", errno.ENOENT)
        dests[rs.key] = replace(dests[rs.key], weight=rs.weight, forward=rs.forward)

    def delete_dest(self, vs: VirtualServer, rs: RealServer | RealServerStats) -> None:
        self._check("delete_dest", vs, rs)
        dests = self._existing("delete", vs)
        if rs.key not in dests:
            raise IpvsError("delete", f"{rs.address}:{rs.port} in {vs}", errno.ENOENT)
        del dests[rs.key]

    def timeouts(self) -> IpvsTimeouts:
        self._check("timeouts", "timeouts")
        return self._timeouts

    def set_timeouts(self, timeouts: IpvsTimeouts) -> None:
        self._check("set_timeouts", timeouts)
        self._timeouts = timeouts.merged_over(self._timeouts)

    def schedulers_available(self) -> set[str]:
        return set(self.inventory)


def _stats(rs: RealServer) -> RealServerStats:
    return RealServerStats(rs.address, rs.port, rs.weight, rs.forward)


# ---- ipsets ---------------------------------------------------------------------------


class FakeIpsets(_Recorder):
    """An in-memory :class:`~netagent.proxy.ipvs.ipsets.IpsetKernel`.

    ``kernel_types`` are the set types the "kernel" has (creating another is
    ``IPSET_ERR_FIND_TYPE``); :attr:`referenced` holds the names rules use.
    """

    def __init__(self, kernel_types: Iterable[str] = SUPPORTED_IPSET_TYPES) -> None:
        super().__init__()
        self.kernel_types = set(kernel_types)
        self.referenced: set[str] = set()
        self._sets: dict[str, IpsetSpec] = {}
        self._members: dict[str, set[str]] = {}

    def seed(self, spec: IpsetSpec, members: Iterable[str] = ()) -> None:
        """Put a set (possibly of a type netagent does not handle) in place, unlogged."""
        self._sets[spec.name] = spec
        self._members[spec.name] = set(members)

    def _check(self, method: str, name: str, *args: object) -> None:
        check_set_name(name)
        code = self._record(method, name, *args)
        if code is not None:
            raise IpsetError(method, name, code)

    def _spec(self, op: str, name: str, entry: str | None = None) -> IpsetSpec:
        spec = self._sets.get(name)
        if spec is None:
            raise IpsetError(op, name, errno.ENOENT, entry)
        return spec

    def _parse(self, spec: IpsetSpec, entry: str | IpsetEntry) -> IpsetEntry:
        if isinstance(entry, IpsetEntry):
            spec.check(entry)
            return entry
        return spec.entry(entry)

    # -- IpsetKernel -------------------------------------------------------------------------

    def list_sets(self) -> dict[str, IpsetSpec]:
        return dict(self._sets)

    def members(self, name: str) -> set[str]:
        check_set_name(name)
        spec = self._spec("list", name)
        if not spec.supported:
            raise IpsetEntryError(f"set {name} is of type {spec.type}, which netagent cannot read")
        return set(self._members[name])

    def create(self, spec: IpsetSpec) -> None:
        self._check("create", spec.name, spec)
        if not spec.supported:
            raise ValueError(f"netagent does not create {spec.type} sets")
        if spec.name in self._sets:
            raise IpsetError("create", spec.name, errno.EEXIST)
        if spec.type not in self.kernel_types:
            raise IpsetError("create", spec.name, IPSET_ERR_FIND_TYPE)
        self.seed(spec)

    def add(self, name: str, entry: str | IpsetEntry) -> None:
        self._check("add", name, str(entry))
        spec = self._spec("add", name, str(entry))
        parsed = self._parse(spec, entry)
        text = parsed.text()
        members = self._members[name]
        if text in members:
            raise IpsetError("add", name, IPSET_ERR_EXIST, text)
        if parsed.net is not None and parsed.net.prefixlen == 0:
            raise IpsetError("add", name, IPSET_ERR_INVALID_CIDR, text)
        if spec.type == BITMAP_PORT:
            low, high = spec.port_range or (0, 65535)
            if parsed.port is None or not low <= parsed.port <= high:
                raise IpsetError("add", name, IPSET_ERR_TYPE_SPECIFIC, text)
        elif len(members) >= spec.maxelem:
            raise IpsetError("add", name, IPSET_ERR_TYPE_SPECIFIC, text)
        members.add(text)

    def delete(self, name: str, entry: str | IpsetEntry) -> None:
        self._check("delete", name, str(entry))
        spec = self._spec("delete", name, str(entry))
        text = self._parse(spec, entry).text()
        if text not in self._members[name]:
            raise IpsetError("delete", name, IPSET_ERR_EXIST, text)
        self._members[name].discard(text)

    def destroy(self, name: str) -> None:
        self._check("destroy", name)
        self._spec("destroy", name)
        if name in self.referenced:
            raise IpsetError("destroy", name, IPSET_ERR_BUSY)
        del self._sets[name]
        del self._members[name]

    def swap(self, a: str, b: str) -> None:
        check_set_name(b)
        self._check("swap", a, b)
        first = self._spec("swap", a, b)
        second = self._sets.get(b)
        if second is None:
            raise IpsetError("swap", a, IPSET_ERR_EXIST_SETNAME2, b)
        if (first.type, first.family) != (second.type, second.family):
            raise IpsetError("swap", a, IPSET_ERR_TYPE_MISMATCH, b)
        self._sets[a], self._sets[b] = replace(second, name=a), replace(first, name=b)
        self._members[a], self._members[b] = self._members[b], self._members[a]

    def flush(self, name: str) -> None:
        self._check("flush", name)
        self._spec("flush", name)
        self._members[name].clear()


# ---- the dummy device -----------------------------------------------------------------


class FakeDummy(_Recorder):
    """An in-memory :class:`~netagent.proxy.ipvs.dummy.DummyDevice`."""

    def __init__(self, name: str = DEVICE_NAME) -> None:
        super().__init__()
        self.name = name
        self.present = False
        self.up = False
        self.owned = False
        #: Set by :meth:`occupy`: a link of the device's name and another kind.
        self.foreign_kind: str | None = None
        self._addresses: set[IPAddress] = set()
        #: Non-host addresses someone put on the device (never listed nor touched).
        self.other_addresses: set[str] = set()

    def occupy(self, kind: str) -> None:
        """Put a link of another ``kind`` under the device's name (someone else's)."""
        self.foreign_kind = kind

    def _check(self, method: str, *args: object) -> None:
        """A write: logged, injected failures, then the ownership guard."""
        code = self._record(method, *args)
        if code is not None:
            raise DummyError(method, self.name, code, "injected")
        self._guard(method)

    def _guard(self, method: str) -> None:
        if self.foreign_kind is not None:
            raise DummyError(
                method,
                self.name,
                errno.EEXIST,
                f"the link is of kind {self.foreign_kind!r}, not netagent's dummy device; "
                "leaving it alone",
            )

    def _require(self, op: str) -> None:
        if not self.present:
            raise DummyError(op, self.name, errno.ENODEV)

    def exists(self) -> bool:
        self._guard("lookup")
        return self.present

    def ensure(self) -> bool:
        self._check("ensure")
        if self.present:
            return False
        self.present, self.up, self.owned = True, False, True
        return True

    def addresses(self) -> set[IPAddress]:
        self._guard("list addresses")
        self._require("list addresses")
        return set(self._addresses)

    def add_address(self, address: IPAddress) -> None:
        self._check("add_address", address)
        self._require("add address")
        if address in self._addresses:
            raise DummyError("add address", self.name, errno.EEXIST, str(address))
        self._addresses.add(address)

    def delete_address(self, address: IPAddress) -> None:
        self._check("delete_address", address)
        self._require("delete address")
        if address not in self._addresses:
            raise DummyError("delete address", self.name, errno.EADDRNOTAVAIL, str(address))
        self._addresses.discard(address)

    def delete(self) -> None:
        self._check("delete")
        self._require("delete")
        self.present = self.up = self.owned = False
        self._addresses.clear()
        self.other_addresses.clear()
