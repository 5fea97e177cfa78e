"""Command line: a thin layer that parses flags and calls into the agent.

Why thin: everything the CLI does is reachable from Python (tests, the lab),
so behaviour lives in :mod:`netagent.runtime.manifest_agent` and friends; this module only
turns flags into an :class:`netagent.config.AgentConfig`, sets up logging and
maps outcomes to exit codes (0 ok, 1 runtime failure, 2 bad usage/config).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from netagent import __version__
from netagent.config import (
    AgentConfig,
    ConfigError,
    add_run_flags,
    build_config,
    flag_values,
)

log = logging.getLogger("netagent")


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="program this node and keep it programmed")
    p.add_argument(
        "--config",
        type=Path,
        help="YAML config file: netagent's NetagentConfiguration or kube-proxy's "
        "KubeProxyConfiguration (flags take precedence)",
    )
    p.add_argument("--once", action="store_true", help="sync once and exit")
    add_run_flags(p)  # one flag per config field (netagent/config_fields.py)


def _add_cleanup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cleanup",
        help="remove every rule, chain, route and device netagent created, and its files",
    )
    p.add_argument(
        "--subnet-file", default="/run/flannel/subnet.env", help="empty: no file to remove"
    )
    p.add_argument(
        "--cni-conf-file",
        default="/etc/cni/net.d/10-netagent.conflist",
        help="empty: no conflist to remove (as with run)",
    )
    p.add_argument("--bridge", default="cbr0")
    p.add_argument("--vni", type=int, default=1)


def _add_debug(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from netagent.debug.cli import add_parser

    add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="netagent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"netagent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_cleanup(sub)
    _add_debug(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from netagent.runtime import manifest_source as agent

    flags = flag_values(args)
    try:
        config = build_config(flags, args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if not config.node_name:
        log.error("config field nodeName: required (--node-name or $NODE_NAME)")
        return 2
    if config.manifests_dir is None:
        if args.once:
            log.error("--once needs --manifests DIR (API mode runs until stopped)")
            return 2
        return _run_api(config)
    if not config.manifests_dir.is_dir():
        log.error("config field manifestsDir: %s is not a directory", config.manifests_dir)
        return 2
    if args.once:
        return agent.run_once(config)
    return asyncio.run(agent.run_forever(config))


def _check_underlay(config: AgentConfig) -> ConfigError | None:
    """Look the overlay's underlay up once, before anything starts; the error, if any.

    The overlay looks it up again at its first sync. Checking here too turns a
    bad ``--iface``/``--public-ip`` into a config error (exit 2) instead of a
    first sync that fails, and blocks the Service rules with it, forever.
    """
    from netagent.overlay import underlay

    try:
        found = underlay.find_underlay(
            iface=config.overlay_iface, public_ip=config.overlay_public_ip
        )
    except underlay.UnderlayError as exc:
        return ConfigError(exc.key, str(exc))
    log.debug("overlay underlay: %s, public IP %s", found.device, found.address)
    return None


def _run_api(config: AgentConfig) -> int:
    from netagent.runtime import api_source
    from netagent.sources.kubeconfig import KubeconfigError

    if config.overlay_backend != "none":
        error = _check_underlay(config)
        if error is not None:
            log.error("%s", error)
            return 2
    try:
        client = api_source.api_client(config)
    except KubeconfigError as exc:
        log.error("%s", exc)
        return 2
    network = None
    if config.overlay_backend != "none":
        from netagent.overlay.agent import OverlayNetwork

        network = OverlayNetwork.from_config(config, client)
    return asyncio.run(api_source.run_api(config, client=client, network=network))


def _cmd_cleanup(args: argparse.Namespace) -> int:
    """Every part that can run does; 1 at the end if any part failed (each says why)."""
    parts: tuple[tuple[str, Callable[[], bool]], ...] = (
        ("iptables rules", _cleanup_iptables),
        ("nftables tables", _cleanup_nftables),
        ("IPVS virtual servers, ipsets and device", _cleanup_ipvs),
        ("overlay routes and devices", lambda: _cleanup_overlay(args)),
        ("files", lambda: _cleanup_files(args)),
    )
    failed: list[str] = []
    for name, part in parts:
        try:
            ok = part()
        except Exception as exc:  # one part's failure must not keep the others from running
            log.error("cleanup of %s failed: %s: %s", name, type(exc).__name__, exc)
            ok = False
        if not ok:
            failed.append(name)
    if failed:
        log.error("cleanup incomplete: %s not (fully) removed, see above", ", ".join(failed))
        return 1
    return 0


def _cleanup_ipvs() -> bool:
    """IPVS mode's objects in both families, where IPVS mode left any (see the registry)."""
    from netagent.model import IPFamily
    from netagent.proxy.registry import MODES

    ok = True
    for family in (IPFamily.IPV4, IPFamily.IPV6):
        for result in MODES["ipvs"].cleanup(family, lambda chain: False):
            log.info("cleanup IPVS %s: %s", family.value, result.summary)
            for failure in result.failures:
                log.error("cleanup IPVS %s: %s", family.value, failure)
                ok = False
    return ok


def _cleanup_nftables() -> bool:
    """netagent's ``ip netagent`` and ``ip6 netagent`` tables; True when nft is not installed."""
    from netagent.model import IPFamily
    from netagent.proxy.nftables.proxier import cleanup_table
    from netagent.proxy.nftables.runner import SubprocessNft

    runner = SubprocessNft()
    if not runner.available():
        log.debug("cleanup: nft not installed, so netagent cannot have made nftables tables")
        return True
    for family in (IPFamily.IPV4, IPFamily.IPV6):
        log.info("cleanup nftables %s: %s", family.value, cleanup_table(runner, family).summary)
    return True


def _cleanup_iptables() -> bool:
    """netagent's chains and jumps with every installed backend and family; False on a failure."""
    from netagent.model import IPFamily
    from netagent.proxy.iptables.apply import IptablesApplier
    from netagent.proxy.iptables.runner import SubprocessIptables

    ok = True
    cleaned_any = False
    for backend in ("nft", "legacy"):
        for family in (IPFamily.IPV4, IPFamily.IPV6):
            runner = SubprocessIptables(family=family, backend=backend)
            if not runner.available():
                log.debug("cleanup: %s %s tools not installed, skipped", family.value, backend)
                continue
            cleaned_any = True
            try:
                report = IptablesApplier.cleanup(runner)
            except Exception as exc:
                log.error("cleanup of %s %s failed: %s", family.value, backend, exc)
                ok = False
                continue
            log.info("cleanup %s %s: %s", family.value, backend, report)
    if not cleaned_any:
        log.error("iptables tools are not installed: netagent's iptables rules were not removed")
        return False
    return ok


def _cleanup_overlay(args: argparse.Namespace) -> bool:
    """netagent's routes and the devices it created; False on a failure."""
    from netagent.overlay.kernel import PyrouteOverlayKernel
    from netagent.overlay.model import VxlanSettings
    from netagent.overlay.reconcile import remove_all

    kernel = PyrouteOverlayKernel()
    try:
        report = remove_all(
            kernel, vxlan_name=VxlanSettings(vni=args.vni).device, bridge=args.bridge
        )
    finally:
        kernel.close()
    log.info("cleanup overlay: %s", report.summary())
    for failure in report.failures:
        log.error("cleanup overlay: %s", failure)
    return not report.failures


def _cleanup_files(args: argparse.Namespace) -> bool:
    """subnet.env and the CNI conflist; an empty path means there is none to remove."""
    from netagent.overlay.cni_files import remove_files

    ok = True
    files = (("--subnet-file", args.subnet_file), ("--cni-conf-file", args.cni_conf_file))
    for flag, value in files:
        if not value:
            log.info("cleanup: %s is empty, no file to remove", flag)
            continue
        path = Path(value)
        try:
            removed = remove_files([path])
        except OSError as exc:
            log.error("cleanup: cannot remove %s (%s): %s", path, flag, exc)
            ok = False
            continue
        log.info("cleanup: %s %s", "removed" if removed else "no file at", path)
    return ok


def _cmd_debug(args: argparse.Namespace) -> int:
    from netagent.debug.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `netagent` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "cleanup":
        return _cmd_cleanup(args)
    if args.command == "debug":
        return _cmd_debug(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
