"""Kernel settings the overlay relies on, in the node's network namespace.

* ``net.ipv4.ip_forward = 1``: a node forwards between cbr0, the VXLAN
  device and the underlay; without it nothing crosses nodes.
* ``net.bridge.bridge-nf-call-iptables = 1`` is already set by the proxy
  (:mod:`netagent.proxy.sysctl`); the overlay does not need more.
* rp_filter is left as it is, deliberately. Decapsulated packets arrive on
  ``flannel.1`` from a peer's pod subnet, and the route back to that subnet
  goes out of ``flannel.1`` too; host-gw packets arrive on the underlay
  device, which is also the route back. So strict reverse-path filtering
  (1) passes both, and changing the host's setting would only weaken it.
"""

from __future__ import annotations

from netagent.overlay.model import OverlayConfig
from netagent.proxy.sysctl import ProcSysctl, Sysctl


def ensure_overlay_sysctls(config: OverlayConfig, sysctl: Sysctl | None = None) -> list[str]:
    """Set what the overlay needs; returns the names that were changed."""
    del config  # every backend needs the same today
    sysctl = sysctl or ProcSysctl()
    changed = []
    if sysctl.read("net.ipv4.ip_forward").strip() != "1":
        sysctl.write("net.ipv4.ip_forward", "1")
        changed.append("net.ipv4.ip_forward")
    return changed
