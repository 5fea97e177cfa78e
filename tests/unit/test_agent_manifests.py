"""ManifestSource.load: a bad edit keeps the last valid version; a deleted object goes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from netagent.runtime.manifest_source import ManifestSource

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: {port}, protocol: TCP}}]
"""
SLICE = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: ["{ip}"]}}]
"""


def agent(tmp_path: Path) -> ManifestSource:
    return ManifestSource(tmp_path)


def test_invalid_edit_keeps_the_last_valid_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = agent(tmp_path)
    (tmp_path / "svc.yaml").write_text(SERVICE.format(port=80))
    (tmp_path / "eps.yaml").write_text(SLICE.format(ip="10.244.0.11"))
    first = a.load()
    assert [p.port for p in first.services] == [80]

    (tmp_path / "svc.yaml").write_text(SERVICE.format(port=70000))
    (tmp_path / "eps.yaml").write_text(SLICE.format(ip="10.244.0.300"))
    with caplog.at_level(logging.WARNING):
        second = a.load()
    assert [p.port for p in second.services] == [80]
    assert [str(e.addresses[0]) for s in second.slices for e in s.endpoints] == ["10.244.0.11"]
    assert "Service default/web" in caplog.text and "70000" in caplog.text
    assert "keeping the last valid version of 1 service ports, 1 EndpointSlices" in caplog.text

    # Still invalid on the next load: still kept (the periodic resync must not drop it).
    assert [p.port for p in a.load().services] == [80]

    (tmp_path / "svc.yaml").write_text(SERVICE.format(port=8080))
    assert [p.port for p in a.load().services] == [8080]


def test_deleted_object_is_not_kept(tmp_path: Path) -> None:
    a = agent(tmp_path)
    (tmp_path / "svc.yaml").write_text(SERVICE.format(port=80))
    assert len(a.load().services) == 1
    (tmp_path / "svc.yaml").unlink()
    assert a.load().services == ()


def test_never_valid_object_is_just_skipped(tmp_path: Path) -> None:
    a = agent(tmp_path)
    (tmp_path / "svc.yaml").write_text(SERVICE.format(port=0))
    snap = a.load()
    assert snap.services == ()
    assert any("spec.ports[0].port" in str(e) for e in snap.errors)
