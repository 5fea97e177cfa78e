"""Fixtures for the real-kernel lab tests: a fresh single-node lab per test, and a leak check.

The lab is function-scoped: building it takes about a third of a second, and
a fresh node namespace means no iptables rule, conntrack entry or ``recent``
list of one test can change the outcome of another. Its workdir (agent and
echo-server logs, manifests) lives in the test's ``tmp_path`` and is kept,
so a failing test leaves its logs behind.

``proxy_lab`` is the same lab once per proxy mode (``iptables``, ``nftables``):
a semantic test written against it states what a Service must do, and every
mode has to do it. It never skips: a mode the agent does not accept yet fails.

At session start, namespaces left by killed runs of this user are removed
(:func:`netnslab.cleanup_stale`); at session end, any namespace carrying a
suffix this session created fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnslab import PROXY_MODES, SingleNodeLab, cleanup_stale, parse_namespace
from netnslab.names import used_suffixes
from netnslab.netns import list_namespaces


def _can_use_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def lab_namespaces_of_this_session() -> list[str]:
    """Namespaces that carry a suffix this process created."""
    used = used_suffixes()
    return [
        ns
        for ns in list_namespaces()
        if (parsed := parse_namespace(ns)) is not None and parsed[1] in used
    ]


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_namespaces() -> Iterator[None]:
    """Remove stale runs first; fail the session if this run leaves a namespace behind."""
    if not _can_use_netns():
        yield
        return
    cleanup_stale()
    yield
    leaked = lab_namespaces_of_this_session()
    assert not leaked, f"lab namespaces left behind by this run: {', '.join(leaked)}"


def _running_lab(tmp_path: Path, proxy_mode: str) -> Iterator[SingleNodeLab]:
    """A started lab whose agents run in ``proxy_mode``; torn down whatever happens."""
    lab = SingleNodeLab(workdir=tmp_path / "lab", keep_workdir=True, proxy_mode=proxy_mode)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture
def single_node_lab(tmp_path: Path) -> Iterator[SingleNodeLab]:
    """A running single-node lab (iptables mode), torn down after the test whatever happens."""
    yield from _running_lab(tmp_path, "iptables")


#: The proxy modes this run's kernel serves: the host run takes iptables and nftables
#: (this kernel has no IPVS); scripts/test.sh runs the IPVS cases in a VM with ``ipvs``.
LAB_PROXY_MODES = tuple(
    m for m in os.environ.get("NETAGENT_LAB_PROXY_MODES", "iptables,nftables").split(",") if m
)
assert set(LAB_PROXY_MODES) <= set(PROXY_MODES), f"unknown proxy mode in {LAB_PROXY_MODES}"


@pytest.fixture(params=LAB_PROXY_MODES, ids=LAB_PROXY_MODES)
def proxy_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SingleNodeLab]:
    """A running single-node lab whose agents use one proxy mode; one test per mode."""
    yield from _running_lab(tmp_path, request.param)


#: The modes of this run that write iptables rules, and so take the xtables lock.
XTABLES_MODES = tuple(m for m in LAB_PROXY_MODES if m != "nftables")


@pytest.fixture(params=XTABLES_MODES, ids=XTABLES_MODES)
def xtables_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SingleNodeLab]:
    """A running single-node lab in a mode that writes iptables rules (iptables, IPVS)."""
    yield from _running_lab(tmp_path, request.param)


@pytest.fixture(params=LAB_PROXY_MODES, ids=LAB_PROXY_MODES)
def lab_proxy_mode(request: pytest.FixtureRequest) -> str:
    """One of this run's proxy modes, for tests that build their own lab or proxier."""
    return str(request.param)


@pytest.fixture
def nftables_lab(tmp_path: Path) -> Iterator[SingleNodeLab]:
    """A running single-node lab whose agents run in nftables mode (mode-specific tests)."""
    yield from _running_lab(tmp_path, "nftables")
