"""Fixtures shared by unit tests: an in-process lab API server, and the real kubectl against one.

``kubectl_lab`` fails under CI=true when kubectl is missing (install-deps
installs it) and skips elsewhere; ``run_kubectl`` runs one kubectl command
with the fixture's kubeconfig and cache directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from labapi import LabApiServer, write_kubeconfig

KUBECTL = shutil.which("kubectl")
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def lab() -> Iterator[LabApiServer]:
    """A lab API server on 127.0.0.1 (fast bookmarks), stopped after the test."""
    srv = LabApiServer(bookmark_interval=0.3).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def kubectl_lab(tmp_path: Path) -> Iterator[tuple[LabApiServer, list[str]]]:
    """A lab API server and the kubectl command line (binary and flags) that talks to it."""
    if KUBECTL is None:
        if IN_CI:
            pytest.fail("CI=true and kubectl is not on PATH", pytrace=False)
        pytest.skip("kubectl is not installed")
    srv = LabApiServer().start()
    kc = write_kubeconfig(tmp_path / "kubeconfig", srv.url)
    base = [KUBECTL, "--kubeconfig", str(kc), "--cache-dir", str(tmp_path / "cache"),
            "--request-timeout=10s"]
    try:
        yield srv, base
    finally:
        srv.stop()


def run_kubectl(
    base: list[str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``kubectl ARGS`` with ``base``; with ``check``, a non-zero exit fails the test."""
    proc = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, HOME=os.environ.get("HOME", "/tmp")))
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
    return proc
