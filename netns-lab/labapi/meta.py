"""Object metadata rules: names, generated name suffixes, uids and timestamps.

Why it exists: the store, the Service strategy and the EndpointSlice controller
all stamp or check metadata the way the real API server does (RFC 3339 UTC
timestamps, DNS-style names, ``generateName`` + 5 random characters). Keeping
those rules together avoids three slightly different copies.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import string
import uuid

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
_rng = random.Random()


def now_rfc3339() -> str:
    """Second precision, like ``metadata.creationTimestamp``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(when: float) -> str:
    """Fractional seconds, like ``endpoints.kubernetes.io/last-change-trigger-time``."""
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def name_suffix(length: int = 5) -> str:
    return "".join(_rng.choice(_SUFFIX_ALPHABET) for _ in range(length))


def generated_name(prefix: str) -> str:
    """``generateName`` semantics: the prefix (cut to fit 63 chars) plus 5 random chars."""
    return prefix[: 63 - 5] + name_suffix()


def name_problem(name: str, rule: str) -> str | None:
    """Why ``name`` breaks ``rule`` (dns1123-label, dns1035-label, dns1123-subdomain)."""
    if rule == "dns1035-label":
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            return ("a DNS-1035 label must consist of lower case alphanumeric characters or "
                    "'-', start with an alphabetic character, and end with an alphanumeric "
                    "character")
        return None
    if rule == "dns1123-label":
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return ("a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character")
        return None
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character")
    return None
