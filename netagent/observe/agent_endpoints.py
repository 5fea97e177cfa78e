"""The metrics port's other pages: /proxyMode, /configz and the loopback-only /debug/ reports.

Why on the metrics port: kube-proxy serves ``/proxyMode`` and ``/configz``
there, and operators' scripts already ask for them. The ``/debug/…`` pages
answer the same reports as ``netagent debug`` (``--agent URL``), but from
the running agent's own memory: what it last synced, not a fresh list from
the API, which is what an operator wants when the two disagree.

The debug pages show the node's whole Service and overlay state, so they
answer only clients on loopback (127.0.0.0/8, ::1), whatever address the
metrics server is bound to; anyone else gets 403. ``/configz`` holds no
secret (the kubeconfig path, not its contents), as in kube-proxy.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Mapping

from netagent.config import AgentConfig, config_to_dict

log = logging.getLogger(__name__)

#: Answers a /debug/… path: (path, query) -> (status, content type, body).
DebugHandler = Callable[[str, Mapping[str, str]], tuple[int, str, bytes]]


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything unparsable."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class AgentEndpoints:
    """The route the metrics server calls for every path except /metrics."""

    def __init__(self, config: AgentConfig, debug: DebugHandler | None = None) -> None:
        self.config = config
        self.debug = debug

    def __call__(
        self, path: str, query: Mapping[str, str], client: str
    ) -> tuple[int, str, bytes] | None:
        if path == "/proxyMode":
            return 200, "text/plain; charset=utf-8", self.config.proxy_mode.encode()
        if path == "/configz":
            body = json.dumps({"netagent": config_to_dict(self.config)}, indent=2, sort_keys=True)
            return 200, "application/json", body.encode()
        if path == "/debug" or path.startswith("/debug/"):
            if not is_loopback(client):
                log.info("refused %s from %s: debug pages answer loopback only", path, client)
                return 403, "text/plain", b"the debug endpoint answers loopback clients only\n"
            if self.debug is None:
                return 503, "text/plain", b"the debug endpoint is not ready yet\n"
            return self.debug(path, query)
        return None
