"""The command line: bad flags and config stop the agent with exit 2 and a message naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from netagent.cli import main


def test_invalid_cluster_cidr_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = main(["run", "--manifests", str(tmp_path), "--node-name", "n1", "--cluster-cidr", "10.0.0.0/33", "--once"])
    assert rc == 2
    assert "config field clusterCIDR" in caplog.text


def test_missing_node_name_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert main(["run", "--manifests", str(tmp_path), "--once"]) == 2
    assert "config field nodeName: required" in caplog.text


def test_missing_manifests_dir_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = main(["run", "--manifests", str(tmp_path / "nope"), "--node-name", "n1", "--once"])
    assert rc == 2
    assert "manifestsDir" in caplog.text and "not a directory" in caplog.text


def test_config_file_error_names_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("syncPeriod: -5s\n")
    rc = main(["run", "--config", str(cfg), "--manifests", str(tmp_path), "--node-name", "n1"])
    assert rc == 2
    assert "config field syncPeriod" in caplog.text


def test_debug_trace_on_a_rules_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.write_text(
        "*nat\n:PREROUTING ACCEPT [0:0]\n"
        "-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.0.11:8080\n"
        "COMMIT\n"
    )
    rc = main(
        ["debug", "trace", "--src", "10.244.0.20", "--dst", "10.96.0.10", "--port", "80",
         "--rules", str(rules), "--local-ip", "192.0.2.2"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "ACCEPT -> 10.244.0.11:8080" in out
    assert "possible endpoints: 10.244.0.11:8080" in out


def test_debug_trace_reports_unparseable_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    rules.write_text("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m owner --uid-owner 0 -j ACCEPT\nCOMMIT\n")
    rc = main(["debug", "trace", "--src", "10.0.0.1", "--dst", "10.0.0.2", "--port", "1",
               "--rules", str(rules), "--local-ip", "10.0.0.3"])
    assert rc == 1
    assert "unknown match module 'owner'" in capsys.readouterr().out
