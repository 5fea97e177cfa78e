"""The resource types the lab serves: names, kinds, scope, verbs and subresources.

Why it exists: routing, discovery documents, list kinds and watch bookmarks all
need the same facts about each resource (``services`` is namespaced, its kind
is ``Service``, its short name is ``svc``, it has a ``status`` subresource).
Keeping them in one table means discovery can never disagree with what the
server actually routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class Resource:
    """One served resource type."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_status: bool = False
    singular: str = ""
    field_labels: tuple[str, ...] = field(default=())

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def key(self) -> str:
        """A stable id such as ``services`` or ``endpointslices.discovery.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, ("ns",), True, "namespace",
             ("status.phase",)),
    Resource("", "v1", "nodes", "Node", False, ("no",), True, "node",
             ("spec.unschedulable",)),
    Resource("", "v1", "services", "Service", True, ("svc",), True, "service",
             ("spec.clusterIP", "spec.type")),
    Resource("", "v1", "endpoints", "Endpoints", True, ("ep",), False, "endpoints"),
    Resource("", "v1", "pods", "Pod", True, ("po",), True, "pod",
             ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
              "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
              "status.podIP", "status.nominatedNodeName")),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, (), False,
             "endpointslice", ("addressType",)),
)

BY_KEY: dict[str, Resource] = {r.key: r for r in RESOURCES}


def lookup(group: str, version: str, plural: str) -> Resource | None:
    for r in RESOURCES:
        if r.group == group and r.version == version and r.plural == plural:
            return r
    return None


def by_kind(kind: str) -> Resource | None:
    for r in RESOURCES:
        if r.kind == kind:
            return r
    return None


NAMESPACES = BY_KEY["namespaces"]
NODES = BY_KEY["nodes"]
SERVICES = BY_KEY["services"]
ENDPOINTS = BY_KEY["endpoints"]
PODS = BY_KEY["pods"]
ENDPOINTSLICES = BY_KEY["endpointslices.discovery.k8s.io"]
