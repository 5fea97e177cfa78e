"""The reference tables of docs/configuration.md, generated from the field tables.

Why: the docs listed every key, flag, type and default by hand and drifted
from the code. The tables between the ``BEGIN GENERATED`` / ``END GENERATED``
markers in docs/configuration.md are now written by this module from
:mod:`netagent.config_fields` (netagent's settings) and
:mod:`netagent.config_kubeproxy` (how a KubeProxyConfiguration is read); the
prose around them stays hand-written. A unit test fails when the file is out
of date.

Run ``python -m netagent.config_docs`` to rewrite the file, ``--check`` to
only compare (exit 1 when it is out of date).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from netagent import config_kubeproxy as kp
from netagent.config import AgentConfig
from netagent.config_fields import (
    BY_ATTR,
    FIELDS,
    OVERLAY,
    RESERVED_GROUPS,
    SECTIONS,
    SERVE,
    SYNC,
    FieldSpec,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

#: Hand-written lines shown under a section's heading, before its table.
_SECTION_INTROS = {
    SYNC: "The exact rules, including when a sync is full, are in "
    "[When syncs happen](#when-syncs-happen).",
    SERVE: "If a port cannot be bound, the error is logged and the agent keeps "
    "programming rules. `run --once` starts neither server.",
    OVERLAY: "These keys are checked in every mode. They take effect only "
    "when `overlay.backend` is `vxlan` or `host-gw`. [overlay.md](overlay.md) describes what "
    "the overlay builds.",
}


def _cell(text: str) -> str:
    """Table-cell text: a bare ``|`` would end the cell."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def _flags(spec: FieldSpec) -> str:
    if spec.type.boolean:
        return ", ".join(f"`--[no-]{f[2:]}`" for f in spec.flags)
    return ", ".join(f"`{f}`" for f in spec.flags)


def _default(spec: FieldSpec, defaults: AgentConfig) -> str:
    if spec.default_doc:
        return spec.default_doc
    shown = spec.show(getattr(defaults, spec.attr))
    return shown if shown in ("unset", "empty") else f"`{shown}`"


def _key(spec: FieldSpec) -> str:
    key = f"`{spec.path}`"
    if spec.aliases:
        key += " (or " + ", ".join(f"`{a}`" for a in spec.aliases) + ")"
    return key


def render_fields() -> str:
    """Every setting of `netagent run`, one table per docs section."""
    defaults = AgentConfig()
    out: list[str] = []
    for section in SECTIONS:
        out.append(f"### {section}\n")
        if section in _SECTION_INTROS:
            out.append(_SECTION_INTROS[section] + "\n")
        out.append("| YAML key | flag | type | default | meaning |")
        out.append("|---|---|---|---|---|")
        for spec in FIELDS:
            if spec.section != section:
                continue
            cells = (
                _key(spec),
                _flags(spec),
                _cell(spec.type.name),
                _default(spec, defaults),
                _cell(spec.doc),
            )
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    reserved = ", ".join(f"`{g}`" for g in RESERVED_GROUPS)
    out.append(
        f"The groups {reserved} are reserved for the proxy modes to come: they may be "
        "present (empty) and hold no keys yet."
    )
    return "\n".join(out)


def _values(values: tuple[object, ...]) -> str:
    shown = ["zero"] + [f"`{v}`" for v in values]
    return ", ".join(shown)


def render_kube_proxy() -> str:
    """How each KubeProxyConfiguration field is read."""
    out = [
        '**Used.** These set the netagent setting shown; a value of `""`, `null` or `0s` '
        "means unset (the netagent default applies).",
        "",
        "| KubeProxyConfiguration field | netagent setting | notes |",
        "|---|---|---|",
    ]
    for f in kp.FIELDS:
        if f.attr:
            out.append(f"| `{f.path}` | `{BY_ATTR[f.attr].path}` | {f.note} |")
    out += [
        "",
        "**Accepted at zero or at kube-proxy's default, then ignored.** Any other value is "
        "refused by name (`config field winkernel.networkName: not supported by netagent …`). "
        'Zero means `""`, `0`, `0s`, `false`, `null`, `[]` or `{}`.',
        "",
        "| KubeProxyConfiguration field | accepted | notes |",
        "|---|---|---|",
    ]
    for f in kp.FIELDS:
        if not f.attr:
            out.append(f"| `{f.path}` | {_values(f.defaults)} | {f.note} |")
    for group, defaults in kp.OPAQUE.items():
        out.append(f"| `{group}.*` | {_values(defaults)} | every entry |")
    out += [
        "",
        f"Any field not listed here is refused as an unknown field of {kp.KIND}.",
    ]
    return "\n".join(out)


BLOCKS: dict[str, Callable[[], str]] = {"fields": render_fields, "kube-proxy": render_kube_proxy}


def _begin(name: str) -> str:
    return f"<!-- BEGIN GENERATED {name}: python -m netagent.config_docs -->"


def _end(name: str) -> str:
    return f"<!-- END GENERATED {name} -->"


def update(text: str) -> str:
    """``text`` with every generated block rewritten."""
    for name, render in BLOCKS.items():
        begin, end = _begin(name), _end(name)
        head, found, rest = text.partition(begin)
        if not found:
            raise ValueError(f"marker {begin!r} not found")
        _, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"marker {end!r} not found")
        text = f"{head}{begin}\n\n{render()}\n\n{end}{tail}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Rewrite docs/configuration.md (or, with --check, report whether it is current)."""
    parser = argparse.ArgumentParser(prog="python -m netagent.config_docs")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    parser.add_argument("--file", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    text = args.file.read_text()
    wanted = update(text)
    if args.check:
        if wanted != text:
            print(f"{args.file} is out of date: run python -m netagent.config_docs")
            return 1
        return 0
    if wanted != text:
        args.file.write_text(wanted)
        print(f"updated {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
