"""docs/configuration.md: the generated tables are current, and its example copy matches the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netagent import config_docs
from netagent.config import AgentConfig, config_to_dict
from netagent.config_fields import FIELDS
from netagent.config_kubeproxy import FIELDS as KUBE_PROXY_FIELDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"


def test_the_generated_tables_are_up_to_date() -> None:
    text = DOCS.read_text()
    assert config_docs.update(text) == text, (
        "docs/configuration.md is out of date: run .venv/bin/python -m netagent.config_docs"
    )
    assert config_docs.main(["--check", "--file", str(DOCS)]) == 0


def test_every_field_and_kube_proxy_field_has_a_row() -> None:
    text = DOCS.read_text()
    for spec in FIELDS:
        assert f"| `{spec.path}`" in text, spec.path
        for flag in spec.flags:
            assert flag[2:] in text, flag
    for kp in KUBE_PROXY_FIELDS:
        assert f"| `{kp.path}` |" in text, kp.path


def test_a_stale_table_is_detected(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(DOCS.read_text().replace("| `overlay.subnetLen` |", "| `overlaySubnetLen` |"))
    assert config_docs.main(["--check", "--file", str(stale)]) == 1
    assert config_docs.main(["--file", str(stale)]) == 0  # rewrites it
    assert stale.read_text() == DOCS.read_text()


def test_missing_markers_are_an_error() -> None:
    with pytest.raises(ValueError, match="BEGIN GENERATED fields"):
        config_docs.update("# no markers\n")


def test_the_inline_copy_of_api_vxlan_matches_the_file() -> None:
    example = (ROOT / "docs" / "examples" / "api-vxlan.yaml").read_text()
    body = "\n".join(
        line for line in example.splitlines() if line.strip() and not line.startswith("#")
    )
    text = DOCS.read_text()
    copy = text.split("`examples/api-vxlan.yaml`:\n\n```yaml\n", 1)[1].split("```", 1)[0]
    assert "\n".join(line for line in copy.splitlines() if line.strip()) == body


def test_the_documented_skeleton_is_the_shape_and_defaults_of_config_to_dict() -> None:
    text = DOCS.read_text()
    block = text.split("## The config file", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == config_to_dict(AgentConfig())
