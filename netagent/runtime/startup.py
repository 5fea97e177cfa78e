"""What happens once before the first sync, whichever source feeds the agent.

Why a module: both sources start the same way — the proxy's sysctls, then
removing what a *previous configuration* of this node left behind, then the
configured mode's proxiers and the observability servers. Keeping it in one
place keeps the two sources from drifting apart.

Leftovers of another configuration (the "mode switch leaves nothing behind"
rule):

* **Another proxy mode.** :func:`netagent.proxy.registry.cleanup_other_modes`
  removes what every other registered mode created.
* **The overlay switched off** (``--overlay none`` on a node that ran
  vxlan or host-gw). Nothing reconciles the overlay any more, so its
  netagent-owned routes (protocol 78) and its VXLAN device are removed here;
  the overlay's iptables chains go with the first full sync, which deletes
  every ``NETAGENT-`` chain it does not render. The bridge and the CNI files
  are left: pods may still be attached to the bridge, and a CNI file is the
  node's pod-network contract; ``netagent cleanup`` removes both.
* **vxlan -> host-gw** needs nothing here: the overlay's reconciler removes
  its own VXLAN device when the plan has none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from netagent.config import AgentConfig
from netagent.model import IPFamily
from netagent.observe.observability import Observability
from netagent.proxy.proxier import Proxier
from netagent.proxy.registry import cleanup_other_modes, make_proxier
from netagent.proxy.sysctl import ProcSysctl, ensure_proxy_sysctls
from netagent.runtime.node_sync import NodeSync

log = logging.getLogger(__name__)


def prepare_host(config: AgentConfig) -> None:
    """Kernel settings the proxy relies on, in the agent's own network namespace."""
    # ip_forward: DNATed packets to pods on other hosts/bridges are forwarded;
    # route_localnet: NodePorts on 127.0.0.1 are DNATed to pod IPs, which the
    # kernel otherwise refuses for loopback sources; bridge-nf-call-iptables:
    # pod -> service -> pod on the same bridge must pass through nat.
    # Only the iptables mode serves NodePorts on localhost (with its martian-packet
    # drop rule); route_localnet without that rule is CVE-2020-8558, so the other
    # modes leave it alone.
    ensure_proxy_sysctls(
        ProcSysctl(),
        localhost_nodeports=config.localhost_nodeports and config.proxy_mode == "iptables",
        ipv6=any(c.version == 6 for c in config.cluster_cidrs),
    )
    if config.proxy_mode == "ipvs":
        from netagent.proxy.sysctl import ensure_ipvs_sysctls

        ensure_ipvs_sysctls(ProcSysctl(), strict_arp=config.ipvs_strict_arp)


def remove_overlay_leftovers() -> list[str]:
    """Owned overlay routes and the owned VXLAN device (``--overlay none``); the failures."""
    from netagent.overlay.kernel import PyrouteOverlayKernel
    from netagent.overlay.model import VxlanSettings
    from netagent.overlay.reconcile import remove_all

    kernel = PyrouteOverlayKernel()
    try:
        # bridge="" : the bridge stays (see the module docstring).
        report = remove_all(kernel, vxlan_name=VxlanSettings().device, bridge="")
    finally:
        kernel.close()
    if report.changed:
        log.info("overlay is off: removed the previous overlay's %s", report.summary())
    return list(report.failures)


def prepare_node(config: AgentConfig) -> None:
    """Sysctls, then the leftovers of any other configuration (failures logged, not fatal)."""
    prepare_host(config)
    failures = cleanup_other_modes(config.proxy_mode)
    if config.overlay_backend == "none":
        try:
            failures += remove_overlay_leftovers()
        except Exception as exc:  # no netlink access: nothing of ours can be there either
            failures.append(f"overlay leftovers: {type(exc).__name__}: {exc}")
    for failure in failures:
        log.warning("could not remove a previous configuration's leftovers: %s", failure)


def proxier_factory(config: AgentConfig) -> Callable[[IPFamily], Proxier]:
    """The configured mode's proxier per family."""
    return lambda family: make_proxier(config, family)


def observability_for(config: AgentConfig) -> Observability:
    """Health, metrics and the debug endpoint of this agent process."""
    return Observability(config)


def attach_debug(observe: Observability, node_sync: NodeSync) -> None:
    """Serve the ``netagent debug`` reports from this agent's last sync on the metrics port."""
    from netagent.debug.endpoint import agent_handler

    observe.attach_debug(agent_handler(node_sync))
