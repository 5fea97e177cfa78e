"""Value types of the configuration: how one raw value is checked, and how it is written back.

Why a module of its own: a value reaches the agent from three places (netagent's
own YAML file, a kube-proxy KubeProxyConfiguration file, a flag) and must be
checked the same way from each. Each :class:`ValueType` here pairs the check
(``parse``: raw value -> typed value, or a :class:`ConfigError` naming the key)
with its inverse (``dump``: typed value -> plain YAML/JSON value), so the
effective configuration can be shown (``/configz``) in a form the loader
accepts again. The field table (:mod:`netagent.config_fields`) picks one type
per field; nothing here knows about fields.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netagent.model import IPNetwork


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field by its YAML path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config field {key}: {reason}")
        self.key = key


Parse = Callable[[str, object], object]
Dump = Callable[[object], object]


def _same(value: object) -> object:
    return value


@dataclass(frozen=True, slots=True)
class ValueType:
    """One kind of value.

    Attributes:
        name: How docs/configuration.md names the type (a link target in
            "Value types" or a literal list of choices).
        parse: ``(key, raw) -> value``; raises ConfigError naming ``key``.
        dump: ``value -> plain value`` (str, int, bool, list, None) that
            ``parse`` accepts again.
        flag_type: argparse's ``type=`` for the flag (``int`` makes argparse
            refuse ``--masquerade-bit x`` itself, as before); None: a string.
        choices: The allowed values, also given to argparse.
        boolean: The flag is a ``--X``/``--no-X`` pair.
        nullable: YAML ``null`` is accepted and means "unset" (the field's
            value becomes None).
    """

    name: str
    parse: Parse
    dump: Dump = _same
    flag_type: Callable[[str], object] | None = None
    choices: tuple[str, ...] = field(default=())
    boolean: bool = False
    nullable: bool = False


# ---- checks ---------------------------------------------------------------------------------


def parse_cidrs(key: str, value: object) -> tuple[IPNetwork, ...]:
    """One string of comma-separated CIDRs, or a list of them."""
    items: list[object]
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(key, f"expected a CIDR or a list of CIDRs, got {value!r}")
    out: list[IPNetwork] = []
    for item in items:
        if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
            out.append(item)
            continue
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=True))
        except ValueError as exc:
            raise ConfigError(key, f"{item!r} is not a valid CIDR ({exc})") from None
    return tuple(out)


#: nodePortAddresses keywords (kube-proxy's) that name a fixed set of CIDRs.
NODEPORT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "all": ("0.0.0.0/0", "::/0"),
    "localhost": ("127.0.0.0/8", "::1/128"),
}


def parse_nodeport_addresses(key: str, value: object) -> tuple[IPNetwork, ...]:
    """A CIDR list that may also hold kube-proxy's keywords ``all`` and ``localhost``.

    ``primary`` (the Node object's primary IPs) is refused: the rules would
    have to follow the Node's addresses, which netagent's renderer does not do.
    """
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if isinstance(items, list | tuple):
        expanded: list[object] = []
        for item in items:
            if item == "primary":
                raise ConfigError(
                    key,
                    "the keyword 'primary' (the Node's primary addresses) is not supported "
                    "by netagent; list the CIDRs instead",
                )
            if isinstance(item, str) and item in NODEPORT_KEYWORDS:
                expanded.extend(NODEPORT_KEYWORDS[item])
            elif item != "":
                expanded.append(item)
        value = expanded
    return parse_cidrs(key, value)


_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def parse_seconds(key: str, value: object) -> float:
    """A number of seconds, or a number with one unit: ms, s, m or h. Finite and > 0."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a duration in seconds, got {value!r}")
    text = str(value).strip()
    scale = 1.0
    for suffix, mult in _UNITS:
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], mult
            break
    try:
        seconds = float(text) * scale
    except ValueError:
        raise ConfigError(key, f"must be a duration such as 1s or 30, got {value!r}") from None
    if not math.isfinite(seconds):  # inf, nan, 1e999: a timer that never (or always) fires
        raise ConfigError(key, f"must be a finite duration, got {value!r}")
    if not seconds > 0:
        raise ConfigError(key, f"must be a positive duration, got {value!r}")
    return seconds


#: The longest IPVS timeout the kernel takes (it refuses more than INT_MAX / HZ
#: with HZ up to 1000).
MAX_IPVS_TIMEOUT = 2_147_483


def parse_ipvs_timeout(key: str, value: object) -> float:
    """Whole seconds, ``0`` meaning "leave the kernel's value"; units as parse_seconds."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a duration in whole seconds, got {value!r}")
    text = str(value).strip()
    zero = go_duration_seconds(text) == 0.0 or text in ("0", "0s", "0.0")
    seconds = 0.0 if zero else parse_seconds(key, value)
    if not float(seconds).is_integer():
        raise ConfigError(key, f"must be whole seconds (the kernel counts seconds), got {value!r}")
    if seconds > MAX_IPVS_TIMEOUT:
        raise ConfigError(key, f"must be at most {MAX_IPVS_TIMEOUT}s, got {value!r}")
    return seconds


def _dump_timeout(value: object) -> object:
    assert isinstance(value, float)
    return "0s" if value == 0 else dump_seconds(value)


def dump_seconds(value: object) -> object:
    """30.0 -> ``30s``, 0.5 -> ``500ms``: the shortest spelling parse_seconds reads back."""
    assert isinstance(value, float | int)
    if float(value).is_integer():
        return f"{int(value)}s"
    millis = value * 1000
    if float(millis).is_integer():
        return f"{int(millis)}ms"
    return f"{value}s"


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float | None:
    """Seconds in a Go-style duration (``1h0m0s``, ``500ms``, ``-5s``, ``0``); None if not one.

    Kubernetes writes durations this way (kube-proxy files have ``30s``, ``1m0s``,
    ``24h0m0s``); netagent's own syntax has one unit at most.
    """
    text = text.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        return None
    total, pos = 0.0, 0
    for match in _GO_DURATION.finditer(body):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return sign * total if pos == len(body) else None


def parse_bool(key: str, value: object) -> bool:
    """A YAML boolean, or the string true/false in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(key, f"must be true or false, got {value!r}")


def parse_bind(key: str, value: object) -> str:
    """``IP:port``; an IPv6 address in brackets."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"must be host:port, got {value!r}")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ConfigError(key, f"host must be an IP address, got {host!r}") from None
    return text


def parse_node_name(key: str, value: object) -> str:
    """Any string, the empty one included (it means: take $NODE_NAME or a flag)."""
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value


def parse_text(key: str, value: object) -> str:
    """A non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value.strip()


def parse_url(key: str, value: object) -> str:
    """An http:// or https:// URL."""
    text = str(value).strip()
    if not text.startswith(("http://", "https://")):
        raise ConfigError(key, f"must be an http:// or https:// URL, got {value!r}")
    return text


def parse_ipv4(key: str, value: object) -> ipaddress.IPv4Address:
    """One IPv4 address."""
    try:
        return ipaddress.IPv4Address(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"must be an IPv4 address, got {value!r}") from None


def parse_path(key: str, value: object) -> Path:
    """A non-empty file path (not checked for existence)."""
    if value in (None, ""):
        raise ConfigError(key, "must be a file path")
    return Path(str(value))


def parse_path_or_none(key: str, value: object) -> Path | None:
    """A file path; empty or null means none."""
    return None if value in (None, "") else Path(str(value))


def integer(low: int, high: int) -> Parse:
    """An integer from ``low`` to ``high``: a YAML integer or a string of digits."""

    def parse(key: str, value: object) -> int:
        wrong = f"must be an integer {low}-{high}, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(key, wrong)
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(key, wrong) from None
        if not low <= number <= high:
            raise ConfigError(key, wrong)
        return number

    return parse


def one_of(choices: tuple[str, ...], *, yaml11_onoff: bool = False) -> Parse:
    """One of ``choices``; ``yaml11_onoff`` reads a bare YAML on/off (a boolean) as "on"/"off"."""

    def parse(key: str, value: object) -> str:
        if yaml11_onoff and isinstance(value, bool):
            value = "on" if value else "off"
        if value not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")
        assert isinstance(value, str)
        return value

    return parse


def _str_or_none(value: object) -> object:
    return None if value is None else str(value)


def _cidr_list(value: object) -> object:
    assert isinstance(value, tuple)
    return [str(n) for n in value]


def _cidr_csv(value: object) -> object:
    assert isinstance(value, tuple)
    return ",".join(str(n) for n in value)


# ---- the types the field table uses ----------------------------------------------------------

DURATION = ValueType("duration", parse_seconds, dump_seconds)
IPVS_TIMEOUT = ValueType("whole seconds, 0 = unchanged", parse_ipvs_timeout, _dump_timeout)
CIDR_LIST = ValueType("CIDR list", parse_cidrs, _cidr_csv)
NODEPORT_CIDRS = ValueType("CIDR list", parse_nodeport_addresses, _cidr_list)
#: A CIDR list written back as a YAML list (``externalIPAllowCIDRs``).
CIDR_YAML_LIST = ValueType("CIDR list", parse_cidrs, _cidr_list)
BOOLEAN = ValueType("boolean", parse_bool, boolean=True)
BIND = ValueType("host:port", parse_bind)
NODE_NAME = ValueType("string", parse_node_name)
PATH = ValueType("path", parse_path, _str_or_none)
PATH_UNSET = ValueType("path", parse_path, _str_or_none, nullable=True)
PATH_OR_NONE = ValueType('path, or `""`/`null`', parse_path_or_none, _str_or_none, nullable=True)
DIR_OR_NONE = ValueType("path, or empty/`null`", parse_path_or_none, _str_or_none, nullable=True)
URL_UNSET = ValueType("`http://` or `https://` URL", parse_url, nullable=True)
TEXT = ValueType("non-empty string", parse_text)
TEXT_UNSET = ValueType("non-empty string", parse_text, nullable=True)
IPV4_UNSET = ValueType("IPv4 address", parse_ipv4, _str_or_none, nullable=True)


def choice(choices: tuple[str, ...], *, yaml11_onoff: bool = False) -> ValueType:
    """A value from a fixed list (also the flag's argparse choices)."""
    name = " \\| ".join(f"`{c}`" for c in choices)
    return ValueType(name, one_of(choices, yaml11_onoff=yaml11_onoff), choices=choices)


def int_range(low: int, high: int) -> ValueType:
    """An integer in a range (argparse converts the flag with int())."""
    return ValueType(f"integer {low}\u2013{high}", integer(low, high), flag_type=int)
