#!/usr/bin/env bash
# The lab, one command: `scripts/lab.sh up` installs what it needs, builds a node in network
# namespaces, runs netagent there and shows traffic through the Services it programmed.
# `scripts/lab.sh down` removes everything the lab made. Needs root; never touches the
# host's root network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-up}"
case "$cmd" in
  up)
    bash scripts/install-deps.sh >/dev/null
    if [ -s /run/netns-lab/current ]; then
      echo "a lab is already up; replacing it" >&2
      netns-lab/lab.sh down || true
    fi
    exec .venv/bin/python scripts/lab_demo.py
    ;;
  down)
    exec netns-lab/lab.sh down
    ;;
  status)
    exec netns-lab/lab.sh status
    ;;
  *)
    echo "usage: scripts/lab.sh up|down|status" >&2
    exit 2
    ;;
esac
