"""netagent's iptables objects as comparable :class:`~netagent.proxy.proxier.OwnedObject` values.

Why: ``netagent debug`` compares what netagent would write with what the
kernel holds, without knowing the backend. This module is the iptables
mode's half of that: it turns a :class:`RenderedIptables` (pure) and an
``iptables-save`` text (the kernel) into the same shape — one ``chain``
object per owned chain with its rule lines, one ``jump`` object per jump
rule from a built-in chain — so two sets compare with ``==``.

Normalisation: ``iptables-save`` does not print rules the way they were
written. It moves ``-s``/``-d``/``-p`` to the front, quantises
``--probability`` to the kernel's 31-bit fixed point, spells ``--or-mark``
as ``--set-xmark``, adds ``--reject-with`` and ``recent``'s ``--mask`` /
``--rsource`` defaults, and re-quotes comments. Both sides therefore pass
through :func:`canonical_rule`, which rewrites every one of those to one
spelling, so a freshly applied ruleset compares equal to the rendered one
(checked against the real kernel in tests/lab/test_debug_lab.py).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Mapping

from netagent.model import ProxyState
from netagent.proxy.iptables import chain_names as cn
from netagent.proxy.iptables.apply import CANARY_CHAIN, CANARY_TABLES
from netagent.proxy.iptables.rules import BUILTIN_CHAINS, TABLE_ORDER, RenderedIptables
from netagent.proxy.iptables.runner import parse_save
from netagent.proxy.proxier import OwnedObject

CHAIN = "chain"
JUMP = "jump"
NODE_OWNER = "node"
OVERLAY_OWNER = "overlay"
_OVERLAY_PREFIX = "NETAGENT-OVERLAY-"

_BASE = {
    "-s": "-s",
    "--source": "-s",
    "-d": "-d",
    "--destination": "-d",
    "-i": "-i",
    "--in-interface": "-i",
    "-o": "-o",
    "--out-interface": "-o",
    "-p": "-p",
    "--protocol": "-p",
}
_BASE_ORDER = ("-s", "-d", "-i", "-o", "-p")
#: Options that take no value (matches and targets alike).
_FLAGS = frozenset(
    {
        "--set",
        "--rcheck",
        "--update",
        "--remove",
        "--reap",
        "--rsource",
        "--rdest",
        "--random",
        "--random-fully",
        "--persistent",
        "--limit-iface-in",
        "--limit-iface-out",
    }
)
_DEFAULT_OPTIONS = frozenset(
    {
        ("--mask", "255.255.255.255"),
        ("--mask", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ("--rsource", ""),
        ("--reject-with", "icmp-port-unreachable"),
        ("--reject-with", "icmp6-port-unreachable"),
    }
)
_FULL_MASK = 0xFFFFFFFF


def _quote(token: str) -> str:
    if token and all(c.isalnum() or c in "-_./:,=+[]!@%^" for c in token):
        return token
    escaped = token.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return value


def _probability(value: str) -> str:
    """The kernel's spelling: 31-bit fixed point, printed with 11 decimals."""
    try:
        fixed = round(float(value) * 0x80000000)
    except ValueError:
        return value
    return f"{fixed / 0x80000000:.11f}"


def _mark(value: str) -> str:
    v, _, m = value.partition("/")
    try:
        return f"{int(v, 0):#x}/{int(m, 0) if m else _FULL_MASK:#x}"
    except ValueError:
        return value


def _xmark(option: str, value: str) -> tuple[str, str]:
    """``MARK`` target options as the ``--set-xmark value/mask`` iptables-save prints."""
    v, _, m = value.partition("/")
    try:
        n = int(v, 0)
        mask = int(m, 0) if m else _FULL_MASK
    except ValueError:
        return option, value
    if option == "--or-mark":
        return "--set-xmark", f"{n:#x}/{n:#x}"
    if option == "--xor-mark":
        return "--set-xmark", f"{n:#x}/0x0"
    if option == "--and-mark":
        return "--set-xmark", f"0x0/{~n & _FULL_MASK:#x}"
    if option == "--set-mark":
        return "--set-xmark", f"{n:#x}/{(mask | n) & _FULL_MASK:#x}"
    return "--set-xmark", f"{n:#x}/{mask:#x}"


def _value(option: str, value: str) -> str:
    if option == "--probability":
        return _probability(value)
    if option == "--mark":
        return _mark(value)
    if option in ("--ctstate", "--state"):
        return ",".join(sorted(value.split(",")))
    return value


def canonical_rule(line: str) -> str:
    """One spelling of an ``-A CHAIN ...`` line, whoever printed it (see the module docstring).

    Lines it cannot split (unbalanced quotes) are returned unchanged, so
    they still compare, only less forgivingly.
    """
    try:
        tokens = shlex.split(line)
    except ValueError:
        return line
    if len(tokens) < 2 or tokens[0] not in ("-A", "--append"):
        return line
    head = f"-A {tokens[1]}"
    base: dict[str, str] = {}
    modules: list[tuple[str, list[str]]] = []
    target: list[str] = []
    target_opts: list[str] = []
    i, negate = 2, False
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if tok == "!":
            negate = True
            continue
        prefix = "! " if negate else ""
        negate = False
        if tok in _BASE and i < len(tokens):
            key = _BASE[tok]
            value = tokens[i]
            i += 1
            if key in ("-s", "-d"):
                value = _address(value)
            elif key == "-p":
                value = value.lower()
            base[key] = f"{prefix}{key} {_quote(value)}"
        elif tok in ("-m", "--match") and i < len(tokens):
            modules.append((tokens[i], []))
            i += 1
        elif tok in ("-j", "--jump", "-g", "--goto") and i < len(tokens):
            target = ["-g" if tok in ("-g", "--goto") else "-j", tokens[i]]
            i += 1
        elif tok.startswith("--"):
            value = ""
            if tok not in _FLAGS and i < len(tokens):
                value = tokens[i]
                i += 1
            if target:
                option = tok
                if target[1] == "MARK":
                    option, value = _xmark(tok, value)
                if (option, value) in _DEFAULT_OPTIONS:
                    continue
                target_opts.append(f"{option} {_quote(value)}" if value else option)
            else:
                if (tok, value) in _DEFAULT_OPTIONS:
                    continue
                text = f"{prefix}{tok}" + (f" {_quote(_value(tok, value))}" if value else "")
                if modules:
                    modules[-1][1].append(text)
                else:
                    modules.append(("", [text]))
        else:
            target_opts.append(_quote(tok))
    parts = [head]
    parts += [base[k] for k in _BASE_ORDER if k in base]
    for module, options in modules:
        if module:
            parts.append(f"-m {module}")
        parts += sorted(options, key=lambda o: o.removeprefix("! "))
    parts += target
    parts += target_opts
    return " ".join(parts)


def _default_owner(chain: str) -> str:
    return OVERLAY_OWNER if chain.startswith(_OVERLAY_PREFIX) else NODE_OWNER


def chain_owners(state: ProxyState) -> dict[str, str]:
    """Chain name -> ``ns/name:port`` for every per-service and per-endpoint chain of ``state``.

    Endpoint chains are named for every endpoint of the port, a superset of
    the ones a render writes (those that some traffic can reach).
    """
    owners: dict[str, str] = {}
    v6 = state.family.value == "IPv6"
    for spn, svc in state.services.items():
        owner = str(spn)
        for name in cn.service_port_chains(spn, svc.protocol):
            owners[name] = owner
        key = cn.port_key(spn, svc.protocol)
        for ep in state.endpoints.get(spn, ()):
            text = f"[{ep.ip}]:{ep.port}" if v6 else f"{ep.ip}:{ep.port}"
            owners[cn.endpoint_chain_for_key(key, text)] = owner
    return owners


def _jump_target(line: str) -> str | None:
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    for i, token in enumerate(tokens[:-1]):
        if token in ("-j", "--jump", "-g", "--goto"):
            return tokens[i + 1]
    return None


def _jump_object(table: str, chain: str, line: str, target: str) -> OwnedObject:
    return OwnedObject(
        kind=JUMP,
        key=f"{table} {chain} -> {target}",
        content=(canonical_rule(line),),
        owner=_default_owner(target),
    )


def owned_objects(rendered: RenderedIptables, owners: Mapping[str, str]) -> tuple[OwnedObject, ...]:
    """What applying ``rendered`` leaves in the kernel, as owned objects, sorted.

    The applier's canary chains (empty, in mangle, nat and filter) are
    included: a sync creates them too.
    """
    objects: list[OwnedObject] = []
    for table, chains in rendered.tables.items():
        for chain, rules in chains.items():
            objects.append(
                OwnedObject(
                    kind=CHAIN,
                    key=f"{table} {chain}",
                    content=tuple(canonical_rule(r) for r in rules),
                    owner=owners.get(chain, _default_owner(chain)),
                )
            )
    for table in CANARY_TABLES:
        objects.append(OwnedObject(kind=CHAIN, key=f"{table} {CANARY_CHAIN}", owner=NODE_OWNER))
    for jump in rendered.jumps:
        line = f"-A {jump.chain} {jump.spec}"
        target = _jump_target(line) or "?"
        objects.append(_jump_object(jump.table, jump.chain, line, target))
    return tuple(sorted(set(objects)))


def _comment_owner(rules: Iterable[str]) -> str | None:
    """``ns/name:port`` from the first rule comment that starts with one (per-service chains)."""
    for line in rules:
        marker = line.find("--comment")
        if marker < 0:
            continue
        try:
            comment = shlex.split(line[marker:])[1]
        except (ValueError, IndexError):
            continue
        first = comment.split(" ", 1)[0]
        if "/" in first:
            return first
    return None


def kernel_owned_objects(save_text: str) -> tuple[OwnedObject, ...]:
    """netagent's chains and the jump rules into them, from ``iptables-save`` text, sorted.

    Owners come from the rule comments (the kernel knows nothing else):
    per-service chains name their service port in every comment.
    Raises ValueError on text that is not iptables-save output.
    """
    objects: list[OwnedObject] = []
    tables = parse_save(save_text)
    for table in sorted(tables, key=lambda t: (*TABLE_ORDER, t).index(t)):
        saved = tables[table]
        builtins = BUILTIN_CHAINS.get(table, ())
        for chain in saved.chains:
            rules = saved.rules.get(chain, [])
            if chain.startswith(cn.PER_SERVICE_PREFIXES):
                owner = _comment_owner(rules) or "unknown"
            else:
                owner = _default_owner(chain)
            if chain.startswith("NETAGENT-"):
                objects.append(
                    OwnedObject(
                        kind=CHAIN,
                        key=f"{table} {chain}",
                        content=tuple(canonical_rule(r) for r in rules),
                        owner=owner,
                    )
                )
            elif chain in builtins:
                seen: dict[str, int] = {}
                for line in rules:
                    target = _jump_target(line)
                    if target is None or not target.startswith("NETAGENT-"):
                        continue
                    obj = _jump_object(table, chain, line, target)
                    count = seen[obj.key] = seen.get(obj.key, 0) + 1
                    if count > 1:  # a second copy is not netagent's: report it as such
                        obj = OwnedObject(JUMP, f"{obj.key} #{count}", obj.content, obj.owner)
                    objects.append(obj)
    return tuple(sorted(objects))
