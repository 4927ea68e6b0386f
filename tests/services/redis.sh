#!/usr/bin/env bash
# Our own Redis on loopback for integration tests.
#   tests/services/redis.sh start|stop|status|env
# Installs Debian's redis-server when missing, runs it on 127.0.0.1:6380 (no persistence)
# with its files under /var/lib/tributary-services/redis. Start is idempotent; stop stops
# exactly the PID in our PID file.
set -euo pipefail
# shellcheck source=tests/lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)/apt.sh"

PORT="${TRIBUTARY_REDIS_PORT:-6380}"
BASE="/var/lib/tributary-services/redis"
LOG="$BASE/redis.log"
PIDFILE="$BASE/redis.pid"
DEADLINE_SECONDS=30

log() { echo "redis.sh: $*" >&2; }

install_if_missing() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    log "installing Debian's redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt_install redis-server
  fi
}

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

ready() { [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = "PONG" ]; }

start() {
  install_if_missing
  if pid="$(running_pid)" && ready; then log "already running (pid $pid)"; return 0; fi
  mkdir -p "$BASE"
  # setsid: our own session, so the server outlives the shell that started it; the inner
  # shell writes its own PID and execs the server, so the PID file names the server.
  setsid bash -c 'echo $$ >"$1"; exec redis-server --bind 127.0.0.1 --port "$2" --dir "$3" \
    --save "" --appendonly no --daemonize no --logfile "$4"' _ "$PIDFILE" "$PORT" "$BASE" "$LOG" \
    </dev/null >/dev/null 2>&1 &
  local end=$((SECONDS + DEADLINE_SECONDS))
  until ready; do
    [ "$SECONDS" -lt "$end" ] || { log "not ready within ${DEADLINE_SECONDS}s, see $LOG"; tail -n 20 "$LOG" >&2 || true; exit 1; }
    sleep 0.1
  done
  log "running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then log "not running"; rm -f "$PIDFILE"; return 0; fi
  kill -TERM "$pid"
  local end=$((SECONDS + DEADLINE_SECONDS))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$end" ] || { log "pid $pid did not stop within ${DEADLINE_SECONDS}s"; exit 1; }
    sleep 0.1
  done
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

status() {
  if pid="$(running_pid)" && ready; then echo "running pid $pid 127.0.0.1:$PORT"; else echo "stopped"; return 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export TRIBUTARY_TEST_REDIS_URL=redis://127.0.0.1:$PORT/0" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
