#!/usr/bin/env bash
# Regenerates docs/resources.md (the field reference of the custom resources) from the
# Rust CRD types. The unit test `committed_reference_matches_the_crds` fails when it is
# stale.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mkdir -p docs
cargo run --quiet -p tributary-operator -- reference --out docs/resources.md
