"""ClusterIP and NodePort allocation, as the real API server does it on Service writes.

Why it exists: kube-proxy-like agents program whatever ClusterIP and NodePort the
API server hands out; tests must see real allocation (free values, collisions
refused with 422, values freed on delete or type change) rather than values the
test invented. Allocation is sequential from a moving cursor, so values are
predictable in a lab run but never reused while still held.
"""

from __future__ import annotations

import contextlib
import ipaddress


class AllocationError(Exception):
    """A value could not be reserved; ``field_message`` is the 422 text."""


class ClusterIPAllocator:
    """Hands out addresses of the service CIDR; the first host (…0.1) is kept back."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr, strict=False)
        if self.network.num_addresses < 4:
            raise ValueError(f"service CIDR {cidr} is too small")
        self._first = int(self.network.network_address) + 2  # .1 is the kubernetes service
        self._last = int(self.network.broadcast_address) - 1
        self._used: set[int] = set()
        self._cursor = self._first
        self.reserved = str(ipaddress.ip_address(int(self.network.network_address) + 1))

    def contains(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return addr.version == self.network.version and addr in self.network

    def in_use(self, ip: str) -> bool:
        return int(ipaddress.ip_address(ip)) in self._used

    def reserve(self, ip: str) -> None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError as exc:
            raise AllocationError(f"must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                                  f": {ip}") from exc
        if addr.version != self.network.version or addr not in self.network:
            raise AllocationError(f"failed to allocate IP {ip}: the provided IP ({ip}) is "
                                  f"not in the valid range. The range of valid IPs is "
                                  f"{self.network}")
        n = int(addr)
        if n == int(self.network.network_address) or n == int(self.network.broadcast_address):
            raise AllocationError(f"failed to allocate IP {ip}: the provided IP ({ip}) is "
                                  f"not in the valid range. The range of valid IPs is "
                                  f"{self.network}")
        if n in self._used:
            raise AllocationError(f"failed to allocate IP {ip}: provided IP is already "
                                  f"allocated")
        self._used.add(n)

    def allocate(self) -> str:
        span = self._last - self._first + 1
        for step in range(span):
            n = self._first + (self._cursor - self._first + step) % span
            if n not in self._used:
                self._used.add(n)
                self._cursor = n + 1 if n < self._last else self._first
                return str(ipaddress.ip_address(n))
        raise AllocationError("failed to allocate a serviceIP: range is full")

    def release(self, ip: str) -> None:
        with contextlib.suppress(ValueError):
            self._used.discard(int(ipaddress.ip_address(ip)))


class NodePortAllocator:
    """Hands out ports of the NodePort range (default 30000-32767)."""

    def __init__(self, low: int, high: int) -> None:
        if not 0 < low <= high < 65536:
            raise ValueError(f"bad node port range {low}-{high}")
        self.low = low
        self.high = high
        self._used: set[int] = set()
        self._cursor = low

    def reserve(self, port: int) -> None:
        if not self.low <= port <= self.high:
            raise AllocationError(f"provided port is not in the valid range. The range of "
                                  f"valid ports is {self.low}-{self.high}")
        if port in self._used:
            raise AllocationError("provided port is already allocated")
        self._used.add(port)

    def in_use(self, port: int) -> bool:
        return port in self._used

    def allocate(self) -> int:
        span = self.high - self.low + 1
        for step in range(span):
            p = self.low + (self._cursor - self.low + step) % span
            if p not in self._used:
                self._used.add(p)
                self._cursor = p + 1 if p < self.high else self.low
                return p
        raise AllocationError("range is full")

    def release(self, port: int) -> None:
        self._used.discard(port)
