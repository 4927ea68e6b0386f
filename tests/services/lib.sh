# shellcheck shell=bash
# What tests/services/{rabbitmq,postgres,redis,s3}.sh share: the PID file of the one
# process a script started, starting a server in its own session, waiting for readiness,
# stopping exactly that PID, `status`, and the command line.
#
# A sourcing script sets LOG_PREFIX, PORT and PIDFILE (and LOG, whose last lines are shown
# when a server does not come up), defines `ready` (exit 0 once the server answers),
# `start`, `stop` and `print_env` (and `status` when the default one does not fit, and
# `tls` when the server can serve TLS too), and ends with `service_main "$@"`.

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
    # Only where the script defines `tls`: serve TLS too, print the test env for it.
    tls) if declare -F tls >/dev/null; then tls; else echo "$0: no tls command" >&2; exit 2; fi ;;
    *)
      echo "usage: $0 start|stop|status|env|tls" >&2
      exit 2
      ;;
  esac
}

# throwaway_tls DIR: a CA generated here and a server certificate it signed, for
# `localhost` and 127.0.0.1, as DIR/ca.pem, DIR/server.pem and DIR/server.key (made once;
# kept while DIR exists). Only tests trust this CA: its key stays in DIR.
throwaway_tls() {
  local dir="$1"
  [ -s "$dir/server.pem" ] && [ -s "$dir/ca.pem" ] && return 0
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=tributary test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 3650 -extfile "$dir/server.ext" -out "$dir/server.pem" >/dev/null 2>&1
  chmod 600 "$dir/server.key" "$dir/ca.key"
}
