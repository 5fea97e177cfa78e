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
    IPTABLES_BACKENDS,
    OVERLAY_BACKENDS,
    PROXY_MODES,
    VXLAN_TX_CHECKSUM,
    AgentConfig,
    ConfigError,
    build_config,
)

log = logging.getLogger("netagent")


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="program this node and keep it programmed")
    p.add_argument("--config", type=Path, help="YAML config file (flags take precedence)")
    p.add_argument("--manifests", dest="manifests_dir", help="read objects from this directory")
    p.add_argument("--once", action="store_true", help="sync once and exit")
    p.add_argument("--node-name", dest="node_name", help="this node's name (default $NODE_NAME)")
    p.add_argument(
        "--cluster-cidr", dest="cluster_cidrs", help="pod network CIDR(s), comma-separated"
    )
    p.add_argument("--proxy-mode", dest="proxy_mode", choices=PROXY_MODES)
    p.add_argument("--iptables-backend", dest="iptables_backend", choices=IPTABLES_BACKENDS)
    p.add_argument("--min-sync-period", dest="min_sync_period", help="e.g. 1s (default 1s)")
    p.add_argument("--sync-period", dest="sync_period", help="e.g. 30s (default 30s)")
    p.add_argument(
        "--nodeport-addresses",
        dest="nodeport_addresses",
        help="CIDRs whose local IPs accept NodePorts, comma-separated (default: all)",
    )
    p.add_argument(
        "--masquerade-all",
        dest="masquerade_all",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SNAT all traffic sent to Service IPs",
    )
    p.add_argument("--masquerade-bit", dest="masquerade_bit", type=int)
    p.add_argument(
        "--healthz-bind-address", dest="healthz_bind_address", help="default 0.0.0.0:10256"
    )
    p.add_argument(
        "--metrics-bind-address", dest="metrics_bind_address", help="default 127.0.0.1:10249"
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--master", help="API server URL (overrides the kubeconfig's server)")
    p.add_argument(
        "--legacy-endpoints",
        dest="legacy_endpoints",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="watch core/v1 Endpoints instead of EndpointSlices (very old clusters)",
    )
    p.add_argument(
        "--overlay",
        dest="overlay_backend",
        choices=OVERLAY_BACKENDS,
        help="pod network between nodes: none (default), vxlan or host-gw",
    )
    p.add_argument("--iface", dest="overlay_iface", help="underlay interface (default route's)")
    p.add_argument(
        "--public-ip", dest="overlay_public_ip", help="underlay IP to publish (multi-NIC hosts)"
    )
    p.add_argument("--subnet-len", dest="overlay_subnet_len", type=int, help="default 24")
    p.add_argument(
        "--direct-routing",
        dest="overlay_direct_routing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="vxlan: plain routes to peers on the same L2 segment",
    )
    p.add_argument(
        "--annotation-prefix",
        dest="overlay_annotation_prefix",
        help="Node annotation prefix (default flannel.alpha.coreos.com)",
    )
    p.add_argument("--subnet-file", dest="subnet_file", help="default /run/flannel/subnet.env")
    p.add_argument(
        "--cni-conf-file",
        dest="cni_conf_file",
        help="default /etc/cni/net.d/10-netagent.conflist; empty to not write one",
    )
    p.add_argument(
        "--vxlan-tx-checksum",
        dest="overlay_vxlan_tx_checksum",
        choices=VXLAN_TX_CHECKSUM,
        help="tx checksum offload on flannel.1: auto (default; off before Linux 5.7), on, off",
    )
    p.add_argument(
        "--ip-masq",
        dest="overlay_ip_masq",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="masquerade pod traffic leaving the cluster CIDR (default on, as flannel's --ip-masq)",
    )
    p.add_argument(
        "--localhost-nodeports",
        dest="localhost_nodeports",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept NodePorts on 127.0.0.1 (default on)",
    )


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
    p = sub.add_parser("debug", help="show what the node is doing")
    dsub = p.add_subparsers(dest="debug_command", required=True)
    t = dsub.add_parser("trace", help="follow a packet through the node's iptables rules")
    t.add_argument("--src", required=True, help="source IP")
    t.add_argument("--dst", required=True, help="destination IP")
    t.add_argument("--proto", default="tcp", choices=("tcp", "udp", "sctp"))
    t.add_argument("--port", type=int, required=True, help="destination port")
    t.add_argument("--from", dest="origin", default="pod", choices=("pod", "host", "external"))
    t.add_argument("--rules", type=Path, help="iptables-save text (default: read the kernel)")
    t.add_argument(
        "--local-ip",
        action="append",
        default=[],
        help="an address this node owns (repeatable; default: read from the kernel)",
    )


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
    from netagent.runtime import manifest_agent as agent

    flags = {
        k: getattr(args, k)
        for k in (
            "manifests_dir",
            "node_name",
            "cluster_cidrs",
            "proxy_mode",
            "iptables_backend",
            "min_sync_period",
            "sync_period",
            "nodeport_addresses",
            "masquerade_all",
            "masquerade_bit",
            "localhost_nodeports",
            "healthz_bind_address",
            "metrics_bind_address",
            "kubeconfig",
            "master",
            "legacy_endpoints",
            "overlay_backend",
            "overlay_iface",
            "overlay_public_ip",
            "overlay_subnet_len",
            "overlay_direct_routing",
            "overlay_ip_masq",
            "overlay_vxlan_tx_checksum",
            "overlay_annotation_prefix",
            "subnet_file",
            "cni_conf_file",
        )
    }
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
    from netagent.runtime import api_agent
    from netagent.sources.kubeconfig import KubeconfigError

    if config.overlay_backend != "none":
        error = _check_underlay(config)
        if error is not None:
            log.error("%s", error)
            return 2
    try:
        client = api_agent.api_client(config)
    except KubeconfigError as exc:
        log.error("%s", exc)
        return 2
    network = None
    if config.overlay_backend != "none":
        from netagent.overlay.agent import OverlayNetwork

        network = OverlayNetwork.from_config(config, client)
    return asyncio.run(api_agent.run_api(config, client=client, network=network))


def _cmd_cleanup(args: argparse.Namespace) -> int:
    """Every part that can run does; 1 at the end if any part failed (each says why)."""
    parts: tuple[tuple[str, Callable[[], bool]], ...] = (
        ("iptables rules", _cleanup_iptables),
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
    from netagent.debug import run_trace

    return run_trace(
        src=args.src,
        dst=args.dst,
        proto=args.proto,
        port=args.port,
        origin=args.origin,
        rules_file=args.rules,
        local_ips=args.local_ip,
        out=sys.stdout,
    )


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
