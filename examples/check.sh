#!/usr/bin/env bash
# Renders every kustomization under examples/ with `kubectl kustomize` (offline) and fails
# when any does not render. Uses the project's kubectl 1.20 when it is there (its built-in
# kustomize v2.0.3 is the oldest the examples support), else `kubectl` from PATH; set
# KUBECTL to choose another. The Rust test `cargo test -p tributary-operator --test
# examples` checks the resources themselves.
#
#   examples/check.sh            render only (offline)
#   examples/check.sh --server   also send each rendering to the API server of the current
#                                kubeconfig as a server-side dry run (nothing is created):
#                                the API server validates every object against its schema
#                                (the Tributary CRDs must be installed). Namespace objects
#                                are left out and everything goes into CHECK_NAMESPACE
#                                (default: `default`), which must exist.
set -euo pipefail
server=false
case "${1:-}" in
  "") ;;
  --server) server=true ;;
  *) echo "usage: $0 [--server]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project_kubectl="${TRIBUTARY_CACHE:-/var/cache/tributary}/kubernetes-1.20.2/bin/kubectl"
if [ -z "${KUBECTL:-}" ]; then
  if [ -x "$project_kubectl" ]; then
    KUBECTL="$project_kubectl"
  else
    KUBECTL="$(command -v kubectl || true)"
  fi
fi
if [ -z "$KUBECTL" ] || ! "$KUBECTL" version --client >/dev/null 2>&1; then
  echo "check.sh: no working kubectl (set KUBECTL, or build the project's with tests/cluster/cluster.sh up)" >&2
  exit 2
fi
echo "using $("$KUBECTL" version --client --short 2>/dev/null || "$KUBECTL" version --client) ($KUBECTL)"

# Server-side dry run of one kustomization, moved into CHECK_NAMESPACE by a throwaway
# kustomization on top of it (Namespace objects dropped).
dry_run() {
  local dir=$1 tmp
  tmp="$(mktemp -d)"
  printf 'namespace: %s\nbases:\n  - %s\n' "${CHECK_NAMESPACE:-default}" \
    "$(realpath --relative-to="$tmp" "$dir")" >"$tmp/kustomization.yaml"
  local rc=0
  "$KUBECTL" kustomize "$tmp" |
    awk 'BEGIN { RS = "\n---\n"; ORS = "\n---\n" } !/(^|\n)kind: Namespace\n/' |
    "$KUBECTL" apply --dry-run=server -f - >/dev/null || rc=$?
  rm -rf "$tmp"
  return "$rc"
}

mapfile -t files < <(find "$here" \( -name kustomization.yaml -o -name kustomization.yml -o -name Kustomization \) -type f | sort)
[ "${#files[@]}" -gt 0 ] || { echo "check.sh: no kustomization found under $here" >&2; exit 1; }
failed=0
for file in "${files[@]}"; do
  dir="$(dirname "$file")"
  name="${dir#"$here"/}"
  if out="$("$KUBECTL" kustomize "$dir" 2>&1)" && { ! $server || out="$(dry_run "$dir" 2>&1)"; }; then
    echo "ok     $name ($(grep -c '^kind:' <<<"$("$KUBECTL" kustomize "$dir")") objects)"
  else
    echo "FAILED $name:"
    sed 's/^/       /' <<<"$out"
    failed=$((failed + 1))
  fi
done
if [ "$failed" -gt 0 ]; then
  echo "$failed of ${#files[@]} kustomizations failed"
  exit 1
fi
if $server; then
  echo "all ${#files[@]} kustomizations render and pass the server-side dry run"
else
  echo "all ${#files[@]} kustomizations render"
fi
