"""Proxy modes by name: ``--proxy-mode`` picks one, and every other mode's leftovers go.

Why a registry: the node sync, the daemon and ``netagent debug`` must not
know which backends exist. Each mode registers a factory (config, family ->
:class:`~netagent.proxy.proxier.Proxier`) and a cleaner (removes what that
mode ever created in one family), and adding a mode is one entry here.

Mode switches leave nothing behind. kube-proxy users who switch modes keep
finding the old mode's rules on their nodes (the old mode's chains keep
matching before the new mode's). netagent's start-up therefore runs the
cleaner of every mode *other* than the configured one, in every family:
a node moved from one mode to another ends with only the new mode's state.
Each cleaner touches only what its own mode names as netagent's (the
``NETAGENT-`` chains for iptables), so this is safe on a node that never ran
that mode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netagent.config import AgentConfig
from netagent.model import IPFamily
from netagent.proxy.proxier import CleanupResult, Proxier

if TYPE_CHECKING:
    from netagent.proxy.ipvs.model import IpvsTimeouts
    from netagent.proxy.ipvs.netlink import IpvsKernel

log = logging.getLogger(__name__)


#: A cleaner gets the family and the names (chains, ...) the starting mode writes as well,
#: which it must leave in place; it returns one result per kernel interface it cleaned.
Cleaner = Callable[[IPFamily, Callable[[str], bool]], list[CleanupResult]]


def _nothing_shared(name: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class ProxyMode:
    """One proxy mode: how to build its proxier and how to remove what it made.

    ``shares`` says which of the names it owns another mode's cleaner must
    keep when this mode starts (the overlay's chains, which both iptables
    modes write), so a switch never leaves a window without them.
    """

    name: str
    make: Callable[[AgentConfig, IPFamily], Proxier]
    cleanup: Cleaner
    summary: str
    shares: Callable[[str], bool] = _nothing_shared


def _make_iptables(config: AgentConfig, family: IPFamily) -> Proxier:
    from netagent.proxy.conntrack import ConntrackTool
    from netagent.proxy.iptables.proxier import IptablesProxier
    from netagent.proxy.iptables.runner import SubprocessIptables, resolve_backend

    backend = resolve_backend(config.iptables_backend)
    log.info("iptables backend for %s: %s", family.value, backend)
    return IptablesProxier(
        runner=SubprocessIptables(family=family, backend=backend),
        conntrack=ConntrackTool(family=family),
        family=family,
        drift_check_period=config.sync_period,
    )


def _make_overlay_only(config: AgentConfig, family: IPFamily) -> Proxier:
    from netagent.proxy.iptables.runner import SubprocessIptables, resolve_backend
    from netagent.proxy.overlay_only import OverlayOnlyProxier

    runner = SubprocessIptables(family=family, backend=resolve_backend(config.iptables_backend))
    return OverlayOnlyProxier(runner=runner, family=family, drift_check_period=config.sync_period)


def _make_nftables(config: AgentConfig, family: IPFamily) -> Proxier:
    from netagent.proxy.conntrack import ConntrackTool
    from netagent.proxy.nftables.proxier import NftablesProxier
    from netagent.proxy.nftables.runner import SubprocessNft

    return NftablesProxier(
        runner=SubprocessNft(),
        conntrack=ConntrackTool(family=family),
        family=family,
        drift_check_period=config.sync_period,
    )


def configure_timeouts(ipvs: IpvsKernel, config: AgentConfig) -> IpvsTimeouts | None:
    """Set the configured IPVS timeouts once, as kube-proxy does at start; None when unset.

    The timeouts belong to the node's network namespace, not to a virtual
    server, so there is nothing to reconcile per sync: a value changed by hand
    stays until the agent restarts (as with kube-proxy).
    """
    from netagent.proxy.ipvs.model import IpvsTimeouts

    wanted = IpvsTimeouts(
        int(config.ipvs_tcp_timeout), int(config.ipvs_tcp_fin_timeout), int(config.ipvs_udp_timeout)
    )
    if wanted.is_unset():
        return None
    ipvs.set_timeouts(wanted)
    now = ipvs.timeouts()
    log.info("IPVS timeouts set: %s (asked for %s; 0 leaves the kernel's)", now, wanted)
    return now


def _make_ipvs(config: AgentConfig, family: IPFamily) -> Proxier:
    """The IPVS proxier over the real kernel; refuses a scheduler the kernel lacks."""
    from netagent.proxy.conntrack import ConntrackTool
    from netagent.proxy.iptables.runner import SubprocessIptables, resolve_backend
    from netagent.proxy.ipvs.dummy import PyrouteDummy
    from netagent.proxy.ipvs.ipsets import PyrouteIpset
    from netagent.proxy.ipvs.local_addresses import read_local_addresses
    from netagent.proxy.ipvs.netlink import PyrouteIpvs, check_scheduler
    from netagent.proxy.ipvs.proxier import IpvsProxier

    ipvs = PyrouteIpvs()
    check_scheduler(ipvs, config.ipvs_scheduler)
    configure_timeouts(ipvs, config)
    backend = resolve_backend(config.iptables_backend)
    return IpvsProxier(
        ipvs=ipvs,
        ipsets=PyrouteIpset(),
        dummy=PyrouteDummy(None),
        iptables=SubprocessIptables(family=family, backend=backend),
        local_addresses=read_local_addresses,
        conntrack=ConntrackTool(family=family),
        family=family,
        scheduler=config.ipvs_scheduler,
        exclude_cidrs=config.ipvs_exclude_cidrs,
        drift_check_period=config.sync_period,
    )


def _cleanup_ipvs(family: IPFamily, keep: Callable[[str], bool]) -> list[CleanupResult]:
    """IPVS mode's leftovers, only where there is a sign IPVS mode ran (its sets or device).

    Without that gate, every start of another mode would rewrite the
    iptables chains both modes name alike.
    """
    from netagent.proxy.iptables.runner import SubprocessIptables, resolve_backend
    from netagent.proxy.ipvs.dummy import PyrouteDummy
    from netagent.proxy.ipvs.ipsets import PyrouteIpset
    from netagent.proxy.ipvs.local_addresses import read_local_addresses
    from netagent.proxy.ipvs.proxier import cleanup_ipvs
    from netagent.proxy.ipvs.render import set_specs

    try:
        sets = PyrouteIpset()
        present = set(sets.list_sets())
    except Exception:  # no ip_set in this kernel: IPVS mode never ran here
        return []
    dummy = PyrouteDummy(None)
    if not (present & set(set_specs(family))) and not dummy.exists():
        return []
    try:
        from netagent.proxy.ipvs.netlink import PyrouteIpvs

        ipvs = PyrouteIpvs()
    except Exception as exc:
        return [CleanupResult(0, "IPVS not available", failures=(f"open IPVS: {exc}",))]
    iptables = SubprocessIptables(family=family, backend=resolve_backend("auto"))
    return [cleanup_ipvs(ipvs, sets, dummy, iptables, family, read_local_addresses, keep)]


def _ipvs_chains(name: str) -> bool:
    from netagent.proxy.ipvs.render import IPVS_CHAINS

    return name in IPVS_CHAINS or _overlay_chains(name)


def _cleanup_nftables(family: IPFamily, keep: Callable[[str], bool]) -> list[CleanupResult]:
    """Delete netagent's nftables table of ``family`` (no other table is ever touched)."""
    from netagent.proxy.nftables.proxier import cleanup_table
    from netagent.proxy.nftables.runner import SubprocessNft

    runner = SubprocessNft()
    if not runner.available():
        return []
    return [cleanup_table(runner, family)]


def _cleanup_iptables(family: IPFamily, keep: Callable[[str], bool]) -> list[CleanupResult]:
    """netagent's chains and jump rules with every installed iptables backend, but ``keep``."""
    from netagent.proxy.iptables.apply import IptablesApplier
    from netagent.proxy.iptables.runner import SubprocessIptables

    results = []
    for backend in ("nft", "legacy"):
        runner = SubprocessIptables(family=family, backend=backend)
        if not runner.available():
            continue
        report = IptablesApplier.cleanup(runner, keep=keep)
        removed = len(report.chains_deleted) + len(report.jumps_deleted)
        results.append(CleanupResult(removed=removed, summary=f"{backend}: {report}"))
    return results


def _overlay_chains(name: str) -> bool:
    from netagent.proxy.iptables.apply import CANARY_CHAIN
    from netagent.proxy.overlay_only import OVERLAY_CHAINS

    return name in OVERLAY_CHAINS or name == CANARY_CHAIN


MODES: Mapping[str, ProxyMode] = {
    "iptables": ProxyMode(
        name="iptables",
        make=_make_iptables,
        cleanup=_cleanup_iptables,
        summary="one atomic iptables-restore per family, a chain per service port",
        shares=_overlay_chains,
    ),
    "nftables": ProxyMode(
        name="nftables",
        make=_make_nftables,
        cleanup=_cleanup_nftables,
        summary="netagent's own nftables table per family; services as map elements",
    ),
    "ipvs": ProxyMode(
        name="ipvs",
        make=_make_ipvs,
        cleanup=_cleanup_ipvs,
        summary="IPVS virtual servers over netlink, ipsets, a constant handful of iptables rules",
        shares=_ipvs_chains,
    ),
    "none": ProxyMode(
        name="none",
        make=_make_overlay_only,
        # Everything "none" writes, the iptables mode writes too: nothing of its own is left.
        cleanup=lambda family, keep: [],
        summary="no Service rules (next to another proxy); only the overlay's chains",
        shares=_overlay_chains,
    ),
}


def mode_named(name: str) -> ProxyMode:
    """The registered mode ``name``; ValueError naming the known ones otherwise."""
    mode = MODES.get(name)
    if mode is None:
        raise ValueError(f"unknown proxy mode {name!r} (known: {', '.join(sorted(MODES))})")
    return mode


def make_proxier(config: AgentConfig, family: IPFamily) -> Proxier:
    """The configured mode's proxier for ``family``."""
    return mode_named(config.proxy_mode).make(config, family)


def cleanup_other_modes(
    current: str, families: tuple[IPFamily, ...] = (IPFamily.IPV4, IPFamily.IPV6)
) -> list[str]:
    """Remove every other mode's leftovers; the failures, each naming mode and family.

    A failure is reported, not raised: the configured mode still programs
    the node, and the next start tries again.
    """
    failures: list[str] = []
    starting = MODES.get(current)
    keep = starting.shares if starting is not None else _nothing_shared
    for name, mode in sorted(MODES.items()):
        if name == current:
            continue
        for family in families:
            try:
                results = mode.cleanup(family, keep)
            except Exception as exc:
                failures.append(f"{name} {family.value}: {type(exc).__name__}: {exc}")
                continue
            for result in results:
                if result.removed:
                    log.info(
                        "removed leftovers of proxy mode %s (%s): %s",
                        name,
                        family.value,
                        result.summary,
                    )
                failures.extend(f"{name} {family.value}: {f}" for f in result.failures)
    return failures
