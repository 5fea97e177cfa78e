"""What every benchmark report carries: the machine it ran on, and the JSON output.

Why shared: the figures in docs/ are only comparable with the machine and
tool versions next to them, and each benchmark used to assemble that
block (and write its JSON) by itself.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "(not installed)"
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    """Kernel, CPUs, Python and the versions of the kernel tools the numbers depend on."""
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "nft": _version(["nft", "--version"]),
        "iptables": _version(["iptables", "-V"]),
    }


def emit(report: dict[str, Any], path: Path | None) -> None:
    """Print ``report`` as indented JSON, and write it to ``path`` too when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
