#!/usr/bin/env bash
# Benchmark (not a test): how fast the autoscaler reacts to a backlog. On the running
# cluster (tests/cluster/cluster.sh up; images loaded), with the operator installed by its
# Helm chart, a Worker at minReplicas 0 gets a backlog of BENCH_MESSAGES messages published
# by simulated devices through a Gateway. Per trial it measures:
#   decision: the publisher starts (the backlog starts to appear) -> the worker
#             Deployment's replicas change
#   consuming: the publisher starts -> the first worker pod Ready (consuming)
# The publishers are BENCH_DEVICES (10) mosquitto_pub processes at once, each one device
# login and its share of the messages at QoS 1; their time (the gateway acknowledges each
# message after the broker confirmed it) is counted against us and printed.
# for pollIntervalSeconds 5 (the default) and 1, and prints them beside the reference
# chain of a polling scaler with the default settings of KEDA + HPA (30 s polling interval,
# then 15 s HPA sync): decision after U(0,30) + U(0,15) s (mean 22.5 s, worst 45 s) plus the
# same pod start measured here.
#   operator/bench-autoscale.sh            # BENCH_TRIALS=3 BENCH_MESSAGES=500
# The means are also printed as `BENCH figure=…` lines, collected by hack/bench.sh.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../tests/cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
# shellcheck source=../tests/e2e/lib.sh
source "$repo/tests/e2e/lib.sh"
export KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}" PATH="$K8S_BIN:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"
trials="${BENCH_TRIALS:-3}"
messages="${BENCH_MESSAGES:-500}"
devices="${BENCH_DEVICES:-10}"
ns=bench-autoscale
kubectl version >/dev/null 2>&1 || { echo "the cluster is not reachable: tests/cluster/cluster.sh up" >&2; exit 1; }
(cd "$repo" && cargo build --release --locked -q -p tributary-gateway)
command -v mosquitto_pub >/dev/null || bash "$repo/tests/services/install-clients.sh"
install_operator "$repo"
kubectl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "$ns" >/dev/null
trap 'kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
hash=$(printf bench-password | "$CARGO_TARGET_DIR/release/tributary-gateway" hash-password)
kubectl -n "$ns" create secret generic devices \
  --from-literal=passwords="$(for d in $(seq 1 "$devices"); do echo "bench-$d:$hash"; done)" >/dev/null
kubectl -n "$ns" create secret generic cache --from-literal=url=redis://cache:6379 >/dev/null
kubectl -n "$ns" apply -f - >/dev/null <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: cache}
spec:
  selector: {matchLabels: {app: cache}}
  template:
    metadata: {labels: {app: cache}}
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: redis
          image: redis:7
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: cache}
spec:
  selector: {app: cache}
  ports: [{port: 6379, protocol: TCP}]
---
apiVersion: tributary.dev/v1alpha1
kind: Queue
metadata: {name: backlog}
spec:
  broker: {managed: {}}
  type: classic
---
apiVersion: tributary.dev/v1alpha1
kind: Gateway
metadata: {name: bench}
spec:
  listeners: {mqtt: {port: 1883}}
  auth: {passwords: {name: devices}}
  routes: [{topicFilter: "devices/+/telemetry", queue: backlog}]
---
apiVersion: tributary.dev/v1alpha1
kind: Sink
metadata: {name: latest}
spec:
  redis: {urlSecretRef: {name: cache, key: url}}
YAML
worker() { # POLL_SECONDS
  kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: tributary.dev/v1alpha1
kind: Worker
metadata: {name: drain}
spec:
  queue: backlog
  sinks: [latest]
  scaling: {minReplicas: 0, maxReplicas: 4, messagesPerReplica: 100, scaleDownDelaySeconds: 5, pollIntervalSeconds: $1}
YAML
}
worker 5
wait_ready "$ns" 600 queue/backlog gateway/bench sink/latest worker/drain
ip=$(service_ip "$ns" bench-gateway)
now() { date +%s.%N; }
replicas() { kubectl -n "$ns" get deployment drain-worker -o jsonpath='{.spec.replicas}'; }
at_zero() { [ "$(replicas)" = 0 ] && ! kubectl -n "$ns" get pods -l app.kubernetes.io/instance=drain -o name | grep -q .; }

results=()
payload=$(mktemp)
for i in $(seq 1 $((messages / devices))); do echo "{\"seq\": $i, \"value\": 1}"; done >"$payload"
# publish_all: every device publishes its share at once; fails if any publisher failed.
publish_all() {
  local d pids=() failed=0
  for d in $(seq 1 "$devices"); do
    mosquitto_pub -h "$ip" -p 1883 -V mqttv311 -q 1 -i "bench-$d" -u "bench-$d" -P bench-password \
      -t "devices/bench-$d/telemetry" -l <"$payload" &
    pids+=($!)
  done
  for d in "${pids[@]}"; do wait "$d" || failed=1; done
  return "$failed"
}
for poll in 5 1; do
  worker "$poll"
  for trial in $(seq 1 "$trials"); do
    wait_until 300 at_zero || { echo "worker did not return to zero replicas" >&2; exit 1; }
    sleep "$(awk -v s="$RANDOM" -v p="$poll" 'BEGIN { srand(s); printf "%.1f", rand() * p }')" # random phase against the poll
    pods=$(mktemp)
    # The worker pods' "<name> <Ready>" as they change (kubectl itself in the background, so
    # that its PID is the one stopped below).
    kubectl -n "$ns" get pods -l app.kubernetes.io/instance=drain,app.kubernetes.io/name=worker -w \
      -o jsonpath='{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}' >"$pods" &
    watcher=$!
    sleep 1
    t0=$(now)
    publish_all
    published=$(now)
    until [ "$(replicas)" != 0 ]; do sleep 0.1; done
    t1=$(now)
    until grep -q ' True$' "$pods"; do sleep 0.05; done
    t2=$(now)
    kill "$watcher" 2>/dev/null || true
    rm -f "$pods"
    publish=$(awk -v a="$t0" -v b="$published" 'BEGIN { printf "%.2f", b - a }')
    decision=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    consuming=$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.1f", b - a }')
    echo "poll ${poll}s trial $trial: publish took ${publish}s; decision ${decision}s, first pod consuming ${consuming}s" >&2
    results+=("$poll $decision $consuming")
  done
done

printf '%s\n' "${results[@]}" | awk -v trials="$trials" '
  { d[$1] += $2; c[$1] += $3; s[$1] += $3 - $2; if ($2 > dm[$1]) dm[$1] = $2 }
  END {
    start = (s[5] + s[1]) / (2 * trials)
    printf "\n%-44s %12s %12s %16s\n", "scaler (backlog of '"$messages"' msgs, min 0)", "decision", "worst seen", "pods consuming"
    printf "%-44s %11.1fs %11.1fs %15.1fs\n", "Tributary autoscaler, poll 5 s (default)", d[5] / trials, dm[5], c[5] / trials
    printf "%-44s %11.1fs %11.1fs %15.1fs\n", "Tributary autoscaler, poll 1 s", d[1] / trials, dm[1], c[1] / trials
    printf "%-44s %11.1fs %11.1fs %15.1fs\n", "reference: 30 s polling + 15 s HPA sync", 22.5, 45.0, 22.5 + start
    printf "\nratio of mean decision time, reference / Tributary: %.1fx (poll 5 s), %.1fx (poll 1 s)\n", 22.5 / (d[5] / trials), 22.5 / (d[1] / trials)
    printf "(reference decision = expected value of U(0,30)+U(0,15); its pod start = the %.1f s measured here)\n", start
    # Machine-readable figures for hack/bench.sh.
    printf "BENCH figure=autoscale_decision system=tributary-poll5 value=%.2f unit=s trials=%d\n", d[5] / trials, trials
    printf "BENCH figure=autoscale_decision system=tributary-poll1 value=%.2f unit=s trials=%d\n", d[1] / trials, trials
    printf "BENCH figure=autoscale_decision system=keda-hpa value=22.5 unit=s computed=1\n"
    printf "BENCH figure=autoscale_consuming system=tributary-poll5 value=%.2f unit=s trials=%d\n", c[5] / trials, trials
    printf "BENCH figure=autoscale_consuming system=keda-hpa value=%.2f unit=s computed=1\n", 22.5 + start
  }'
