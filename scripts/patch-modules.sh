#!/usr/bin/env bash
# Prepares the patched dependency that go.mod's replace directive points at:
# .patched/wireguard-go is github.com/tailscale/wireguard-go exactly as the
# Go module proxy serves it (go mod download, checked against the pinned
# h1: hash below), with scripts/patches/wireguard-go-batch-cap.patch applied.
# Why: docs/wireguard-go-patch.md. Every go command of the main module needs
# it, so the Makefile, .ci/run and the Dockerfile run this first. Idempotent:
# it does nothing when the directory already holds this version and patch.
set -euo pipefail
cd "$(dirname "$0")/.."

module=github.com/tailscale/wireguard-go
version=v0.0.0-20260715223240-2e01ba5b00f0
sum=h1:CnIEL2n7Xql6Ux1k+Vu5S5ubDHCT/kxFgkKCY8FjefU=
patch=scripts/patches/wireguard-go-batch-cap.patch
dest=.patched/wireguard-go

stamp="$module@$version $(sha256sum "$patch" | cut -d' ' -f1)"
if [ -f "$dest/.tslink-patched" ] && [ "$(cat "$dest/.tslink-patched")" = "$stamp" ]; then
  exit 0
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
trap 'rm -rf "$tmp"' EXIT
cp -R "$dir/." "$tmp/"
chmod -R u+w "$tmp"
git apply --directory="$tmp" -p1 "$patch"
# git apply skips paths it deems outside the work tree without an error:
# the patch must now reverse cleanly, or it was not applied.
git apply --directory="$tmp" -p1 -R --check "$patch"
printf '%s\n' "$stamp" > "$tmp/.tslink-patched"
mkdir -p .patched
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
