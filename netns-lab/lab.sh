#!/usr/bin/env bash
# The netns lab CLI with the repository's virtualenv: lab.sh up|down|status|cleanup-stale.
# Needs root (it creates network namespaces); touches nothing in the root namespace.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-$(dirname "$here")/.venv/bin/python}"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m netnslab "$@"
