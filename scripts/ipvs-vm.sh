#!/usr/bin/env bash
# Run pytest inside Debian 12's stock kernel under qemu: this machine's kernel has no IPVS.
#
#   bash scripts/ipvs-vm.sh [pytest args...]        e.g. bash scripts/ipvs-vm.sh tests/vm -q
#
# The guest runs this repo and its venv from the host's own file system (read-only 9p plus a
# throw-away overlay), as root, with no network device. Exits with the guest's pytest exit
# status; when the VM cannot be prepared or booted it exits 125, on a timeout 124 -- never 0,
# so CI fails instead of skipping. Details: netns-lab/netnslab/vm.py.
#
# Environment: CI is passed into the guest. NETAGENT_VM_TIMEOUT (seconds, default 900) bounds
# the whole VM run. NETAGENT_VM_CPUS (default 2) is the guest's virtual CPUs (scripts/test.sh
# runs two 1-CPU VMs side by side). NETAGENT_VM_OUT (default .vm-out/ in the repo) receives
# junit.xml and console.log. NETAGENT_VM_CACHE (default /var/cache/netagent-vm) keeps the
# kernel. The guest gets NETAGENT_LAB_PATIENCE=4: TCG is slow, so the lab's waits for the
# agent stretch (netns-lab/netnslab/patience.py); waits that bound a refusal do not.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
VENV="${VENV:-.venv}"
PY="$REPO/$VENV/bin/python"
OUT="${NETAGENT_VM_OUT:-$REPO/.vm-out}"
CACHE="${NETAGENT_VM_CACHE:-/var/cache/netagent-vm}"
TIMEOUT="${NETAGENT_VM_TIMEOUT:-900}"
CPUS="${NETAGENT_VM_CPUS:-2}"
vm() { PYTHONPATH="$REPO/netns-lab" "$PY" -m netnslab.vm --cache-dir "$CACHE" "$@"; }

if [ ! -x "$PY" ]; then
  echo "ipvs-vm: FAILED: no virtualenv at $VENV (run scripts/install-deps.sh)" >&2
  exit 125
fi
mkdir -p "$OUT"
rm -f "$OUT/junit.xml" "$OUT/console.log"

rc=0
vm prepare >/dev/null || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "ipvs-vm: FAILED: the VM could not be prepared (exit $rc)" >&2
  exit 125
fi

rc=0
vm run --cwd "$REPO" --timeout "$TIMEOUT" --cpus "$CPUS" --out "$OUT" --log "$OUT/console.log" \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env HOME=/root --env LANG=C.UTF-8 --env TERM=dumb --env COLUMNS=120 \
  --env PYTHONUNBUFFERED=1 --env PYTHONDONTWRITEBYTECODE=1 --env NETAGENT_IN_VM=1 \
  --env NETAGENT_LAB_PATIENCE=4 \
  --pass-env CI --pass-env NETAGENT_LAB_PROXY_MODES --pass-env NETAGENT_COEX_SYNCS \
  --pass-env NETAGENT_FUZZ_LAB_EXAMPLES \
  -- "$PY" -m pytest -p no:cacheprovider --junitxml="$OUT/junit.xml" "$@" || rc=$?
case "$rc" in
  0) ;;
  124) echo "ipvs-vm: FAILED: the VM timed out after ${TIMEOUT}s (console: $OUT/console.log)" >&2 ;;
  125) echo "ipvs-vm: FAILED: the VM did not boot or run pytest (console: $OUT/console.log)" >&2 ;;
  *) echo "ipvs-vm: pytest in the VM exited $rc (junit: $OUT/junit.xml, console: $OUT/console.log)" >&2 ;;
esac
exit "$rc"
