"""Run a command inside Debian 12's stock kernel under qemu, on the host's own file system.

Why a VM at all: this machine's kernel has no IPVS (nor loadable modules),
and IPVS is a kernel feature no namespace can fake. Debian's stock kernel has
it as modules and boots under qemu here (TCG only: a KVM guest hangs).

Why this shape:

* The guest runs the *host's* userland. The host root is shared read-only
  over 9p and made writable with an overlayfs on a tmpfs, so the venv, the
  repo and the kernel tools are exactly the host's, nothing is copied, and
  whatever the guest writes is thrown away when it powers off.
* The initramfs is tiny: a static busybox and the handful of modules needed
  to reach the 9p share (virtio, 9p, overlay). Every other module comes from
  the extracted kernel package, bind-mounted at ``/lib/modules/<version>``
  in the guest, and is loaded by the host's own kmod ``modprobe`` after
  ``switch_root``; because the new root becomes the real root, the kernel's
  on-demand module loading (``/sbin/modprobe``) works too.
* Two read-write 9p shares reach back to the host: a per-run control
  directory (the job script in, the exit status out) and a results directory
  (JUnit files, logs), mounted in the guest at the same path as on the host.
  The exit status travels through a file, not the console, so nothing the
  command prints can fake it.
* The guest has no network device (``-nic none``); nothing is configured on
  the host's network, and qemu is killed on every exit path.

The kernel package is downloaded and extracted once per package version into
``/var/cache/netagent-vm``; the per-run directory is removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TextIO

DEFAULT_CACHE = Path("/var/cache/netagent-vm")

#: Debian packages the VM needs on the host: qemu, the initramfs' busybox and
#: cpio, kmod (depmod on the host, modprobe in the guest), and the kernel
#: tools the guest's tests call (ipvsadm is for test assertions only).
HOST_PACKAGES: dict[str, str] = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "busybox-static": "/bin/busybox",
    "cpio": "/usr/bin/cpio",
    "kmod": "/usr/bin/kmod",
    "ipvsadm": "/usr/sbin/ipvsadm",
    "ipset": "/usr/sbin/ipset",
    "nftables": "/usr/sbin/nft",
    "iptables": "/usr/sbin/iptables",
    "iproute2": "/usr/bin/ip",
}

KERNEL_META = "linux-image-amd64"

#: Loaded by busybox ``insmod`` in the initramfs, with their dependencies:
#: just enough to mount the host root.
EARLY_MODULES = ("virtio_pci", "virtio_rng", "9pnet_virtio", "9p", "overlay")

#: Loaded in the guest before the command runs. The host's kernel has all of
#: these built in, so the lab finds them loaded there too; br_netfilter is
#: here because the lab writes ``net.bridge.*`` sysctls, which exist only
#: once it is loaded. A name this kernel does not have is logged, not fatal.
GUEST_MODULES: tuple[str, ...] = (
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_mh",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    "nfnetlink",
    "nf_tables",
    "nft_compat",
    "nft_nat",
    "nft_chain_nat",
    "nft_ct",
    "nft_numgen",
    "nft_fib",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_fib_inet",
    "nft_masq",
    "nft_redir",
    "nft_reject",
    "nft_reject_inet",
    "nft_limit",
    "nft_hash",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "iptable_raw",
    "ip6_tables",
    "ip6table_filter",
    "ip6table_nat",
    "ip6table_mangle",
    "ip6table_raw",
    "x_tables",
    "xt_comment",
    "xt_mark",
    "xt_addrtype",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_statistic",
    "xt_recent",
    "xt_multiport",
    "xt_tcpudp",
    "xt_set",
    "xt_REDIRECT",
    "xt_CT",
    "xt_NFQUEUE",
    "xt_LOG",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_hash_netport",
    "ip_set_hash_netiface",
    "ip_set_bitmap_port",
    "dummy",
    "veth",
    "bridge",
    "br_netfilter",
    "vxlan",
    "tun",
)

#: Bump when the init script or the early module set changes (rebuilds the initramfs).
INITRAMFS_RECIPE = 1

READY_MARK = "netagent-vm: ready"

#: Stage 1, PID 1 in the initramfs (busybox sh): mount the host root as an
#: overlay, the control and results shares, and switch_root into it.
INIT_SCRIPT = r"""#!/bin/busybox sh
# netagent-vm stage 1 (initramfs): host root over 9p + overlay, then switch_root.
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev /lower /rw /newroot /ctl
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
say() { echo "netagent-vm: $*"; }
die() { say "FATAL: $*"; poweroff -f; sleep 10; exit 1; }
while read -r mod; do
  insmod "/early/$mod" || say "insmod $mod failed"
done </early/order
P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$P9" ctl /ctl || die "cannot mount the control share"
. /ctl/config
mount -t 9p -o "$P9,ro" hostroot /lower || die "cannot mount the host root (9p)"
mount -t tmpfs -o mode=0755 tmpfs /rw || die "cannot mount the overlay's tmpfs"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
  || die "cannot mount the overlay on the host root"
R=/newroot
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup" || say "no cgroup2 at /sys/fs/cgroup"
mount -t devtmpfs devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
# The working directory (a clean clone in /tmp, say) would vanish under the fresh tmpfs
# mounts below: hold it aside and put it back on top of them.
HOLD=
case "$VM_KEEP_DIR" in
  /tmp/*|/run/*) mkdir -p /hold && mount --bind "$R$VM_KEEP_DIR" /hold && HOLD=1 ;;
esac
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
if [ -n "$HOLD" ]; then
  mkdir -p "$R$VM_KEEP_DIR" && mount --move /hold "$R$VM_KEEP_DIR" \
    || die "cannot keep the working directory $VM_KEEP_DIR"
fi
mkdir -p "$R/run/netagent-vm" "$R/run/netns"
mount --move /ctl "$R/run/netagent-vm" || die "cannot move the control share"
mkdir -p "$R$VM_OUT_DIR" && mount -t 9p -o "$P9" out "$R$VM_OUT_DIR" \
  || die "cannot mount the results share at $VM_OUT_DIR"
mkdir -p "$R/usr/lib/modules/$VM_KVER" \
  && mount --bind "$R$VM_MODULES_DIR" "$R/usr/lib/modules/$VM_KVER" \
  || die "cannot bind the kernel modules"
umount /proc /sys
exec switch_root "$R" /bin/sh /run/netagent-vm/stage2.sh
die "switch_root failed"
"""

#: Stage 2, PID 1 in the host's userland (dash): load modules, run the job,
#: report its exit status through the control share, power off.
STAGE2_SCRIPT = r"""#!/bin/sh
# netagent-vm stage 2 (host userland on an overlay): modules, the job, the exit status.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CTL=/run/netagent-vm
. "$CTL/config"
say() { echo "netagent-vm: $*"; }
finish() {
  echo "$1" >"$CTL/rc.tmp" && mv "$CTL/rc.tmp" "$CTL/rc"
  sync
  say "exit status $1"
  /bin/busybox poweroff -f
  /bin/busybox sleep 30
}
uptime() { cut -d' ' -f1 /proc/uptime; }
say "stage 2 at $(uptime)s of guest uptime"
echo netagent-vm >/proc/sys/kernel/hostname
ip link set lo up
missing=""
# One modprobe for all (a process per module costs ~0.1 s each under TCG);
# only when that fails, one by one to name what is missing.
if ! modprobe -a -q $VM_MODULES 2>/dev/null; then
  for m in $VM_MODULES; do
    modprobe -q "$m" 2>/dev/null || missing="$missing $m"
  done
fi
[ -z "$missing" ] || say "modules not available:$missing"
[ -e /proc/net/ip_vs ] || say "WARNING: /proc/net/ip_vs is missing after modprobe ip_vs"
say "ready after $(uptime)s of guest uptime"
/bin/sh "$CTL/job.sh" </dev/null
finish $?
"""


class VmError(RuntimeError):
    """The VM did not run the command to completion; ``output`` is the console so far."""

    def __init__(self, message: str, output: str = "") -> None:
        tail = "\n".join(output.splitlines()[-30:])
        super().__init__(f"{message}\n--- last console lines ---\n{tail}" if tail else message)
        self.output = output


class VmBootError(VmError):
    """qemu exited without the guest reporting an exit status."""


class VmTimeout(VmError):
    """The command did not finish within the timeout; qemu was killed."""


class VmPrepareError(RuntimeError):
    """The host cannot provide what the VM needs (packages, kernel, root)."""


@dataclass(frozen=True, slots=True)
class VmImage:
    """A bootable kernel, its initramfs and its extracted modules.

    Attributes:
        package: The versioned kernel package (``linux-image-6.1.0-57-amd64``).
        version: Its Debian version.
        kver: The kernel release (``uname -r`` in the guest).
        kernel: The ``vmlinuz`` to boot.
        initrd: The initramfs (busybox + early modules), an uncompressed cpio.
        modules_dir: ``lib/modules/<kver>`` of the extracted package, depmod'ed.
    """

    package: str
    version: str
    kver: str
    kernel: Path
    initrd: Path
    modules_dir: Path


@dataclass(frozen=True, slots=True)
class VmResult:
    """The command's exit status in the guest and everything the console printed.

    Attributes:
        returncode: The command's exit status inside the guest.
        output: The guest console (kernel, init, the command), without ``\\r``.
        boot_seconds: Wall time from starting qemu to the guest being ready to
            run the command (modules loaded), or None if no ready line came.
        elapsed: Wall time of the whole run.
    """

    returncode: int
    output: str
    boot_seconds: float | None = None
    elapsed: float = 0.0


# --------------------------------------------------------------------------- host set-up


def _log(message: str) -> None:
    print(f"netagent-vm: {message}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], *, cwd: Path | None = None, timeout: float = 600.0) -> str:
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise VmPrepareError(f"{' '.join(argv)} did not finish in {timeout}s") from exc
    except FileNotFoundError as exc:
        raise VmPrepareError(f"{argv[0]} is not installed") from exc
    if proc.returncode != 0:
        raise VmPrepareError(
            f"{' '.join(argv)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def _is_root() -> bool:
    return os.geteuid() == 0


def _installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def ensure_host_packages(packages: Sequence[str] = tuple(HOST_PACKAGES)) -> None:
    """Install the Debian packages the VM needs; a clear error when that needs root."""
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    if not _is_root():
        raise VmPrepareError(
            f"the VM needs these Debian packages, and installing them needs root: "
            f"{' '.join(missing)} (run: sudo apt-get install --no-install-recommends "
            f"{' '.join(missing)})"
        )
    _log(f"installing {' '.join(missing)}")
    os.environ.setdefault("DEBIAN_FRONTEND", "noninteractive")
    _run(["apt-get", "update", "-qq"], timeout=900.0)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], timeout=1800.0)


def _apt_field(package: str, field: str) -> str | None:
    proc = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", package],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    m = re.search(rf"^{re.escape(field)}: (.*)$", proc.stdout, re.MULTILINE)
    return m.group(1).strip() if m else None


def resolve_kernel_package() -> tuple[str, str] | None:
    """``(package, version)`` the ``linux-image-amd64`` metapackage points at, per apt's lists."""
    depends = _apt_field(KERNEL_META, "Depends")
    if depends is None and _is_root():
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        depends = _apt_field(KERNEL_META, "Depends")
    if depends is None:
        return None
    m = re.search(r"(linux-image-[0-9][^\s,(]*-amd64)", depends)
    if m is None:
        return None
    package = m.group(1)
    version = _apt_field(package, "Version")
    return (package, version) if version else None


def _entry_name(package: str, version: str) -> str:
    return f"{package}_{version}".replace(":", "%3a")


def _cached_entries(cache_dir: Path) -> list[Path]:
    return sorted(
        (p for p in cache_dir.glob("linux-image-*") if (p / ".complete").exists()),
        key=lambda p: p.stat().st_mtime,
    )


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """Serialise prepare() between processes (read-only open: works for non-root too)."""
    fd = os.open(cache_dir / ".lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _extract_kernel(cache_dir: Path, package: str, version: str, entry: Path) -> None:
    """Download ``package=version`` and extract it into ``entry/root`` (depmod'ed)."""
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        _log(f"downloading {package} {version}")
        # apt-get download as root warns that _apt cannot write here; harmless.
        _run(["apt-get", "download", f"{package}={version}"], cwd=scratch)
        debs = list(scratch.glob("*.deb"))
        if len(debs) != 1:
            raise VmPrepareError(f"apt-get download {package} left {debs} in {scratch}")
        root = scratch / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
        kver = _kver_of(root)
        _run(["depmod", "-b", str(root), kver])
        entry.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(entry / "root", ignore_errors=True)
        root.rename(entry / "root")
        (entry / ".complete").write_text(f"{package} {version} {kver}\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _modules_root(root: Path) -> Path:
    for candidate in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if candidate.is_dir():
            return candidate
    raise VmPrepareError(f"no lib/modules in the extracted kernel package at {root}")


def _kver_of(root: Path) -> str:
    versions = [p.name for p in _modules_root(root).iterdir() if p.is_dir()]
    if len(versions) != 1:
        raise VmPrepareError(f"expected one kernel version in {root}, found {versions}")
    return versions[0]


def _early_module_files(root: Path, kver: str) -> list[Path]:
    """The ``.ko`` files of :data:`EARLY_MODULES` and their dependencies, in load order."""
    files: list[Path] = []
    for module in EARLY_MODULES:
        out = _run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", module])
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                path = Path(parts[1])
                if path not in files:
                    files.append(path)
    return files


def _build_initramfs(root: Path, kver: str, target: Path) -> None:
    busybox = Path(HOST_PACKAGES["busybox-static"])
    if not busybox.exists():
        raise VmPrepareError(f"{busybox} is missing (package busybox-static)")
    with tempfile.TemporaryDirectory(prefix=".initramfs-", dir=target.parent) as tmp:
        stage = Path(tmp) / "tree"
        for sub in ("bin", "sbin", "early", "dev", "proc", "sys", "newroot"):
            (stage / sub).mkdir(parents=True)
        shutil.copy2(busybox, stage / "bin" / "busybox")
        order = []
        for i, ko in enumerate(_early_module_files(root, kver)):
            name = f"{i:02d}-{ko.name.split('.ko')[0]}.ko"
            data = ko.read_bytes()
            if ko.name.endswith(".xz"):
                data = lzma.decompress(data)
            elif not ko.name.endswith(".ko"):
                raise VmPrepareError(f"cannot unpack module {ko} for busybox insmod")
            (stage / "early" / name).write_bytes(data)
            order.append(name)
        (stage / "early" / "order").write_text("".join(f"{n}\n" for n in order))
        init = stage / "init"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        names = sorted(str(p.relative_to(stage)) for p in stage.rglob("*"))
        part = Path(tmp) / "initrd.cpio"
        with open(part, "wb") as out:
            subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"],
                cwd=stage,
                input="\n".join(names).encode() + b"\n",
                stdout=out,
                check=True,
            )
        part.rename(target)


def _recipe_hash() -> str:
    text = f"{INITRAMFS_RECIPE}\n{INIT_SCRIPT}\n{' '.join(EARLY_MODULES)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _kernel_entry(cache_dir: Path) -> Path:
    """The cache entry of the current kernel package, fetched if need be.

    Falls back to the newest cached kernel when apt cannot name the current
    one or fetching it fails (no mirror, not root), so a machine that once
    prepared keeps working offline.
    """
    resolved = resolve_kernel_package()
    problem = f"apt cannot resolve {KERNEL_META}"
    if resolved is not None:
        package, version = resolved
        entry = cache_dir / _entry_name(package, version)
        if (entry / ".complete").exists():
            return entry
        try:
            if not _is_root():
                raise VmPrepareError(f"downloading {package} into {cache_dir} needs root")
            _extract_kernel(cache_dir, package, version, entry)
            return entry
        except VmPrepareError as exc:
            problem = str(exc)
    cached = _cached_entries(cache_dir)
    if not cached:
        raise VmPrepareError(f"{problem}, and {cache_dir} holds no kernel yet")
    _log(f"{problem}; using the cached {cached[-1].name}")
    return cached[-1]


def prepare(cache_dir: Path = DEFAULT_CACHE) -> VmImage:
    """A bootable :class:`VmImage`, downloading and building only what the cache lacks.

    Installs the host packages the VM needs (root only), resolves the kernel
    package ``linux-image-amd64`` depends on, downloads and extracts it once
    per version, and builds the initramfs once per version and init recipe.
    When apt cannot name or fetch it, the newest cached kernel is used.
    """
    if not cache_dir.exists():
        if not _is_root():
            raise VmPrepareError(f"{cache_dir} does not exist and creating it needs root")
        cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir):  # two runs preparing at once: one apt-get, one download
        ensure_host_packages()
        entry = _kernel_entry(cache_dir)
        package, version, _ = (entry / ".complete").read_text().split()
        root = entry / "root"
        kver = _kver_of(root)
        kernel = root / "boot" / f"vmlinuz-{kver}"
        if not kernel.exists():
            raise VmPrepareError(f"{kernel} is missing from the extracted package")
        initrd = entry / f"initrd-{_recipe_hash()}.cpio"
        if not initrd.exists():
            if not _is_root():
                raise VmPrepareError(f"building {initrd} needs root")
            _log(f"building the initramfs {initrd}")
            for old in entry.glob("initrd-*.cpio"):
                old.unlink()
            _build_initramfs(root, kver, initrd)
        return VmImage(
            package=package,
            version=version,
            kver=kver,
            kernel=kernel,
            initrd=initrd,
            modules_dir=_modules_root(root) / kver,
        )


# --------------------------------------------------------------------------- running


def _virtfs_path(path: Path) -> str:
    text = str(path)
    if "," in text:
        raise ValueError(f"qemu -virtfs paths may not contain ',': {text}")
    return text


def qemu_argv(
    image: VmImage, ctl_dir: Path, out_dir: Path, *, memory_mb: int, cpus: int
) -> list[str]:
    """The qemu command line: TCG, serial console on stdio, no network, three 9p shares."""
    share = "security_model=none,multidevs=remap"
    return [
        HOST_PACKAGES["qemu-system-x86"],
        "-accel", "tcg",
        "-cpu", "max",
        "-smp", str(cpus),
        "-m", str(memory_mb),
        "-nographic",
        "-serial", "stdio",
        "-monitor", "none",
        "-no-reboot",
        "-nic", "none",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", "console=ttyS0 quiet panic=-1 rdinit=/init",
        "-device", "virtio-rng-pci",
        "-virtfs", f"local,path=/,mount_tag=hostroot,{share},readonly=on",
        "-virtfs", f"local,path={_virtfs_path(ctl_dir)},mount_tag=ctl,{share}",
        "-virtfs", f"local,path={_virtfs_path(out_dir)},mount_tag=out,{share}",
    ]  # fmt: skip


def _job_script(command: Sequence[str], cwd: Path, env: Mapping[str, str]) -> str:
    for key in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"bad environment variable name {key!r}")
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    return (
        "#!/bin/sh\n"
        f"cd {shlex.quote(str(cwd))} || exit 126\n"
        f"exec env -i {assignments} {shlex.join(command)}\n"
    )


def _config(image: VmImage, out_dir: Path, cwd: Path | None = None) -> str:
    values = {
        "VM_KEEP_DIR": str(cwd) if cwd is not None else "",
        "VM_KVER": image.kver,
        "VM_MODULES_DIR": str(image.modules_dir),
        "VM_OUT_DIR": str(out_dir),
        "VM_MODULES": " ".join(GUEST_MODULES),
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


#: Terminal control sequences SeaBIOS and the serial console print, and stray ``\r``.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-~]|\r")


class _Console:
    """Reads qemu's stdout in a thread: echoes each line with a prefix and keeps it."""

    def __init__(self, stream: TextIO | None, prefix: str) -> None:
        self.lines: list[str] = []
        self.ready_at: float | None = None
        self._echo = stream
        self._prefix = prefix
        self._thread: threading.Thread | None = None

    def start(self, pipe: IO[bytes]) -> None:
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: IO[bytes]) -> None:
        for raw in iter(pipe.readline, b""):
            line = _ESCAPES.sub("", raw.decode(errors="replace").rstrip("\r\n"))
            self.lines.append(line)
            if self.ready_at is None and READY_MARK in line:
                self.ready_at = time.monotonic()
            if self._echo is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._echo.write(f"{self._prefix}{line}\n")
                    self._echo.flush()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + ("\n" if self.lines else "")


PR_SET_PDEATHSIG = 1

#: Per-run directories are ``<tmp>/netagent-vm-run-<pid>-<random>``.
RUN_DIR_PREFIX = "netagent-vm-run-"


def _remove_stale_run_dirs() -> None:
    """Remove run directories whose owner died without cleaning up (SIGKILL)."""
    for path in Path(tempfile.gettempdir()).glob(f"{RUN_DIR_PREFIX}*-*"):
        pid_text = path.name[len(RUN_DIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _die_with_parent() -> None:
    """In the qemu child before exec: the kernel SIGKILLs qemu if this process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class VmInterrupted(KeyboardInterrupt):
    """SIGTERM arrived while the VM ran; qemu was killed on the way out."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise VmInterrupted(f"signal {signum}")


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into an exception, so ``finally`` kills qemu and removes the run dir."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield  # the caller handles SIGTERM already
        return
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10.0)


def run_in_vm(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    image: VmImage | None = None,
    out_dir: Path | None = None,
    memory_mb: int = 2048,
    cpus: int = 2,
    echo: TextIO | bool = True,
    prefix: str = "[vm] ",
) -> VmResult:
    """Boot the VM, run ``command`` in ``cwd`` with exactly ``env``, return its exit status.

    The command runs as root in the guest, on an overlay of the host root
    (its writes vanish), with fresh ``/proc``, ``/sys``, ``/dev``, ``/run``
    and ``/tmp``. ``out_dir`` (default: a per-run directory) is shared
    read-write at the same path, and ``NETAGENT_VM_OUT`` names it. The console
    is echoed line by line with ``prefix`` to ``echo`` (True: the current
    ``sys.stdout``; False: nowhere) and kept in the result. qemu is killed on
    every way out: timeout, exception, KeyboardInterrupt, SIGTERM (and, via
    ``PR_SET_PDEATHSIG``, even when this process is SIGKILLed).

    Raises:
        VmTimeout: The command did not finish within ``timeout`` seconds.
        VmBootError: qemu exited before the guest reported an exit status.
    """
    if image is None:
        image = prepare()
    stream = sys.stdout if echo is True else (None if echo is False else echo)
    with _sigterm_unwinds():
        return _run_in_vm(
            command, cwd, env, timeout, image, out_dir, memory_mb, cpus, stream, prefix
        )


def _run_in_vm(
    command: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    image: VmImage,
    out_dir: Path | None,
    memory_mb: int,
    cpus: int,
    stream: TextIO | None,
    prefix: str,
) -> VmResult:
    _remove_stale_run_dirs()
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
    proc: subprocess.Popen[bytes] | None = None
    console = _Console(stream, prefix)
    started = time.monotonic()
    try:
        ctl = run_dir / "ctl"
        ctl.mkdir()
        out = out_dir if out_dir is not None else run_dir / "out"
        out.mkdir(parents=True, exist_ok=True)
        out = out.resolve()
        (ctl / "config").write_text(_config(image, out, Path(cwd).resolve()))
        (ctl / "stage2.sh").write_text(STAGE2_SCRIPT)
        job_env = {**env, "NETAGENT_VM_OUT": str(out)}
        (ctl / "job.sh").write_text(_job_script(command, cwd, job_env))
        argv = qemu_argv(image, ctl, out, memory_mb=memory_mb, cpus=cpus)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we kill qemu
            preexec_fn=_die_with_parent,
        )
        assert proc.stdout is not None
        console.start(proc.stdout)
        try:
            qemu_rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            console.join(5.0)
            raise VmTimeout(
                f"the VM did not finish within {timeout:.0f}s; qemu was killed", console.text
            ) from None
        console.join(10.0)
        try:
            returncode = int((ctl / "rc").read_text().strip())
        except (OSError, ValueError):
            raise VmBootError(
                f"qemu exited with status {qemu_rc} before the guest reported an exit status "
                "(the VM did not boot, or the guest crashed)",
                console.text,
            ) from None
        boot = None if console.ready_at is None else console.ready_at - started
        return VmResult(
            returncode=returncode,
            output=console.text,
            boot_seconds=boot,
            elapsed=time.monotonic() - started,
        )
    finally:
        if proc is not None:
            _kill(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def _parse_env(items: Sequence[str], passthrough: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in passthrough:
        if name in os.environ:
            env[name] = os.environ[name]
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env wants NAME=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    """``python -m netnslab.vm prepare`` / ``python -m netnslab.vm run [opts] -- CMD...``."""
    p = argparse.ArgumentParser(prog="python -m netnslab.vm", description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="install packages, fetch the kernel, build the initramfs")
    r = sub.add_parser("run", help="run a command in the VM; exits with its status")
    r.add_argument("--cwd", type=Path, default=Path.cwd())
    r.add_argument("--timeout", type=float, default=900.0)
    r.add_argument("--out", type=Path, help="results directory shared read-write")
    r.add_argument("--log", type=Path, help="also write the console to this file")
    r.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    r.add_argument("--pass-env", action="append", default=[], metavar="NAME")
    r.add_argument("--cpus", type=int, default=2, help="virtual CPUs (default 2)")
    r.add_argument("--memory-mb", type=int, default=2048, help="guest memory (default 2048)")
    r.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    try:
        image = prepare(args.cache_dir)
    except (VmPrepareError, subprocess.CalledProcessError) as exc:
        print(f"netagent-vm: FAILED to prepare the VM: {exc}", file=sys.stderr)
        return 125
    if args.action == "prepare":
        print(f"{image.package} {image.version} kernel {image.kernel} initrd {image.initrd}")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("run needs a command after --")
    env = _parse_env(args.env, args.pass_env)
    result: VmResult | None = None
    error: VmError | None = None
    try:
        result = run_in_vm(
            command,
            cwd=args.cwd.resolve(),
            env=env,
            timeout=args.timeout,
            image=image,
            out_dir=args.out,
            memory_mb=args.memory_mb,
            cpus=args.cpus,
        )
    except VmError as exc:
        error = exc
    output = result.output if result is not None else (error.output if error else "")
    if args.log is not None:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(output)
    if error is not None:
        kind = "timed out" if isinstance(error, VmTimeout) else "failed"
        print(f"netagent-vm: FAILED: the VM {kind}: {error}", file=sys.stderr)
        return 124 if isinstance(error, VmTimeout) else 125
    assert result is not None
    boot = "?" if result.boot_seconds is None else f"{result.boot_seconds:.1f}s"
    print(
        f"netagent-vm: guest exit status {result.returncode}; ready after {boot}, "
        f"{result.elapsed:.1f}s in all ({image.package} {image.version})",
        file=sys.stderr,
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
