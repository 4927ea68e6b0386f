#!/bin/bash
# Stand-in for the official redis image's entrypoint: `redis-server [ARGS]` or options
# alone; data in /data; protected mode off (the Service's network policy is the guard).
set -euo pipefail
if [ "${1#-}" != "${1:-}" ] || [ $# -eq 0 ]; then
  set -- redis-server "$@"
fi
if [ "$1" = redis-server ]; then
  shift
  exec redis-server --protected-mode no --dir /data "$@"
fi
exec "$@"
