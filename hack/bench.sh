#!/usr/bin/env bash
# One benchmark command (not a test; hack/test.sh does not run it). Runs every benchmark of
# the project, collects the figures each prints as `BENCH figure=… system=… value=… unit=…`
# lines, and writes docs/benchmarks.md (one table: figure, Tributary, peer, ratio; the
# machine, load, date and commit) with charts in docs/benchmarks/*.png.
#
#   hack/bench.sh                  # full run: about 7 minutes on 2 cores once built (the
#                                  # first release builds take 15-25 minutes; the first api
#                                  # run loads its 10 million rows, about 2 minutes more),
#                                  # plus the autoscaler's trials on the cluster (not timed yet)
#   BENCH_QUICK=1 hack/bench.sh    # short smoke run with small sizes
#
# Benchmarks, each beside a peer measured in the same run:
#   gateway    gateway-image/bench.sh: MQTT ingest beside RabbitMQ's MQTT plugin,
#              Mosquitto and the broker's confirm ceiling (AMQP, same queue), memory per idle connection and around a burst of password logins
#              beside Mosquitto, a reconnect storm (device table generated secrets beside
#              argon2 passwords), the round trip of request/response commands to 1,000
#              connected devices beside the MQTT plugin and Mosquitto
#   worker     worker-image/bench.sh: worker -> PostgreSQL beside a plain COPY and beside a
#              bare consumer of the same broker
#   api        api-image/bench.sh: history queries of the application API over
#              BENCH_HISTORY_ROWS (10,000,000 [1,000,000]) rows beside the same SQL straight
#              against PostgreSQL (the table is loaded once, minutes for 10 million rows, and
#              kept in the PostgreSQL instance for the next runs); live fan-out to
#              BENCH_SSE_CLIENTS SSE clients beside a plain AMQP consumer
#   devices    operator/bench-devices.sh: BENCH_DEVICE_COUNT (10000 [1000]) Device resources
#              applied at once, the operator (on the host) until all are Ready and in the
#              Gateway's table, beside kubectl's own apply time; its memory and API requests
#              once settled; needs the local cluster, skipped like autoscale
#   scale      operator/bench-scale.sh: the operator (on the host, every namespace) with
#              BENCH_SCALE_NAMESPACES (100 [20]) namespaces of ten resources each (Queue on
#              one shared external broker, Gateway, Worker, two Sinks, ApplicationApi, four
#              Devices; workloads at 0 replicas, their children created) applied at once:
#              time until all Ready beside kubectl's apply time, CPU, RSS (peak, settled,
#              after the steady window), API requests and writes per minute at steady
#              state; needs the local cluster, skipped like autoscale
#   autoscale  operator/bench-autoscale.sh: the autoscaler's reaction beside KEDA + HPA's
#              default intervals; needs the local cluster (tests/cluster/cluster.sh up, images
#              loaded) and is skipped, marked "not measured in this run", when the cluster is
#              not reachable or a test run is using it. BENCH_AUTOSCALE=0 skips it, =1 runs
#              it even while a test run seems to be going on.
#
# Sizes (defaults; quick mode in brackets): BENCH_CLIENTS 20 [5], BENCH_MESSAGES 2000 [300]
# per client, BENCH_IDLE_CONNECTIONS 10000 [1000], BENCH_LOGINS 1000 [100],
# BENCH_LOGIN_SETTLE_SECONDS 10 [3], BENCH_STORM_DEVICES 10000 [1000],
# BENCH_STORM_ARGON2_DEVICES 10000 [200] (fewer: its time extrapolated to the storm's size), BENCH_ROWS 100000 [10000], BENCH_TRIALS 3 [1],
# BENCH_AUTOSCALE_MESSAGES 500 [200], BENCH_COMMAND_DEVICES 1000 [200], BENCH_COMMANDS 2000 [300],
# BENCH_HISTORY_ROWS 10000000 [1000000], BENCH_HISTORY_SECONDS 10 [3] per figure,
# BENCH_SSE_CLIENTS 100 [100], BENCH_SSE_MESSAGES 2000 [300].
# BENCH_ONLY="gateway worker" runs a subset.
#
# Servers: a private RabbitMQ and PostgreSQL instance named "bench" (ports 5794/15794/1994
# and 5795) unless TRIBUTARY_RABBITMQ_* / TRIBUTARY_PG_* say otherwise, so that a benchmark
# never shares a broker with a test run; the processes the benchmarks start listen on
# loopback ports BENCH_PORT_BASE (28830) and up. The servers stay running for the next run:
# stop them with `TRIBUTARY_RABBITMQ_INSTANCE=bench tests/services/rabbitmq.sh stop` (and
# postgres.sh likewise). Logs of the run: BENCH_LOG_DIR (a new directory under /tmp).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=tests/lib/apt.sh
source tests/lib/apt.sh

export TRIBUTARY_RABBITMQ_INSTANCE="${TRIBUTARY_RABBITMQ_INSTANCE:-bench}"
export TRIBUTARY_RABBITMQ_PORT="${TRIBUTARY_RABBITMQ_PORT:-5794}"
export TRIBUTARY_RABBITMQ_MGMT_PORT="${TRIBUTARY_RABBITMQ_MGMT_PORT:-15794}"
export TRIBUTARY_RABBITMQ_MQTT_PORT="${TRIBUTARY_RABBITMQ_MQTT_PORT:-1994}"
export TRIBUTARY_PG_INSTANCE="${TRIBUTARY_PG_INSTANCE:-bench}"
export TRIBUTARY_PG_PORT="${TRIBUTARY_PG_PORT:-5795}"

quick="${BENCH_QUICK:-0}"
size() { # NAME FULL QUICK: exports NAME, keeping a value the caller set
  local value="${!1:-}"
  [ -n "$value" ] || { [ "$quick" = 1 ] && value=$3 || value=$2; }
  export "$1=$value"
}
size BENCH_CLIENTS 20 5
size BENCH_MESSAGES 2000 300
size BENCH_IDLE_CONNECTIONS 10000 1000
size BENCH_LOGINS 1000 100
size BENCH_LOGIN_SETTLE_SECONDS 10 3
size BENCH_STORM_DEVICES 10000 1000
size BENCH_STORM_ARGON2_DEVICES 10000 200
size BENCH_ROWS 100000 10000
size BENCH_TRIALS 3 1
size BENCH_AUTOSCALE_MESSAGES 500 200
size BENCH_DEVICE_COUNT 10000 1000
size BENCH_SCALE_NAMESPACES 100 20
size BENCH_COMMAND_DEVICES 1000 200
size BENCH_COMMANDS 2000 300
size BENCH_HISTORY_ROWS 10000000 1000000
size BENCH_HISTORY_SECONDS 10 3
size BENCH_SSE_CLIENTS 100 100
size BENCH_SSE_MESSAGES 2000 300
only="${BENCH_ONLY:-gateway worker api devices scale autoscale}"

run_dir="${BENCH_LOG_DIR:-$(mktemp -d /tmp/tributary-bench-XXXXXX)}"
mkdir -p "$run_dir"
: >"$run_dir/status.txt"
export BENCH_SAMPLES_DIR="$run_dir"
say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
say "logs in $run_dir; load $(cut -d' ' -f1-3 /proc/loadavg)"

# status BENCH STATE REASON: one line of status.txt.
status() { printf '%s %s %s\n' "$1" "$2" "${3:-}" >>"$run_dir/status.txt"; }

# run BENCH COMMAND...: runs one benchmark with its output in BENCH.log (and on stderr).
run() {
  local bench=$1 rc=0
  shift
  say "$bench: $*"
  "$@" 2>&1 | tee "$run_dir/$bench.log" >&2 || rc=$?
  if [ "$rc" = 0 ]; then
    status "$bench" ok
  else
    say "$bench failed (exit $rc); see $run_dir/$bench.log"
    status "$bench" failed "the benchmark failed (exit $rc)"
  fi
}

# cluster_busy: prints why the local cluster cannot be used now; nothing when it can.
cluster_busy() {
  # shellcheck source=tests/cluster/lib.sh
  (source tests/cluster/lib.sh
   if ! KUBECONFIG="${KUBECONFIG:-$KUBECONFIG_PATH}" "$K8S_BIN/kubectl" version >/dev/null 2>&1; then
     echo "the local cluster is not running (tests/cluster/cluster.sh up)"
   fi)
  local runner
  runner=$(pgrep -f 'hack/test.sh|tests/e2e/|charts/install-test.sh|tests/smoke/smoke.sh' | head -1 || true)
  if [ -n "$runner" ] && [ "${BENCH_AUTOSCALE:-auto}" != 1 ]; then
    echo "the local cluster is in use by a test run (pid $runner)"
  fi
}

wanted() { [[ " $only " == *" $1 "* ]]; }

start_load="$(cut -d' ' -f1-3 /proc/loadavg)"
if wanted gateway; then
  run gateway env BENCH_MODE=all bash gateway-image/bench.sh
else
  status gateway skipped "not selected (BENCH_ONLY)"
fi
if wanted worker; then
  run worker bash worker-image/bench.sh
else
  status worker skipped "not selected (BENCH_ONLY)"
fi
if wanted api; then
  run api env BENCH_MODE=all bash api-image/bench.sh
else
  status api skipped "not selected (BENCH_ONLY)"
fi
# on_cluster BENCH REASON COMMAND...: runs a benchmark that needs the local cluster, or
# marks it skipped with why (REASON, when not empty, is a reason to skip of its own).
on_cluster() {
  local bench=$1 busy=$2
  shift 2
  wanted "$bench" || busy="not selected (BENCH_ONLY)"
  [ -n "$busy" ] || busy="$(cluster_busy | head -1)"
  if [ -z "$busy" ]; then
    run "$bench" "$@"
  else
    say "$bench: not measured in this run: $busy"
    status "$bench" skipped "$busy"
  fi
}
on_cluster devices "" bash operator/bench-devices.sh
on_cluster scale "" bash operator/bench-scale.sh
autoscale_off=""
[ "${BENCH_AUTOSCALE:-auto}" = 0 ] && autoscale_off="BENCH_AUTOSCALE=0 was set"
on_cluster autoscale "$autoscale_off" \
  env BENCH_MESSAGES="$BENCH_AUTOSCALE_MESSAGES" bash operator/bench-autoscale.sh

load_end="$(cut -d' ' -f1-3 /proc/loadavg)"
commit="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- . ':!docs/benchmarks.md' ':!docs/benchmarks' || commit="$commit (with uncommitted changes)"
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit=$commit"
  echo "cores=$(nproc)"
  echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "memory=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "kernel=Linux $(uname -r)"
  echo "load_start=$start_load"
  echo "load_end=$load_end"
  if pgrep -f 'hack/test.sh' >/dev/null; then
    echo "load_note= (a full test run was going on at the same time)"
  fi
  if [ "$quick" = 1 ]; then echo "mode=quick (BENCH_QUICK=1)"; else echo "mode=full"; fi
  echo "sizes=$BENCH_CLIENTS MQTT clients × $BENCH_MESSAGES messages; $BENCH_IDLE_CONNECTIONS idle connections; $BENCH_LOGINS logins; $BENCH_ROWS rows; $BENCH_HISTORY_ROWS history rows, $BENCH_SSE_CLIENTS SSE clients × $BENCH_SSE_MESSAGES messages; $BENCH_DEVICE_COUNT Devices; $BENCH_SCALE_NAMESPACES namespaces × 10 resources; $BENCH_TRIALS autoscaler trials of $BENCH_AUTOSCALE_MESSAGES messages"
} >"$run_dir/meta.txt"

# The charts: matplotlib from Debian, drawn by the system's Python.
if ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
  say "installing Debian's python3-matplotlib"
  apt-get update -qq
  apt_install python3-matplotlib
fi
/usr/bin/python3 hack/bench-report.py "$run_dir" docs/benchmarks.md docs/benchmarks
say "done: docs/benchmarks.md; load at the end $load_end"
! grep -q ' failed ' "$run_dir/status.txt"
