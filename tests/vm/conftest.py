"""Tests that run inside the qemu VM (``scripts/ipvs-vm.sh``) on Debian 12's stock kernel.

Why a directory of their own, kept out of the host run: they need kernel
features this machine's kernel lacks (IPVS, as modules). The host run
(``scripts/test.sh``: pytest with ``testpaths = ["tests"]``) would collect
them, so this conftest ignores their files unless the VM runs them
(``NETAGENT_IN_VM=1``, set by ``scripts/ipvs-vm.sh``) or the command line
names this directory or a file in it. They never skip: named explicitly on a
kernel without IPVS, they fail.

At the end of the session, any namespace carrying a suffix this session
created fails the run (the VM throws its namespaces away anyway, but a test
that leaks one would leak it on a host too).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnslab import parse_namespace
from netnslab.names import used_suffixes
from netnslab.netns import list_namespaces

HERE = Path(__file__).resolve().parent

#: Set in the guest by scripts/ipvs-vm.sh.
IN_VM_ENV = "NETAGENT_IN_VM"


def in_vm() -> bool:
    """True inside the VM that scripts/ipvs-vm.sh boots."""
    return os.environ.get(IN_VM_ENV) == "1"


def _named_on_command_line(config: pytest.Config) -> bool:
    base = config.invocation_params.dir
    for arg in config.args:
        target = (base / arg.split("::", 1)[0]).resolve()
        if target == HERE or HERE in target.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave tests/vm out of a host run that did not ask for it."""
    if in_vm() or _named_on_command_line(config):
        return None
    return True


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_namespaces() -> Iterator[None]:
    """Fail the session if it leaves a namespace of its own behind."""
    yield
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return
    used = used_suffixes()
    leaked = [
        ns
        for ns in list_namespaces()
        if (parsed := parse_namespace(ns)) is not None and parsed[1] in used
    ]
    assert not leaked, f"namespaces left behind by this run: {', '.join(leaked)}"
