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
from pathlib import Path

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
