#!/usr/bin/env bash
# Builds every image (project images and third-party stand-ins; cached) and imports them
# into the running cluster's node.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/lib.sh
source "$here/../cluster/lib.sh"
mapfile -t standins < <(bash "$here/build-standins.sh")
mapfile -t project < <(bash "$here/build-project-images.sh")
step "importing ${#standins[@]} stand-in and ${#project[@]} project images into the node"
bash "$here/../cluster/cluster.sh" load "${standins[@]}" "${project[@]}"
step "images loaded"
