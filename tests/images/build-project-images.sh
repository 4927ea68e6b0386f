#!/usr/bin/env bash
# Builds the project's images (operator, gateway, worker, api, device simulator) from binaries built on this host
# and the runtime stage of the repository's Dockerfile (one per binary, chosen by its
# BINARY build argument), as docker-archive files in the cache. Prints
# the archive paths, one per line, on stdout; progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../cluster/lib.sh
source "$here/../cluster/lib.sh"
require_root
exec 3>&1 1>&2

VERSION="0.1.0"
IMAGES_CACHE="$TRIBUTARY_CACHE/images"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"
mkdir -p "$IMAGES_CACHE"

# Image tributary/NAME:VERSION holds the binary (and crate) tributary-NAME.
COMPONENTS=(operator gateway worker api simulator)
dockerfile="$repo/Dockerfile"

step "building release binaries (cargo, target in $CARGO_TARGET_DIR)"
(cd "$repo" && cargo build --release --locked -q -p tributary-operator -p tributary-gateway -p tributary-worker -p tributary-api -p tributary-simulator)

# The runtime stage's base image is a stand-in built from Debian's packages.
base_archive=$(bash "$here/build-standins.sh" debian)
if ! buildah inspect --type image docker.io/library/debian:bookworm-slim >/dev/null 2>&1; then
  buildah pull -q "docker-archive:$base_archive" >/dev/null
fi

for name in "${COMPONENTS[@]}"; do
  binary="$CARGO_TARGET_DIR/release/tributary-$name"
  ref="tributary/$name:$VERSION"
  key=$(cat "$binary" "$dockerfile" "$base_archive" | sha256sum | cut -c1-12)
  archive="$IMAGES_CACHE/project-$name-$key.tar"
  if [ ! -s "$archive" ]; then
    context=$(mktemp -d)
    cp "$binary" "$context/tributary-$name"
    buildah bud -q --pull=never --layers=false --target runtime \
      --build-arg BINARY="tributary-$name" --build-arg BINARY_FROM=prebuilt \
      --build-arg RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim \
      -f "$dockerfile" -t "$ref" "$context" >/dev/null
    rm -rf "$context"
    rm -f "$archive.tmp"
    buildah push -q "$ref" "docker-archive:$archive.tmp:$ref"
    mv "$archive.tmp" "$archive"
    find "$IMAGES_CACHE" -maxdepth 1 -name "project-$name-*.tar" ! -name "$(basename "$archive")" -delete
    step "image $ref built ($(du -h "$archive" | cut -f1))"
  fi
  echo "$archive" >&3
done
