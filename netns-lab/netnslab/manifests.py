"""Service, EndpointSlice and Node manifests for the lab, as a netagent manifests dir.

Why the lab writes real Kubernetes YAML instead of calling netagent's Python
API: the end-to-end tests must exercise the same path a user does
(``netagent run --manifests DIR``), including the boundary that parses and
validates objects. The dataclasses below describe a Service in lab terms
(which pods back it) and render the exact objects an API server would hold.
They deliberately accept out-of-range values (port 70000, protocol ``HTTP``)
so that tests can write invalid objects too.

Files are replaced atomically (written under a dot-name, then renamed), so a
watching agent never reads half a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Files written by :func:`write_manifests` start with this, so rewrites can drop stale ones.
FILE_PREFIX = "lab-"

Manifest = dict[str, Any]


@dataclass(frozen=True, slots=True)
class LabServicePort:
    """One Service port; ``target_port`` is where the echo servers listen."""

    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: int = 8080
    node_port: int = 0


@dataclass(frozen=True, slots=True)
class LabEndpoint:
    """One backend: a lab pod by name, with EndpointSlice conditions."""

    pod: str
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None  # None: the lab node


@dataclass(frozen=True, slots=True)
class LabService:
    """A Service of the lab (namespace ``default`` unless told)."""

    name: str
    cluster_ip: str
    ports: tuple[LabServicePort, ...]
    namespace: str = "default"
    type: str = "ClusterIP"
    external_ips: tuple[str, ...] = ()
    #: ``status.loadBalancer.ingress[*].ip``: what a cloud controller would have assigned.
    load_balancer_ips: tuple[str, ...] = ()
    #: ``spec.loadBalancerSourceRanges``.
    source_ranges: tuple[str, ...] = ()
    session_affinity: str = "None"
    affinity_timeout: int | None = None
    external_traffic_policy: str | None = None
    internal_traffic_policy: str | None = None
    extra_spec: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


def node_manifest(name: str, internal_ip: str, pod_cidr: str) -> Manifest:
    """The lab node's Node object."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ]
        },
    }


def service_manifest(svc: LabService) -> Manifest:
    """The Service object for ``svc``."""
    ports: list[dict[str, Any]] = []
    for p in svc.ports:
        entry: dict[str, Any] = {
            "port": p.port,
            "protocol": p.protocol,
            "targetPort": p.target_port,
        }
        if p.name:
            entry["name"] = p.name
        if p.node_port:
            entry["nodePort"] = p.node_port
        ports.append(entry)
    spec: dict[str, Any] = {
        "type": svc.type,
        "clusterIP": svc.cluster_ip,
        "clusterIPs": [svc.cluster_ip],
        "ipFamilies": ["IPv4"],
        "ports": ports,
        "sessionAffinity": svc.session_affinity,
    }
    if svc.affinity_timeout is not None:
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout}}
    if svc.external_ips:
        spec["externalIPs"] = list(svc.external_ips)
    if svc.external_traffic_policy is not None:
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    if svc.internal_traffic_policy is not None:
        spec["internalTrafficPolicy"] = svc.internal_traffic_policy
    if svc.source_ranges:
        spec["loadBalancerSourceRanges"] = list(svc.source_ranges)
    spec.update(svc.extra_spec)
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace},
        "spec": spec,
    }
    if svc.load_balancer_ips:
        ingress = [{"ip": ip} for ip in svc.load_balancer_ips]
        manifest["status"] = {"loadBalancer": {"ingress": ingress}}
    return manifest


def endpoint_slice_manifest(
    svc: LabService,
    endpoints: Sequence[LabEndpoint],
    *,
    pod_ips: Mapping[str, str],
    node_name: str,
) -> Manifest:
    """One EndpointSlice for ``svc`` listing ``endpoints`` (by pod name)."""
    entries: list[dict[str, Any]] = []
    for ep in endpoints:
        if ep.pod not in pod_ips:
            raise KeyError(f"unknown lab pod {ep.pod!r} (known: {', '.join(sorted(pod_ips))})")
        entries.append(
            {
                "addresses": [pod_ips[ep.pod]],
                "conditions": {
                    "ready": ep.ready,
                    "serving": ep.serving,
                    "terminating": ep.terminating,
                },
                "nodeName": node_name if ep.node_name is None else ep.node_name,
                "targetRef": {"kind": "Pod", "name": ep.pod, "namespace": svc.namespace},
            }
        )
    ports: list[dict[str, Any]] = []
    for p in svc.ports:
        port: dict[str, Any] = {"port": p.target_port, "protocol": p.protocol}
        if p.name:
            port["name"] = p.name
        ports.append(port)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc.name}-lab",
            "namespace": svc.namespace,
            "labels": {"kubernetes.io/service-name": svc.name},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": entries,
    }


def _file_stem(kind: str, svc: LabService) -> str:
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in f"{svc.namespace}-{svc.name}")
    return f"{FILE_PREFIX}{kind}-{safe}"


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so a reader sees the old or the new file whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_manifests(
    directory: Path,
    *,
    node: Manifest,
    services: Sequence[LabService],
    endpoints: Mapping[str, Sequence[str | LabEndpoint]],
    pod_ips: Mapping[str, str],
    node_name: str,
    extra_files: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write the whole desired object set into ``directory``; returns the files written.

    ``endpoints`` maps a Service name to its backends (pod names or
    :class:`LabEndpoint`); a Service missing from it gets no EndpointSlice,
    one mapped to ``[]`` gets an empty slice. ``extra_files`` are written
    verbatim (name -> text), e.g. an unparseable YAML file. Lab files from an
    earlier call that are not part of this set are removed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {f"{FILE_PREFIX}node.yaml": yaml.safe_dump(node, sort_keys=False)}
    for svc in services:
        files[_file_stem("svc", svc) + ".yaml"] = yaml.safe_dump(
            service_manifest(svc), sort_keys=False
        )
        if svc.name in endpoints:
            eps = [
                e if isinstance(e, LabEndpoint) else LabEndpoint(pod=e) for e in endpoints[svc.name]
            ]
            slice_ = endpoint_slice_manifest(svc, eps, pod_ips=pod_ips, node_name=node_name)
            files[_file_stem("eps", svc) + ".yaml"] = yaml.safe_dump(slice_, sort_keys=False)
    unknown = set(endpoints) - {s.name for s in services}
    if unknown:
        raise KeyError(f"endpoints for unknown services: {', '.join(sorted(unknown))}")
    written: list[Path] = []
    for name, text in {**files, **(extra_files or {})}.items():
        path = directory / name
        write_text_atomic(path, text)
        written.append(path)
    keep = set(files) | set(extra_files or {})
    for old in directory.iterdir():
        if old.name.startswith(FILE_PREFIX) and old.name not in keep:
            old.unlink()
    return written
