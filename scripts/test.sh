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
# IPVS kernel tests in a qemu VM (scripts/ipvs-vm.sh; appended block, owned by the VM work).
# This machine's kernel has no IPVS, so tests/vm (and later the IPVS lab tests) run inside
# Debian 12's stock kernel under qemu. Any failure -- tests, boot, timeout -- fails test.sh.
echo "== IPVS kernel tests in a VM (scripts/ipvs-vm.sh)"
vm_started=$SECONDS
# One boot: the VM's own tests, the IPVS cases of the semantic proxy suite, and the IPVS lab tests.
# Affinity *expiry* is not an IPVS case: IPVS persistence lasts until the client's connections
# have left IPVS's own table (TIME_WAIT: 2 min) plus the timeout (docs/ipvs.md).
NETAGENT_LAB_PROXY_MODES=ipvs bash scripts/ipvs-vm.sh tests/vm tests/lab/test_proxy_lab.py \
  tests/lab/test_udp_conntrack_lab.py -q \
  -k "(ipvs and not affinity_expires) or vm_kernel"
echo "test.sh: the VM part took $((SECONDS - vm_started))s"
