"""The object store: objects, one global resourceVersion, bounded history and watchers.

Why it exists: list-then-watch correctness is what a kube-proxy-like agent
depends on most. This store keeps every object under one lock, stamps each
write with the next value of a single global counter (as the real server's
etcd revision does), records each change in a bounded history so a watch can
resume from any recent resourceVersion, and answers a too-old one with 410
Expired. Stored objects are never mutated in place: each write stores a new
dict, so events can share them safely with the threads that serialize them.

Lab-specific choice: Pods and Nodes keep the ``status`` given on create. A
real server drops it (the kubelet fills it later), but the lab has no
kubelet, so the lab itself sets ``status.podIP``, ``phase`` and the Ready
condition at creation time.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import queue
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labapi import meta
from labapi.errors import ApiError, invalid, not_found
from labapi.patching import APPLY_PATCH, apply_patch, strategic_merge
from labapi.resources import BY_KEY, NAMESPACES, PODS, RESOURCES, SERVICES, Resource
from labapi.selectors import (
    FieldRequirement,
    Requirement,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from labapi.services import ServiceStrategy

Obj = dict[str, Any]
ResourceRef = Resource | str
# Called after every committed write: (resource, old object or None, new object or None).
WriteHook = Callable[[Resource, Obj | None, Obj | None], None]

_NAME_RULES = {"services": "dns1035-label", "namespaces": "dns1123-label"}


@dataclass(frozen=True)
class Event:
    """One committed change, as kept in the history."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: str  # Resource.key
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    """One open watch: a filter plus a queue of ("event", type, obj) / ("close", why) items."""

    resource: Resource
    namespace: str | None
    labels: list[Requirement]
    fields: list[FieldRequirement]
    items: queue.Queue[tuple[str, Any, Any]] = field(default_factory=queue.Queue)
    closed: bool = False

    def _matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        md = obj.get("metadata") or {}
        if self.namespace is not None and md.get("namespace") != self.namespace:
            return False
        return labels_match(self.labels, md.get("labels")) and fields_match(self.fields, obj)

    def offer(self, ev: Event) -> None:
        """Queue ``ev`` as this watcher sees it (entering/leaving the selection → ADDED/DELETED)."""
        if ev.resource != self.resource.key:
            return
        now = self._matches(ev.obj)
        before = self._matches(ev.old)
        if ev.type == "DELETED":
            if now or before:
                self.items.put(("event", "DELETED", ev.obj))
        elif ev.type == "ADDED":
            if now:
                self.items.put(("event", "ADDED", ev.obj))
        elif now and before:
            self.items.put(("event", "MODIFIED", ev.obj))
        elif now:
            self.items.put(("event", "ADDED", ev.obj))
        elif before:
            self.items.put(("event", "DELETED", ev.obj))

    def close(self, why: str = "closed", abrupt: bool = False) -> None:
        self.closed = True
        self.items.put(("close", why, abrupt))


def _strip_volatile(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    md = out.get("metadata") or {}
    md.pop("resourceVersion", None)
    md.pop("managedFields", None)
    return out


def _encode_continue(rv: int, after: str) -> str:
    raw = json.dumps({"rv": rv, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return int(data["rv"]), str(data["after"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ApiError(400, "continue key is not valid: incorrect encoded start "
                       "resourceVersion (version meta.k8s.io/v1)", "BadRequest") from None


def parse_rv(value: str | None) -> int | None:
    """A query-string resourceVersion; None for missing or empty."""
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"invalid resource version: {value!r}", "BadRequest") from None
    if n < 0:
        raise ApiError(400, f"invalid resource version: {value!r}", "BadRequest")
    return n


class Store:
    """All objects of the lab API server, thread-safe behind one re-entrant lock."""

    def __init__(self, *, service_cidr: str = "10.96.0.0/12",
                 nodeport_range: tuple[int, int] = (30000, 32767),
                 history: int = 1000) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self.lock = threading.RLock()
        self.rv = 0
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {r.key: {} for r in RESOURCES}
        self._history: deque[Event] = deque(maxlen=history)
        self._compacted_rv = 0
        self._watchers: set[Watcher] = set()
        self.services = ServiceStrategy(service_cidr, nodeport_range)
        self.hooks: list[WriteHook] = []
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(NAMESPACES, None, {"metadata": {"name": ns}})

    # -- helpers --------------------------------------------------------------------

    @staticmethod
    def resource(ref: ResourceRef) -> Resource:
        """Accept a Resource, its key, its plural or its kind."""
        if isinstance(ref, Resource):
            return ref
        if ref in BY_KEY:
            return BY_KEY[ref]
        for r in RESOURCES:
            if ref in (r.plural, r.kind, r.singular) or ref in r.short_names:
                return r
        raise KeyError(f"unknown resource {ref!r}")

    @staticmethod
    def _scope(res: Resource, namespace: str | None) -> str:
        if res.namespaced:
            if not namespace:
                raise ApiError(400, "the namespace of the object must be set", "BadRequest")
            return namespace
        return ""

    def _commit(self, res: Resource, typ: str, obj: Obj, old: Obj | None) -> None:
        ev = Event(self.rv, typ, res.key, obj, old)
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(ev)
        for w in list(self._watchers):
            w.offer(ev)
        for hook in list(self.hooks):
            hook(res, old, None if typ == "DELETED" else obj)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    # -- reads ----------------------------------------------------------------------

    def get(self, ref: ResourceRef, namespace: str | None, name: str) -> Obj:
        res = self.resource(ref)
        with self.lock:
            obj = self._objects[res.key].get((self._scope(res, namespace), name))
            if obj is None:
                raise not_found(res.plural, name, res.kind, res.group)
            return copy.deepcopy(obj)

    def peek(self, ref: ResourceRef, namespace: str | None, name: str) -> Obj | None:
        """The stored object (do not mutate it) or None."""
        res = self.resource(ref)
        with self.lock:
            return self._objects[res.key].get(((namespace or "") if res.namespaced else "", name))

    def objects(self, ref: ResourceRef, namespace: str | None = None) -> list[Obj]:
        """Stored objects (do not mutate them), sorted by namespace and name."""
        res = self.resource(ref)
        with self.lock:
            items = sorted(self._objects[res.key].items())
            return [o for (ns, _), o in items if namespace is None or ns == namespace]

    def list(self, ref: ResourceRef, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None,
             limit: int | None = None, continue_token: str | None = None) -> Obj:
        """A ``<Kind>List`` with paging; the continue token carries the last key returned."""
        res = self.resource(ref)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, res.field_labels, res.kind)
        with self.lock:
            list_rv = self.rv
            after: str | None = None
            if continue_token:
                list_rv, after = _decode_continue(continue_token)
                if list_rv < self._compacted_rv:
                    raise ApiError(410, "The provided continue parameter is too old to display "
                                   "a consistent list result. You can start a new list without "
                                   "the continue parameter.", "Expired")
            matched: list[tuple[str, Obj]] = []
            for (ns, name), obj in sorted(self._objects[res.key].items()):
                if namespace is not None and ns != namespace:
                    continue
                key = f"{ns}/{name}"
                if after is not None and key <= after:
                    continue
                md = obj.get("metadata") or {}
                if labels_match(labels, md.get("labels")) and fields_match(fields, obj):
                    matched.append((key, obj))
            list_meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
            if limit is not None and limit > 0 and len(matched) > limit:
                list_meta["continue"] = _encode_continue(list_rv, matched[limit - 1][0])
                list_meta["remainingItemCount"] = len(matched) - limit
                matched = matched[:limit]
            return {
                "kind": res.list_kind,
                "apiVersion": res.api_version,
                "metadata": list_meta,
                "items": [copy.deepcopy(o) for _, o in matched],
            }

    # -- writes ---------------------------------------------------------------------

    def create(self, ref: ResourceRef, namespace: str | None, body: Obj) -> Obj:
        res = self.resource(ref)
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be a JSON object", "BadRequest")
        obj = copy.deepcopy(body)
        md = obj.get("metadata")
        if not isinstance(md, dict):
            md = obj["metadata"] = {}
        with self.lock:
            ns = self._scope(res, namespace)
            if res.namespaced:
                if md.get("namespace") not in (None, "", ns):
                    raise ApiError(400, "the namespace of the provided object does not match "
                                   "the namespace sent on the request", "BadRequest")
                if ("", ns) not in self._objects[NAMESPACES.key]:
                    raise not_found("namespaces", ns, "Namespace")
                md["namespace"] = ns
            else:
                md.pop("namespace", None)
            name = md.get("name")
            if not name:
                prefix = md.get("generateName")
                if not prefix:
                    raise invalid(res.kind, "", [("metadata.name", "Required value: name or "
                                                  "generateName is required")], res.group)
                for _ in range(20):
                    name = meta.generated_name(str(prefix))
                    if (ns, name) not in self._objects[res.key]:
                        break
                md["name"] = name
            name = str(name)
            problem = meta.name_problem(name, _NAME_RULES.get(res.plural, "dns1123-subdomain"))
            if problem:
                raise invalid(res.kind, name, [("metadata.name", f'Invalid value: "{name}": '
                                                f"{problem}")], res.group)
            if (ns, name) in self._objects[res.key]:
                label = f"{res.plural}.{res.group}" if res.group else res.plural
                raise ApiError(409, f'{label} "{name}" already exists', "AlreadyExists",
                               name=name, kind=res.plural, group=res.group or None)
            obj = {"apiVersion": res.api_version, "kind": res.kind,
                   **{k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}}
            md = obj["metadata"]
            for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
                md.pop(k, None)
            md["uid"] = meta.new_uid()
            md["creationTimestamp"] = meta.now_rfc3339()
            md["generation"] = 1
            self._default(res, obj)
            if res is SERVICES:
                self.services.prepare_create(obj)
            md["resourceVersion"] = self._next_rv()
            self._objects[res.key][(ns, name)] = obj
            self._commit(res, "ADDED", obj, None)
            return copy.deepcopy(obj)

    @staticmethod
    def _default(res: Resource, obj: Obj) -> None:
        if res is NAMESPACES:
            obj["status"] = {"phase": "Active"}
        elif res is PODS:
            spec = obj.setdefault("spec", {})
            for c in spec.get("containers") or []:
                for p in c.get("ports") or []:
                    p.setdefault("protocol", "TCP")
            status = obj.get("status")
            if not isinstance(status, dict):
                status = obj["status"] = {}
            status.setdefault("phase", "Pending")

    def update(self, ref: ResourceRef, namespace: str | None, name: str, body: Obj, *,
               subresource: str | None = None) -> Obj:
        """PUT semantics: stale ``metadata.resourceVersion`` → 409; no-op writes emit nothing."""
        res = self.resource(ref)
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be a JSON object", "BadRequest")
        with self.lock:
            ns = self._scope(res, namespace)
            old = self._objects[res.key].get((ns, name))
            if old is None:
                raise not_found(res.plural, name, res.kind, res.group)
            return self._update(res, ns, name, old, copy.deepcopy(body), subresource)

    def _update(self, res: Resource, ns: str, name: str, old: Obj, new: Obj,
                subresource: str | None) -> Obj:
        md = new.get("metadata")
        if not isinstance(md, dict):
            md = new["metadata"] = {}
        if md.get("name") not in (None, name):
            raise ApiError(400, f"the name of the object ({md.get('name')}) does not match the "
                           f"name on the URL ({name})", "BadRequest")
        if res.namespaced and md.get("namespace") not in (None, "", ns):
            raise ApiError(400, "the namespace of the provided object does not match the "
                           "namespace sent on the request", "BadRequest")
        omd = old["metadata"]
        want_rv = md.get("resourceVersion")
        if want_rv not in (None, "") and str(want_rv) != omd["resourceVersion"]:
            label = f"{res.plural}.{res.group}" if res.group else res.plural
            raise ApiError(409, f'Operation cannot be fulfilled on {label} "{name}": the object '
                           "has been modified; please apply your changes to the latest version "
                           "and try again", "Conflict", name=name, kind=res.plural,
                           group=res.group or None)
        if subresource == "status":
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status", {})
            new = merged
        else:
            if res.has_status and res is not NAMESPACES:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            elif res is NAMESPACES:
                new["status"] = copy.deepcopy(old.get("status", {}))
            for k in ("uid", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generateName"):
                if k in omd:
                    md[k] = omd[k]
                else:
                    md.pop(k, None)
            md["name"] = name
            if res.namespaced:
                md["namespace"] = ns
            else:
                md.pop("namespace", None)
            new["kind"] = res.kind
            new["apiVersion"] = res.api_version
            if res is PODS:
                self._default(res, new)
        new["metadata"]["generation"] = omd.get("generation", 1)
        if res is SERVICES and subresource != "status":
            self.services.prepare_update(old, new)
        if _strip_volatile(new) == _strip_volatile(old):
            return copy.deepcopy(old)
        if subresource != "status" and {k: v for k, v in new.items()
                                        if k not in ("metadata", "status")} != {
                k: v for k, v in old.items() if k not in ("metadata", "status")}:
            new["metadata"]["generation"] = omd.get("generation", 1) + 1
        nmd = new["metadata"]
        if nmd.get("deletionTimestamp") and not nmd.get("finalizers"):
            return self._remove(res, ns, name, old)
        nmd["resourceVersion"] = self._next_rv()
        self._objects[res.key][(ns, name)] = new
        self._commit(res, "MODIFIED", new, old)
        return copy.deepcopy(new)

    def patch(self, ref: ResourceRef, namespace: str | None, name: str, content_type: str,
              patch: Any, *, subresource: str | None = None) -> Obj:
        res = self.resource(ref)
        with self.lock:
            ns = self._scope(res, namespace)
            old = self._objects[res.key].get((ns, name))
            is_apply = content_type.split(";")[0].strip().lower() == APPLY_PATCH
            if old is None and is_apply and subresource is None and isinstance(patch, dict):
                body = copy.deepcopy(patch)
                md = body.get("metadata")
                if not isinstance(md, dict):
                    md = body["metadata"] = {}
                if md.get("name") not in (None, name):
                    raise ApiError(400, "the name of the object does not match the name on "
                                   "the URL", "BadRequest")
                md["name"] = name
                return self.create(res, namespace, body)
            if old is None:
                raise not_found(res.plural, name, res.kind, res.group)
            if is_apply:
                # Server-side apply, approximated: no field ownership, the applied
                # configuration is merged like a strategic merge patch.
                patched = strategic_merge(old, patch)
            else:
                patched = apply_patch(content_type, old, patch)
            if not isinstance(patched, dict):
                raise ApiError(422, "the patched object is not a JSON object", "Invalid")
            pmd = patched.get("metadata")
            if isinstance(pmd, dict):
                # Only a resourceVersion the patch itself names is a precondition.
                prv = _patch_rv(patch)
                if prv is None:
                    pmd.pop("resourceVersion", None)
                if pmd.get("uid") not in (None, old["metadata"]["uid"]):
                    label = f"{res.plural}.{res.group}" if res.group else res.plural
                    raise ApiError(409, f'Operation cannot be fulfilled on {label} "{name}": '
                                   "Precondition failed: UID in precondition does not match",
                                   "Conflict", name=name, kind=res.plural)
            return self._update(res, ns, name, old, patched, subresource)

    def delete(self, ref: ResourceRef, namespace: str | None, name: str, *,
               preconditions: dict[str, Any] | None = None) -> Obj:
        """Delete now, or mark for deletion when finalizers remain (then removed on update)."""
        res = self.resource(ref)
        with self.lock:
            ns = self._scope(res, namespace)
            old = self._objects[res.key].get((ns, name))
            if old is None:
                raise not_found(res.plural, name, res.kind, res.group)
            omd = old["metadata"]
            pre = preconditions or {}
            label = f"{res.plural}.{res.group}" if res.group else res.plural
            if pre.get("uid") not in (None, omd["uid"]):
                raise ApiError(409, f'Operation cannot be fulfilled on {label} "{name}": '
                               f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                               f"object meta: {omd['uid']}", "Conflict", name=name,
                               kind=res.plural)
            if pre.get("resourceVersion") not in (None, omd["resourceVersion"]):
                raise ApiError(409, f'Operation cannot be fulfilled on {label} "{name}": '
                               "Precondition failed: ResourceVersion in precondition: "
                               f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                               f"{omd['resourceVersion']}", "Conflict", name=name,
                               kind=res.plural)
            if omd.get("finalizers"):
                if omd.get("deletionTimestamp"):
                    return copy.deepcopy(old)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = meta.now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                new["metadata"]["resourceVersion"] = self._next_rv()
                self._objects[res.key][(ns, name)] = new
                self._commit(res, "MODIFIED", new, old)
                return copy.deepcopy(new)
            if res is NAMESPACES:
                for other in RESOURCES:
                    if other.namespaced:
                        for (ons, oname) in sorted(self._objects[other.key]):
                            if ons == name and (ons, oname) in self._objects[other.key]:
                                self._remove(other, ons, oname,
                                             self._objects[other.key][(ons, oname)])
            return self._remove(res, ns, name, old)

    def _remove(self, res: Resource, ns: str, name: str, old: Obj) -> Obj:
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        del self._objects[res.key][(ns, name)]
        if res is SERVICES:
            self.services.release(old)
        self._commit(res, "DELETED", gone, old)
        return copy.deepcopy(gone)

    # -- watch ----------------------------------------------------------------------

    def watch(self, ref: ResourceRef, namespace: str | None = None, *,
              resource_version: str | None = None, label_selector: str | None = None,
              field_selector: str | None = None) -> Watcher:
        """Register a watcher; history or current objects are queued before live events."""
        res = self.resource(ref)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, res.field_labels, res.kind)
        start = parse_rv(resource_version)
        w = Watcher(res, namespace if res.namespaced else None, labels, fields)
        with self.lock:
            if start is None or start == 0:
                for (ns, _), obj in sorted(self._objects[res.key].items()):
                    if w.namespace is None or ns == w.namespace:
                        w.offer(Event(self.rv, "ADDED", res.key, obj, None))
            elif start > self.rv:
                # kube-apiserver's watch cache, asked for a version it has not
                # reached (after an etcd restore the versions went backwards),
                # answers with this Status as an ERROR event.
                w.items.put(("error", {
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure",
                    "message": f"Timeout: Too large resource version: {start}, "
                               f"current: {self.rv}",
                    "reason": "Timeout",
                    "details": {"causes": [{"reason": "ResourceVersionTooLarge",
                                            "message": "Too large resource version"}],
                                "retryAfterSeconds": 1},
                    "code": 504}, None))
                w.close("too large resource version")
                return w
            elif start < self._compacted_rv:
                w.items.put(("error", {
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {start} ({self._compacted_rv + 1})",
                    "reason": "Expired", "code": 410}, None))
                w.close("expired")
                return w
            else:
                for ev in self._history:
                    if ev.rv > start:
                        w.offer(ev)
            self._watchers.add(w)
        return w

    def stop_watch(self, w: Watcher) -> None:
        with self.lock:
            self._watchers.discard(w)

    def bookmark_rv(self, w: Watcher) -> int | None:
        """The current resourceVersion if ``w`` has nothing queued (safe to bookmark), else None."""
        with self.lock:
            return self.rv if w.items.empty() else None

    def close_watches(self, abrupt: bool = False) -> int:
        """End every open watch now; returns how many were open."""
        with self.lock:
            ws = list(self._watchers)
            self._watchers.clear()
        for w in ws:
            w.close("closed by lab fault", abrupt)
        return len(ws)

    def watcher_count(self) -> int:
        with self.lock:
            return len(self._watchers)

    def compact(self) -> int:
        """Forget all history: a watch from any older resourceVersion now gets 410."""
        with self.lock:
            self._history.clear()
            self._compacted_rv = self.rv
            return self.rv

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of every object and the resourceVersion: an etcd backup."""
        return copy.deepcopy(dump_state(self))

    def restore(self, data: Mapping[str, Any]) -> int:
        """An etcd restore from :meth:`snapshot`: objects *and resourceVersion* go back.

        Every open watch ends abruptly, as when the API server restarts onto
        the restored etcd; a client resuming from a version newer than the
        restored one then gets "Too large resource version". Returns the
        restored resourceVersion.
        """
        with self.lock:
            load_state(self, data)
            self.rv = int(data.get("rv") or 0)
            self._history.clear()
            self._compacted_rv = self.rv
        self.close_watches(abrupt=True)
        return self.rv

    @property
    def compacted_rv(self) -> int:
        return self._compacted_rv


def _patch_rv(patch: Any) -> str | None:
    if isinstance(patch, dict):
        md = patch.get("metadata")
        if isinstance(md, dict) and md.get("resourceVersion") not in (None, ""):
            return str(md["resourceVersion"])
    return None


# -- persistence across restarts ---------------------------------------------------------
#
# A real API server keeps its objects in etcd, so stopping and starting it loses
# nothing; the lab's "API server down for 30 s" test needs the same. The store is
# written to a JSON file on shutdown and read back on start. The watch history is
# not kept (etcd's would be, for a while): a client that resumes a watch from a
# version older than the restart gets 410 Gone and relists, which is also what a
# real API server does once its watch cache no longer covers that version.


def dump_state(store: Store) -> dict[str, Any]:
    """Every object and the resourceVersion counter, as plain JSON data."""
    with store.lock:
        return {
            "rv": store.rv,
            "objects": {key: list(objs.values()) for key, objs in store._objects.items()},
        }


def load_state(store: Store, data: Mapping[str, Any]) -> None:
    """Replace the store's objects with ``data`` (from :func:`dump_state`).

    Allocated ClusterIPs and NodePorts are reserved again, so a Service
    created after the restart never gets an address already in use.
    """
    with store.lock:
        for key, items in (data.get("objects") or {}).items():
            if key not in store._objects:
                continue
            res = BY_KEY[key]
            table: dict[tuple[str, str], Obj] = {}
            for obj in items:
                meta = obj.get("metadata") or {}
                ns = meta.get("namespace", "") if res.namespaced else ""
                table[(ns, meta["name"])] = obj
            store._objects[key] = table
        for svc in store._objects[SERVICES.key].values():
            ip, ports = store.services.held(svc)
            if ip is not None and not store.services.ips.in_use(ip):
                store.services.ips.reserve(ip)
            for port in ports:
                if not store.services.ports.in_use(port):
                    store.services.ports.reserve(port)
        store.rv = max(store.rv, int(data.get("rv") or 0))
        store._history.clear()
        store._compacted_rv = store.rv
