"""daemonset/: schema-valid for every supported Kubernetes version, and consistent with netagent.

Why: `kubectl apply -f daemonset/` is the install path; a manifest that the API
server rejects, or a ConfigMap netagent refuses, is found here and not on a
cluster. The variants are rendered with kubectl's kustomize and checked too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DS = REPO / "daemonset"
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
VARIANTS = ["proxy-only", "overlay-only"]


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]


def base_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(DS.glob("*.yaml")) for d in docs_of(p.read_text())]


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed (scripts/install-deps.sh installs it)"
    out = subprocess.run(
        [kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return docs_of(out.stdout)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_schema_valid(version: str) -> None:
    docs = base_docs()
    assert {d["kind"] for d in docs} == {
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"
    }
    for variant in VARIANTS:
        docs += kustomize(DS / "variants" / variant)
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_rejects_a_broken_daemonset() -> None:
    ds = next(d for d in base_docs() if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    rendered = kustomize(DS)
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, rendered)) == sorted(map(key, base_docs()))


def test_daemonset_fields_the_issue_requires() -> None:
    ds = next(d for d in base_docs() if d["kind"] == "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": 10256}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 10256}
    vols = {v["hostPath"]["path"]: v["hostPath"].get("type") for v in pod["volumes"] if "hostPath" in v}
    assert vols["/run/xtables.lock"] == "FileOrCreate"
    assert "/lib/modules" in vols and "/run/flannel" in vols and "/etc/cni/net.d" in vols
    ro = {m["mountPath"]: m.get("readOnly", False) for m in c["volumeMounts"]}
    assert ro["/lib/modules"] is True
    ns = next(d for d in base_docs() if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_configmap_is_a_config_netagent_accepts(variant: str | None, tmp_path: Path) -> None:
    docs = base_docs() if variant is None else kustomize(DS / "variants" / variant)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    # netagent's own parser, through its CLI, exactly as the container starts it.
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "netagent", "run", "--config", str(path),
         "--node-name", "n1", "--sync-period", "-1"],
        capture_output=True, text=True, timeout=60,
    )
    # The file itself passed: the only error is the deliberately bad flag.
    assert proc.returncode == 2, proc.stderr
    assert "config field syncPeriod" in proc.stderr, proc.stderr
    expected = {None: ("iptables", "vxlan"), "proxy-only": ("iptables", "none"),
                "overlay-only": ("none", "vxlan")}[variant]
    data = yaml.safe_load(cm["data"]["config.yaml"])
    assert (data["mode"], data["overlay"]["backend"]) == expected
