"""netnslab.rbac: request-to-attribute mapping and rule matching, the base of the RBAC lab test.

Why: the lab test is only as good as this mapping; a watch counted as a list,
or a namespaced path parsed wrong, would let a missing permission through.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from netnslab.rbac import Attributes, attributes, audit, rule_allows

ROLE = next(
    d for d in yaml.safe_load_all(
        (Path(__file__).resolve().parents[2] / "daemonset" / "rbac.yaml").read_text())
    if d["kind"] == "ClusterRole"
)


def test_request_mapping() -> None:
    assert attributes("GET", "/api/v1/services", "limit=500") == Attributes("list", "", "services")
    assert attributes("GET", "/api/v1/services", "watch=true&resourceVersion=5") == Attributes(
        "watch", "", "services")
    assert attributes("GET", "/apis/discovery.k8s.io/v1/endpointslices", "", watch=True) == (
        Attributes("watch", "discovery.k8s.io", "endpointslices"))
    assert attributes("GET", "/api/v1/nodes/n1") == Attributes("get", "", "nodes")
    assert attributes("PUT", "/api/v1/nodes/n1") == Attributes("update", "", "nodes")
    assert attributes("PATCH", "/api/v1/nodes/n1/status") == Attributes(
        "patch", "", "nodes", "status")
    assert attributes("POST", "/api/v1/namespaces/default/events") == Attributes(
        "create", "", "events")
    assert attributes("DELETE", "/api/v1/namespaces/x/pods") == Attributes(
        "deletecollection", "", "pods")
    assert attributes("GET", "/version").path == "/version"


def test_the_role_allows_what_the_agent_needs_and_nothing_near_it() -> None:
    rules = ROLE["rules"]
    assert rule_allows(rules[2], Attributes("patch", "", "nodes"))
    for denied in (
        Attributes("patch", "", "nodes", "status"),  # a subresource is a resource of its own
        Attributes("delete", "", "nodes"),
        Attributes("list", "", "endpoints"),
        Attributes("list", "", "pods"),
        Attributes("create", "", "events"),
        Attributes("get", "", "", path="/version"),
    ):
        assert not any(rule_allows(r, denied) for r in rules), denied


def test_audit_reports_both_directions() -> None:
    rules = ROLE["rules"]
    result = audit(rules, [
        {"method": "GET", "path": "/api/v1/services", "query": "", "watch": False},
        {"method": "GET", "path": "/api/v1/namespaces/a/endpoints", "query": "", "watch": False},
    ])
    assert [str(a) for a, _ in result.denied] == ["list core/endpoints"]
    assert Attributes("watch", "", "services") in result.unused
    assert Attributes("list", "", "services") not in result.unused
