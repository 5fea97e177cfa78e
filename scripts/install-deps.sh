#!/usr/bin/env bash
# Install everything netagent's tests, lab and benchmarks need on Debian 12 (run as root).
# Idempotent: packages already present are not reinstalled, the venv is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  iptables ipset nftables conntrack iproute2 procps   # the kernel interfaces netagent drives
  iperf3 ethtool tcpdump socat iputils-ping            # lab traffic, offload settings, captures
  python3 python3-venv python3-pip python3-dev gcc     # the agent's runtime and venv
  podman runc mmdebstrap uidmap fuse-overlayfs         # the container image and the DaemonSet lab
)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# kubectl: Debian ships it as kubernetes-client; keep another kubectl if one is installed already.
if ! command -v kubectl >/dev/null 2>&1; then
  missing+=(kubernetes-client)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
echo "install-deps: ok ($("$VENV/bin/python" --version), venv $VENV)"
