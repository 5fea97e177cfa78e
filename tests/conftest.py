"""Shared pytest set-up: the lab import path and the no-skip rule for lab tests.

Lab tests (marker ``lab``) need root and the kernel tools. On a developer
machine without them they skip with a reason; in CI (``CI=true``) a missing
prerequisite is a failure, because a skipped kernel test proves nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "netns-lab"))
# The benchmarks' synthetic states (bench/synthetic.py) double as large test fixtures.
sys.path.insert(0, str(REPO))

LAB_TOOLS = ("ip", "iptables-restore", "iptables-save", "conntrack")


def lab_missing() -> str | None:
    """Why lab tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "lab tests need root"
    missing = [t for t in LAB_TOOLS if shutil.which(t) is None]
    if missing:
        return f"lab tests need {', '.join(missing)} on PATH"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = lab_missing()
    if reason is None:
        return
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    for item in items:
        if item.get_closest_marker("lab") is None:
            continue
        if not in_ci:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = lab_missing()
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if reason is not None and item.get_closest_marker("lab") is not None and in_ci:
        pytest.fail(f"CI=true and {reason}: lab tests may not skip in CI", pytrace=False)
