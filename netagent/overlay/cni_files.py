"""The two files that hand the node's pod subnet to the container runtime.

Why files: the runtime's CNI plugins, not the agent, set up each pod's
interface. They learn the subnet from ``/etc/cni/net.d/10-netagent.conflist``
(the bridge plugin with host-local IPAM) and, for tooling written for
flannel, from ``/run/flannel/subnet.env``.

Both are written atomically (a temporary file in the same directory, fsync,
rename, fsync of the directory), so a runtime reading them never sees half a
file, even after a crash. The temporary name starts with a dot and ends in
``.tmp``, so the runtime, which loads ``*.conf``, ``*.conflist`` and ``*.json``,
never picks it up. The files are ``0644`` and owned by the agent; a symlink
planted at either path (or at a temporary name) is never followed: the
rename replaces the link, and its target is neither read nor written. A
file whose content and mode are already right is not rewritten: the writers
return whether they changed anything, and a runtime watching the directory
is not woken for nothing.

``ipMasq`` is off in the bridge plugin: masquerading is netagent's job
(:mod:`netagent.overlay.masquerade_render`), done once per node and not once
per pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from netagent.overlay.model import DEFAULT_BRIDGE, IPv4Network

DEFAULT_SUBNET_ENV = Path("/run/flannel/subnet.env")
DEFAULT_CNI_CONFLIST = Path("/etc/cni/net.d/10-netagent.conflist")
DEFAULT_CNI_NAME = "cbr0"
CNI_VERSION = "1.0.0"


def gateway_of(subnet: IPv4Network) -> str:
    """The bridge's address in the pod subnet: its first host address."""
    return str(subnet.network_address + 1)


def subnet_env_text(network: IPv4Network, subnet: IPv4Network, mtu: int, ip_masq: bool) -> str:
    """``subnet.env`` content; FLANNEL_SUBNET is the bridge IP with the subnet's prefix length."""
    return (
        f"FLANNEL_NETWORK={network}\n"
        f"FLANNEL_SUBNET={gateway_of(subnet)}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n"
    )


def cni_conflist(
    subnet: IPv4Network,
    mtu: int,
    *,
    name: str = DEFAULT_CNI_NAME,
    bridge: str = DEFAULT_BRIDGE,
) -> dict[str, Any]:
    """The CNI network configuration list: bridge (host-local IPAM) then portmap."""
    return {
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "hairpinMode": True,
                "ipMasq": False,
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(subnet), "gateway": gateway_of(subnet)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def cni_conflist_text(
    subnet: IPv4Network,
    mtu: int,
    *,
    name: str = DEFAULT_CNI_NAME,
    bridge: str = DEFAULT_BRIDGE,
) -> str:
    """:func:`cni_conflist` as the exact file text (indented JSON, trailing newline)."""
    return json.dumps(cni_conflist(subnet, mtu, name=name, bridge=bridge), indent=2) + "\n"


def _already_written(path: Path, text: str, mode: int) -> bool:
    """Whether ``path`` is a regular file (not a symlink) with ``text`` and ``mode``.

    Opened with O_NOFOLLOW, so a symlink planted at ``path`` is never read
    through: it counts as "not written" and gets replaced by a file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # missing, a symlink (ELOOP), unreadable: write it
        return False
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            return False
        try:
            return f.read(len(text.encode()) + 1) == text.encode()
        except OSError:
            return False


def atomic_write(path: Path, text: str, *, mode: int = 0o644) -> bool:
    """Write ``text`` to ``path`` atomically; False (and no write) when it is already there.

    The temporary file gets a random name in the same directory, created
    with O_EXCL (``mkstemp``), so a file or symlink planted under any name
    is never written through; its mode is set on the open descriptor before
    the rename. The rename replaces a symlink at ``path`` itself, never its
    target.
    """
    path = Path(path)
    if _already_written(path, text, mode):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return True


def write_subnet_env(
    path: Path, network: IPv4Network, subnet: IPv4Network, mtu: int, ip_masq: bool
) -> bool:
    """Write ``subnet.env``; True when it changed."""
    return atomic_write(path, subnet_env_text(network, subnet, mtu, ip_masq))


def write_cni_conflist(
    path: Path,
    subnet: IPv4Network,
    mtu: int,
    *,
    name: str = DEFAULT_CNI_NAME,
    bridge: str = DEFAULT_BRIDGE,
) -> bool:
    """Write the CNI conflist; True when it changed."""
    return atomic_write(path, cni_conflist_text(subnet, mtu, name=name, bridge=bridge))


def remove_files(paths: Iterable[Path]) -> list[Path]:
    """Delete the files that exist (cleanup); returns the ones removed."""
    removed: list[Path] = []
    for p in paths:
        try:
            Path(p).unlink()
        except FileNotFoundError:
            continue
        removed.append(Path(p))
    return removed
