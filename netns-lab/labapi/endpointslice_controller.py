"""The EndpointSlice (and legacy Endpoints) controller, run inside the lab API server.

Why it exists: a kube-proxy-like agent never reads Pods; it reads the
EndpointSlices that a controller derives from Services and Pods. To test the
agent against realistic input, the lab derives them the same way: selected,
non-terminal Pods with an IP become endpoints with ready/serving/terminating
conditions, named target ports are resolved per Pod, and a slice is written
only when its content changes (so no spurious MODIFIED events reach the agent).

It runs synchronously as a store write hook, under the store lock, right after
the Service/Pod/Node write that triggers it; so a client that sees a Pod
change can already list the matching slice. Endpoints for Services without a
selector are left to whoever writes them (no mirroring).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import time
from typing import Any

from labapi import meta
from labapi.errors import ApiError
from labapi.resources import ENDPOINTS, ENDPOINTSLICES, NODES, PODS, SERVICES, Resource
from labapi.selectors import selector_map_matches
from labapi.store import Obj, Store

LOG = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
ZONE_LABEL = "topology.kubernetes.io/zone"


def _selector(svc: Obj) -> dict[str, str] | None:
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return None
    sel = spec.get("selector")
    return sel if isinstance(sel, dict) and sel else None


def _pod_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _resolve_port(pod: Obj, target: Any, protocol: str) -> int | None:
    if isinstance(target, int):
        return target
    for container in (pod.get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == target and p.get("protocol", "TCP") == protocol:
                port = p.get("containerPort")
                return port if isinstance(port, int) else None
    return None


def _ip_sort_key(ep: dict[str, Any]) -> tuple[int, str]:
    ip = (ep.get("addresses") or [""])[0]
    try:
        return int(ipaddress.ip_address(ip)), ip
    except ValueError:
        return 0, ip


class EndpointSliceController:
    """Keeps one EndpointSlice per port mapping (usually one per Service) and one Endpoints."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._busy = False
        store.hooks.append(self.on_write)
        with store.lock:
            for svc in store.objects(SERVICES):
                md = svc["metadata"]
                self.reconcile(md["namespace"], md["name"], time.time())

    # -- triggers -------------------------------------------------------------------

    def on_write(self, res: Resource, old: Obj | None, new: Obj | None) -> None:
        if self._busy:
            return
        when = time.time()
        try:
            if res is SERVICES:
                md = (new or old or {})["metadata"]
                self.reconcile(md["namespace"], md["name"], when)
            elif res is PODS:
                md = (new or old or {})["metadata"]
                ns = md["namespace"]
                for svc in list(self.store.objects(SERVICES, ns)):
                    sel = _selector(svc)
                    if sel is None:
                        continue
                    if any(p is not None and selector_map_matches(
                            sel, (p.get("metadata") or {}).get("labels")) for p in (old, new)):
                        self.reconcile(ns, svc["metadata"]["name"], when)
            elif res is NODES:
                for svc in list(self.store.objects(SERVICES)):
                    smd = svc["metadata"]
                    self.reconcile(smd["namespace"], smd["name"], when)
            elif res in (ENDPOINTSLICES, ENDPOINTS):
                # Someone else changed or removed an object we own: put it back.
                obj = old or new or {}
                md = obj.get("metadata") or {}
                svc_name = (md.get("labels") or {}).get(SERVICE_NAME_LABEL) if (
                    res is ENDPOINTSLICES) else md.get("name")
                if svc_name and self.store.peek(SERVICES, md.get("namespace"), svc_name):
                    self.reconcile(md["namespace"], svc_name, when)
        except ApiError as exc:  # never fail the write that triggered us
            LOG.warning("endpointslice controller: %s", exc.message)

    # -- desired state --------------------------------------------------------------

    def _desired(self, svc: Obj) -> tuple[list[tuple[list[dict[str, Any]], list[Any]]],
                                          list[dict[str, Any]]]:
        """(slices as (ports, endpoints), Endpoints subsets) for a Service with a selector."""
        ns = svc["metadata"]["namespace"]
        spec = svc.get("spec") or {}
        sel = _selector(svc) or {}
        publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
        groups: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
        subsets: dict[str, tuple[list[dict[str, Any]], list[Any], list[Any]]] = {}
        for pod in self.store.objects(PODS, ns):
            pmd = pod.get("metadata") or {}
            status = pod.get("status") or {}
            if not selector_map_matches(sel, pmd.get("labels")):
                continue
            if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
                continue
            ports: list[dict[str, Any]] = []
            for sp in spec.get("ports") or []:
                proto = sp.get("protocol", "TCP")
                number = _resolve_port(pod, sp.get("targetPort", sp.get("port")), proto)
                if number is None:
                    continue
                port: dict[str, Any] = {"name": sp.get("name", ""), "protocol": proto,
                                        "port": number}
                if sp.get("appProtocol"):
                    port["appProtocol"] = sp["appProtocol"]
                ports.append(port)
            terminating = bool(pmd.get("deletionTimestamp"))
            serving = _pod_ready(pod) or publish_not_ready
            ready = serving and (not terminating or publish_not_ready)
            node_name = (pod.get("spec") or {}).get("nodeName")
            ep: dict[str, Any] = {
                "addresses": [status["podIP"]],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pmd["name"],
                              "uid": pmd.get("uid", "")},
            }
            if node_name:
                ep["nodeName"] = node_name
                node = self.store.peek(NODES, None, node_name)
                zone = ((node or {}).get("metadata") or {}).get("labels", {}).get(ZONE_LABEL)
                if zone:
                    ep["zone"] = zone
            key = json.dumps(ports, sort_keys=True)
            groups.setdefault(key, (ports, []))[1].append(ep)
            if terminating and not publish_not_ready:
                continue
            addr: dict[str, Any] = {"ip": status["podIP"], "targetRef": dict(ep["targetRef"])}
            if node_name:
                addr["nodeName"] = node_name
            sub = subsets.setdefault(key, (ports, [], []))
            (sub[1] if ready else sub[2]).append(addr)
        slices = [(ports, sorted(eps, key=_ip_sort_key)) for ports, eps in groups.values()]
        legacy: list[dict[str, Any]] = []
        for ports, ready_addrs, not_ready in subsets.values():
            subset: dict[str, Any] = {}
            if ready_addrs:
                subset["addresses"] = sorted(ready_addrs, key=lambda a: a["ip"])
            if not_ready:
                subset["notReadyAddresses"] = sorted(not_ready, key=lambda a: a["ip"])
            subset["ports"] = [{k: v for k, v in p.items() if not (k == "name" and v == "")}
                               for p in ports]
            legacy.append(subset)
        return slices, legacy

    # -- reconcile ------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str, when: float) -> None:
        """Bring the slices and Endpoints of Service ``namespace/name`` up to date."""
        with self.store.lock:
            self._busy = True
            try:
                self._reconcile_slices(namespace, name, when)
                self._reconcile_endpoints(namespace, name, when)
            finally:
                self._busy = False

    def _owned_slices(self, namespace: str, name: str) -> list[Obj]:
        out = []
        for s in self.store.objects(ENDPOINTSLICES, namespace):
            labels = (s.get("metadata") or {}).get("labels") or {}
            if labels.get(SERVICE_NAME_LABEL) == name and labels.get(
                    MANAGED_BY_LABEL) == CONTROLLER_NAME:
                out.append(s)
        return out

    def _reconcile_slices(self, namespace: str, name: str, when: float) -> None:
        svc = self.store.peek(SERVICES, namespace, name)
        existing = self._owned_slices(namespace, name)
        if svc is None or _selector(svc) is None:
            for s in existing:
                self.store.delete(ENDPOINTSLICES, namespace, s["metadata"]["name"])
            return
        desired, _ = self._desired(svc)
        if not desired:
            desired = [([], [])]  # a placeholder slice with no ports and no endpoints
        labels = dict(svc["metadata"].get("labels") or {})
        labels[SERVICE_NAME_LABEL] = name
        labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
        if (svc.get("spec") or {}).get("clusterIP") == "None":
            labels[HEADLESS_LABEL] = ""
        owner = [{"apiVersion": "v1", "kind": "Service", "name": name,
                  "uid": svc["metadata"]["uid"], "controller": True,
                  "blockOwnerDeletion": True}]
        # Pair desired groups with existing slices: same ports first, then any leftover.
        remaining = list(existing)
        plan: list[tuple[Obj | None, list[Any], list[Any]]] = []
        unmatched: list[tuple[list[Any], list[Any]]] = []
        for ports, eps in desired:
            hit = next((s for s in remaining if (s.get("ports") or []) == ports), None)
            if hit is not None:
                remaining.remove(hit)
                plan.append((hit, ports, eps))
            else:
                unmatched.append((ports, eps))
        for ports, eps in unmatched:
            plan.append((remaining.pop(0) if remaining else None, ports, eps))
        for cur, ports, eps in plan:
            body: Obj = {
                "apiVersion": ENDPOINTSLICES.api_version,
                "kind": ENDPOINTSLICES.kind,
                "addressType": "IPv4",
                "endpoints": eps,
                "ports": ports,
            }
            if cur is None:
                body["metadata"] = {"generateName": f"{name}-", "namespace": namespace,
                                    "labels": labels, "ownerReferences": owner,
                                    "annotations": {TRIGGER_ANNOTATION: meta.rfc3339_micro(when)}}
                self.store.create(ENDPOINTSLICES, namespace, body)
                continue
            cmd = cur["metadata"]
            same = (cur.get("endpoints") or []) == eps and (cur.get("ports") or []) == ports \
                and (cmd.get("labels") or {}) == labels and cmd.get("ownerReferences") == owner \
                and cur.get("addressType") == "IPv4"
            if same:
                continue
            md = copy.deepcopy(cmd)
            md["labels"] = labels
            md["ownerReferences"] = owner
            md.setdefault("annotations", {})[TRIGGER_ANNOTATION] = meta.rfc3339_micro(when)
            body["metadata"] = md
            self.store.update(ENDPOINTSLICES, namespace, md["name"], body)
        for s in remaining:
            self.store.delete(ENDPOINTSLICES, namespace, s["metadata"]["name"])

    def _reconcile_endpoints(self, namespace: str, name: str, when: float) -> None:
        svc = self.store.peek(SERVICES, namespace, name)
        cur = self.store.peek(ENDPOINTS, namespace, name)
        if svc is None:
            if cur is not None:
                self.store.delete(ENDPOINTS, namespace, name)
            return
        if _selector(svc) is None:
            return  # Endpoints of selector-less Services belong to whoever writes them
        _, subsets = self._desired(svc)
        labels = dict(svc["metadata"].get("labels") or {})
        if (svc.get("spec") or {}).get("clusterIP") == "None":
            labels[HEADLESS_LABEL] = ""
        if cur is not None and (cur.get("subsets") or []) == subsets and (
                (cur["metadata"].get("labels") or {}) == labels):
            return
        md: dict[str, Any] = copy.deepcopy(cur["metadata"]) if cur else {
            "name": name, "namespace": namespace}
        md["labels"] = labels
        md.setdefault("annotations", {})[TRIGGER_ANNOTATION] = meta.rfc3339_micro(when)
        body: Obj = {"apiVersion": "v1", "kind": "Endpoints", "metadata": md}
        if subsets:
            body["subsets"] = subsets
        if cur is None:
            self.store.create(ENDPOINTS, namespace, body)
        else:
            self.store.update(ENDPOINTS, namespace, name, body)
