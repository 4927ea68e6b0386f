#!/usr/bin/env bash
# Installs the chart into the running test cluster and proves the operator pod reconciles:
# a Sink waiting for its Secret becomes Ready once the Secret exists. Needs KUBECONFIG,
# kubectl on PATH, Helm 3, and the image tributary/operator:0.1.0 loaded into the node
# (tests/images/build-and-load.sh). Fails (never skips) when the cluster is unreachable.
# Ends with "N passed, N failed"; removes its namespace and release.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${KUBECONFIG:?KUBECONFIG must point at the test cluster (tests/cluster/cluster.sh up)}"
kubectl version >/dev/null 2>&1 || { echo "the test cluster is not reachable" >&2; echo "0 passed, 1 failed"; exit 1; }
ns="op-test-helm-$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
release="tributary-${ns#op-test-helm-}"
passed=0
failed=0
cleanup() {
  helm uninstall "$release" -n "$ns" >/dev/null 2>&1 || true
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT
check() {
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "FAIL $name"; fi
}
wait_for() { # SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 2
  done
}
sink_ready() {
  [ "$(kubectl -n "$ns" get sink readings -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
sink_waiting() {
  [ "$(kubectl -n "$ns" get sink readings -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')" = WaitingForSecret ]
}
kubectl create namespace "$ns" >/dev/null
check helm-install helm install "$release" "$here/tributary" -n "$ns" --set "watchNamespaces={$ns}" --wait --timeout 180s
check operator-running kubectl -n "$ns" rollout status "deployment/$release" --timeout=120s
kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: readings}
spec:
  postgres:
    urlSecretRef: {name: pg, key: url}
    table: readings
    columns: [{name: device, expr: device}]
YAML
check sink-waits-for-secret wait_for 120 sink_waiting
kubectl -n "$ns" create secret generic pg --from-literal=url=postgres://u:p@db:5432/x >/dev/null
check sink-ready-after-secret wait_for 120 sink_ready
check leader-lease wait_for 30 kubectl -n "$ns" get lease tributary-operator
restarts=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=tributary-operator -o jsonpath='{.items[*].status.containerStatuses[*].restartCount}')
check no-operator-restarts test "${restarts:-0}" = 0
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
