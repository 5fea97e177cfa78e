#!/usr/bin/env bash
# The lab, one command: `scripts/lab.sh up` installs what it needs, builds a three-node cluster
# in network namespaces (a lab API server, netagent on every node, pods on each node's cbr0)
# and shows traffic through the Services and the overlay netagent programmed.
# `scripts/lab.sh down` removes everything the lab made. Needs root; never changes the host's
# root network namespace (it only gets a loopback port forwarding to the lab API server).
# NETAGENT_LAB_OVERLAY=host-gw|none picks another overlay (default vxlan).
# NETAGENT_LAB_AGENTS=daemonset runs each node's agent from daemonset/ (its image, with podman).
# NETAGENT_LAB_PROXY_MODE=nftables runs the agents in nftables mode (default iptables).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-up}"
current=/run/netns-lab/current-cluster
down() {
  if [ -s "$current" ]; then
    PYTHONPATH=netns-lab .venv/bin/python -c \
      'import sys; from netnslab.cluster import down_detached; print("removed", *down_detached(sys.argv[1]))' \
      "$(cat "$current")" || true
    rm -f "$current"
  fi
  # A single-node lab from `netns-lab/lab.sh up`, if one is up.
  if [ -s /run/netns-lab/current ]; then netns-lab/lab.sh down; fi
}
case "$cmd" in
  up)
    bash scripts/install-deps.sh >/dev/null
    if [ -s "$current" ]; then
      echo "a lab is already up; replacing it" >&2
      down
    fi
    exec .venv/bin/python scripts/cluster_demo.py
    ;;
  down)
    down
    ;;
  status)
    if [ -s "$current" ]; then
      echo "cluster lab $(cat "$current") is up:"; ip netns list | grep -- "-$(cat "$current")" || true
    else
      echo "no cluster lab is up"
    fi
    ;;
  *)
    echo "usage: scripts/lab.sh up|down|status" >&2
    exit 2
    ;;
esac
