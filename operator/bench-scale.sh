#!/usr/bin/env bash
# Benchmark (not a test): the operator at scale. BENCH_SCALE_NAMESPACES (100) namespaces,
# each with ten resources — a Queue on one reachable shared broker (external URI: the
# "bench" RabbitMQ of the host), a Gateway and a Worker (0 replicas: their children are
# created, no pods run), two Sinks (PostgreSQL and live), an ApplicationApi (0 replicas) and
# four Devices — applied at once on the running cluster (tests/cluster/cluster.sh up) and
# reconciled by the operator (release build, on the host, watching every namespace, so
# that its own CPU and memory are what is measured). It prints:
#   settled: apply start -> every resource Ready (children included: Deployments, Services,
#            ConfigMaps, Secrets, credential Secrets), beside kubectl's own apply time
#   operator CPU seconds until settled, peak RSS, RSS once settled and after the steady
#   window (memory flat or not)
#   API requests and writes per minute at steady state (BENCH_STEADY_SECONDS, 120), from
#   the operator's client metrics
# as `BENCH figure=… system=… value=… unit=…` lines (hack/bench.sh collects them).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench-lib.sh
source "$repo/operator/bench-lib.sh"
namespaces="${BENCH_SCALE_NAMESPACES:-100}"
steady="${BENCH_STEADY_SECONDS:-120}"
deadline="${BENCH_SCALE_DEADLINE:-900}"
prefix=bench-scale
metrics_port="${BENCH_OPERATOR_METRICS_PORT:-28891}"
say() { printf '[scale %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

kubectl version >/dev/null 2>&1 || { echo "the cluster is not reachable: tests/cluster/cluster.sh up" >&2; exit 1; }
bash "$repo/tests/services/rabbitmq.sh" start >&2
eval "$(bash "$repo/tests/services/rabbitmq.sh" env)"
# Reached by the operator on the host (no pod runs: every workload has 0 replicas).
broker_uri="$TRIBUTARY_TEST_AMQP_URL"
(cd "$repo" && cargo build --release --locked -q -p tributary-operator)
operator="$CARGO_TARGET_DIR/release/tributary-operator"
kubectl apply -f "$repo/crds/" >/dev/null
work=$(mktemp -d /tmp/tributary-bench-scale-XXXXXX)
pid_file="$work/operator.pid"
ns_names() { seq -f "$prefix-%03g" 1 "$namespaces"; }
delete_namespaces() { # WAIT: true or false
  ns_names | xargs -r kubectl delete namespace --ignore-not-found --wait="$1" --timeout=600s >/dev/null 2>&1 || true
}
cleanup() {
  if [ -s "$pid_file" ]; then kill "$(cat "$pid_file")" 2>/dev/null || true; fi
  delete_namespaces false
  restore_paused_operators
}
trap cleanup EXIT
pause_installed_operators
say "removing namespaces of an earlier run"
delete_namespaces true

# One namespace's resources (NS and the broker URI substituted).
manifests() { # NS
  cat <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $1}
---
apiVersion: v1
kind: Secret
metadata: {name: broker, namespace: $1}
stringData: {uri: "$broker_uri"}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: $1}
stringData: {url: "postgres://bench:bench@db.invalid:5432/bench"}
---
apiVersion: tributary.dev/v1alpha1
kind: Queue
metadata: {name: telemetry, namespace: $1}
spec:
  queueName: $1.telemetry
  broker:
    external: {uriSecretRef: {name: broker, key: uri}}
---
apiVersion: tributary.dev/v1alpha1
kind: Gateway
metadata: {name: line, namespace: $1}
spec:
  replicas: 0
  listeners: {mqtt: {port: 1883}}
  auth: {}
  routes: [{topicFilter: "devices/#", queue: telemetry}]
---
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: readings, namespace: $1}
spec:
  postgres:
    urlSecretRef: {name: db, key: url}
    table: readings
    createTable: false
    columns:
      - {name: device, expr: device}
      - {name: received_at, expr: receivedAt, type: timestamptz}
---
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: view, namespace: $1}
spec:
  live: {}
---
apiVersion: tributary.dev/v1alpha1
kind: Worker
metadata: {name: store, namespace: $1}
spec:
  queue: telemetry
  sinks: [readings, view]
  scaling: {minReplicas: 0, maxReplicas: 2}
---
apiVersion: tributary.dev/v1alpha1
kind: ApplicationApi
metadata: {name: insight, namespace: $1}
spec:
  replicas: 0
  history: {sink: readings}
  live: {queue: telemetry}
  apiKeys: [{name: app, scope: all}]
YAML
  for d in 1 2 3 4; do
    cat <<YAML
---
apiVersion: tributary.dev/v1alpha1
kind: Device
metadata: {name: dev-$d, namespace: $1}
spec:
  gateways: [line]
  credentials: {generated: {}}
YAML
  done
}
for ns in $(ns_names); do manifests "$ns"; echo "---"; done >"$work/all.yaml"
kinds="queues,gateways,sinks,workers,applicationapis,devices"
total=$((namespaces * 10))

"$operator" run --listen "127.0.0.1:$metrics_port" >"$work/operator.log" 2>&1 &
echo $! >"$pid_file"
pid=$(cat "$pid_file")
until curl -sf -o /dev/null "127.0.0.1:$metrics_port/readyz"; do
  kill -0 "$pid" 2>/dev/null || { echo "the operator exited; see $work/operator.log" >&2; tail -20 "$work/operator.log" >&2; exit 1; }
  sleep 1
done
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
ticks_per_second=$(getconf CLK_TCK)
# requests [writes]: the operator's API requests so far (all verbs, or writes only).
requests() {
  curl -s "127.0.0.1:$metrics_port/metrics" | awk -v writes="${1:-}" '
    /^tributary_operator_api_requests_total/ {
      if (writes == "" || $0 ~ /verb="(create|update|patch|delete)"/) sum += $2
    }
    END {print sum + 0}'
}
# request_lines: `verb="…",resource="…" COUNT` for each kind of request so far.
request_lines() {
  curl -s "127.0.0.1:$metrics_port/metrics" |
    sed -n 's/^tributary_operator_api_requests_total{\(.*\)} \([0-9.e+]*\)$/\1 \2/p'
}
say "operator running (pid $pid, RSS $(( $(rss_kib) / 1024 )) MiB); applying $total resources in $namespaces namespaces"
peak=$(rss_kib)
cpu_start=$(cpu_ticks)
start=$SECONDS
kubectl apply --server-side --field-manager=bench -f "$work/all.yaml" >"$work/apply.log" 2>&1 &
apply_pid=$!
applied="" settled=""
while :; do
  now=$((SECONDS - start))
  rss=$(rss_kib)
  [ "$rss" -gt "$peak" ] && peak=$rss
  if [ -z "$applied" ] && ! kill -0 "$apply_pid" 2>/dev/null; then
    wait "$apply_pid" || { echo "kubectl apply failed:" >&2; tail -20 "$work/apply.log" >&2; exit 1; }
    applied=$now
    say "applied in ${applied} s"
  fi
  ready=$(kubectl get "$kinds" --all-namespaces \
    -o jsonpath='{range .items[*]}{.metadata.namespace} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    grep -c "^$prefix-[0-9]* True$" || true)
  say "t=${now}s: $ready/$total Ready; operator RSS $((rss / 1024)) MiB"
  if [ -n "$applied" ] && [ "$ready" = "$total" ]; then
    settled=$now
    break
  fi
  if [ "$now" -ge "$deadline" ]; then
    echo "not settled within $deadline s; not Ready:" >&2
    kubectl get "$kinds" --all-namespaces -o jsonpath='{range .items[*]}{.metadata.namespace}/{.kind}/{.metadata.name} {.status.conditions[?(@.type=="Ready")].reason}: {.status.conditions[?(@.type=="Ready")].message}{"\n"}{end}' |
      grep "^$prefix" | grep -v ' Ready: ' | head -20 >&2 || true
    exit 1
  fi
  sleep 3
done
cpu_settled=$(( ($(cpu_ticks) - cpu_start) * 100 / ticks_per_second ))
# Children: every Gateway, Worker and ApplicationApi has its Deployment.
deployments=$(kubectl get deployments --all-namespaces -o jsonpath='{range .items[*]}{.metadata.namespace}{"\n"}{end}' | grep -c "^$prefix-" || true)
[ "$deployments" -ge $((namespaces * 3)) ] || { echo "only $deployments Deployments for $((namespaces * 3)) workloads" >&2; exit 1; }
settled_rss=$(rss_kib)
before=$(requests) before_writes=$(requests writes)
request_lines >"$work/requests.before"
cpu_before=$(cpu_ticks)
say "settled in ${settled} s with $deployments Deployments; counting API requests for $steady s"
sleep "$steady"
after=$(requests) after_writes=$(requests writes)
request_lines >"$work/requests.after"
say "steady-state requests per minute by kind (the largest):"
awk -v steady="$steady" 'NR == FNR {before[$1] = $2; next}
  {d = $2 - before[$1]; if (d > 0) printf "  %7d/min  %s\n", d * 60 / steady, $1}' \
  "$work/requests.before" "$work/requests.after" | sort -rn | head -8
steady_cpu=$(( ($(cpu_ticks) - cpu_before) * 1000 / ticks_per_second / steady ))
end_rss=$(rss_kib)
per_minute() { echo $(( $1 * 60 / steady )); }
say "apply ${applied} s, settled ${settled} s, CPU $((cpu_settled / 100)).$((cpu_settled % 100)) s until settled, peak RSS $((peak / 1024)) MiB, settled $((settled_rss / 1024)) MiB, after ${steady} s $((end_rss / 1024)) MiB; steady: $(per_minute $((after - before))) requests/min ($(per_minute $((after_writes - before_writes))) writes/min), CPU ${steady_cpu} ‰ of a core"
echo "BENCH figure=scale_settled system=tributary value=$settled unit=s"
echo "BENCH figure=scale_settled system=kubectl-apply value=$applied unit=s"
echo "BENCH figure=scale_cpu system=tributary value=$((cpu_settled / 100)).$(printf %02d $((cpu_settled % 100))) unit=s"
echo "BENCH figure=scale_peak_rss system=tributary value=$((peak / 1024)) unit=MiB"
echo "BENCH figure=scale_settled_rss system=tributary value=$((settled_rss / 1024)) unit=MiB"
echo "BENCH figure=scale_end_rss system=tributary value=$((end_rss / 1024)) unit=MiB"
echo "BENCH figure=scale_steady_requests system=tributary value=$(per_minute $((after - before))) unit=requests/min"
echo "BENCH figure=scale_steady_writes system=tributary value=$(per_minute $((after_writes - before_writes))) unit=writes/min"
echo "BENCH figure=scale_steady_cpu system=tributary value=$steady_cpu unit=permille"
