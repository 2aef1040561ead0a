#!/usr/bin/env bash
# Builds the tslink managed plugin for each architecture and pushes it as
# $REGISTRY/tslink:$VERSION-$ARCH (managed plugins have no per-architecture
# resolution: see README, "Install"). Called by `make release`.
#
#   REGISTRY  registry host[:port][/path] to push to (required)
#   VERSION   the version tag, also what `tslink version` prints (required)
#   ARCHES    space-separated GOARCH values (default: amd64 arm64)
#   DIST      where the bundles are assembled (default: dist)
#   PUSH      0: build and assemble only, no docker commands (default: 1)
set -euo pipefail
cd "$(dirname "$0")/.."

: "${REGISTRY:?make release needs REGISTRY=host[:port][/path], e.g. REGISTRY=registry.example.com/tailscale}"
: "${VERSION:?make release needs VERSION=<tag>, e.g. VERSION=1.0.0}"
ARCHES=${ARCHES:-amd64 arm64}
DIST=${DIST:-dist}
PUSH=${PUSH:-1}
GO=${GO:-go}

case "$VERSION" in
  *[!A-Za-z0-9_.-]*|[.-]*) echo "release: VERSION=$VERSION is not a valid tag (letters, digits, '_', '.', '-'; not starting with '.' or '-')" >&2; exit 2 ;;
esac

for arch in $ARCHES; do
  case "$arch" in
    amd64|arm64) ;;
    *) echo "release: ARCHES names $arch; accepted: amd64, arm64" >&2; exit 2 ;;
  esac
  bundle="$DIST/$arch"
  rm -rf "$bundle"
  mkdir -p "$bundle/rootfs"
  (cd "$bundle/rootfs" && mkdir -p data tmp etc/ssl/certs run/docker/plugins dev proc sys)
  echo "release: building linux/$arch"
  CGO_ENABLED=0 GOOS=linux GOARCH="$arch" "$GO" build -trimpath -ldflags "-X main.version=$VERSION" -o "$bundle/rootfs/tslink" ./cmd/tslink
  [ ! -f /etc/ssl/certs/ca-certificates.crt ] || cp /etc/ssl/certs/ca-certificates.crt "$bundle/rootfs/etc/ssl/certs/"
  cp config.json "$bundle/config.json"
  if [ "$PUSH" = 1 ]; then
    ref="$REGISTRY/tslink:$VERSION-$arch"
    docker plugin rm -f "$ref" >/dev/null 2>&1 || true
    docker plugin create "$ref" "$bundle"
    docker plugin push "$ref"
    docker plugin rm "$ref" >/dev/null
    echo "release: pushed $ref"
  fi
done
