"""An in-memory Node store with the API server's concurrency rules, for tests.

Why not a mock: the subnet claim protocol is only as good as the conflicts
it survives, so the fake enforces what the API server enforces — a PUT with
a stale ``metadata.resourceVersion`` fails with :class:`ConflictError`,
every write bumps one global revision (like etcd), reads are linearisable
(one lock), and ``spec.podCIDR(s)`` can only go from unset to set. A
``hook`` runs before every call, outside the lock, so tests can interleave
concurrent claimers (sleep, yield, wait on a barrier) to provoke races.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from copy import deepcopy
from typing import Any

from netagent.overlay.subnet_alloc import ConflictError

#: ``hook(operation, node_name)``; operation is "get", "list" or "replace" ("" name for list).
Hook = Callable[[str, str], None]


class NotFoundError(KeyError):
    """The Node does not exist (HTTP 404)."""


class InvalidError(ValueError):
    """The update breaks a validation rule (HTTP 422), e.g. changing spec.podCIDR."""


class FakeNodeApi:
    """Implements :class:`netagent.overlay.subnet_alloc.NodeApi` in memory."""

    def __init__(self, hook: Hook | None = None) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, dict[str, Any]] = {}
        self._revision = 0
        self.hook = hook
        self.calls: list[tuple[str, str]] = []
        self.conflicts = 0

    # ------------------------------------------------------------------ test set-up

    def add_node(
        self,
        name: str,
        *,
        pod_cidr: str | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Create a Node (as kubelet registering would); returns a copy."""
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "annotations": dict(annotations or {})},
            "spec": {},
        }
        if pod_cidr is not None:
            node["spec"] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
        with self._lock:
            if name in self._nodes:
                raise InvalidError(f"node {name} already exists")
            self._store(name, node)
            return deepcopy(node)

    def delete_node(self, name: str) -> None:
        """Delete a Node."""
        with self._lock:
            if self._nodes.pop(name, None) is None:
                raise NotFoundError(name)

    def touch(self, name: str) -> None:
        """Bump a Node's resourceVersion, as a kubelet status update would."""
        with self._lock:
            self._store(name, self._get(name))

    def pod_cidr(self, name: str) -> str | None:
        """The stored ``spec.podCIDR`` of a Node."""
        with self._lock:
            value = self._get(name).get("spec", {}).get("podCIDR")
            return str(value) if value else None

    # ------------------------------------------------------------------ NodeApi

    def get_node(self, name: str) -> dict[str, Any]:
        """A copy of the Node."""
        self._enter("get", name)
        with self._lock:
            return deepcopy(self._get(name))

    def list_nodes(self) -> list[dict[str, Any]]:
        """Copies of every Node, sorted by name."""
        self._enter("list", "")
        with self._lock:
            return [deepcopy(self._nodes[n]) for n in sorted(self._nodes)]

    def replace_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT with optimistic concurrency and podCIDR immutability."""
        self._enter("replace", name)
        with self._lock:
            current = self._get(name)
            meta = body.get("metadata") or {}
            if meta.get("name") != name:
                raise InvalidError(f"body names {meta.get('name')!r}, not {name!r}")
            sent = meta.get("resourceVersion")
            if not sent:
                raise InvalidError("metadata.resourceVersion must be set for an update")
            if sent != current["metadata"]["resourceVersion"]:
                self.conflicts += 1
                raise ConflictError(
                    f"node {name}: the object has been modified (resourceVersion {sent} is stale)"
                )
            for key in ("podCIDR", "podCIDRs"):
                old = (current.get("spec") or {}).get(key)
                new = (body.get("spec") or {}).get(key)
                if old and old != new:
                    raise InvalidError(f"node {name}: spec.{key} may not change once set")
            node = deepcopy(body)
            self._store(name, node)
            return deepcopy(node)

    # ------------------------------------------------------------------ internals

    def _enter(self, op: str, name: str) -> None:
        with self._lock:
            self.calls.append((op, name))
        if self.hook is not None:
            self.hook(op, name)

    def _get(self, name: str) -> dict[str, Any]:
        try:
            return self._nodes[name]
        except KeyError:
            raise NotFoundError(name) from None

    def _store(self, name: str, node: dict[str, Any]) -> None:
        self._revision += 1
        node.setdefault("metadata", {})["resourceVersion"] = str(self._revision)
        self._nodes[name] = node
