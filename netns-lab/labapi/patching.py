"""The three PATCH flavours: JSON merge patch, JSON patch and strategic merge patch.

Why it exists: kubectl (label, annotate, patch) and client libraries change
objects with PATCH, and each flavour has its own rules for lists and ``null``.
Strategic merge is implemented for what kubectl actually sends: maps merge
recursively, ``null`` deletes a key, lists of objects with a known merge key
(``ports`` by ``port``/``containerPort``, ``conditions`` by ``type``, ...)
merge item by item, other lists are replaced. ``$retainKeys`` and
``$setElementOrder`` directives are accepted and ignored.
"""

from __future__ import annotations

import copy
from typing import Any

from labapi.errors import ApiError

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Field name -> candidate merge keys, tried in order against the list's items.
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "addresses": ("type",),
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "env": ("name",),
    "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",),
    "taints": ("key",),
    "hostAliases": ("ip",),
}
# Lists of scalars that strategic merge treats as sets (union).
_SET_LISTS = frozenset({"finalizers"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}", "Invalid")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit():
        raise ApiError(422, f"invalid array index {token!r}", "Invalid")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise ApiError(422, f"array index {i} out of range", "Invalid")
    return i


def _parent(doc: Any, tokens: list[str]) -> Any:
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, dict):
            if tok not in cur:
                raise ApiError(422, f"path element {tok!r} not found", "Invalid")
            cur = cur[tok]
        elif isinstance(cur, list):
            cur = cur[_index(cur, tok, False)]
        else:
            raise ApiError(422, f"cannot descend into {tok!r}", "Invalid")
    return cur


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise ApiError(422, f"path element {last!r} not found", "Invalid")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, False)]
    raise ApiError(422, f"cannot read {last!r}", "Invalid")


def _remove(doc: Any, tokens: list[str]) -> Any:
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise ApiError(422, f"unable to remove nonexistent key: {last}", "Invalid")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, False))
    raise ApiError(422, f"cannot remove {last!r}", "Invalid")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, True), value)
    else:
        raise ApiError(422, f"cannot add at {last!r}", "Invalid")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 add/remove/replace/move/copy/test; a failed op or test → 422."""
    if not isinstance(ops, list):
        raise ApiError(400, "json patch must be a list of operations", "BadRequest")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, f"invalid json patch operation: {op!r}", "BadRequest")
        kind = op["op"]
        tokens = _pointer(str(op["path"]))
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            if not tokens:
                raise ApiError(422, "cannot remove the whole document", "Invalid")
            _remove(doc, tokens)
        elif kind == "replace":
            if tokens:
                _get(doc, tokens)  # must exist
                _remove(doc, tokens)
            doc = _add(doc, tokens, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            src = _pointer(str(op.get("from", "")))
            value = copy.deepcopy(_get(doc, src))
            if kind == "move":
                _remove(doc, src)
            doc = _add(doc, tokens, value)
        elif kind == "test":
            if _get(doc, tokens) != op.get("value"):
                raise ApiError(422, f"testing value {op['path']} failed", "Invalid")
        else:
            raise ApiError(400, f"unknown json patch operation {kind!r}", "BadRequest")
    return doc


def _merge_key(field: str, items: list[Any]) -> str | None:
    candidates = _MERGE_KEYS.get(field)
    if not candidates or not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in candidates:
        if all(key in i for i in items):
            return key
    return None


def _strategic_list(field: str, target: Any, patch: list[Any]) -> list[Any]:
    if field in _SET_LISTS and isinstance(target, list):
        out = list(copy.deepcopy(target))
        for item in patch:
            if item not in out:
                out.append(copy.deepcopy(item))
        return out
    if not isinstance(target, list):
        return [_strip(copy.deepcopy(i)) for i in patch if not _is_delete(i)]
    key = _merge_key(field, [i for i in patch if not _is_delete(i) or isinstance(i, dict)]
                     + target)
    if key is None:
        return [_strip(copy.deepcopy(i)) for i in patch if not _is_delete(i)]
    out = [copy.deepcopy(i) for i in target]
    for item in patch:
        if not isinstance(item, dict):
            continue
        if item.get("$patch") == "replace":
            return [_strip(copy.deepcopy(i)) for i in patch if isinstance(i, dict)
                    and i.get("$patch") != "replace"]
        pos = next((n for n, cur in enumerate(out) if cur.get(key) == item.get(key)), None)
        if _is_delete(item):
            if pos is not None:
                out.pop(pos)
        elif pos is None:
            out.append(_strip(copy.deepcopy(item)))
        else:
            out[pos] = strategic_merge(out[pos], item)
    return out


def _is_delete(item: Any) -> bool:
    return isinstance(item, dict) and item.get("$patch") == "delete"


def _strip(value: Any) -> Any:
    """Drop patch directives from a value that is inserted as a whole."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def strategic_merge(target: Any, patch: Any) -> Any:
    """Kubernetes strategic merge patch, reduced to the cases described in the module doc."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip(patch)
    if patch.get("$patch") == "delete":
        return None
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list) and isinstance(value, list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _strategic_list(key, result.get(key), value)
        else:
            result[key] = value
    return result


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> Any:
    """Apply a PATCH body of the given media type to ``target``."""
    ct = content_type.split(";")[0].strip().lower()
    if ct == MERGE_PATCH:
        return merge_patch(target, patch)
    if ct == JSON_PATCH:
        return json_patch(target, patch)
    if ct == STRATEGIC_PATCH:
        return strategic_merge(target, patch)
    raise ApiError(415, f"the server does not support patch type {content_type!r}",
                   "UnsupportedMediaType")
