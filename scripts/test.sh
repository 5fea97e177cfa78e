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
echo "== hadolint"
"$VENV/bin/hadolint" daemonset/Containerfile
echo "== manifests (Kubernetes OpenAPI schemas)"
for version in 1.29.0 "$("$VENV/bin/python" -c 'import kubernetes_validate as k; print(k.latest_version())')"; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" daemonset/*.yaml
  echo "daemonset/*.yaml valid for Kubernetes $version"
done
echo "== image (scripts/image.sh, cached)"
if [ "$(id -u)" -eq 0 ]; then
  bash scripts/image.sh
elif [ "${CI:-}" = "true" ]; then
  echo "test.sh: building the image needs root" >&2; exit 1
fi
echo "== pytest"
"$VENV/bin/pytest" -p no:cacheprovider "$@"
leftover="$(ip netns list 2>/dev/null | grep -E '^na-' || true)"
if [ -n "$leftover" ]; then
  echo "test.sh: the tests left network namespaces behind:" >&2
  echo "$leftover" >&2
  exit 1
fi
if command -v podman >/dev/null 2>&1; then
  left="$(CONTAINERS_CONF=scripts/containers.conf podman ps -a --format '{{.Names}}' | grep -E '^na-ds-' || true)"
  if [ -n "$left" ]; then
    echo "test.sh: the tests left containers behind: $left" >&2
    exit 1
  fi
fi

# ---------------------------------------------------------------------------------------------
# IPVS kernel tests in qemu VMs (scripts/ipvs-vm.sh). This machine's kernel has no IPVS, so
# tests/vm and the IPVS cases of the lab suites run inside Debian 12's stock kernel under
# qemu. Any failure -- tests, boot, timeout -- fails test.sh.
echo "== IPVS kernel tests in two VMs side by side (scripts/ipvs-vm.sh)"
vm_started=$SECONDS
# Two VMs side by side use both host cores. The semantic suite is one process at a time and
# runs as fast on one virtual CPU; tests/vm and the SIGKILL-under-load case run an agent,
# clients and pollers at once, and get two. Both take about 20 minutes here (docs/ipvs.md);
# each VM is bounded at 2400 s, a hang bound with room for a slower CI machine. Each console
# goes to .vm-out/NAME/run.log, printed after, with what each passing test printed (-rP:
# the reliability figures).
vm_pids=()
vm_shard() {  # NAME CPUS PYTEST-ARGS...
  local name="$1" cpus="$2"; shift 2
  mkdir -p ".vm-out/$name"
  PYTHONUNBUFFERED=1 NETAGENT_VM_OUT="$PWD/.vm-out/$name" NETAGENT_VM_CPUS="$cpus" \
    NETAGENT_VM_TIMEOUT="${NETAGENT_VM_TIMEOUT:-2400}" NETAGENT_LAB_PROXY_MODES=ipvs \
    bash scripts/ipvs-vm.sh "$@" >".vm-out/$name/run.log" 2>&1 &
  vm_pids+=("$!")
}
stop_vms() {  # on the way out: no VM outlives test.sh (qemu dies with its netnslab.vm parent)
  local pid
  for pid in "${vm_pids[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || true; done
}
trap stop_vms EXIT
# Prepare once (host packages, kernel, initramfs) before two VMs would do it at once.
if ! PYTHONPATH=netns-lab "$VENV/bin/python" -m netnslab.vm \
    --cache-dir "${NETAGENT_VM_CACHE:-/var/cache/netagent-vm}" prepare; then
  echo "test.sh: FAILED: the VM could not be prepared" >&2
  exit 1
fi
# In IPVS mode: the semantic proxy suite, the security cases that depend on the mode
# (externalIP allow-list, LB source ranges) and the reliability cases (docs/reliability.md;
# node churn, case 7, has no proxy mode). Affinity *expiry* is not an IPVS case: IPVS
# persistence lasts until the client's connections have left IPVS's own table (TIME_WAIT:
# 2 min) plus the timeout (docs/ipvs.md).
IPVS_CASES="ipvs and not affinity_expires and not warns_once and not overlapping"
vm_shard suite 1 tests/lab/test_proxy_lab.py tests/lab/test_udp_conntrack_lab.py \
  tests/lab/test_security_lab.py tests/lab/test_reliability_faults_lab.py \
  tests/lab/test_reliability_fuzz_lab.py tests/lab/test_reliability_coexistence_lab.py \
  -q -rP -k "$IPVS_CASES"
# What only IPVS mode has (tests/vm), and the cases that run an agent, an API server,
# clients and pollers at once: SIGKILL under load, the API faults, the churn run (on one
# virtual CPU the churn run's poller starved the agent: syncs of 6 s, changes 30 s late).
vm_shard own 2 tests/vm tests/lab/test_reliability_kill_lab.py \
  tests/lab/test_reliability_api_faults_lab.py tests/lab/test_reliability_churn_lab.py -q -rP
vm_failed=""
for i in 0 1; do
  name=$([ "$i" -eq 0 ] && echo suite || echo own)
  rc=0
  wait "${vm_pids[$i]}" || rc=$?
  echo "--- VM '$name' (exit $rc)"
  cat ".vm-out/$name/run.log"
  [ "$rc" -eq 0 ] || vm_failed="$vm_failed $name"
done
trap - EXIT
echo "test.sh: the VM part took $((SECONDS - vm_started))s"
if [ -n "$vm_failed" ]; then
  echo "test.sh: the IPVS tests failed in the VM:$vm_failed" >&2
  exit 1
fi
