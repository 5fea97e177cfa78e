"""The vxlanTxChecksum setting: ``auto`` turns checksum offload off only on kernels with the bug."""

from __future__ import annotations

import pytest

from netagent.overlay.checksum import kernel_version, tx_checksum_wanted


@pytest.mark.parametrize(
    ("release", "version"),
    [
        ("6.18.44-fc-v857", (6, 18)),
        ("5.4.0-150-generic", (5, 4)),
        ("5.7.0", (5, 7)),
        ("4.19.0-27-amd64", (4, 19)),
        ("3.10.0-1160.el7.x86_64", (3, 10)),
        ("weird", None),
    ],
)
def test_kernel_version(release: str, version: tuple[int, int] | None) -> None:
    assert kernel_version(release) == version


@pytest.mark.parametrize(
    ("setting", "release", "keep_offload"),
    [
        ("auto", "6.18.44", True),
        ("auto", "5.7.0", True),  # the first fixed release
        ("auto", "5.6.19", False),
        ("auto", "5.4.0-150-generic", False),
        ("auto", "3.10.0-1160.el7.x86_64", False),
        ("auto", "unknown", False),  # unknown is treated as affected: the workaround is safe
        ("on", "4.19.0", True),
        ("off", "6.18.44", False),
    ],
)
def test_tx_checksum_wanted(setting: str, release: str, keep_offload: bool) -> None:
    assert tx_checksum_wanted(setting, release) is keep_offload


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="vxlanTxChecksum must be one of auto, on, off"):
        tx_checksum_wanted("maybe", "6.1")
