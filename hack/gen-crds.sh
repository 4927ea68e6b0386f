#!/usr/bin/env bash
# Regenerates crds/*.yaml (and the chart's copy) from the Rust CRD types.
# The unit test `committed_crds_match_the_rust_types` fails when these files are stale.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo run --quiet -p tributary-operator -- crds --out-dir crds
if [ -d charts/tributary/crds ]; then
    cp crds/*.yaml charts/tributary/crds/
fi
