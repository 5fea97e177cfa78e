"""Whether the VXLAN device keeps transmit checksum offload: the ``vxlanTxChecksum`` setting.

Why this exists: on Linux before 5.7, a VXLAN packet whose UDP checksum is
zero (the kernel's default for VXLAN over IPv4) could leave with a wrong
checksum after iptables NAT rewrote it when the VXLAN device had transmit
checksum offload on. Receivers dropped it, and the retransmissions made TCP
connections through NodePorts and Services stall for about 63 s
(kubernetes/kubernetes#88986, flannel-io/flannel#1279). The fix is kernel
commit "netfilter: nat: never update the UDP checksum when it's 0" (5.7).
The usual workaround is ``ethtool -K flannel.1 tx-checksum-ip-generic off``.

``auto`` (the default) applies that workaround only on kernels that need it,
because turning checksum offload off also turns off segmentation offload on
the device and costs throughput on fixed kernels. ``off`` forces it (some
virtual NICs still misbehave on newer kernels), ``on`` never applies it.
"""

from __future__ import annotations

import re

#: The values of ``vxlanTxChecksum`` / ``--vxlan-tx-checksum``.
TX_CHECKSUM_SETTINGS = ("auto", "on", "off")
#: The first kernel release with the fix.
FIXED_IN = (5, 7)


def kernel_version(release: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a ``uname -r`` string, or None if it has no version."""
    found = re.match(r"(\d+)\.(\d+)", release)
    return (int(found.group(1)), int(found.group(2))) if found else None


def tx_checksum_wanted(setting: str, release: str) -> bool:
    """Whether the VXLAN device should keep transmit checksum offload on.

    ``auto`` keeps it unless the kernel is older than 5.7; an unparseable
    release is treated as old (the workaround is safe, a stall is not).
    """
    if setting not in TX_CHECKSUM_SETTINGS:
        raise ValueError(f"vxlanTxChecksum must be one of {', '.join(TX_CHECKSUM_SETTINGS)}")
    if setting != "auto":
        return setting == "on"
    version = kernel_version(release)
    return version is not None and version >= FIXED_IN
