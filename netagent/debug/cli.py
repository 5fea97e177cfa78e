"""The ``netagent debug …`` commands: flags in, one report out, an exit status that means something.

Why a module of its own: :mod:`netagent.cli` stays a thin dispatcher; the
debug family has five commands with shared inputs (every ``netagent run``
flag and ``--config``, so an operator can paste the agent's own command
line), ``-o table|json|yaml`` and ``--agent URL``. Exit status: 0 when the
report was produced (``diff``: and nothing differs), 1 when ``diff`` found a
difference or a report could not be built, 2 for bad flags or config. Every
failure is one ``error:`` line on stderr, never a traceback (``-v`` logs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import sys
from pathlib import Path
from typing import Any

from netagent.config import AgentConfig, add_run_flags
from netagent.debug.context import DebugError
from netagent.debug.output import FORMATS, render
from netagent.model import IPAddress

log = logging.getLogger(__name__)

TRACE_DESCRIPTION = (
    "Follow the first packet of a new connection and show where it ends: which endpoints"
    " (with the share of new clients each gets), masqueraded or not, dropped or rejected,"
    " and the Service port each decision belongs to. In iptables mode (and none) it walks"
    " the node's live iptables-save ruleset (or --rules). In nftables mode it walks"
    " netagent's render of the desired state (same flags as `netagent run`), a model of"
    " the ip/ip6 netagent table: it needs no root and explains each decision per Service,"
    " where the kernel's own nftrace needs root, a live packet and a `meta nftrace set 1`"
    " rule. --local-ip adds node addresses to the Node's own."
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=FORMATS, default="table", help="default table")
    p.add_argument(
        "--agent",
        metavar="URL",
        help="ask the running agent (e.g. http://127.0.0.1:10249) instead of computing here",
    )
    p.add_argument("--config", type=Path, help="the agent's YAML config file (flags win)")
    add_run_flags(p)  # the agent's own flags: where the desired state is read, and how


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``debug`` and its commands to the top-level subparsers."""
    p = sub.add_parser("debug", help="show what the node is doing, and what netagent wants")
    dsub = p.add_subparsers(dest="debug_command", required=True)

    s = dsub.add_parser("services", help="every frontend and why each backend is (not) used")
    s.add_argument("name", nargs="?", metavar="NS/NAME", help="only this Service")
    _common(s)

    one = dsub.add_parser("service", help="one Service's kernel objects, desired, and traces")
    one.add_argument("name", metavar="NS/NAME")
    _common(one)

    o = dsub.add_parser("overlay", help="subnet, VTEP and per-peer FDB/neighbour/route entries")
    _common(o)

    d = dsub.add_parser("diff", help="desired against kernel; exit 1 when anything differs")
    _common(d)

    t = dsub.add_parser(
        "trace",
        help="follow a packet through the node's rules (iptables) or netagent's table (nftables)",
        description=TRACE_DESCRIPTION,
    )
    t.add_argument("--src", required=True, help="source IP")
    t.add_argument("--dst", required=True, help="destination IP")
    t.add_argument("--proto", default="tcp", choices=("tcp", "udp", "sctp"))
    t.add_argument("--port", type=int, required=True, help="destination port")
    t.add_argument("--from", dest="origin", default="pod", choices=("pod", "host", "external"))
    t.add_argument(
        "--rules",
        type=Path,
        help="iptables-save text (default: read the kernel); iptables and none modes only",
    )
    t.add_argument(
        "--local-ip",
        action="append",
        default=[],
        help="an address this node owns (repeatable; default: read from the kernel)",
    )
    _common(t)


def _params(args: argparse.Namespace) -> dict[str, str]:
    if args.debug_command in ("services", "service"):
        return {"name": args.name or ""}
    if args.debug_command == "trace":
        return {
            "src": args.src,
            "dst": args.dst,
            "proto": args.proto,
            "port": str(args.port),
            "from": args.origin,
        }
    return {}


def _has_source(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) for k in ("manifests_dir", "master", "kubeconfig", "config"))


def _trace(args: argparse.Namespace) -> int:
    """The iptables tracer, with chain owners from the desired state when a source is given."""
    from netagent.debug.trace import build_trace, format_trace

    owners = None
    if _has_source(args):
        owners = _desired_owners(args)
    report, status = build_trace(
        src=args.src,
        dst=args.dst,
        proto=args.proto,
        port=args.port,
        origin=args.origin,
        rules_file=args.rules,
        local_ips=args.local_ip,
        owners=owners,
    )
    if report is None:
        return status
    sys.stdout.write(
        format_trace(report) if args.output == "table" else render(report, args.output)
    )
    return 0


def _desired_owners(args: argparse.Namespace) -> dict[str, str]:
    from netagent.config import build_config, flag_values
    from netagent.config_values import ConfigError
    from netagent.debug.inputs import load_inputs
    from netagent.proxy.iptables.inspect import chain_owners
    from netagent.runtime.node_sync import build_states

    try:
        config = build_config(flag_values(args), args.config)
    except ConfigError as exc:
        raise DebugError(str(exc), status=400) from None
    owners: dict[str, str] = {}
    for state in build_states(config, load_inputs(config).snapshot):
        owners.update(chain_owners(state))
    return owners


def _local_report(args: argparse.Namespace) -> dict[str, Any]:
    from netagent.debug.inputs import config_from_args, load_inputs, local_context
    from netagent.debug.reports import build

    if args.debug_command == "trace" and args.rules is not None:
        raise DebugError(
            "--rules is iptables-save text: in nftables mode the trace follows netagent's"
            " render of the desired state",
            status=400,
        )
    config = config_from_args(args)
    inputs = load_inputs(config)  # invalid objects are logged (and skipped) as the agent does
    ctx = local_context(config, inputs)
    if args.debug_command == "trace" and args.local_ip:
        given = _local_ips(args.local_ip)
        ctx = dataclasses.replace(ctx, local_ips=lambda: given)
    return build(args.debug_command, ctx, _params(args))


def _local_ips(texts: list[str]) -> frozenset[IPAddress]:
    try:
        return frozenset(ipaddress.ip_address(t) for t in texts)
    except ValueError as exc:
        raise DebugError(f"--local-ip: {exc}", status=400) from None


def _proxy_mode(args: argparse.Namespace) -> str:
    """The configured proxy mode; the config file is read only when one is given."""
    if getattr(args, "proxy_mode", None):
        return str(args.proxy_mode)
    if getattr(args, "config", None) is None:
        return AgentConfig().proxy_mode
    from netagent.config import build_config, flag_values
    from netagent.config_values import ConfigError

    try:
        return build_config(flag_values(args), args.config).proxy_mode
    except ConfigError as exc:
        raise DebugError(str(exc), status=400) from None


def run(args: argparse.Namespace) -> int:
    """Run one ``netagent debug`` command; its exit status."""
    if not getattr(args, "verbose", False):
        logging.getLogger("netagent").setLevel(logging.WARNING)
    try:
        if args.agent:
            from netagent.debug.remote import fetch_report

            report = fetch_report(args.agent, args.debug_command, _params(args))
        elif args.debug_command == "trace" and _proxy_mode(args) != "nftables":
            return _trace(args)
        else:
            report = _local_report(args)
        sys.stdout.write(render(report, args.output))
    except DebugError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2 if exc.status == 400 else 1
    except Exception as exc:  # never a traceback for the operator; -v logs it
        log.debug("debug %s failed", args.debug_command, exc_info=True)
        sys.stderr.write(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}\n")
        return 1
    if args.debug_command == "diff":
        return 0 if report.get("equal") else 1
    return 0
