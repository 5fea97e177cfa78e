"""The lab's patience factor: unset is 1, a valid factor stretches waits, nonsense is refused."""

from __future__ import annotations

import pytest
from netnslab.patience import PATIENCE_ENV, patience, patience_factor


def test_unset_means_no_stretch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PATIENCE_ENV, raising=False)
    assert patience_factor() == 1.0
    assert patience(15.0) == 15.0


def test_factor_stretches_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PATIENCE_ENV, "4")
    assert patience(15.0) == 60.0


@pytest.mark.parametrize("raw", ["fast", "0.5", "50", "-1"])
def test_nonsense_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(PATIENCE_ENV, raw)
    with pytest.raises(ValueError, match=PATIENCE_ENV):
        patience_factor()
