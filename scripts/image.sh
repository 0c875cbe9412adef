#!/usr/bin/env bash
# Builds airlock's container image with the docker CLI (DOCKER_HOST is
# honoured): a static binary and the host's CA bundle in a temporary
# context, then the Dockerfile at the top of the repository.
#
#   scripts/image.sh [TAG]        # default tag: airlock:dev
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-airlock:dev}
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[[ -r $ca ]] || { echo "image.sh: no CA bundle at $ca (install ca-certificates or set CA_BUNDLE)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# The version and commit are stamped in, as -trimpath builds and builds
# without VCS information (a plain source tree) record none.
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=$version -X main.commit=$commit" -o "$ctx/airlock" ./cmd/airlock
cp "$ca" "$ctx/ca-certificates.crt"
mkdir "$ctx/data"
cp Dockerfile "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx"
