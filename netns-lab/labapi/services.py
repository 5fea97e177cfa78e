"""Service defaulting, validation and IP/port allocation on create, update and delete.

Why it exists: a Service is the object a kube-proxy-like agent depends on most,
and the API server, not the client, decides its ClusterIP, NodePorts, default
protocol, targetPort and traffic policies. This module reproduces those
decisions (including 422 for out-of-range or already taken values and keeping
allocated values when an update leaves them out) so the agent sees Services
exactly as a real cluster would hand them over.
"""

from __future__ import annotations

import re
from typing import Any

from labapi.allocators import AllocationError, ClusterIPAllocator, NodePortAllocator
from labapi.errors import ApiError, invalid

TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IANA_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _needs_node_ports(spec: dict[str, Any]) -> bool:
    t = spec.get("type")
    if t == "NodePort":
        return True
    return t == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True) is not False


def _needs_cluster_ip(spec: dict[str, Any]) -> bool:
    return spec.get("type") != "ExternalName"


def _health_port_needed(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


class ServiceStrategy:
    """Owns the allocators; every Service write in the store goes through it."""

    def __init__(self, service_cidr: str, nodeport_range: tuple[int, int]) -> None:
        self.ips = ClusterIPAllocator(service_cidr)
        self.ports = NodePortAllocator(*nodeport_range)

    # -- defaulting -----------------------------------------------------------------

    def _default(self, svc: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = svc.setdefault("spec", {})
        if not isinstance(spec, dict):
            raise invalid("Service", _name(svc), [("spec", "must be an object")])
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["sessionAffinity"] == "ClientIP":
            cfg = spec.setdefault("sessionAffinityConfig", {})
            cfg.setdefault("clientIP", {}).setdefault("timeoutSeconds", 10800)
        ports = spec.get("ports") or []
        if not isinstance(ports, list):
            raise invalid("Service", _name(svc), [("spec.ports", "must be a list")])
        for p in ports:
            if not isinstance(p, dict):
                raise invalid("Service", _name(svc), [("spec.ports", "must hold objects")])
            p.setdefault("protocol", "TCP")
            if p.get("targetPort") in (None, 0, ""):
                p["targetPort"] = p.get("port")
        if spec["type"] == "ExternalName":
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if old is not None or spec.get(key) in ("", None, []):
                    spec.pop(key, None)
            return
        spec.setdefault("internalTrafficPolicy", "Cluster")
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        elif old is not None and spec.get("externalTrafficPolicy") == (
                old.get("spec") or {}).get("externalTrafficPolicy"):
            # A type change to ClusterIP drops the policy the client merely carried over.
            spec.pop("externalTrafficPolicy", None)
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        status = svc.setdefault("status", {})
        if isinstance(status, dict):
            status.setdefault("loadBalancer", {})

    def _keep_allocated(self, new: dict[str, Any], old: dict[str, Any]) -> None:
        """An update that leaves allocated values out keeps them (like the real server)."""
        nspec, ospec = new["spec"], old.get("spec") or {}
        if _needs_cluster_ip(nspec) and _needs_cluster_ip(ospec):
            if nspec.get("clusterIP") in (None, "") and ospec.get("clusterIP"):
                nspec["clusterIP"] = ospec["clusterIP"]
            if not nspec.get("clusterIPs") and ospec.get("clusterIPs"):
                nspec["clusterIPs"] = list(ospec["clusterIPs"])
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in ospec.get("ports") or [] if isinstance(p, dict)}
        if _needs_node_ports(nspec):
            for p in nspec.get("ports") or []:
                if not p.get("nodePort"):
                    prev = old_ports.get((p.get("port"), p.get("protocol")))
                    if prev:
                        p["nodePort"] = prev
            if (_health_port_needed(nspec) and not nspec.get("healthCheckNodePort")
                    and ospec.get("healthCheckNodePort")):
                nspec["healthCheckNodePort"] = ospec["healthCheckNodePort"]
        else:
            # Changing type away from NodePort drops node ports the client merely carried over.
            for p in nspec.get("ports") or []:
                prev = old_ports.get((p.get("port"), p.get("protocol")))
                if p.get("nodePort") and p.get("nodePort") == prev:
                    p.pop("nodePort")
        if not _health_port_needed(nspec) and nspec.get("healthCheckNodePort") == ospec.get(
                "healthCheckNodePort"):
            nspec.pop("healthCheckNodePort", None)

    # -- validation -------------------------------------------------------------

    def _validate(self, svc: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = _name(svc)
        spec = svc["spec"]
        problems: list[tuple[str, str]] = []
        t = spec.get("type")
        if t not in TYPES:
            problems.append(("spec.type", f'Unsupported value: "{t}": supported values: '
                             + ", ".join(f'"{x}"' for x in TYPES)))
        ports = spec.get("ports") or []
        headless = spec.get("clusterIP") == "None"
        if t != "ExternalName" and not headless and not ports:
            problems.append(("spec.ports", "Required value"))
        if t == "ExternalName" and not spec.get("externalName"):
            problems.append(("spec.externalName", "Required value"))
        if headless and t in ("NodePort", "LoadBalancer"):
            problems.append(("spec.clusterIPs[0]", f"Invalid value: \"None\": may not be set "
                             f"to 'None' for {t} services"))
        seen_names: set[str] = set()
        seen_ports: set[tuple[Any, Any]] = set()
        for i, p in enumerate(ports):
            f = f"spec.ports[{i}]"
            pname = p.get("name", "")
            if len(ports) > 1 and not pname:
                problems.append((f"{f}.name", "Required value"))
            if pname:
                if not isinstance(pname, str) or not _PORT_NAME.match(pname) or len(pname) > 63:
                    problems.append((f"{f}.name", f'Invalid value: "{pname}"'))
                if pname in seen_names:
                    problems.append((f"{f}.name", f'Duplicate value: "{pname}"'))
                seen_names.add(pname)
            port = p.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                problems.append((f"{f}.port", f"Invalid value: {port}: must be between 1 and "
                                 "65535, inclusive"))
            proto = p.get("protocol")
            if proto not in PROTOCOLS:
                problems.append((f"{f}.protocol", f'Unsupported value: "{proto}": supported '
                                 'values: "SCTP", "TCP", "UDP"'))
            if (port, proto) in seen_ports:
                problems.append((f, f"Duplicate value: {port}/{proto}"))
            seen_ports.add((port, proto))
            tp = p.get("targetPort")
            if isinstance(tp, bool) or not (
                    (isinstance(tp, int) and 1 <= tp <= 65535)
                    or (isinstance(tp, str) and len(tp) <= 15 and _IANA_NAME.match(tp))):
                problems.append((f"{f}.targetPort", f"Invalid value: {tp!r}: must be a port "
                                 "number between 1 and 65535 or a port name"))
            np = p.get("nodePort")
            if np not in (None, 0):
                if not isinstance(np, int) or isinstance(np, bool):
                    problems.append((f"{f}.nodePort", f"Invalid value: {np!r}"))
                elif not _needs_node_ports(spec):
                    problems.append((f"{f}.nodePort", f"Forbidden: may not be used when "
                                     f"`type` is '{t}'"))
        for key, allowed in (("sessionAffinity", ("None", "ClientIP")),
                             ("internalTrafficPolicy", ("Cluster", "Local")),
                             ("externalTrafficPolicy", ("Cluster", "Local"))):
            if key in spec and spec[key] not in allowed:
                problems.append((f"spec.{key}", f'Unsupported value: "{spec[key]}"'))
        if "externalTrafficPolicy" in spec and t not in ("NodePort", "LoadBalancer"):
            problems.append(("spec.externalTrafficPolicy", "Invalid value: may only be set "
                             "when `type` is 'NodePort' or 'LoadBalancer'"))
        sel = spec.get("selector")
        if sel is not None and (not isinstance(sel, dict) or not all(
                isinstance(v, str) for v in sel.values())):
            problems.append(("spec.selector", "must be a map of strings"))
        if old is not None:
            ospec = old.get("spec") or {}
            if (_needs_cluster_ip(spec) and _needs_cluster_ip(ospec)
                    and spec.get("clusterIP") != ospec.get("clusterIP")):
                problems.append(("spec.clusterIPs[0]", f'Invalid value: '
                                 f'"{spec.get("clusterIP")}": may not change once set'))
        cip = spec.get("clusterIP")
        cips = spec.get("clusterIPs")
        if cips and cip not in (None, "") and cips[0] != cip:
            problems.append(("spec.clusterIPs", "must match spec.clusterIP"))
        if problems:
            raise invalid("Service", name, problems)

    # -- allocation -------------------------------------------------------------

    @staticmethod
    def held(svc: dict[str, Any] | None) -> tuple[str | None, set[int]]:
        """The ClusterIP and node ports a stored Service holds."""
        if not svc:
            return None, set()
        spec = svc.get("spec") or {}
        ip = spec.get("clusterIP") if _needs_cluster_ip(spec) else None
        if ip in ("None", ""):
            ip = None
        ports = {p["nodePort"] for p in spec.get("ports") or [] if p.get("nodePort")}
        if spec.get("healthCheckNodePort"):
            ports.add(spec["healthCheckNodePort"])
        return ip, ports

    def _allocate(self, svc: dict[str, Any], old: dict[str, Any] | None) -> None:
        name = _name(svc)
        spec = svc["spec"]
        old_ip, old_ports = self.held(old)
        taken_ip: str | None = None
        taken_ports: list[int] = []
        try:
            if _needs_cluster_ip(spec):
                cip = spec.get("clusterIP")
                if cip in (None, ""):
                    want = (spec.get("clusterIPs") or [None])[0]
                    cip = want if want not in (None, "") else None
                if cip is None:
                    taken_ip = cip = self.ips.allocate()
                elif cip != "None" and cip != old_ip:
                    try:
                        self.ips.reserve(cip)
                    except AllocationError as exc:
                        raise invalid("Service", name,
                                      [("spec.clusterIPs", f'Invalid value: ["{cip}"]: {exc}')]
                                      ) from None
                    taken_ip = cip
                spec["clusterIP"] = cip
                spec["clusterIPs"] = [cip]
            if _needs_node_ports(spec):
                for i, p in enumerate(spec.get("ports") or []):
                    np = p.get("nodePort")
                    if np in (None, 0):
                        p["nodePort"] = self.ports.allocate()
                        taken_ports.append(p["nodePort"])
                    elif np not in old_ports or np in taken_ports:
                        try:
                            self.ports.reserve(np)
                        except AllocationError as exc:
                            raise invalid("Service", name, [(
                                f"spec.ports[{i}].nodePort", f"Invalid value: {np}: {exc}")]
                                ) from None
                        taken_ports.append(np)
            if _health_port_needed(spec):
                hp = spec.get("healthCheckNodePort")
                if hp in (None, 0):
                    spec["healthCheckNodePort"] = self.ports.allocate()
                    taken_ports.append(spec["healthCheckNodePort"])
                elif hp not in old_ports:
                    try:
                        self.ports.reserve(hp)
                    except AllocationError as exc:
                        raise invalid("Service", name, [(
                            "spec.healthCheckNodePort", f"Invalid value: {hp}: {exc}")]) from None
                    taken_ports.append(hp)
        except AllocationError as exc:
            self._undo(taken_ip, taken_ports)
            raise ApiError(500, f"Internal error occurred: {exc}", "InternalError") from None
        except ApiError:
            self._undo(taken_ip, taken_ports)
            raise

    def _undo(self, ip: str | None, ports: list[int]) -> None:
        if ip is not None:
            self.ips.release(ip)
        for p in ports:
            self.ports.release(p)

    # -- entry points used by the store ---------------------------------------------

    def prepare_create(self, svc: dict[str, Any]) -> None:
        self._default(svc, None)
        self._validate(svc, None)
        self._allocate(svc, None)

    def prepare_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self._default(new, old)
        self._keep_allocated(new, old)
        self._validate(new, old)
        self._allocate(new, old)
        # Free what the old version held and the new one no longer does.
        old_ip, old_ports = self.held(old)
        new_ip, new_ports = self.held(new)
        if old_ip and old_ip != new_ip:
            self.ips.release(old_ip)
        for p in old_ports - new_ports:
            self.ports.release(p)

    def release(self, svc: dict[str, Any]) -> None:
        ip, ports = self.held(svc)
        if ip:
            self.ips.release(ip)
        for p in ports:
            self.ports.release(p)


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))
