"""subnet.env and the CNI conflist: exact content, atomic writes, no rewrite when unchanged, cleanup.

Covers the flannel-format subnet.env, the conflist's plugins and IPAM, the
change detection (an unchanged file keeps its inode and mtime), replacing a
file through a rename (so no reader sees it half written), no leftover
temporary files, directory creation, and remove_files.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from netagent.overlay import cni_files
from netagent.overlay.cni_files import (
    cni_conflist,
    remove_files,
    subnet_env_text,
    write_cni_conflist,
    write_subnet_env,
)

NET = ipaddress.IPv4Network("10.244.0.0/16")
SUB = ipaddress.IPv4Network("10.244.1.0/24")


def test_subnet_env_text_matches_flannel() -> None:
    assert subnet_env_text(NET, SUB, 1450, True) == (
        "FLANNEL_NETWORK=10.244.0.0/16\n"
        "FLANNEL_SUBNET=10.244.1.1/24\n"
        "FLANNEL_MTU=1450\n"
        "FLANNEL_IPMASQ=true\n"
    )
    assert subnet_env_text(NET, SUB, 1500, False).endswith("FLANNEL_IPMASQ=false\n")


def test_conflist_content() -> None:
    conf = cni_conflist(ipaddress.IPv4Network("10.244.7.0/24"), 1450)
    assert conf["cniVersion"] == "1.0.0"
    assert conf["name"] == "cbr0"
    bridge, portmap = conf["plugins"]
    assert bridge == {
        "type": "bridge",
        "bridge": "cbr0",
        "isGateway": True,
        "hairpinMode": True,
        "ipMasq": False,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.7.0/24", "gateway": "10.244.7.1"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    named = cni_conflist(SUB, 1500, name="netagent", bridge="br9")
    assert (named["name"], named["plugins"][0]["bridge"]) == ("netagent", "br9")


def test_write_cni_conflist_creates_dir_and_skips_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "etc/cni/net.d/10-netagent.conflist"
    assert write_cni_conflist(path, SUB, 1450) is True
    assert json.loads(path.read_text()) == cni_conflist(SUB, 1450)
    assert path.read_text().endswith("}\n")
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    before = path.stat()
    assert write_cni_conflist(path, SUB, 1450) is False
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert write_cni_conflist(path, SUB, 1400) is True
    assert json.loads(path.read_text())["plugins"][0]["mtu"] == 1400
    assert path.stat().st_ino != before.st_ino  # replaced by rename, not rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["10-netagent.conflist"]


def test_write_subnet_env_reports_changes(tmp_path: Path) -> None:
    path = tmp_path / "run/flannel/subnet.env"
    assert write_subnet_env(path, NET, SUB, 1450, True) is True
    assert path.read_text() == subnet_env_text(NET, SUB, 1450, True)
    assert write_subnet_env(path, NET, SUB, 1450, True) is False
    assert write_subnet_env(path, NET, SUB, 1450, False) is True
    assert "FLANNEL_IPMASQ=false" in path.read_text()


def test_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, NET, SUB, 1450, True)
    old = path.read_text()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cni_files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_subnet_env(path, NET, SUB, 9000, True)
    assert path.read_text() == old
    assert os.listdir(tmp_path) == ["subnet.env"]


def test_remove_files(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("x")
    missing = tmp_path / "missing"
    assert remove_files([a, missing]) == [a]
    assert not a.exists()
    assert remove_files([a]) == []


# ---- safe writes: modes, temp files, planted symlinks ------------------------------------------


@pytest.mark.parametrize("writer", ["subnet_env", "conflist"])
def test_written_files_are_0644_and_the_temp_file_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    temps: list[str] = []
    real_mkstemp = cni_files.tempfile.mkstemp

    def recording_mkstemp(**kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(**kwargs)
        temps.append(name)
        return fd, name

    monkeypatch.setattr(cni_files.tempfile, "mkstemp", recording_mkstemp)
    old_umask = os.umask(0o000)  # the most permissive umask: the mode must not depend on it
    try:
        path = tmp_path / "d" / "target"
        if writer == "subnet_env":
            write_subnet_env(path, NET, SUB, 1450, True)
        else:
            write_cni_conflist(path, SUB, 1450)
    finally:
        os.umask(old_umask)
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert len(temps) == 1
    temp = Path(temps[0])
    assert temp.parent == path.parent  # same directory, so the rename is atomic
    assert temp.name.startswith(".target.") and temp.name.endswith(".tmp")
    assert not temp.exists()
    assert os.listdir(path.parent) == ["target"]


def test_a_symlink_planted_at_the_path_is_replaced_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    path = tmp_path / "subnet.env"
    path.symlink_to(victim)
    assert write_subnet_env(path, NET, SUB, 1450, True) is True
    assert not path.is_symlink()
    assert stat.S_ISREG(path.lstat().st_mode)
    assert path.read_text() == subnet_env_text(NET, SUB, 1450, True)
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_symlink_to_a_file_with_the_right_content_is_still_replaced(tmp_path: Path) -> None:
    """Reading through the link would find "already written" and leave the link in place."""
    text = subnet_env_text(NET, SUB, 1450, True)
    decoy = tmp_path / "decoy"
    decoy.write_text(text)
    path = tmp_path / "subnet.env"
    path.symlink_to(decoy)
    assert write_subnet_env(path, NET, SUB, 1450, True) is True
    assert not path.is_symlink()
    assert path.read_text() == text
    assert write_subnet_env(path, NET, SUB, 1450, True) is False  # now it is ours


def test_a_dangling_symlink_or_a_directory_link_is_not_written_through(tmp_path: Path) -> None:
    path = tmp_path / "10-netagent.conflist"
    elsewhere = tmp_path / "elsewhere" / "created-by-link"
    path.symlink_to(elsewhere)  # dangling: following it would create this file
    assert write_cni_conflist(path, SUB, 1450) is True
    assert not path.is_symlink()
    assert not elsewhere.exists()
    assert not elsewhere.parent.exists()


def test_a_wrong_mode_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    write_subnet_env(path, NET, SUB, 1450, True)
    path.chmod(0o666)
    assert write_subnet_env(path, NET, SUB, 1450, True) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_symlink_planted_at_the_temp_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mkstemp creates with O_EXCL, which fails on any existing name, symlinks included.

    The temp name is random; to plant a link at it, the test makes the name
    predictable by feeding tempfile its candidate names (a private helper).
    """
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = tmp_path / ".subnet.env.guessed.tmp"
    planted.symlink_to(victim)
    dangling = tmp_path / ".subnet.env.dangling.tmp"
    dangling.symlink_to(tmp_path / "would-be-created")
    names = iter(["guessed", "dangling", "fresh"])
    monkeypatch.setattr(cni_files.tempfile, "_get_candidate_names", lambda: names)
    path = tmp_path / "subnet.env"
    assert write_subnet_env(path, NET, SUB, 1450, True) is True
    assert path.read_text() == subnet_env_text(NET, SUB, 1450, True)
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "would-be-created").exists()
    # The planted links are someone else's; they stay as they were.
    assert planted.is_symlink() and dangling.is_symlink()
    assert not (tmp_path / ".subnet.env.fresh.tmp").exists()
