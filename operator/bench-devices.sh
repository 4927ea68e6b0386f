#!/usr/bin/env bash
# Benchmark (not a test): a fleet of BENCH_DEVICE_COUNT (10000) Device resources with
# generated credentials, applied at once on the running cluster (tests/cluster/cluster.sh up)
# to one Gateway, and reconciled by the operator (release build, run on the host for this
# namespace only, so that its own memory is what is measured). It prints:
#   apply: `kubectl apply --server-side` of the fleet (the client's own time)
#   reconciled: apply start -> every Device Ready with its credential Secret
#   table: apply start -> the Gateway's registry Secret holds every device
#   operator peak RSS, and its RSS once settled
#   requests at steady state: API requests the operator makes in BENCH_STEADY_SECONDS (60)
#   once everything settled, from its client metrics
# as `BENCH figure=… system=… value=… unit=…` lines (hack/bench.sh collects them). There is
# no peer: no other operator in this field issues device credentials.
# The Gateway runs 0 replicas; its Queue is external, on the "bench" RabbitMQ of the host
# (tests/services/rabbitmq.sh with TRIBUTARY_RABBITMQ_INSTANCE=bench, started if needed).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench-lib.sh
source "$repo/operator/bench-lib.sh"
count="${BENCH_DEVICE_COUNT:-10000}"
steady="${BENCH_STEADY_SECONDS:-60}"
deadline="${BENCH_DEVICE_DEADLINE:-900}"
ns=bench-devices
metrics_port="${BENCH_OPERATOR_METRICS_PORT:-28890}"
say() { printf '[devices %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

kubectl version >/dev/null 2>&1 || { echo "the cluster is not reachable: tests/cluster/cluster.sh up" >&2; exit 1; }
bash "$repo/tests/services/rabbitmq.sh" start >&2
eval "$(bash "$repo/tests/services/rabbitmq.sh" env)"
(cd "$repo" && cargo build --release --locked -q -p tributary-operator)
operator="$CARGO_TARGET_DIR/release/tributary-operator"
kubectl apply -f "$repo/crds/" >/dev/null
kubectl delete namespace "$ns" --ignore-not-found --wait=true --timeout=600s >/dev/null
kubectl create namespace "$ns" >/dev/null
work=$(mktemp -d /tmp/tributary-bench-devices-XXXXXX)
pid_file="$work/operator.pid"
cleanup() {
  if [ -s "$pid_file" ]; then kill "$(cat "$pid_file")" 2>/dev/null || true; fi
  kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  restore_paused_operators
}
trap cleanup EXIT
pause_installed_operators

kubectl -n "$ns" create secret generic broker --from-literal=uri="$TRIBUTARY_TEST_AMQP_URL" >/dev/null
kubectl -n "$ns" apply -f - >/dev/null <<'YAML'
apiVersion: tributary.dev/v1alpha1
kind: Queue
metadata: {name: telemetry}
spec:
  broker:
    external: {uriSecretRef: {name: broker, key: uri}}
---
apiVersion: tributary.dev/v1alpha1
kind: Gateway
metadata: {name: fleet}
spec:
  replicas: 0
  listeners: {mqtt: {port: 1883}}
  auth: {}
  routes: [{topicFilter: "devices/#", queue: telemetry}]
YAML
"$operator" run --namespace "$ns" --listen "127.0.0.1:$metrics_port" >"$work/operator.log" 2>&1 &
echo $! >"$pid_file"
pid=$(cat "$pid_file")
wait_ready() { # KIND NAME
  local until=$((SECONDS + 180))
  until [ "$(kubectl -n "$ns" get "$1" "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
    [ "$SECONDS" -lt "$until" ] || { echo "$1 $2 not Ready within 180 s" >&2; tail -20 "$work/operator.log" >&2; exit 1; }
    sleep 1
  done
}
wait_ready queue telemetry
wait_ready gateway fleet
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
idle_rss=$(rss_kib)
say "operator running (pid $pid, RSS $((idle_rss / 1024)) MiB); generating $count Devices"
"$operator" devices generate --count "$count" --name-pattern 'dev-{n:05}' --gateway fleet \
  --namespace "$ns" --attribute site=bench >"$work/devices.yaml"

peak=$idle_rss
start=$SECONDS
kubectl apply --server-side --field-manager=bench -f "$work/devices.yaml" >/dev/null &
apply_pid=$!
applied="" reconciled="" tabled=""
while :; do
  now=$((SECONDS - start))
  rss=$(rss_kib)
  [ "$rss" -gt "$peak" ] && peak=$rss
  if [ -z "$applied" ] && ! kill -0 "$apply_pid" 2>/dev/null; then
    wait "$apply_pid"
    applied=$now
    say "applied in ${applied} s"
  fi
  ready=$(kubectl -n "$ns" get devices -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True || true)
  if [ -z "$tabled" ]; then
    in_table=$(kubectl -n "$ns" get gateway fleet -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}' | grep -o '[0-9]* devices in its table' | cut -d' ' -f1 || true)
    [ "${in_table:-0}" = "$count" ] && tabled=$now
  fi
  say "t=${now}s: $ready/$count Devices Ready; gateway table ${in_table:-0}; operator RSS $((rss / 1024)) MiB"
  if [ -n "$applied" ] && [ "$ready" = "$count" ] && [ -n "$tabled" ]; then
    reconciled=$now
    break
  fi
  [ "$now" -lt "$deadline" ] || { echo "not settled within $deadline s" >&2; exit 1; }
  sleep 5
done
secrets=$(kubectl -n "$ns" get secrets -l app.kubernetes.io/name=device -o name | wc -l)
[ "$secrets" -ge "$count" ] || { echo "only $secrets credential Secrets for $count Devices" >&2; exit 1; }
# requests [writes]: the operator's API requests so far (all verbs, or writes only).
requests() {
  curl -s "127.0.0.1:$metrics_port/metrics" | awk -v writes="${1:-}" '
    /^tributary_operator_api_requests_total/ {
      if (writes == "" || $0 ~ /verb="(create|update|patch|delete)"/) sum += $2
    }
    END {print sum + 0}'
}
before=$(requests) before_writes=$(requests writes)
say "settled; counting API requests for $steady s"
sleep "$steady"
after=$(requests) after_writes=$(requests writes)
settled_rss=$(rss_kib)
table_bytes=$(kubectl -n "$ns" get secret fleet-gateway-registry -o jsonpath='{.data.devices\.json\.gz}' | base64 -d | wc -c)
say "apply ${applied} s, all reconciled ${reconciled} s, table ${tabled} s, peak RSS $((peak / 1024)) MiB, settled RSS $((settled_rss / 1024)) MiB, $((after - before)) requests ($((after_writes - before_writes)) writes) in ${steady} s, table $table_bytes bytes gzip"
echo "BENCH figure=devices_settled system=tributary value=$reconciled unit=s"
echo "BENCH figure=devices_settled system=kubectl-apply value=$applied unit=s"
echo "BENCH figure=devices_table system=tributary value=$tabled unit=s"
echo "BENCH figure=devices_operator_peak_rss system=tributary value=$((peak / 1024)) unit=MiB"
echo "BENCH figure=devices_operator_settled_rss system=tributary value=$((settled_rss / 1024)) unit=MiB"
echo "BENCH figure=devices_steady_requests system=tributary value=$((after - before)) unit=requests"
echo "BENCH figure=devices_steady_writes system=tributary value=$((after_writes - before_writes)) unit=writes"
echo "BENCH figure=devices_table_bytes system=tributary value=$table_bytes unit=bytes"
