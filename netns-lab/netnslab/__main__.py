"""``python -m netnslab up|down|status|cleanup-stale``: a lab that outlives the command.

Why a CLI: the README's demo builds the lab, runs netagent in it and looks
at traffic by hand, across several shell commands. ``up`` therefore leaves a
*detached* lab running and records its suffix in ``/run/netns-lab/current``;
``down`` reads that record and removes exactly what ``up`` made.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from netnslab.names import is_suffix
from netnslab.netns import list_namespaces
from netnslab.runs import STATE_DIR, RunRecord, cleanup_stale
from netnslab.single_node import (
    BRIDGE_IP,
    CLIENT_IP,
    CLUSTER_CIDR,
    NODE_IP,
    OUTSIDE_IP,
    POD_CIDR,
    SingleNodeLab,
)

CURRENT = STATE_DIR / "current"


def _current_suffix() -> str | None:
    try:
        suffix = CURRENT.read_text().strip()
    except FileNotFoundError:
        return None
    return suffix if is_suffix(suffix) else None


def describe(lab: SingleNodeLab) -> dict[str, Any]:
    """What a user needs to drive the lab by hand."""
    present = set(list_namespaces())
    return {
        "suffix": lab.suffix,
        "node_name": lab.node_name,
        "manifest_dir": str(lab.manifest_dir),
        "cluster_cidr": CLUSTER_CIDR,
        "pod_cidr": POD_CIDR,
        "namespaces": {
            "node": {"ns": lab.node_ns, "ips": [BRIDGE_IP, NODE_IP]},
            **{p.name: {"ns": p.ns, "ips": [p.ip]} for p in lab.pods.values()},
            "client": {"ns": lab.client_ns, "ips": [CLIENT_IP]},
            "outside": {"ns": lab.outside_ns, "ips": [OUTSIDE_IP]},
        },
        "present": sorted(ns for ns in lab.namespaces if ns in present),
    }


def _print(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"lab {info['suffix']}  node name {info['node_name']}")
    for role, entry in info["namespaces"].items():
        mark = "" if entry["ns"] in info["present"] else "  (missing)"
        print(f"  {role:8} {entry['ns']:22} {', '.join(entry['ips'])}{mark}")
    print(f"  manifests dir: {info['manifest_dir']}")


def cmd_up(args: argparse.Namespace) -> int:
    """Build a detached lab unless one is already up."""
    suffix = _current_suffix()
    if suffix is not None and RunRecord.load(suffix) is not None:
        print(f"lab {suffix} is already up; run `python -m netnslab down` first", file=sys.stderr)
        return 1
    lab = SingleNodeLab(detached=True, keep_workdir=True)
    lab.up()
    lab.manifest_dir.mkdir(parents=True, exist_ok=True)
    CURRENT.parent.mkdir(parents=True, exist_ok=True)
    CURRENT.write_text(lab.suffix + "\n")
    _print(describe(lab), args.json)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Remove the current (or the named) lab."""
    suffix = args.suffix or _current_suffix()
    if suffix is None:
        print("no lab is up", file=sys.stderr)
        return 0
    try:
        lab = SingleNodeLab.attach(suffix)
    except LookupError:
        lab = SingleNodeLab(suffix=suffix)  # no record: delete by name anyway
    lab.down()
    if _current_suffix() == suffix:
        CURRENT.unlink(missing_ok=True)
    print(f"lab {suffix} removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Describe the current lab; exit 1 when none is up."""
    suffix = _current_suffix()
    if suffix is None or RunRecord.load(suffix) is None:
        print("no lab is up", file=sys.stderr)
        return 1
    _print(describe(SingleNodeLab.attach(suffix)), args.json)
    return 0


def cmd_cleanup_stale(args: argparse.Namespace) -> int:
    """Remove namespaces of dead runs (and, with --all, the detached lab)."""
    removed = cleanup_stale(include_detached=args.all)
    for name in removed:
        print(f"removed {name}")
    if args.all:
        CURRENT.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m netnslab", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the single-node lab and leave it running")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="remove the lab made by `up`")
    down.add_argument("--suffix", help="a lab other than the current one")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="show the current lab")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    stale = sub.add_parser("cleanup-stale", help="remove namespaces of killed lab runs")
    stale.add_argument("--all", action="store_true", help="also the detached lab of `up`")
    stale.set_defaults(func=cmd_cleanup_stale)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
