"""netns-lab: a Kubernetes node dataplane in network namespaces, for netagent's kernel tests.

Why it exists: netagent's unit tests trace packets through rendered rules,
but only the real kernel proves that traffic flows. This package builds a
node, pods and an outside client in namespaces it creates (never touching
the host's root namespace), runs echo servers that report who answered and
whom they saw, drives the real ``netagent`` command, and removes everything
afterwards. It is test infrastructure, not part of the netagent package.
"""

from __future__ import annotations

from netnslab.agent_process import AgentHandle, AgentRun
from netnslab.manifests import LabEndpoint, LabService, LabServicePort
from netnslab.names import PREFIX, LabNames, parse_namespace
from netnslab.netns import LabCommandError
from netnslab.runs import cleanup_stale
from netnslab.single_node import (
    BRIDGE_IP,
    CLIENT_IP,
    CLUSTER_CIDR,
    NODE_IP,
    OUTSIDE_IP,
    POD_CIDR,
    POD_IPS,
    PROXY_MODES,
    LabPod,
    SingleNodeLab,
)
from netnslab.traffic import ProbeError, ProbeRefused, ProbeResult, ProbeTimeout, TcpSession

__all__ = [
    "BRIDGE_IP",
    "CLIENT_IP",
    "CLUSTER_CIDR",
    "NODE_IP",
    "OUTSIDE_IP",
    "POD_CIDR",
    "POD_IPS",
    "PREFIX",
    "PROXY_MODES",
    "AgentHandle",
    "AgentRun",
    "LabCommandError",
    "LabEndpoint",
    "LabNames",
    "LabPod",
    "LabService",
    "LabServicePort",
    "ProbeError",
    "ProbeRefused",
    "ProbeResult",
    "ProbeTimeout",
    "SingleNodeLab",
    "TcpSession",
    "cleanup_stale",
    "parse_namespace",
]
