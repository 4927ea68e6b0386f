#!/usr/bin/env bash
# Our own Redis on loopback for integration tests.
#   tests/services/redis.sh start|stop|status|env|tls
# Installs Debian's redis-server when missing, runs it on 127.0.0.1:6380 (no persistence)
# with its files under /var/lib/tributary-services/$INSTANCE. Start is idempotent; stop
# stops exactly the PID in our PID file.
# `tls` makes the running server listen for TLS as well, on TRIBUTARY_REDIS_TLS_PORT
# (default the plain port + 10000), with a certificate for localhost/127.0.0.1 from a
# throwaway CA made under $BASE/tls (until the server stops); it prints the env the TLS
# tests read.
# A second instance runs with other values of:
#   TRIBUTARY_REDIS_INSTANCE (default redis), TRIBUTARY_REDIS_PORT (default 6380)
set -euo pipefail
# shellcheck source=tests/services/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

INSTANCE="${TRIBUTARY_REDIS_INSTANCE:-redis}"
PORT="${TRIBUTARY_REDIS_PORT:-6380}"
TLS_PORT="${TRIBUTARY_REDIS_TLS_PORT:-$((PORT + 10000))}"
BASE="/var/lib/tributary-services/$INSTANCE"
LOG="$BASE/redis.log"
PIDFILE="$BASE/redis.pid"
DEADLINE_SECONDS=30
LOG_PREFIX="redis.sh[$INSTANCE]"

install_if_missing() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing Debian's redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt_install redis-server
  fi
}

ready() { [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = "PONG" ]; }

start() {
  install_if_missing
  if pid="$(running_pid)" && ready; then log "already running (pid $pid)"; return 0; fi
  mkdir -p "$BASE"
  # The server logs to its --logfile; its stdout is empty.
  spawn_detached /dev/null redis-server --bind 127.0.0.1 --port "$PORT" --dir "$BASE" \
    --save "" --appendonly no --daemonize no --logfile "$LOG"
  wait_ready "$DEADLINE_SECONDS" 0.1
  log "running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
}

stop() { stop_running "$DEADLINE_SECONDS" fail signal_pid TERM; }

tls() {
  running_pid >/dev/null && ready || { log "not running: run start first"; exit 1; }
  local dir="$BASE/tls"
  throwaway_tls "$dir"
  # Server-side TLS only: clients present no certificate.
  redis-cli -h 127.0.0.1 -p "$PORT" CONFIG SET tls-cert-file "$dir/server.pem" \
    tls-key-file "$dir/server.key" tls-ca-cert-file "$dir/ca.pem" tls-auth-clients no \
    tls-port "$TLS_PORT" | grep -qx OK || { log "CONFIG SET tls-port failed, see $LOG"; exit 1; }
  echo "export TRIBUTARY_TEST_REDIS_TLS_URL=rediss://localhost:$TLS_PORT/0"
  echo "export TRIBUTARY_TEST_REDIS_CA_FILE=$dir/ca.pem"
}

print_env() { echo "export TRIBUTARY_TEST_REDIS_URL=redis://127.0.0.1:$PORT/0"; }

service_main "$@"
