"""Names of the iptables chains netagent owns, fixed and per service.

Why hashed names: a chain name is limited to 28 characters, far shorter than
``namespace/name:port``. Each per-service and per-endpoint chain therefore
carries a short, stable hash of what it stands for, so the same service gets
the same chain on every sync and on every node. Stability is what makes
partial syncs cheap: a chain whose name and rules did not change is not
rewritten.

The hash is the first 12 base32 characters (60 bits) of a SHA-256 digest of
an unambiguous description of the object. At 100,000 chains the chance that
two collide is about 1 in 10^8; a collision test over 10,000 services keeps
the encoding honest. Every name starts with
:data:`~netagent.proxy.iptables.rules.CHAIN_PREFIX`, so the applier's rule
"touch only chains with our prefix" covers all of them.
"""

from __future__ import annotations

import hashlib
import logging
from typing import NamedTuple

from netagent.model import Protocol, ServicePortName
from netagent.proxy.iptables.rules import CHAIN_PREFIX, MAX_CHAIN_NAME

log = logging.getLogger(__name__)

#: Characters of base32 kept from the digest (60 bits).
HASH_CHARS = 12

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# Two base32 characters per 10-bit value. base32 encodes the digest's bits
# most significant first, 5 at a time, so 12 characters are the top 60 bits
# and six table lookups give exactly what ``base64.b32encode`` would, at a
# fraction of its cost (it is pure Python); 100,000 endpoint chains are
# named on a cold render.
_PAIRS = tuple(_BASE32[i >> 5] + _BASE32[i & 31] for i in range(1024))

#: nat: entry point from PREROUTING and OUTPUT; one dispatch rule per service address.
SERVICES = f"{CHAIN_PREFIX}SERVICES"
#: nat: NodePort dispatch (reached last from SERVICES); filter: health-check NodePorts.
NODEPORTS = f"{CHAIN_PREFIX}NODEPORTS"
#: nat: from POSTROUTING; masquerades packets that carry the mark.
POSTROUTING = f"{CHAIN_PREFIX}POSTROUTING"
#: nat: sets the masquerade mark.
MARK_MASQ = f"{CHAIN_PREFIX}MARK-MASQ"
#: nat: marks for masquerade unless the source is in one of several pod CIDRs.
MARK_MASQ_NON_POD = f"{CHAIN_PREFIX}MASQ-NON-POD"
#: filter: rejects or drops new connections to node ports, external and LB IPs.
EXTERNAL_SERVICES = f"{CHAIN_PREFIX}EXTERNAL-SERVICES"
#: filter: drops traffic to LB IPs that the nat FW chains did not let through.
PROXY_FIREWALL = f"{CHAIN_PREFIX}PROXY-FIREWALL"
#: filter: accepts forwarded service traffic despite a FORWARD DROP policy.
FORWARD = f"{CHAIN_PREFIX}FORWARD"
#: filter: the localhost NodePort martian drop (CVE-2020-8558).
FIREWALL = f"{CHAIN_PREFIX}FIREWALL"

FIXED_CHAINS = (
    SERVICES,
    NODEPORTS,
    POSTROUTING,
    MARK_MASQ,
    MARK_MASQ_NON_POD,
    EXTERNAL_SERVICES,
    PROXY_FIREWALL,
    FORWARD,
    FIREWALL,
)

_SVC = f"{CHAIN_PREFIX}SVC-"
_EXT = f"{CHAIN_PREFIX}EXT-"
_FW = f"{CHAIN_PREFIX}FW-"
_SVL = f"{CHAIN_PREFIX}SVL-"
_SEP = f"{CHAIN_PREFIX}SEP-"

#: Prefixes of every per-service and per-endpoint chain.
PER_SERVICE_PREFIXES = (_SVC, _EXT, _FW, _SVL, _SEP)


def _hash(text: str) -> str:
    """First :data:`HASH_CHARS` base32 characters of the SHA-256 of ``text``."""
    n = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 4
    p = _PAIRS
    return (
        p[n >> 50]
        + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023]
        + p[(n >> 20) & 1023]
        + p[(n >> 10) & 1023]
        + p[n & 1023]
    )


def port_key(spn: ServicePortName, protocol: Protocol) -> str:
    """The text hashed for a service port's chains; endpoint chains extend it.

    Separators that cannot occur in validated names keep it unambiguous.
    """
    return f"{spn.namespace}/{spn.name}:{spn.port}/{protocol.value}"


def service_port_hash(spn: ServicePortName, protocol: Protocol) -> str:
    """The hash shared by a service port's SVC, EXT, FW and SVL chains."""
    return _hash(port_key(spn, protocol))


def service_chain(spn: ServicePortName, protocol: Protocol) -> str:
    """The chain that load-balances over the Cluster-policy endpoints."""
    return _SVC + service_port_hash(spn, protocol)


def external_chain(spn: ServicePortName, protocol: Protocol) -> str:
    """The chain for traffic to NodePorts, external IPs and LB IPs."""
    return _EXT + service_port_hash(spn, protocol)


def firewall_chain(spn: ServicePortName, protocol: Protocol) -> str:
    """The chain that applies loadBalancerSourceRanges to LB IP traffic."""
    return _FW + service_port_hash(spn, protocol)


def local_chain(spn: ServicePortName, protocol: Protocol) -> str:
    """The chain that load-balances over this node's endpoints only."""
    return _SVL + service_port_hash(spn, protocol)


def endpoint_chain(spn: ServicePortName, protocol: Protocol, endpoint: str) -> str:
    """The chain that DNATs to one endpoint (``endpoint`` as ``ip:port`` / ``[ip]:port``)."""
    return endpoint_chain_for_key(port_key(spn, protocol), endpoint)


def endpoint_chain_for_key(key: str, endpoint: str) -> str:
    """:func:`endpoint_chain` given the service port's :func:`port_key`, computed once."""
    return _SEP + _hash(f"{key}/{endpoint}")


class ServicePortChains(NamedTuple):
    """The four per-service-port chain names, from one hash."""

    service: str
    external: str
    firewall: str
    local: str


def service_port_chains(spn: ServicePortName, protocol: Protocol) -> ServicePortChains:
    """SVC, EXT, FW and SVL names of one service port (hashing once, for speed)."""
    h = service_port_hash(spn, protocol)
    return ServicePortChains(_SVC + h, _EXT + h, _FW + h, _SVL + h)


def is_valid_chain_name(name: str) -> bool:
    """True for a name netagent may own: our prefix and within iptables' length limit."""
    return name.startswith(CHAIN_PREFIX) and len(name) <= MAX_CHAIN_NAME
