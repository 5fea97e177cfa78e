"""labapi: a small Kubernetes-compatible API server for the netns lab.

Why it exists: no real kube-apiserver can be installed on the lab machines, yet
netagent must be proven against the behaviour it depends on (list/watch with
resourceVersions, 410 Gone, bookmarks, allocation of ClusterIPs and NodePorts,
an EndpointSlice controller, error and latency faults). This package serves
that subset over HTTP so that the official ``kubernetes`` Python client and
``kubectl`` talk to it unchanged. It is test infrastructure, not part of the
netagent package, and uses only the standard library plus PyYAML.
"""

from __future__ import annotations

from labapi.errors import ApiError
from labapi.kubeconfig import write_kubeconfig
from labapi.server import LabApiServer
from labapi.store import Store

__all__ = ["ApiError", "LabApiServer", "Store", "write_kubeconfig"]
