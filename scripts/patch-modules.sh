#!/usr/bin/env bash
# Prepares the patched dependencies that go.mod's replace directives point
# at: .patched/<name> is the module exactly as the Go module proxy serves it
# (go mod download, checked against the pinned h1: hash below), with its
# patch from scripts/patches applied. Why: docs/wireguard-go-patch.md,
# docs/testcontrol-patch.md and docs/batching-patch.md. Every go command of the main module needs them,
# so the Makefile, .ci/run and the Dockerfile run this first. Idempotent: a
# directory that already holds its version and patch is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

# patch_module module version h1-sum destination patch-file...
patch_module() {
  local module=$1 version=$2 sum=$3 dest=$4
  shift 4
  local stamp info dir got tmp patch
  stamp="$module@$version $(sha256sum "$@" | cut -d' ' -f1 | tr '\n' ' ')"
  if [ -f "$dest/.tslink-patched" ] && [ "$(cat "$dest/.tslink-patched")" = "$stamp" ]; then
    return 0
  fi

  # Outside any module, so go.mod's replace does not apply to the download.
  info=$(cd / && GOFLAGS=-mod=mod go mod download -json "$module@$version")
  dir=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  got=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p')
  if [ "$got" != "$sum" ]; then
    echo "patch-modules: $module@$version has hash ${got:-unknown}, want $sum" >&2
    exit 1
  fi

  tmp=$(mktemp -d .patched.tmp.XXXXXX)
  trap "rm -rf '$tmp'" EXIT # expanded now: $tmp is local to this function
  cp -R "$dir/." "$tmp/"
  chmod -R u+w "$tmp"
  for patch in "$@"; do
    git apply --directory="$tmp" -p1 "$patch"
    # git apply skips paths it deems outside the work tree without an
    # error: the patch must now reverse cleanly, or it was not applied.
    git apply --directory="$tmp" -p1 -R --check "$patch"
  done
  printf '%s\n' "$stamp" > "$tmp/.tslink-patched"
  mkdir -p .patched
  rm -rf "$dest"
  mv "$tmp" "$dest"
  trap - EXIT
}

patch_module github.com/tailscale/wireguard-go v0.0.0-20260715223240-2e01ba5b00f0 \
  h1:CnIEL2n7Xql6Ux1k+Vu5S5ubDHCT/kxFgkKCY8FjefU= .patched/wireguard-go \
  scripts/patches/wireguard-go-batch-cap.patch
patch_module tailscale.com v1.102.5 \
  h1:2jK9VxQU4Vq/tyR7f2U2NqINxU0pV7R14TDBFsfguHE= .patched/tailscale.com \
  scripts/patches/testcontrol-map-interval.patch scripts/patches/batching-gro-read.patch
