#!/usr/bin/env bash
# The operator pod killed in the middle of applying 50 resources: the replacement converges
# (every resource Ready for its current generation, every child there) and, once the
# resources are deleted, nothing the operator made is left behind.
#
# Needs KUBECONFIG and kubectl on PATH, the images loaded into the node, and the operator
# installed by the Helm chart (tests/e2e/e2e.sh installs it; so does the main command).
# Uses the namespace `restart`. Ends with "N passed, N failed".
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
# shellcheck source=lib.sh
source "$repo/tests/e2e/lib.sh"
: "${KUBECONFIG:?KUBECONFIG must point at the test cluster (tests/cluster/cluster.sh up)}"
NS=restart
PIPELINES=16 # a Sink, a Worker and a Gateway each, plus one Queue: 49 + 1 = 50 resources

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

operator_pods() {
  kubectl -n "$OPERATOR_NAMESPACE" get pods -l app.kubernetes.io/name=tributary-operator \
    --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}'
}

kubectl version >/dev/null 2>&1 || { echo "the test cluster is not reachable" >&2; echo "0 passed, 1 failed"; exit 1; }
[ -n "$(operator_pods)" ] || { echo "no running operator in $OPERATOR_NAMESPACE: install it first (tests/e2e/e2e.sh)" >&2; echo "0 passed, 1 failed"; exit 1; }
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=180s >/dev/null

# One file per resource, applied one at a time so the operator is killed mid-way.
cat >"$work/000-base.yaml" <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: $NS}
stringData: {url: "postgres://user:pass@postgres.$NS.svc:5432/db"}
---
apiVersion: v1
kind: Secret
metadata: {name: passwords, namespace: $NS}
stringData: {passwords: ""}
---
apiVersion: tributary.dev/v1alpha1
kind: Queue
metadata: {name: q, namespace: $NS}
spec:
  broker: {managed: {replicas: 1}}
  type: quorum
  deletionPolicy: Delete
  deleteNonEmpty: true
EOF
for i in $(seq -w 1 "$PIPELINES"); do
  cat >"$work/$i-pipeline.yaml" <<EOF
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: sink-$i, namespace: $NS}
spec:
  postgres:
    urlSecretRef: {name: db, key: url}
    table: rows_$i
    createTable: true
    columns: [{name: device, expr: device}]
---
apiVersion: tributary.dev/v1alpha1
kind: Worker
metadata: {name: worker-$i, namespace: $NS}
spec:
  queue: q
  sinks: [sink-$i]
  scaling: {minReplicas: 0, maxReplicas: 1}
---
apiVersion: tributary.dev/v1alpha1
kind: Gateway
metadata: {name: gateway-$i, namespace: $NS}
spec:
  replicas: 0
  listeners: {mqtt: {port: 1883}}
  auth: {passwords: {name: passwords}}
  publishTopics: ["devices/{device}/#"]
  routes: [{topicFilter: "devices/#", queue: q}]
EOF
done

step "applying 50 resources one pipeline at a time; the operator pod is killed half-way"
started=$SECONDS
killed=""
for file in "$work"/*.yaml; do
  kubectl apply -f "$file" >/dev/null
  if [ -z "$killed" ] && [[ "$(basename "$file")" == 08-* ]]; then
    killed=$(operator_pods)
    kubectl -n "$OPERATOR_NAMESPACE" delete pod $killed --grace-period=0 --force >/dev/null 2>&1
    step "killed operator pod(s) $killed after the Queue and 8 of $PIPELINES pipelines"
  fi
done
check "the operator pod was killed mid-apply" [ -n "$killed" ]

# Converged: every resource Ready=True for its current generation.
converged() {
  local kind pending=0
  for kind in queues sinks workers gateways; do
    pending=$((pending + $(kubectl -n "$NS" get "$kind" -o json | jq '[.items[]
      | select(([.status.conditions[]? | select(.type == "Ready" and .status == "True")] | length == 0)
        or (.status.observedGeneration // 0) != .metadata.generation)] | length')))
  done
  [ "$pending" -eq 0 ]
}
children() { # KIND OWNER-KIND: children of that owner kind in the namespace
  kubectl -n "$NS" get "$1" -l "tributary.dev/owner-kind=$2" -o name 2>/dev/null | grep -c . || true
}
if wait_until 420 converged; then
  check "all 50 resources Ready for their generation after the restart ($((SECONDS - started)) s)" true
else
  check "all 50 resources Ready for their generation after the restart" false
  kubectl -n "$NS" get queues,sinks,workers,gateways >&2 || true
fi
check "a new operator pod took over" test -n "$(operator_pods)" -a "$(operator_pods)" != "$killed"
check "every Worker has its Deployment ($PIPELINES)" [ "$(children deployments worker)" -eq "$PIPELINES" ]
check "every Gateway has its Deployment ($PIPELINES)" [ "$(children deployments gateway)" -eq "$PIPELINES" ]
check "every Gateway has its Service ($PIPELINES)" [ "$(children services gateway)" -eq "$PIPELINES" ]

step "deleting the pipelines; nothing the operator made for them may stay"
kubectl -n "$NS" delete gateways,workers,sinks --all --wait=true --timeout=180s >/dev/null
no_orphans() {
  local kind
  for kind in deployments services configmaps secrets; do
    for owner in worker gateway sink; do
      [ "$(children "$kind" "$owner")" -eq 0 ] || return 1
    done
  done
}
if wait_until 180 no_orphans; then
  check "no orphan Deployment, Service, ConfigMap or Secret of a deleted Gateway, Worker or Sink" true
else
  check "no orphan Deployment, Service, ConfigMap or Secret of a deleted Gateway, Worker or Sink" false
  kubectl -n "$NS" get deployments,services,configmaps,secrets --show-labels >&2 || true
fi
started=$SECONDS
kubectl delete namespace "$NS" --wait=true --timeout=180s >/dev/null 2>&1 || true
check "the namespace (with a deletionPolicy: Delete Queue) is gone within 3 minutes ($((SECONDS - started)) s)" \
  bash -c "! kubectl get namespace $NS >/dev/null 2>&1"

finish
