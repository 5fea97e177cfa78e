"""``--agent URL``: fetch a report from a running agent's ``/debug/…`` page instead of computing it.

Why: the running agent answers from what it last synced, which is what an
operator needs when a fresh look and the agent disagree. The page serves
the same JSON the local builders return, so the CLI formats either the
same way. Failures (agent not listening, refusing, or answering an error)
become a one-line :class:`DebugError`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from netagent.debug.context import DebugError

TIMEOUT = 30.0


def report_url(agent: str, report: str, params: Mapping[str, str]) -> str:
    """``<agent>/debug/<report>?<params>&format=json``."""
    base = agent.rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    query = urllib.parse.urlencode({**{k: v for k, v in params.items() if v}, "format": "json"})
    return f"{base}/debug/{report}?{query}"


def fetch_report(agent: str, report: str, params: Mapping[str, str]) -> dict[str, Any]:
    """The report as the agent at ``agent`` serves it."""
    url = report_url(agent, report, params)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").strip().splitlines()
        reason = text[0] if text else exc.reason
        raise DebugError(f"agent {agent} answered {exc.code}: {reason}", status=exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        raise DebugError(f"cannot reach the agent at {agent}: {why}", status=503) from None
    try:
        parsed = json.loads(body)
    except ValueError:
        raise DebugError(f"agent {agent} did not answer JSON for {url}", status=502) from None
    if not isinstance(parsed, dict):
        raise DebugError(f"agent {agent} answered something other than a report", status=502)
    return parsed
