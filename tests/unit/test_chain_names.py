"""Chain names: our prefix, iptables' 28-character limit, stability, and no collisions at scale."""

from __future__ import annotations

import base64
import hashlib

import pytest

from netagent.model import Protocol, ServicePortName
from netagent.proxy.iptables import chain_names as cn
from netagent.proxy.iptables.rules import CHAIN_PREFIX, MAX_CHAIN_NAME

SPN = ServicePortName("default", "web", "http")
PER_PORT = (cn.service_chain, cn.external_chain, cn.firewall_chain, cn.local_chain)


def all_names(spn: ServicePortName, protocol: Protocol, endpoint: str) -> list[str]:
    return [f(spn, protocol) for f in PER_PORT] + [cn.endpoint_chain(spn, protocol, endpoint)]


@pytest.mark.parametrize("name", cn.FIXED_CHAINS)
def test_fixed_chains_are_valid(name: str) -> None:
    assert name.startswith(CHAIN_PREFIX)
    assert len(name) <= MAX_CHAIN_NAME
    assert cn.is_valid_chain_name(name)


def test_fixed_chains_are_distinct() -> None:
    assert len(set(cn.FIXED_CHAINS)) == len(cn.FIXED_CHAINS)


def test_per_service_names_have_prefix_kind_and_fit() -> None:
    long_spn = ServicePortName("n" * 63, "s" * 63, "p" * 15)
    for spn in (SPN, long_spn, ServicePortName("a", "b")):
        names = all_names(spn, Protocol.SCTP, "[2001:db8::1]:65535")
        for name in names:
            assert cn.is_valid_chain_name(name), name
        kinds = [n[len(CHAIN_PREFIX) :].split("-")[0] for n in names]
        assert kinds == ["SVC", "EXT", "FW", "SVL", "SEP"]


def test_names_are_stable_and_documented_encoding() -> None:
    # The hash is the first 12 base32 characters of SHA-256 over the port key.
    key = cn.port_key(SPN, Protocol.TCP)
    digest = hashlib.sha256(key.encode()).digest()
    expected = base64.b32encode(digest).decode()[: cn.HASH_CHARS]
    assert cn.service_chain(SPN, Protocol.TCP) == f"{CHAIN_PREFIX}SVC-{expected}"
    sep_digest = hashlib.sha256(f"{key}/10.0.0.1:80".encode()).digest()
    sep = base64.b32encode(sep_digest).decode()[: cn.HASH_CHARS]
    assert cn.endpoint_chain(SPN, Protocol.TCP, "10.0.0.1:80") == f"{CHAIN_PREFIX}SEP-{sep}"


def test_service_port_chains_match_single_functions() -> None:
    chains = cn.service_port_chains(SPN, Protocol.UDP)
    assert chains == tuple(f(SPN, Protocol.UDP) for f in PER_PORT)


def test_names_depend_on_every_part() -> None:
    base = cn.service_chain(SPN, Protocol.TCP)
    assert cn.service_chain(SPN, Protocol.UDP) != base
    assert cn.service_chain(ServicePortName("default", "web", "https"), Protocol.TCP) != base
    assert cn.service_chain(ServicePortName("other", "web", "http"), Protocol.TCP) != base
    # "a/bc" + port "" and "a/b" + port "c" must not share a key.
    assert cn.port_key(ServicePortName("a", "bc"), Protocol.TCP) != cn.port_key(
        ServicePortName("a", "b", "c"), Protocol.TCP
    )
    one = cn.endpoint_chain(SPN, Protocol.TCP, "10.0.0.1:80")
    assert one != cn.endpoint_chain(SPN, Protocol.TCP, "10.0.0.1:81")
    assert one != cn.endpoint_chain(SPN, Protocol.UDP, "10.0.0.1:80")


def test_no_collisions_across_ten_thousand_services() -> None:
    # SVC, EXT, FW and SVL share one hash per port, so SVC names stand for all four.
    seen: set[str] = set()
    count = 0
    for i in range(10_000):
        spn = ServicePortName(f"ns-{i % 37}", f"svc-{i}", "http" if i % 2 else "")
        protocol = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)[i % 3]
        names = [cn.service_chain(spn, protocol)]
        names += [
            cn.endpoint_chain(spn, protocol, f"10.{i >> 8}.{i & 255}.{j}:8080") for j in (1, 2)
        ]
        seen.update(names)
        count += len(names)
    assert len(seen) == count == 30_000
