"""Fixtures shared by unit tests: an in-process lab API server on an ephemeral loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from labapi import LabApiServer


@pytest.fixture
def lab() -> Iterator[LabApiServer]:
    """A lab API server on 127.0.0.1 (fast bookmarks), stopped after the test."""
    srv = LabApiServer(bookmark_interval=0.3).start()
    try:
        yield srv
    finally:
        srv.stop()
