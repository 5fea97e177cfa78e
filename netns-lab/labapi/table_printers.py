"""Server-side ``Table`` output: objects turned into the columns kubectl prints.

Why it exists: ``kubectl get`` does not format objects itself. It asks the
server for a ``meta.k8s.io`` ``Table`` (``Accept: application/json;as=Table;
v=v1;g=meta.k8s.io, ...``) and prints the cells it gets back, showing columns
of priority 0 always and priority 1 only with ``-o wide``. A server that
answers with plain JSON gets kubectl's fallback of NAME and AGE only, so an
operator looking at the lab would not see cluster IPs, node ports or endpoint
addresses the way a real cluster shows them. The functions here rebuild the
columns of the real server's printers for the resources the lab serves
(nodes, services, endpointslices and pods); anything else gets a NAME/AGE
table. They are pure: object dicts in, a ``Table`` dict out, with the clock
passed in so tests can pin ages. The server always fills every column (as a
wide listing does); kubectl drops the priority-1 ones itself.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

TABLE_GROUP = "meta.k8s.io"
TABLE_VERSIONS = ("v1", "v1beta1")
INCLUDE_OBJECT_VALUES = ("", "None", "Metadata", "Object")
_ROLE_LABEL_PREFIX = "node-role.kubernetes.io/"
_LEGACY_ROLE_LABEL = "kubernetes.io/role"
_LIST_LIMIT = 3


@dataclass(frozen=True)
class Column:
    """One ``columnDefinitions`` entry."""

    name: str
    description: str
    type: str = "string"
    format: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.description, "priority": self.priority}


_NAME = Column("Name", "The object's name, unique within its namespace.", format="name")
_AGE = Column("Age", "Time since the object was created (metadata.creationTimestamp).")

Cells = list[Any]
RowFn = Callable[[Obj, float], Cells]


@dataclass(frozen=True)
class Printer:
    """The columns of one resource and the function that fills a row of them."""

    columns: tuple[Column, ...]
    cells: RowFn


# -- time ---------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """An elapsed time the way ``kubectl get`` shows AGE: "45s", "7m3s", "3h", "2d5h".

    Precision falls as the duration grows: whole seconds up to two minutes,
    minutes and seconds up to ten minutes, minutes up to three hours, hours and
    minutes up to eight hours, hours up to two days, days and hours up to eight
    days, days up to two years, then years and days up to eight years. A clock
    a second behind still reads "0s"; further behind reads "<invalid>".
    """
    secs = int(seconds)
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        rest = secs % 60
        return f"{mins}m{rest}s" if rest else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    hours = secs // 3600
    if hours < 8:
        rest = mins % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if days < 365 * 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def parse_timestamp(value: Any) -> float | None:
    """Seconds since the epoch for an RFC 3339 UTC timestamp; None if absent or unparsable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1]
    text = text.split(".")[0].split("+")[0]
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def since(value: Any, now: float) -> str:
    """AGE of a timestamp field; ``<unknown>`` when there is none."""
    when = parse_timestamp(value)
    if when is None:
        return "<unknown>"
    return human_duration(now - when)


def _age(obj: Obj, now: float) -> str:
    return since(_meta(obj).get("creationTimestamp"), now)


# -- small helpers ------------------------------------------------------------------


def _meta(obj: Obj) -> Mapping[str, Any]:
    md = obj.get("metadata")
    return md if isinstance(md, dict) else {}


def _section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _items(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def _first_three(values: list[str]) -> str:
    """Up to three values joined with commas, then " + N more..."; ``<unset>`` if none."""
    if not values:
        return "<unset>"
    shown = ",".join(values[:_LIST_LIMIT])
    if len(values) > _LIST_LIMIT:
        return f"{shown} + {len(values) - _LIST_LIMIT} more..."
    return shown


def format_labels(labels: Any) -> str:
    """``k=v`` pairs sorted by key and comma separated; ``<none>`` when empty."""
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


# -- nodes --------------------------------------------------------------------------


def node_status(node: Obj) -> str:
    status = _section(node, "status")
    ready = next((c for c in _items(status, "conditions")
                  if isinstance(c, dict) and c.get("type") == "Ready"), None)
    if ready is None:
        parts = ["Unknown"]
    else:
        parts = ["Ready" if ready.get("status") == "True" else "NotReady"]
    if _section(node, "spec").get("unschedulable") is True:
        parts.append("SchedulingDisabled")
    return ",".join(parts)


def node_roles(node: Obj) -> str:
    roles: set[str] = set()
    for key, value in (_meta(node).get("labels") or {}).items():
        if key.startswith(_ROLE_LABEL_PREFIX) and key != _ROLE_LABEL_PREFIX:
            roles.add(key[len(_ROLE_LABEL_PREFIX):])
        elif key == _LEGACY_ROLE_LABEL and value:
            roles.add(str(value))
    return ",".join(sorted(roles)) or "<none>"


def _node_address(node: Obj, kind: str) -> str:
    for addr in _items(_section(node, "status"), "addresses"):
        if isinstance(addr, dict) and addr.get("type") == kind:
            return str(addr.get("address", ""))
    return "<none>"


def _node_cells(node: Obj, now: float) -> Cells:
    info = _section(_section(node, "status"), "nodeInfo")

    def known(key: str) -> str:
        return str(info.get(key) or "<unknown>")

    return [_meta(node).get("name", ""), node_status(node), node_roles(node), _age(node, now),
            str(info.get("kubeletVersion") or ""),
            _node_address(node, "InternalIP"), _node_address(node, "ExternalIP"),
            known("osImage"), known("kernelVersion"), known("containerRuntimeVersion")]


NODES = Printer((
    _NAME,
    Column("Status", "Readiness of the node, and whether new pods may be scheduled on it."),
    Column("Roles", "Roles taken from the node's node-role.kubernetes.io/* labels."),
    _AGE,
    Column("Version", "Version of the kubelet on the node."),
    Column("Internal-IP", "First InternalIP in status.addresses.", priority=1),
    Column("External-IP", "First ExternalIP in status.addresses.", priority=1),
    Column("OS-Image", "Operating system image the node reports.", priority=1),
    Column("Kernel-Version", "Kernel version the node reports.", priority=1),
    Column("Container-Runtime", "Container runtime and version the node reports.", priority=1),
), _node_cells)


# -- services -----------------------------------------------------------------------


def service_cluster_ip(svc: Obj) -> str:
    spec = _section(svc, "spec")
    ips = [str(ip) for ip in _items(spec, "clusterIPs") if ip]
    if not ips and spec.get("clusterIP"):
        ips = [str(spec["clusterIP"])]
    return ips[0] if ips else "<none>"


def service_external_ip(svc: Obj) -> str:
    """EXTERNAL-IP: externalIPs, load-balancer ingress, the external name, or a placeholder."""
    spec = _section(svc, "spec")
    external = [str(ip) for ip in _items(spec, "externalIPs") if ip]
    kind = spec.get("type") or "ClusterIP"
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if kind == "LoadBalancer":
        ingress: set[str] = set()
        for entry in _items(_section(_section(svc, "status"), "loadBalancer"), "ingress"):
            if isinstance(entry, dict):
                if entry.get("ip"):
                    ingress.add(str(entry["ip"]))
                elif entry.get("hostname"):
                    ingress.add(str(entry["hostname"]))
        shown = sorted(ingress) + external
        return ",".join(shown) or "<pending>"
    if kind == "ExternalName":
        return str(spec.get("externalName") or "")
    return "<unknown>"


def service_ports(svc: Obj) -> str:
    pieces = []
    for port in _items(_section(svc, "spec"), "ports"):
        if not isinstance(port, dict):
            continue
        proto = port.get("protocol") or "TCP"
        node_port = port.get("nodePort")
        if isinstance(node_port, int) and node_port > 0:
            pieces.append(f"{port.get('port')}:{node_port}/{proto}")
        else:
            pieces.append(f"{port.get('port')}/{proto}")
    return ",".join(pieces) or "<none>"


def _service_cells(svc: Obj, now: float) -> Cells:
    spec = _section(svc, "spec")
    return [_meta(svc).get("name", ""), str(spec.get("type") or ""), service_cluster_ip(svc),
            service_external_ip(svc), service_ports(svc), _age(svc, now),
            format_labels(spec.get("selector"))]


SERVICES = Printer((
    _NAME,
    Column("Type", "How the service is exposed: ClusterIP, NodePort, LoadBalancer or "
           "ExternalName."),
    Column("Cluster-IP", "The virtual IP of the service inside the cluster (None when "
           "headless)."),
    Column("External-IP", "Addresses outside the cluster that reach the service: load-balancer "
           "ingress and spec.externalIPs."),
    Column("Port(s)", "Service ports as port[:nodePort]/protocol."),
    _AGE,
    Column("Selector", "The label selector that picks the service's pods.", priority=1),
), _service_cells)


# -- endpointslices -----------------------------------------------------------------


def endpointslice_ports(eps: Obj) -> str:
    shown = []
    for port in _items(eps, "ports"):
        if not isinstance(port, dict):
            continue
        if port.get("port") is not None:
            shown.append(str(port["port"]))
        elif port.get("name") is not None:
            shown.append(str(port["name"]))
        else:
            shown.append("*")
    return _first_three(shown)


def endpointslice_endpoints(eps: Obj) -> str:
    addresses = [str(a) for ep in _items(eps, "endpoints") if isinstance(ep, dict)
                 for a in _items(ep, "addresses")]
    return _first_three(addresses)


def _endpointslice_cells(eps: Obj, now: float) -> Cells:
    return [_meta(eps).get("name", ""), str(eps.get("addressType") or ""),
            endpointslice_ports(eps), endpointslice_endpoints(eps), _age(eps, now)]


ENDPOINTSLICES = Printer((
    _NAME,
    Column("AddressType", "Kind of address the slice holds: IPv4, IPv6 or FQDN."),
    Column("Ports", "Port numbers (or names) the endpoints serve."),
    Column("Endpoints", "Addresses of the endpoints in the slice."),
    _AGE,
), _endpointslice_cells)


# -- pods ---------------------------------------------------------------------------


def _terminated_reason(term: Mapping[str, Any], prefix: str = "") -> str:
    if term.get("reason"):
        return f"{prefix}{term['reason']}"
    if term.get("signal"):
        return f"{prefix}Signal:{term['signal']}"
    return f"{prefix}ExitCode:{term.get('exitCode', 0)}"


def _last_finish(status: Mapping[str, Any], last: float | None) -> float | None:
    term = _section(_section(status, "lastState"), "terminated")
    finished = parse_timestamp(term.get("finishedAt"))
    if finished is not None and (last is None or finished > last):
        return finished
    return last


def pod_summary(pod: Obj) -> tuple[str, str, int, float | None]:
    """(READY, STATUS, restart count, time of the last container termination or None)."""
    spec, status = _section(pod, "spec"), _section(pod, "status")
    md = _meta(pod)
    reason = str(status.get("reason") or status.get("phase") or "")
    conditions = [c for c in _items(status, "conditions") if isinstance(c, dict)]
    if any(c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated"
           for c in conditions):
        reason = "SchedulingGated"
    restarts = 0
    last: float | None = None
    init_specs = _items(spec, "initContainers")
    initializing = False
    for i, cs in enumerate(s for s in _items(status, "initContainerStatuses")
                           if isinstance(s, dict)):
        restarts += int(cs.get("restartCount") or 0)
        last = _last_finish(cs, last)
        state = _section(cs, "state")
        term, waiting = _section(state, "terminated"), _section(state, "waiting")
        if term and term.get("exitCode", 0) == 0:
            continue
        if term:
            reason = _terminated_reason(term, "Init:")
        elif waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break
    ready = 0
    if not initializing:
        restarts = 0
        running = False
        for cs in reversed([s for s in _items(status, "containerStatuses")
                            if isinstance(s, dict)]):
            restarts += int(cs.get("restartCount") or 0)
            last = _last_finish(cs, last)
            state = _section(cs, "state")
            term, waiting = _section(state, "terminated"), _section(state, "waiting")
            if waiting.get("reason"):
                reason = str(waiting["reason"])
            elif term:
                reason = _terminated_reason(term)
            elif cs.get("ready") is True and "running" in state:
                running = True
                ready += 1
        if reason == "Completed" and running:
            pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in conditions)
            reason = "Running" if pod_ready else "NotReady"
    if md.get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    containers = len(_items(spec, "containers"))
    return f"{ready}/{containers}", reason, restarts, last


def pod_ip(pod: Obj) -> str:
    status = _section(pod, "status")
    ips = [p.get("ip") for p in _items(status, "podIPs") if isinstance(p, dict)]
    ip = ips[0] if ips else status.get("podIP")
    return str(ip) if ip else "<none>"


def pod_readiness_gates(pod: Obj) -> str:
    gates = [g for g in _items(_section(pod, "spec"), "readinessGates") if isinstance(g, dict)]
    if not gates:
        return "<none>"
    conditions = {c.get("type"): c.get("status")
                  for c in _items(_section(pod, "status"), "conditions") if isinstance(c, dict)}
    true = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
    return f"{true}/{len(gates)}"


def _pod_cells(pod: Obj, now: float) -> Cells:
    ready, reason, restarts, last = pod_summary(pod)
    restart_text = str(restarts)
    if last is not None:
        restart_text = f"{restarts} ({human_duration(now - last)} ago)"
    spec, status = _section(pod, "spec"), _section(pod, "status")
    return [_meta(pod).get("name", ""), ready, reason, restart_text, _age(pod, now),
            pod_ip(pod), str(spec.get("nodeName") or "<none>"),
            str(status.get("nominatedNodeName") or "<none>"), pod_readiness_gates(pod)]


def _pod_conditions(pod: Obj) -> list[dict[str, str]] | None:
    phase = _section(pod, "status").get("phase")
    if phase == "Succeeded":
        return [{"type": "Completed", "status": "True", "reason": "Succeeded",
                 "message": "All containers of the pod exited successfully."}]
    if phase == "Failed":
        return [{"type": "Completed", "status": "True", "reason": "Failed",
                 "message": "The pod ended with a failed container."}]
    return None


PODS = Printer((
    _NAME,
    Column("Ready", "Ready containers out of all containers of the pod."),
    Column("Status", "A one-word summary of the pod's phase and container states."),
    Column("Restarts", "Container restarts, with how long ago the last one ended."),
    _AGE,
    Column("IP", "The pod's (first) IP address.", priority=1),
    Column("Node", "The node the pod is bound to.", priority=1),
    Column("Nominated Node", "The node the scheduler expects to place the pod on after "
           "preemption.", priority=1),
    Column("Readiness Gates", "Readiness gates whose condition is True, out of all gates.",
           priority=1),
), _pod_cells)


DEFAULT = Printer((_NAME, _AGE),
                  lambda obj, now: [_meta(obj).get("name", ""), _age(obj, now)])

PRINTERS: dict[str, Printer] = {
    "nodes": NODES,
    "services": SERVICES,
    "endpointslices.discovery.k8s.io": ENDPOINTSLICES,
    "pods": PODS,
}


def printer_for(resource_key: str) -> Printer:
    """The printer of a resource (``Resource.key``); the NAME/AGE one for the rest."""
    return PRINTERS.get(resource_key, DEFAULT)


# -- negotiation and assembly -------------------------------------------------------


def table_version(accept: str | None) -> str | None:
    """Which ``Table`` version an Accept header asks for first, or None for plain JSON.

    Media ranges are taken in the order given. The first Table range of
    ``meta.k8s.io`` in a known version wins; a plain JSON range (or ``*/*``)
    before any Table range means the client prefers the object itself. Ranges
    asking for other conversions (PartialObjectMetadata, discovery documents)
    are skipped.
    """
    for media_range in (accept or "").split(","):
        fields = [f.strip() for f in media_range.split(";")]
        mime = fields[0].lower()
        if mime not in ("application/json", "application/*", "*/*"):
            continue
        params: dict[str, str] = {}
        for field in fields[1:]:
            key, _, value = field.partition("=")
            params[key.strip().lower()] = value.strip()
        conversion = params.get("as")
        if conversion is None:
            return None
        if (conversion == "Table" and params.get("g") == TABLE_GROUP
                and params.get("v") in TABLE_VERSIONS):
            return params["v"]
    return None


def content_type(version: str) -> str:
    return f"application/json;as=Table;v={version};g={TABLE_GROUP}"


def _row_object(obj: Obj, include_object: str, version: str) -> Obj | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": f"{TABLE_GROUP}/{version}",
            "metadata": obj.get("metadata") or {}}


def rows(printer: Printer, objects: Iterable[Obj], *, now: float, include_object: str = "",
         version: str = "v1") -> list[dict[str, Any]]:
    out = []
    for obj in objects:
        row: dict[str, Any] = {"cells": printer.cells(obj, now),
                               "object": _row_object(obj, include_object, version)}
        if printer is PODS:
            conditions = _pod_conditions(obj)
            if conditions:
                row["conditions"] = conditions
        out.append(row)
    return out


def build_table(resource_key: str, objects: Iterable[Obj], *,
                list_metadata: Mapping[str, Any] | None = None, include_object: str = "",
                version: str = "v1", headers: bool = True,
                now: float | None = None) -> Obj:
    """A ``meta.k8s.io`` Table of ``objects``.

    ``include_object`` is the request's ``includeObject`` ("" and "Metadata"
    give each row the object's metadata as PartialObjectMetadata, "Object"
    the whole object, "None" nothing); ``headers=False`` leaves the column
    definitions out, as later events of a watch do. ``list_metadata`` supplies
    resourceVersion, continue and remainingItemCount.
    """
    if include_object not in INCLUDE_OBJECT_VALUES:
        raise ValueError(f"unrecognized includeObject value: {include_object!r}")
    printer = printer_for(resource_key)
    when = time.time() if now is None else now
    md = {k: v for k, v in (list_metadata or {}).items()
          if k in ("resourceVersion", "continue", "remainingItemCount")}
    return {
        "kind": "Table",
        "apiVersion": f"{TABLE_GROUP}/{version}",
        "metadata": md,
        "columnDefinitions": [c.definition() for c in printer.columns] if headers else [],
        "rows": rows(printer, objects, now=when, include_object=include_object,
                     version=version),
    }


def object_table(resource_key: str, obj: Obj, *, include_object: str = "",
                 version: str = "v1", headers: bool = True, now: float | None = None) -> Obj:
    """A one-row Table for a single object (GET of one name, or one watch event)."""
    rv = _meta(obj).get("resourceVersion")
    return build_table(resource_key, [obj],
                       list_metadata={"resourceVersion": rv} if rv else None,
                       include_object=include_object, version=version, headers=headers,
                       now=now)
