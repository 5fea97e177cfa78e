"""Discovery documents: /version, /api, /api/v1, /apis and /apis/<group>/<version>.

Why it exists: kubectl and client libraries resolve ``svc`` to ``services``,
learn which resources are namespaced and which verbs they allow from these
documents before sending any real request. They are generated from the same
resource table the router uses, so they cannot drift apart. Aggregated
discovery (apidiscovery.k8s.io/v2) is deliberately not offered: answering
with plain ``application/json`` makes kubectl fall back to these documents.
"""

from __future__ import annotations

from typing import Any

from labapi.resources import RESOURCES, VERBS, Resource

GIT_VERSION = "v1.32.0-netnslab"


def version() -> dict[str, Any]:
    return {
        "major": "1",
        "minor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                        "serverAddress": server_address}],
    }


def groups() -> list[str]:
    return sorted({r.group for r in RESOURCES if r.group})


def api_group_list() -> dict[str, Any]:
    out = []
    for g in groups():
        versions = sorted({r.version for r in RESOURCES if r.group == g})
        gv = [{"groupVersion": f"{g}/{v}", "version": v} for v in versions]
        out.append({"name": g, "versions": gv, "preferredVersion": gv[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}


def api_group(group: str) -> dict[str, Any] | None:
    for g in api_group_list()["groups"]:
        if g["name"] == group:
            return {"kind": "APIGroup", "apiVersion": "v1", **g}
    return None


def _entry(r: Resource) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": list(VERBS),
    }
    if r.short_names:
        entry["shortNames"] = list(r.short_names)
    return entry


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    chosen = [r for r in RESOURCES if r.group == group and r.version == version]
    if not chosen:
        return None
    gv = f"{group}/{version}" if group else version
    items: list[dict[str, Any]] = []
    for r in chosen:
        items.append(_entry(r))
        if r.has_status:
            items.append({"name": f"{r.plural}/status", "singularName": "",
                          "namespaced": r.namespaced, "kind": r.kind,
                          "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": items}


def _gv_path(r: Resource) -> str:
    return f"apis/{r.group}/{r.version}" if r.group else f"api/{r.version}"


def openapi_v3_root() -> dict[str, Any]:
    """The /openapi/v3 index: one entry per group version.

    kubectl (``--validate=strict``, its default) reads it to learn whether the
    server validates fields itself; answering "yes" keeps kubectl from needing
    full OpenAPI schemas, which the lab does not have.
    """
    paths = sorted({_gv_path(r) for r in RESOURCES})
    return {"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash=labapi"}
                      for p in paths}}


def openapi_v3_group_version(gv_path: str) -> dict[str, Any] | None:
    """A skeletal OpenAPI v3 document: operations with their GVK and query parameters.

    It holds no schemas, only enough for clients to see which kinds live where
    and that ``fieldValidation`` is accepted (the lab accepts and ignores it).
    """
    chosen = [r for r in RESOURCES if _gv_path(r) == gv_path]
    if not chosen:
        return None
    params = [{"name": n, "in": "query", "schema": {"type": "string"}}
              for n in ("dryRun", "fieldManager", "fieldValidation", "pretty")]
    paths: dict[str, Any] = {}
    for r in chosen:
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        base = f"/{gv_path}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else (
            f"/{gv_path}/{r.plural}")

        def op(action: str, gvk: dict[str, str] = gvk) -> dict[str, Any]:
            return {"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                    "parameters": params, "responses": {"200": {"description": "OK"}}}

        paths[base] = {"get": op("list"), "post": op("post")}
        paths[f"{base}/{{name}}"] = {"get": op("get"), "put": op("put"),
                                     "patch": op("patch"), "delete": op("delete")}
        if r.has_status:
            paths[f"{base}/{{name}}/status"] = {"get": op("get"), "put": op("put"),
                                                "patch": op("patch")}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": GIT_VERSION},
            "paths": paths}
