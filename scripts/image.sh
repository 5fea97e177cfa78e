#!/usr/bin/env bash
# Build netagent's container image (daemonset/Containerfile) with podman, offline.
#
# Why a script: no registry is reachable here, so the Debian base is built from Debian's
# packages with mmdebstrap and imported into podman, and netagent's wheels are built on
# the host and copied in. Both steps are slow (about a minute), so each result is tagged
# with a hash of its inputs and reused while the inputs are unchanged:
#   base  localhost/netagent-base:pkgs-<hash>   the PACKAGES of the Containerfile, this script
#   image localhost/netagent:inputs-<hash>      the Containerfile, netagent's sources and
#                                               pyproject, the pinned dependency versions,
#                                               the base
# A machine with no cached image builds everything (slower); nothing else changes.
# Then the image is tagged with the name daemonset/daemonset.yaml uses. Prints
# "image <name> <size>" as its last line. Needs root (podman's system storage).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
VENV="${VENV:-.venv}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$REPO/scripts/containers.conf}"
CACHE="${NETAGENT_IMAGE_CACHE:-/var/cache/netagent-image}"
mkdir -p "$CACHE"

die() { echo "image.sh: $*" >&2; exit 1; }
for tool in podman runc mmdebstrap sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is not installed (scripts/install-deps.sh installs it)"
done

image_name="$(sed -n 's/^ *image: *\([^ ]*\).*/\1/p' daemonset/daemonset.yaml | head -1)"
[ -n "$image_name" ] || die "no image: in daemonset/daemonset.yaml"
repo_name="${image_name%:*}"
packages="$(sed -n 's/^ARG PACKAGES="\(.*\)"$/\1/p' daemonset/Containerfile)"
[ -n "$packages" ] || die "no ARG PACKAGES=\"...\" line in daemonset/Containerfile"

# ---- the base: Debian bookworm, minbase, plus the Containerfile's packages
MMDEBSTRAP_OPTS=(
  --variant=minbase
  --include="$(echo "$packages" | tr ' ' ',')"
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --aptopt='APT::Install-Recommends "false"'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log'
)
SOURCES=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
base_hash="$(printf '%s\n' "${MMDEBSTRAP_OPTS[@]}" "${SOURCES[@]}" | sha256sum | cut -c1-16)"
base="localhost/netagent-base:pkgs-$base_hash"
if ! podman image exists "$base"; then
  echo "image.sh: building the base $base with mmdebstrap"
  tmp="$(mktemp -d "$CACHE/base.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet "${MMDEBSTRAP_OPTS[@]}" bookworm "$tmp/rootfs.tar" "${SOURCES[@]}"
  podman import --quiet "$tmp/rootfs.tar" "$base" >/dev/null
  rm -rf "$tmp"
  trap - EXIT
fi

# ---- the wheels and the image
constraints="$CACHE/constraints.txt"
"$VENV/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check \
  | grep -v '^netagent' > "$constraints.new"
mv "$constraints.new" "$constraints"
inputs_hash="$(
  {
    echo "base $base"
    sha256sum daemonset/Containerfile pyproject.toml README.md
    find netagent -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum
    sha256sum "$constraints" | cut -d' ' -f1
  } | sha256sum | cut -c1-16
)"
tagged="$repo_name:inputs-$inputs_hash"
if podman image exists "$tagged"; then
  echo "image.sh: $tagged is cached (inputs unchanged)"
else
  echo "image.sh: building $tagged"
  ctx="$(mktemp -d "$CACHE/ctx.XXXXXX")"
  trap 'rm -rf "$ctx"' EXIT
  mkdir "$ctx/wheels"
  cp daemonset/Containerfile "$ctx/"
  # Only netagent's runtime dependencies are resolved (pyproject's [project] list), pinned
  # by the constraints to the versions the venv (and so the tests) use.
  "$VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check \
    --wheel-dir "$ctx/wheels" --constraint "$constraints" "$REPO" 2> >(grep -v "^WARNING: Location" >&2)
  podman build --quiet --format docker --network none --pull=never --build-arg "BASE_IMAGE=$base" \
    --label "io.netagent.inputs=$inputs_hash" -t "$tagged" -f "$ctx/Containerfile" "$ctx" >/dev/null
  rm -rf "$ctx"
  trap - EXIT
fi
podman tag "$tagged" "$image_name"
size="$(podman image inspect --format '{{.Size}}' "$image_name")"
echo "image $image_name $tagged $((size / 1000000))MB"
