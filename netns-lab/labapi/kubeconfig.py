"""Write a kubeconfig pointing at a lab API server.

Why it exists: the agent, the kubernetes Python client and kubectl all find
the API server through a kubeconfig. The lab server speaks plain HTTP with no
authentication, so the file names only the server URL; cluster, context and
user are all called ``netns-lab``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

NAME = "netns-lab"


def kubeconfig_dict(url: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": NAME, "cluster": {"server": url}}],
        "users": [{"name": NAME, "user": {}}],
        "contexts": [{"name": NAME, "context": {"cluster": NAME, "user": NAME,
                                                "namespace": namespace}}],
        "current-context": NAME,
    }


def write_kubeconfig(path: str | os.PathLike[str], url: str) -> Path:
    """Write the kubeconfig for ``url`` to ``path`` (mode 0600) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(yaml.safe_dump(kubeconfig_dict(url), sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(out)
    return out
