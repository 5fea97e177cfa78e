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
import logging
import sys
from pathlib import Path
from typing import Any

from netagent.config import add_run_flags
from netagent.debug.context import DebugError
from netagent.debug.output import FORMATS, render

log = logging.getLogger(__name__)


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
    """Today's tracer, with chain owners from the desired state when a source is given."""
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

    config = config_from_args(args)
    inputs = load_inputs(config)  # invalid objects are logged (and skipped) as the agent does
    return build(args.debug_command, local_context(config, inputs), _params(args))


def run(args: argparse.Namespace) -> int:
    """Run one ``netagent debug`` command; its exit status."""
    if not getattr(args, "verbose", False):
        logging.getLogger("netagent").setLevel(logging.WARNING)
    try:
        if args.agent:
            from netagent.debug.remote import fetch_report

            report = fetch_report(args.agent, args.debug_command, _params(args))
        elif args.debug_command == "trace":
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
