#!/usr/bin/env bash
# Run every check netagent has: lint, types, unit tests and the real-kernel lab tests.
# Installs what it needs first (scripts/install-deps.sh). Lab tests need root; with CI=true
# a missing prerequisite fails them instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
VENV="${VENV:-.venv}"
echo "== ruff"
"$VENV/bin/ruff" check .
echo "== mypy"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" -p no:cacheprovider "$@"
leftover="$(ip netns list 2>/dev/null | grep -E '^na-' || true)"
if [ -n "$leftover" ]; then
  echo "test.sh: the tests left network namespaces behind:" >&2
  echo "$leftover" >&2
  exit 1
fi
