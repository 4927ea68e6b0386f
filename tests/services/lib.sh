# shellcheck shell=bash
# What tests/services/{rabbitmq,postgres,redis,s3}.sh share: the PID file of the one
# process a script started, starting a server in its own session, waiting for readiness,
# stopping exactly that PID, `status`, and the command line.
#
# A sourcing script sets LOG_PREFIX, PORT and PIDFILE (and LOG, whose last lines are shown
# when a server does not come up), defines `ready` (exit 0 once the server answers),
# `start`, `stop` and `print_env` (and `status` when the default one does not fit), and
# ends with `service_main "$@"`.

# shellcheck source=tests/lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)/apt.sh"

log() { echo "${LOG_PREFIX}: $*" >&2; }

# Prints the PID in $PIDFILE when that process is alive; fails otherwise.
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# spawn_detached OUTPUT COMMAND...: runs COMMAND in its own session (setsid), so the
# server outlives the shell and the test that started it, with stdout and stderr to OUTPUT.
# The inner shell writes its own PID to $PIDFILE and execs COMMAND, so the PID file names
# the server itself; returns once that file is written (callers check the PID at once).
spawn_detached() {
  local output="$1"
  shift
  rm -f "$PIDFILE"
  # shellcheck disable=SC2016 # $$ and $1 belong to the inner shell
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" "$@" </dev/null >"$output" 2>&1 &
  local end=$((SECONDS + 10))
  until [ -s "$PIDFILE" ] || [ "$SECONDS" -ge "$end" ]; do sleep 0.05; done
}

# wait_ready SECONDS PAUSE: polls `ready` every PAUSE seconds; after SECONDS, logs where
# to look (with the last lines of $LOG when set) and exits 1.
wait_ready() {
  local end=$((SECONDS + $1))
  until ready; do
    if [ "$SECONDS" -ge "$end" ]; then
      log "not ready within ${1}s, see ${LOG:-its log}"
      if [ -n "${LOG:-}" ]; then tail -n 20 "$LOG" >&2 || true; fi
      exit 1
    fi
    sleep "$2"
  done
}

# stop_running SECONDS ON_TIMEOUT STOP_COMMAND...: when our process runs, runs
# STOP_COMMAND with its PID appended and waits up to SECONDS for it to exit. Past that,
# ON_TIMEOUT `fail` exits 1 (the PID file stays) and `kill` sends SIGKILL to the PID.
# Without a running process it only says so and clears a stale PID file.
stop_running() {
  local seconds="$1" on_timeout="$2" pid
  shift 2
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$PIDFILE"
    return 0
  fi
  "$@" "$pid"
  local end=$((SECONDS + seconds))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$end" ]; then
      if [ "$on_timeout" = kill ]; then
        log "pid $pid still running after ${seconds}s; sending SIGKILL to it"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      log "pid $pid did not stop within ${seconds}s"
      exit 1
    fi
    sleep 0.1
  done
  rm -f "$PIDFILE"
  log "stopped (pid $pid)"
}

# signal_pid SIGNAL PID: a STOP_COMMAND for stop_running.
signal_pid() { kill "-$1" "$2"; }

# Prints `running pid PID 127.0.0.1:PORT` when our process runs and answers, else
# `stopped` (status 3).
status() {
  local pid
  if pid="$(running_pid)" && ready; then
    echo "running pid $pid 127.0.0.1:$PORT"
  else
    echo "stopped"
    return 3
  fi
}

# The command line every service script takes.
service_main() {
  case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) print_env ;;
    *)
      echo "usage: $0 start|stop|status|env" >&2
      exit 2
      ;;
  esac
}
