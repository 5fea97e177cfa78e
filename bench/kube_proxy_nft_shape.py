"""A kube-proxy-nftables-*shaped* ruleset, generated from a ProxyState, for ``nft -f``.

This is the denominator of the nftables benchmarks (../shared/PERF.md: netagent's
full sync must be >= 25x faster than this shape measured in the same run). It is
written from the published description of kube-proxy's nftables mode (see
../shared/ANCHORS.md), not from its code, and reproduces what makes that mode
slow to load at scale: one chain per service and one chain per endpoint.

Shape (``table ip kube-proxy``):

* a verdict map ``service-ips`` typed ``ipv4_addr . inet_proto . inet_service :
  verdict`` with one element per (cluster IP, protocol, port) that does
  ``goto service-<id>``; the ``services`` chain looks it up with
  ``ip daddr . meta l4proto . th dport vmap @service-ips``;
* per service port a chain ``service-<id>``: a rule marking traffic from
  outside the cluster CIDR for masquerade, then ``numgen random mod N vmap
  { 0 : goto endpoint-<id>-0, ... }``;
* per endpoint a chain ``endpoint-<id>-<j>``: ``ip saddr <ep> jump
  mark-for-masquerade`` (hairpin) and ``meta l4proto tcp dnat to <ip>:<port>``;
* ``mark-for-masquerade`` (sets 0x4000), ``masquerading`` (returns unmarked
  packets, clears the bit, ``masquerade fully-random``), and the base chains
  ``nat-prerouting`` / ``nat-output`` (dstnat, jump services) and
  ``nat-postrouting`` (srcnat, jump masquerading).

``<id>`` is an 8-hex-digit hash of the service port name followed by a readable
``namespace/name/protocol/port``, the way kube-proxy makes chain names unique
and readable. The text is a transaction of ``add`` commands for a *first load
into an empty namespace* (no ``flush`` or ``delete``). Left out on purpose,
because they do not change the per-service cost being compared: the filter
table (no-endpoint rejects, the cluster-ips set, firewall chains), node ports,
external/LB IPs and session affinity. Services without endpoints are skipped.

Generate and look at it, or load it into a namespace yourself::

    .venv/bin/python bench/kube_proxy_nft_shape.py --services 1000 --endpoints 10 > /tmp/kp.nft
    ip netns add kp-test && ip netns exec kp-test nft -f /tmp/kp.nft; ip netns del kp-test
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netagent.model import IPFamily, ProxyState, ServicePort, ServicePortName

TABLE = "ip kube-proxy"
MASQ_MARK = "0x4000"


def chain_id(spn: ServicePortName, protocol: str) -> str:
    """``<hash8>-<namespace>/<name>/<protocol>/<port>``: unique and readable."""
    readable = f"{spn.namespace}/{spn.name}/{protocol}/{spn.port}"
    return f"{hashlib.sha256(readable.encode()).hexdigest()[:8]}-{readable}"


def _service_lines(svc: ServicePort, state: ProxyState) -> list[str]:
    proto = svc.protocol.value.lower()
    sid = chain_id(svc.name, proto)
    schain = f"service-{sid}"
    lines = [f"add chain {TABLE} {schain}"]
    eps = [e for e in state.endpoints.get(svc.name, ()) if e.ready]
    cidrs = [str(c) for c in state.config.cluster_cidrs if c.version == 4]
    for cip in svc.cluster_ips:
        if cip.version != 4:
            continue
        if cidrs:
            src = cidrs[0] if len(cidrs) == 1 else "{ " + ", ".join(cidrs) + " }"
            lines.append(
                f"add rule {TABLE} {schain} ip daddr {cip} {proto} dport {svc.port}"
                f" ip saddr != {src} jump mark-for-masquerade"
            )
    echains = [f"endpoint-{sid}-{j}" for j in range(len(eps))]
    # A vmap may only name chains that exist: declare the endpoint chains first.
    lines.extend(f"add chain {TABLE} {echain}" for echain in echains)
    targets = ", ".join(f"{j} : goto {c}" for j, c in enumerate(echains))
    lines.append(f"add rule {TABLE} {schain} numgen random mod {len(eps)} vmap {{ {targets} }}")
    for echain, ep in zip(echains, eps, strict=True):
        lines.append(f"add rule {TABLE} {echain} ip saddr {ep.ip} jump mark-for-masquerade")
        lines.append(f"add rule {TABLE} {echain} meta l4proto {proto} dnat to {ep.ip}:{ep.port}")
    for cip in svc.cluster_ips:
        if cip.version == 4:
            lines.append(
                f"add element {TABLE} service-ips"
                f" {{ {cip} . {proto} . {svc.port} : goto {schain} }}"
            )
    return lines


def render_kube_proxy_shape(state: ProxyState) -> str:
    """The ``nft -f`` text of the kube-proxy-shaped ruleset for ``state`` (IPv4 only)."""
    if state.family is not IPFamily.IPV4:
        raise ValueError("the kube-proxy shape is generated for IPv4 only")
    lines = [
        f'add table {TABLE} {{ comment "kube-proxy-shaped ruleset (netagent benchmark)" ; }}',
        f"add chain {TABLE} mark-for-masquerade",
        f"add rule {TABLE} mark-for-masquerade meta mark set meta mark or {MASQ_MARK}",
        f"add chain {TABLE} masquerading",
        f"add rule {TABLE} masquerading meta mark and {MASQ_MARK} == 0 return",
        f"add rule {TABLE} masquerading meta mark set meta mark xor {MASQ_MARK}",
        f"add rule {TABLE} masquerading masquerade fully-random",
        f"add chain {TABLE} services",
        f"add map {TABLE} service-ips"
        " { type ipv4_addr . inet_proto . inet_service : verdict ;"
        ' comment "ClusterIP traffic" ; }',
        f"add rule {TABLE} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add chain {TABLE} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add rule {TABLE} nat-prerouting jump services",
        f"add chain {TABLE} nat-output {{ type nat hook output priority -100 ; }}",
        f"add rule {TABLE} nat-output jump services",
        f"add chain {TABLE} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        f"add rule {TABLE} nat-postrouting jump masquerading",
    ]
    for name in sorted(state.services):
        svc = state.services[name]
        if any(e.ready for e in state.endpoints.get(name, ())):
            lines.extend(_service_lines(svc, state))
    return "\n".join(lines) + "\n"


def shape_counts(text: str) -> dict[str, int]:
    """Chains, rules and map elements in a generated text (for the report)."""
    return {
        "chains": text.count("\nadd chain "),
        "rules": text.count("\nadd rule "),
        "elements": text.count("\nadd element "),
        "bytes": len(text.encode()),
    }


def main() -> int:
    from bench.synthetic import build_state

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    args = parser.parse_args()
    sys.stdout.write(render_kube_proxy_shape(build_state(args.services, args.endpoints)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
