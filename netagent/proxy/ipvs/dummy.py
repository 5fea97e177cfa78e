"""The ``netagent-ipvs0`` dummy device that holds every IPVS service address.

Why this module exists: IPVS only sees packets the kernel routes locally, so
each service address (ClusterIP, externalIP, load-balancer IP) must be a
local address of the node. kube-proxy binds them to its ``kube-ipvs0`` dummy
device, kept DOWN so the addresses are never answered for by ARP/NDP on any
wire but still get their ``local`` routes; netagent does the same with
``netagent-ipvs0``. :class:`DummyDevice` is what the proxier needs (make
sure the device exists, list, add and delete its host addresses, remove it
when leaving IPVS mode); :class:`PyrouteDummy` implements it over rtnetlink
and :class:`~netagent.proxy.ipvs.fake.FakeDummy` copies it.

Rules, so nothing else on the node is touched:

* every operation looks the device up by its name and checks its kind; a
  link of that name of another kind is refused (:class:`DummyError`) and
  left as it is, and no other device is ever read or written;
* a device netagent creates carries the interface alias ``netagent``; one of
  the right name and kind made by someone else is used as it is (its
  addresses are netagent's to manage: the name is reserved for it);
* only host addresses (/32, /128) are listed and managed; anything else on
  the device is left alone.

IPv6 addresses are added with ``IFA_F_NODAD``: on a DOWN device duplicate
address detection never runs, the address stays "tentative" and the kernel
installs no local route for it, so IPVS would never see its packets.

Errors mirror the kernel (and the fake copies them): adding an address that
is there is EEXIST, deleting one that is not is EADDRNOTAVAIL, any address
operation or delete without the device is ENODEV.

``link_kind`` exists for one reason: this repository's development kernel is
built without ``CONFIG_DUMMY``, and the lab tests there exercise the same
code with a bridge (also DOWN, also holding local addresses). Production
always uses ``dummy``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from typing import Any, Protocol

from netagent.proxy.ipvs._netns import netns_exists
from netagent.proxy.ipvs.model import IPAddress

#: The device's name (kube-proxy's is ``kube-ipvs0``).
DEVICE_NAME = "netagent-ipvs0"
#: The interface alias of devices netagent created (as the overlay's links).
OWNER_ALIAS = "netagent"
#: ``IFA_F_NODAD``: skip duplicate address detection.
IFA_F_NODAD = 0x02


class DummyError(Exception):
    """A device operation refused by the kernel or by netagent's ownership rules."""

    def __init__(self, op: str, device: str, code: int, detail: str = "") -> None:
        self.op = op
        self.device = device
        self.code = code
        name = errno.errorcode.get(code, str(code))
        self.detail = detail
        text = f"{op} on {device}: [{name}] {os.strerror(code)}"
        super().__init__(f"{text}: {detail}" if detail else text)


class DummyDevice(Protocol):
    """The device operations the IPVS proxier uses."""

    name: str

    def exists(self) -> bool:
        """Whether the device exists (a link of its name and another kind raises)."""
        ...

    def ensure(self) -> bool:
        """Create the device, DOWN, if missing; True when it was created now."""
        ...

    def addresses(self) -> set[IPAddress]:
        """The host addresses (/32, /128) on the device; ENODEV if it is missing."""
        ...

    def add_address(self, address: IPAddress) -> None:
        """Bind ``address``/32 or /128; EEXIST when it is there."""
        ...

    def delete_address(self, address: IPAddress) -> None:
        """Unbind ``address``; EADDRNOTAVAIL when it is not there."""
        ...

    def delete(self) -> None:
        """Delete the device and with it every address on it; ENODEV if it is missing."""
        ...


def _open_iproute(netns: str | None) -> Any:
    from pyroute2 import IPRoute

    if netns and not netns_exists(netns):
        raise DummyError("open", f"network namespace {netns}", errno.ENOENT)
    try:
        return IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except FileNotFoundError as exc:
        raise DummyError("open", f"network namespace {netns}", errno.ENOENT) from exc


class PyrouteDummy:
    """:class:`DummyDevice` over rtnetlink (pyroute2 IPRoute), optionally in a named netns."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        name: str = DEVICE_NAME,
        link_kind: str = "dummy",
        sock: Any = None,
    ) -> None:
        self.netns = netns
        self.name = name
        self.link_kind = link_kind
        self._ipr: Any = sock if sock is not None else _open_iproute(netns)

    def close(self) -> None:
        """Release the netlink socket."""
        self._ipr.close()

    def __enter__(self) -> PyrouteDummy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: str, fn: Any, detail: str = "") -> Any:
        from pyroute2 import NetlinkError

        try:
            return fn()
        except NetlinkError as exc:
            raise DummyError(op, self.name, exc.code, detail) from exc

    def _index(self, op: str) -> int | None:
        """The device's index after checking its kind; None when there is no such link."""
        found = self._call(op, lambda: self._ipr.link_lookup(ifname=self.name))
        if not found:
            return None
        index = int(found[0])
        links = self._call(op, lambda: self._ipr.get_links(index))
        info = links[0].get("IFLA_LINKINFO") if links else None
        kind = str(info.get("IFLA_INFO_KIND")) if info is not None else ""
        if kind != self.link_kind:
            raise DummyError(
                op,
                self.name,
                errno.EEXIST,
                f"the link is of kind {kind or 'unknown'!r}, not netagent's {self.link_kind} "
                "device; leaving it alone",
            )
        return index

    def _require(self, op: str) -> int:
        index = self._index(op)
        if index is None:
            raise DummyError(op, self.name, errno.ENODEV)
        return index

    def exists(self) -> bool:
        return self._index("lookup") is not None

    def ensure(self) -> bool:
        if self._index("ensure") is not None:
            return False
        try:
            self._call(
                "create", lambda: self._ipr.link("add", ifname=self.name, kind=self.link_kind)
            )
        except DummyError as exc:
            if exc.code != errno.EEXIST:
                raise
            self._require("create")  # created meanwhile: fine if it is of our kind
            return False
        index = self._require("create")
        # New links are DOWN; only the owner mark is added.
        self._call("create", lambda: self._ipr.link("set", index=index, ifalias=OWNER_ALIAS))
        return True

    def addresses(self) -> set[IPAddress]:
        index = self._require("list addresses")
        msgs = self._call("list addresses", lambda: self._ipr.get_addr(index=index))
        out: set[IPAddress] = set()
        for msg in msgs:
            if msg.get("index", index) != index:
                continue
            text = msg.get_attr("IFA_ADDRESS")
            if not text:
                continue
            address = ipaddress.ip_address(text)
            if int(msg["prefixlen"]) == address.max_prefixlen:
                out.add(address)
        return out

    def _addr_request(self, command: str, address: IPAddress) -> dict[str, Any]:
        request: dict[str, Any] = {"address": str(address), "prefixlen": address.max_prefixlen}
        if command == "add" and address.version == 6:
            request["flags"] = IFA_F_NODAD
        return request

    def add_address(self, address: IPAddress) -> None:
        index = self._require("add address")
        request = self._addr_request("add", address)
        self._call(
            "add address", lambda: self._ipr.addr("add", index=index, **request), str(address)
        )

    def delete_address(self, address: IPAddress) -> None:
        index = self._require("delete address")
        request = self._addr_request("del", address)
        self._call(
            "delete address", lambda: self._ipr.addr("del", index=index, **request), str(address)
        )

    def delete(self) -> None:
        index = self._require("delete")
        self._call("delete", lambda: self._ipr.link("del", index=index))
