#!/usr/bin/env bash
# The chaos suite on the running cluster (issue 11): a managed three-node RabbitMQ with a
# quorum Queue, a Gateway with two pods, a Worker with two pods writing one PostgreSQL row
# per message (keyed by message id). 50 simulated devices publish 20,000 messages (default;
# TRIBUTARY_CHAOS_MESSAGES) at a steady rate while, in turn, the broker pod holding the
# queue's leader, a gateway pod and a worker pod are deleted and PostgreSQL is stopped for
# two minutes. Afterwards the distinct (device, seq) rows must equal the messages the
# simulator saw acknowledged, exactly: its --ack-log (one line per PUBACK) against the
# table, no acknowledged message missing and no row of a message never acknowledged; the
# queue and its dead-letter queue must be empty, and the broker one cluster of three
# nodes with the quorum queue on all three. Prints the figures (counts, a timeline, the
# time each step took to recover, wall time per phase).
#
# Needs KUBECONFIG, kubectl and helm on PATH and the images loaded into the node
# (tests/images/build-and-load.sh); it installs the operator with the Helm chart as
# tests/e2e/e2e.sh does. Uses only its own namespace `chaos` (removed at the start when
# left from an earlier run, and at the end; TRIBUTARY_CHAOS_KEEP=1 keeps it for a look).
# Other knobs: TRIBUTARY_CHAOS_RATE (msg/s, default 70), TRIBUTARY_CHAOS_OUTAGE_SECONDS
# (default 120), TRIBUTARY_SIMULATOR (a built tributary-simulator; default: cargo builds it).
# Wall time about 6-8 minutes on 2 cores. Fails, never skips. Ends with "N passed, N failed".
#
# In the test command (hack/test.sh), after the e2e suites. The operator declares the
# quorum queue only once all three broker nodes run as one cluster (RabbitMQ 3.10 never
# adds members later), and a broker node that hangs while rejoining (Debian's RabbitMQ
# 3.10.8, rabbitmq-server #6034) is restarted by its startup probe after two minutes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../cluster/lib.sh
source "$repo/tests/cluster/lib.sh"
# shellcheck source=lib.sh
source "$repo/tests/e2e/lib.sh"
: "${KUBECONFIG:?KUBECONFIG must point at the test cluster (tests/cluster/cluster.sh up)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TRIBUTARY_CACHE/target}"

NS=chaos
manifests="$repo/tests/e2e/chaos"
N="${TRIBUTARY_CHAOS_MESSAGES:-20000}"
DEVICES=50
# Messages per second across all devices: slow enough that sending lasts through every
# step below, the two-minute database outage included (20,000 / 70 ≈ 290 s).
RATE="${TRIBUTARY_CHAOS_RATE:-70}"
OUTAGE="${TRIBUTARY_CHAOS_OUTAGE_SECONDS:-120}"
PER_DEVICE=$((N / DEVICES))
[ $((PER_DEVICE * DEVICES)) -eq "$N" ] || { echo "TRIBUTARY_CHAOS_MESSAGES must be a multiple of $DEVICES" >&2; exit 2; }
# When each step starts, in seconds after the simulator started (a step whose predecessor
# is still recovering starts when it has recovered).
AT_BROKER=20
AT_GATEWAY=75
AT_WORKER=105
AT_DATABASE=135
BROKER_QUEUE="$NS.telemetry"
DEAD_LETTER_QUEUE="$NS.telemetry.dlq"
BROKER_STS=telemetry-rabbitmq
DB_PASSWORD=chaos-db-password


work=$(mktemp -d)
simulator_pid=
sampler_pid=
namespace_removed=0
cleanup() {
  local pid
  for pid in "$simulator_pid" "$sampler_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  if [ "$namespace_removed" = 0 ] && [ "${TRIBUTARY_CHAOS_KEEP:-0}" != 1 ]; then
    kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

k() { kubectl -n "$NS" "$@"; }

# Phase timings: phase NAME starts one, the next call (or phase_end) ends it.
phase_names=()
phase_seconds=()
phase_name=
phase_start=0
phase() {
  phase_end
  phase_name=$1
  phase_start=$SECONDS
  step "$1"
}
phase_end() {
  if [ -n "$phase_name" ]; then
    phase_names+=("$phase_name")
    phase_seconds+=($((SECONDS - phase_start)))
    phase_name=
  fi
}

# wait_every SECONDS INTERVAL COMMAND...: polls COMMAND every INTERVAL s until it succeeds
# (for checks that start an Erlang VM in a broker pod, too heavy for every 2 s).
wait_every() {
  local deadline=$((SECONDS + $1)) interval=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep "$interval"
  done
}

# selector KIND/NAME: the label selector of a Deployment or StatefulSet, as a=b,c=d.
selector() {
  k get "$1" -o json | jq -r '.spec.selector.matchLabels | to_entries | map("\(.key)=\(.value)") | join(",")'
}

# ready_pods KIND/NAME: names of the ready pods (not being deleted) of a workload.
ready_pods() {
  k get pods -l "$(selector "$1")" -o json | jq -r '.items[]
    | select(.metadata.deletionTimestamp == null)
    | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))
    | .metadata.name'
}

# pods_exactly_ready KIND/NAME COUNT: COUNT pods exist and all of them are ready.
pods_exactly_ready() {
  local all ready
  all=$(k get pods -l "$(selector "$1")" -o name | wc -l)
  ready=$(ready_pods "$1" | wc -l)
  [ "$all" -eq "$2" ] && [ "$ready" -eq "$2" ]
}

# rabbitmqctl in a broker pod (the first ready one unless POD is given).
rmq_in() {
  local pod=$1
  shift
  k exec "$pod" -c rabbitmq -- "$@"
}
rmq() {
  local pod
  pod=$(ready_pods "statefulset/$BROKER_STS" | head -1)
  [ -n "$pod" ] || { echo "no ready broker pod" >&2; return 1; }
  rmq_in "$pod" "$@"
}

# queues_json: name, type, members, online, leader and message counts of every queue.
queues_json() {
  rmq rabbitmqctl -q list_queues name type members online leader messages messages_ready \
    messages_unacknowledged --formatter json
}
# queue_field QUEUE JQ-EXPRESSION (on the queue's object), from $work/queues.json.
queue_field() {
  jq -r --arg q "$1" ".[] | select(.name == \$q) | $2" "$work/queues.json"
}
read_queues() { queues_json >"$work/queues.json.tmp" && mv "$work/queues.json.tmp" "$work/queues.json"; }
members() { queue_field "$BROKER_QUEUE" '.members | length'; }
online() { queue_field "$BROKER_QUEUE" '.online | length'; }
leader_pod() { # rabbit@POD.headless.ns.svc.cluster.local -> POD
  queue_field "$BROKER_QUEUE" '.leader' | sed -e 's/^rabbit@//' -e 's/\..*//'
}
all_members_online() { read_queues && [ -n "$(members)" ] && [ "$(online)" = "$(members)" ]; }

# running_nodes POD: how many nodes of its cluster the broker in POD sees running.
running_nodes() {
  rmq_in "$1" rabbitmqctl -q cluster_status --formatter json | jq '.running_nodes | length'
}
# one_cluster_of_three: every broker pod is ready and sees three running nodes.
one_cluster_of_three() {
  local pod pods
  pods=$(ready_pods "statefulset/$BROKER_STS")
  [ "$(wc -w <<<"$pods")" -eq 3 ] || return 1
  for pod in $pods; do
    [ "$(running_nodes "$pod")" = 3 ] || return 1
  done
}

sql() {
  k exec postgres-0 -c postgres -- env PGPASSWORD="$DB_PASSWORD" \
    psql -h 127.0.0.1 -U tributary -d chaos -v ON_ERROR_STOP=1 -Atc "$1"
}
db_up() { k exec postgres-0 -c postgres -- pg_isready -q -h 127.0.0.1 -U tributary -d chaos; }

# acknowledged_now: the simulator's acknowledged count from its last progress line.
acknowledged_now() {
  { grep '^devices connected' "$work/progress" 2>/dev/null || true; } | tail -n 1 |
    sed -n 's/.*acknowledged \([0-9]*\).*/\1/p'
}
# now_s: seconds since the simulator started.
now_s() { echo $((SECONDS - run_start)); }
events=()
# event TEXT: one line of the chaos timeline, with the time and the acknowledged count.
event() {
  local line
  line=$(printf 't=%3ss acknowledged %6s  %s' "$(now_s)" "$(acknowledged_now)" "$1")
  events+=("$line")
  echo "  $line"
}
# mark LABEL: a chaos step starts (or, last, the run ends) at the simulator's current
# progress line; the stall figures are computed between two marks.
mark() { echo "$(wc -l <"$work/progress") $1" >>"$work/marks"; }
# delete_pod POD: an ordinary delete (grace period and all), not waited for.
delete_pod() {
  [ -n "$1" ] || { echo "no pod to delete" >&2; return 1; }
  k delete pod "$1" --wait=false >/dev/null
}
# reconnects POD LOST BACK: how long each broker reconnect took in POD's log, from a line
# matching LOST to the next matching BACK, in ms, space-separated ("-" for none).
reconnects() {
  { k logs "$1" 2>/dev/null || true; } | awk -v lost="$2" -v back="$3" '
    function secs(ts) { split(substr(ts, 12, 15), p, ":"); return p[1] * 3600 + p[2] * 60 + p[3] }
    $0 ~ lost && !t { t = secs($1) }
    $0 ~ back && t { out = out sprintf("%d ", (secs($1) - t) * 1000); t = 0 }
    END { print (out == "" ? "-" : out) }'
}
# sleep_until_offset SECONDS: the pacing between chaos steps.
sleep_until_offset() {
  local left=$(($1 - $(now_s)))
  [ "$left" -le 0 ] || sleep "$left"
}

kubectl version >/dev/null 2>&1 || { echo "the test cluster is not reachable" >&2; failed=1; finish; }
command -v jq >/dev/null || { echo "jq missing" >&2; failed=1; finish; }
suite_start=$SECONDS

phase "building the device simulator (release)"
# TRIBUTARY_SIMULATOR: a tributary-simulator binary already built (skips the build).
simulator="${TRIBUTARY_SIMULATOR:-$CARGO_TARGET_DIR/release/tributary-simulator}"
if [ -z "${TRIBUTARY_SIMULATOR:-}" ]; then
  cargo build --release --locked -q -p tributary-simulator
fi
# A private copy: the shared target folder may be rebuilt by another run meanwhile.
cp "$simulator" "$work/tributary-simulator"
simulator="$work/tributary-simulator"

phase "a clean namespace $NS"
kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=180s >/dev/null

phase "installing the operator with the Helm chart"
check operator-installed-with-helm install_operator "$repo"

phase "applying the chaos pipeline (tests/e2e/chaos)"
apply_pipeline() {
  # device-credentials.yaml: the legacy `auth.passwords` Secret of the fifty machines
  # (one demo password), so this suite keeps proving that path.
  kubectl apply -f "$manifests/00-namespace.yaml" >/dev/null &&
    kubectl apply -f "$manifests" >/dev/null
}
check chaos-pipeline-applied apply_pipeline
check chaos-resources-ready wait_ready "$NS" 420 queue/telemetry sink/rows-db gateway/devices worker/rows
database_ready() { k rollout status statefulset/postgres --timeout=180s >/dev/null; }
check database-ready database_ready
check broker-three-pods-ready wait_until 300 pods_exactly_ready "statefulset/$BROKER_STS" 3
check broker-one-cluster-of-three-nodes wait_every 120 5 one_cluster_of_three
for pod in $(k get pods -l "$(selector "statefulset/$BROKER_STS")" -o name); do
  step "${pod#pod/} sees $(running_nodes "${pod#pod/}" 2>/dev/null || echo '?') running node(s)"
done
# The operator declares the queue; on a cluster of three a quorum queue must have three
# members, or losing one broker pod can leave it without a majority (or, with one member,
# take the only copy of the messages with it). RabbitMQ 3.10 never adds members by
# itself, so the count at declaration is the count for good.
queue_declared() { read_queues && [ -n "$(members)" ]; }
check quorum-queue-declared wait_every 60 5 queue_declared
check quorum-queue-has-three-members test "$(members 2>/dev/null)" = 3
step "quorum queue $BROKER_QUEUE: members $(queue_field "$BROKER_QUEUE" '.members | join(" ")' 2>/dev/null)"
# clustering_lines POD N: the last N lines of a broker node's log on clustering and errors.
clustering_lines() {
  { k logs "$1" 2>/dev/null || true; } |
    grep -iE 'error|crash|inconsistent|peer discovery|cluster|join|mnesia|Node .* (up|down)|startup complete' |
    tail -n "$2" | cut -c1-400 | sed 's/^/    /'
}
initial_members=$(members 2>/dev/null || echo '?')
if [ "$initial_members" != 3 ]; then
  # What the operator and the broker nodes said while the cluster formed: why a node was
  # missing when the queue was declared.
  step "operator lines on Queue telemetry:"
  { kubectl -n "$OPERATOR_NAMESPACE" logs "deployment/$OPERATOR_RELEASE" 2>/dev/null || true; } |
    grep -i 'telemetry' | grep -iv 'device' | tail -n 25 | sed 's/^/    /'
  for pod in $(k get pods -l "$(selector "statefulset/$BROKER_STS")" -o name); do
    step "${pod#pod/} cluster lines (restarts: $(k get "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}' 2>/dev/null)):"
    clustering_lines "$pod" 12
  done
fi
check gateway-two-pods-ready wait_until 180 pods_exactly_ready deployment/devices-gateway 2
check worker-two-pods-ready wait_until 180 pods_exactly_ready deployment/rows-worker 2

ip=$(service_ip "$NS" devices-gateway || true)
phase "publishing $N messages from $DEVICES devices at $RATE msg/s through $ip:1883, with chaos"
: >"$work/progress"
: >"$work/marks"
run_start=$SECONDS
TRIBUTARY_DEVICE_PASSWORD=factory-demo-password "$simulator" --host "$ip" --port 1883 \
  --devices "$DEVICES" --messages "$N" --rate "$RATE" --username-template 'machine-{n}' \
  --topic 'chaos/{device}/telemetry' --give-up-seconds 600 --ack-log "$work/acknowledged" --json \
  >"$work/summary.json" 2>"$work/progress" &
simulator_pid=$!

# Every 5 s: acknowledged, rows, and the queues' depth from the broker's management API
# (through the broker Service's ClusterIP; the operator's status lags by up to 20 s).
broker_ip=$(service_ip "$NS" "$BROKER_STS" || true)
broker_user=$(k get secret "$BROKER_STS-credentials" -o jsonpath='{.data.username}' | base64 -d || true)
broker_pass=$(k get secret "$BROKER_STS-credentials" -o jsonpath='{.data.password}' | base64 -d || true)
depth() { # QUEUE: ready+unacked as the management API last sampled them
  curl -s -m 3 -u "$broker_user:$broker_pass" "http://$broker_ip:15672/api/queues/%2f/$1" |
    jq -r '"\(.messages_ready // "?")+\(.messages_unacknowledged // "?")"' 2>/dev/null || echo '?'
}
(
  while true; do
    rows=$(timeout 10 kubectl -n "$NS" exec postgres-0 -c postgres -- env PGPASSWORD="$DB_PASSWORD" \
      psql -h 127.0.0.1 -U tributary -d chaos -Atc "SELECT count(*) FROM readings" 2>/dev/null || echo down)
    printf 't=%3ss acknowledged %6s rows %6s queue (ready+unacked) %-11s dead-letter %s\n' \
      "$((SECONDS - run_start))" "$(acknowledged_now)" "$rows" "$(depth "$BROKER_QUEUE")" \
      "$(depth "$DEAD_LETTER_QUEUE")" >>"$work/timeline"
    sleep 5
  done
) &
sampler_pid=$!

# 1. The broker pod holding the quorum queue's leader. The pipeline must carry on
# through it: within a minute, PUBACKs and rows grow by more than could have been in
# flight at the deletion (50 devices × 16 unacknowledged, plus 200), so the queue works
# on the two other nodes. The pod's own return (an empty disk rejoining the cluster) is
# checked after the run, so that a slow rejoin does not hold up the other steps.
RESUMED=$((DEVICES * 16 + 200))
acknowledged_beyond() { [ "$(acknowledged_now)" -ge "$1" ] 2>/dev/null; }
rows_beyond() { [ "$(sql "SELECT count(*) FROM readings" 2>/dev/null)" -ge "$1" ] 2>/dev/null; }
broker_step() {
  read_queues || true
  victim=$(leader_pod 2>/dev/null || true)
  [ -n "$victim" ] || victim="$BROKER_STS-0"
  broker_victim=$victim
  event "deleting broker pod $victim (the queue's leader)"
  mark "broker pod deleted"
  check broker-pod-deleted delete_pod "$victim"
  broker_deleted_at=$SECONDS
  local acks rows
  acks=$(acknowledged_now)
  rows=$(sql "SELECT count(*) FROM readings" 2>/dev/null || echo 0)
  local verdict
  verdict="not within 60 s"
  wait_until 60 acknowledged_beyond $((${acks:-0} + RESUMED)) && verdict="after $((SECONDS - broker_deleted_at)) s"
  check pubacks-flow-on-after-broker-pod-deletion test "${verdict#after}" != "$verdict"
  event "PUBACKs +$RESUMED since the deletion: $verdict"
  verdict="not within 60 s"
  wait_until 60 rows_beyond $((${rows:-0} + RESUMED)) && verdict="after $((SECONDS - broker_deleted_at)) s"
  check rows-grow-on-after-broker-pod-deletion test "${verdict#after}" != "$verdict"
  event "rows +$RESUMED since the deletion: $verdict"
  # How long the gateways and workers took to reconnect to the broker (from their logs;
  # "-": connected to a node that stayed).
  local pod
  for pod in $(ready_pods deployment/devices-gateway); do
    reconnect_figures+=("gateway $pod: $(reconnects "$pod" 'broker connection lost' 'connected to the broker') ms")
  done
  for pod in $(ready_pods deployment/rows-worker); do
    reconnect_figures+=("worker $pod: $(reconnects "$pod" 'broker session ended' 'consuming queue') ms")
  done
  printf '  broker reconnect %s\n' "${reconnect_figures[@]}"
}
# broker_recovered: the deleted broker pod is back: three ready pods, one cluster of three,
# every member of the quorum queue online (the new pod's catching up from the others).
broker_back() { pods_exactly_ready "statefulset/$BROKER_STS" 3; }
broker_recovery_checks() {
  local left=$((broker_deleted_at + 330 - SECONDS))
  [ "$left" -ge 60 ] || left=60
  check broker-pod-replaced-and-ready wait_until "$left" broker_back
  broker_recovery=$((SECONDS - broker_deleted_at))
  check broker-cluster-of-three-after-deletion wait_every 120 5 one_cluster_of_three
  check quorum-queue-members-all-online-after-deletion wait_every 120 5 all_members_online
  read_queues || true
  event "broker pod $broker_victim back: pods ready after ${broker_recovery} s; cluster: $(online 2>/dev/null || echo '?') of $(members 2>/dev/null || echo '?') queue members online, leader $(leader_pod 2>/dev/null || echo '?') ($((SECONDS - broker_deleted_at)) s after the deletion)"
  local restarts
  restarts=$(k get pod "$broker_victim" -o jsonpath='{.status.containerStatuses[0].restartCount}' 2>/dev/null || echo '?')
  [ "$restarts" = 0 ] || event "note: pod $broker_victim restarted $restarts time(s) while rejoining"
  [ "$restarts" = 0 ] && [ "$(online 2>/dev/null)" = 3 ] || explain_broker_rejoin
}

# explain_broker_rejoin: why the replaced broker node restarted or stayed out of the queue:
# how its container last ended, the end of its previous run's log, its lines on clustering.
explain_broker_rejoin() {
  step "$broker_victim last ended: $(k get pod "$broker_victim" -o jsonpath='{.status.containerStatuses[0].lastState.terminated}' 2>/dev/null || echo '?')"
  step "$broker_victim events:"
  { k get events --field-selector "involvedObject.name=$broker_victim" \
      -o custom-columns=REASON:.reason,MESSAGE:.message --no-headers 2>/dev/null || true; } |
    tail -n 12 | sed 's/^/    /'
  step "$broker_victim previous run, last lines:"
  { k logs "$broker_victim" --previous 2>/dev/null || true; } | tail -n 40 | cut -c1-400 | sed 's/^/    /'
  step "$broker_victim current run, clustering lines:"
  clustering_lines "$broker_victim" 25
}

# 2. A gateway pod.
gateway_step() {
  victim=$(ready_pods deployment/devices-gateway | head -1 || true)
  event "deleting gateway pod $victim"
  mark "gateway pod deleted"
  check gateway-pod-deleted delete_pod "$victim"
  t0=$SECONDS
  gateway_back() { pods_exactly_ready deployment/devices-gateway 2; }
  check gateway-pod-replaced-and-ready wait_until 180 gateway_back
  gateway_recovery=$((SECONDS - t0))
  event "gateway pods 2/2 ready again (${gateway_recovery} s)"
}

# 3. A worker pod.
worker_step() {
  victim=$(ready_pods deployment/rows-worker | head -1 || true)
  event "deleting worker pod $victim"
  mark "worker pod deleted"
  check worker-pod-deleted delete_pod "$victim"
  t0=$SECONDS
  worker_back() { pods_exactly_ready deployment/rows-worker 2; }
  check worker-pod-replaced-and-ready wait_until 180 worker_back
  worker_recovery=$((SECONDS - t0))
  event "worker pods 2/2 ready again (${worker_recovery} s)"
}

# 4. PostgreSQL stopped for two minutes (see chaos/postgres.yaml), then started again.
stop_database() {
  k exec postgres-0 -c postgres -- bash -c \
    'touch /var/lib/postgresql/data/stopped && pg_ctl -D "$PGDATA" -m fast -w stop' >/dev/null
}
database_down() { ! db_up; }
sinks_condition() {
  jsonpath "$NS" worker/rows '.status.conditions[?(@.type=="SinksAvailable")].status' '?'
}
database_step() {
  event "stopping PostgreSQL for ${OUTAGE} s"
  mark "PostgreSQL stopped for ${OUTAGE} s"
  check database-stopped stop_database
  check database-refuses-connections wait_until 20 database_down
  outage_seen=no
  local outage_end=$((SECONDS + OUTAGE))
  while [ "$SECONDS" -lt "$outage_end" ]; do # the deliberate outage; the Worker's view sampled
    [ "$(sinks_condition)" = False ] && outage_seen=yes
    sleep 5
  done
  k exec postgres-0 -c postgres -- rm -f /var/lib/postgresql/data/stopped || true
  t0=$SECONDS
  check database-back wait_until 60 db_up
  event "PostgreSQL accepting connections again ($((SECONDS - t0)) s after the start); Worker reported SinksAvailable=False during the outage: $outage_seen"
  check worker-condition-reported-the-database-outage test "$outage_seen" = yes
}

# The steps in turn, each at its time or when the one before has recovered. A step must
# start while the devices are still sending (the chaos is meant for a flowing pipeline):
# when the pipeline fell that far behind, the step fails and is skipped, which also keeps
# a failing run within the time budget.
reconnect_figures=()
broker_deleted_at=
broker_victim=
send_seconds=$((N / RATE))
for chaos_step in broker:$AT_BROKER gateway:$AT_GATEWAY worker:$AT_WORKER database:$AT_DATABASE; do
  name=${chaos_step%%:*}
  sleep_until_offset "${chaos_step##*:}"
  if [ "$(now_s)" -lt "$send_seconds" ]; then
    "${name}_step"
  else
    event "skipping the $name step: sending was planned to end at t=${send_seconds}s"
    check "$name-step-started-while-sending" false
  fi
done

phase "waiting for the simulator to finish"
simulator_deadline=$((run_start + N / RATE + 180))
while kill -0 "$simulator_pid" 2>/dev/null && [ "$SECONDS" -lt "$simulator_deadline" ]; do
  sleep 2
done
if kill -0 "$simulator_pid" 2>/dev/null; then
  echo "the simulator did not finish within $((simulator_deadline - run_start)) s: stopping it" >&2
  kill -INT "$simulator_pid" 2>/dev/null || true
  wait_until 15 bash -c "! kill -0 $simulator_pid"
fi
simulator_rc=0
wait "$simulator_pid" || simulator_rc=$?
simulator_pid=
event "simulator finished (exit code $simulator_rc)"
mark end
run_seconds=$(now_s)
if [ -n "${broker_deleted_at:-}" ]; then
  broker_recovery_checks
fi
summary=$(tail -n 1 "$work/summary.json" 2>/dev/null || true)
field() { # KEY of the simulator's JSON summary, or ?
  jq -r --arg k "$1" 'if has($k) then .[$k] | tostring else "?" end' <<<"$summary" 2>/dev/null || echo '?'
}
published=$(field sent)
acknowledged=$(field acknowledged)
resent=$(field duplicates_resent)
connection_errors=$(field errors)
step "simulator: ${summary:-no summary}"
grep -v '^devices connected' "$work/progress" | head -20 || true

phase "waiting for the queue to drain into PostgreSQL"
# Rows stop changing once nothing is ready or unacknowledged. A dead-lettered message
# leaves the queue too: the dead-letter check below catches it.
queue_empty() {
  read_queues || return 1
  [ "$(queue_field "$BROKER_QUEUE" '.messages')" = 0 ]
}
check queue-drained wait_every 240 5 queue_empty
kill "$sampler_pid" 2>/dev/null || true
sampler_pid=
read_queues || true
queue_messages=$(queue_field "$BROKER_QUEUE" '.messages' 2>/dev/null || echo '?')
dead_lettered=$(queue_field "$DEAD_LETTER_QUEUE" '.messages' 2>/dev/null || echo '?')
final_members=$(members 2>/dev/null || echo '?')
final_online=$(online 2>/dev/null || echo '?')
drain_seconds=$(now_s)

phase "counting"
rows=$(sql "SELECT count(*) FROM readings" || echo '?')
distinct=$(sql "SELECT count(DISTINCT (device, seq)) FROM readings" || echo '?')
complete_devices=$(sql "SELECT count(*) FROM (SELECT device FROM readings GROUP BY device HAVING count(DISTINCT seq) = $PER_DEVICE AND min(seq) = 1 AND max(seq) = $PER_DEVICE) d" || echo '?')
duplicates='?'
[[ "$rows" =~ ^[0-9]+$ && "$distinct" =~ ^[0-9]+$ ]] && duplicates=$((rows - distinct))
# The exact reconciliation: the (device, seq) pairs stored against those the simulator
# logged as acknowledged (--ack-log), as two sorted sets.
sql "COPY (SELECT DISTINCT device || ' ' || seq FROM readings) TO STDOUT" 2>/dev/null |
  LC_ALL=C sort -u >"$work/stored" || true
LC_ALL=C sort -u "$work/acknowledged" >"$work/acknowledged.sorted" 2>/dev/null || : >"$work/acknowledged.sorted"
acknowledged_logged=$(wc -l <"$work/acknowledged.sorted")
missing=$(LC_ALL=C comm -23 "$work/acknowledged.sorted" "$work/stored" | wc -l)
not_acknowledged=$(LC_ALL=C comm -13 "$work/acknowledged.sorted" "$work/stored" | wc -l)
if [ "$missing" -gt 0 ]; then
  step "acknowledged but not stored (first 10): $(LC_ALL=C comm -23 "$work/acknowledged.sorted" "$work/stored" | head -10 | tr '\n' ',')"
fi
if [ "$not_acknowledged" -gt 0 ]; then
  step "stored but never acknowledged (first 10): $(LC_ALL=C comm -13 "$work/acknowledged.sorted" "$work/stored" | head -10 | tr '\n' ',')"
fi

simulator_ok() { [ "$simulator_rc" = 0 ] && [ "$(field ok)" = true ]; }
check simulator-every-message-acknowledged simulator_ok
check simulator-acknowledged-equals-n test "$acknowledged" = "$N"
check ack-log-holds-every-acknowledged-message test "$acknowledged_logged" = "$acknowledged"
check no-acknowledged-message-missing-from-postgres test "$missing" = 0
check no-row-of-a-message-never-acknowledged test "$not_acknowledged" = 0
check rows-distinct-equal-acknowledged test "$distinct" = "$acknowledged_logged"
check rows-every-device-complete test "$complete_devices" = "$DEVICES"
check queue-empty test "$queue_messages" = 0
check dead-letter-queue-empty test "$dead_lettered" = 0
check quorum-queue-three-members-at-the-end test "$final_members/$final_online" = 3/3
phase_end

echo
echo "timeline (every 15 s):"
awk 'NR % 3 == 1' "$work/timeline" 2>/dev/null | sed 's/^/  /'
echo "chaos steps:"
printf '  %s\n' "${events[@]}"
# The longest stretch without a new PUBACK after each step (one progress line a second).
echo "longest stretch without a new PUBACK after each step:"
awk -v marks="$work/marks" '
  BEGIN { while ((getline line < marks) > 0) { n++; at[n] = line + 0; sub(/^[0-9]+ /, "", line); label[n] = line } }
  { if (match($0, /acknowledged [0-9]+/)) a[NR] = substr($0, RSTART + 13, RLENGTH - 13) + 0; else a[NR] = a[NR - 1] }
  END {
    for (i = 1; i < n; i++) {
      best = 0; run = 0
      for (l = at[i] + 1; l <= at[i + 1] && l <= NR; l++) { if (l > 1 && a[l] == a[l - 1]) { if (++run > best) best = run } else run = 0 }
      printf "  %-40s %3d s\n", label[i], best
    }
  }' "$work/progress" 2>/dev/null || true
echo "figures:"
echo "  messages planned $N · published (distinct) $published · acknowledged $acknowledged · resent after a lost connection $resent · connection errors $connection_errors"
echo "  rows $rows · distinct (device, seq) $distinct · duplicate rows $duplicates · complete devices $complete_devices/$DEVICES"
echo "  acknowledged (device, seq) logged $acknowledged_logged · acknowledged but not stored $missing · stored but never acknowledged $not_acknowledged"
echo "  queue $BROKER_QUEUE $queue_messages · dead-letter queue $DEAD_LETTER_QUEUE $dead_lettered · quorum members before $initial_members, at the end $final_members ($final_online online)"
printf '  broker reconnect %s\n' "${reconnect_figures[@]}"
echo "  recovery: broker pod ${broker_recovery:-?} s · gateway pod ${gateway_recovery:-?} s · worker pod ${worker_recovery:-?} s · database outage ${OUTAGE} s"
echo "  run ${run_seconds:-?} s (simulator), drained at ${drain_seconds:-?} s"
echo "wall time per phase:"
for i in "${!phase_names[@]}"; do
  printf '  %4ss  %s\n' "${phase_seconds[$i]}" "${phase_names[$i]}"
done

if [ "${TRIBUTARY_CHAOS_KEEP:-0}" = 1 ]; then
  step "keeping namespace $NS (TRIBUTARY_CHAOS_KEEP=1)"
else
  t0=$SECONDS
  removed() { kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=180s >/dev/null; }
  check chaos-namespace-removed removed
  namespace_removed=1
  printf '  %4ss  %s\n' "$((SECONDS - t0))" "removing namespace $NS"
fi
echo "total wall time $((SECONDS - suite_start)) s"
finish
