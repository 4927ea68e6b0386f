#!/bin/bash
# Stand-in for the official rabbitmq image's entrypoint: RABBITMQ_DEFAULT_USER,
# RABBITMQ_DEFAULT_PASS and RABBITMQ_DEFAULT_VHOST become a conf.d file; config in
# /etc/rabbitmq (rabbitmq.conf, enabled_plugins, conf.d/), data in /var/lib/rabbitmq.
set -euo pipefail
export HOME=/var/lib/rabbitmq
if [ "${1:-rabbitmq-server}" != rabbitmq-server ]; then
  exec "$@"
fi
shift || true
if [ -n "${RABBITMQ_DEFAULT_USER:-}${RABBITMQ_DEFAULT_PASS:-}${RABBITMQ_DEFAULT_VHOST:-}" ]; then
  conf=/etc/rabbitmq/conf.d/10-defaults.conf
  {
    [ -n "${RABBITMQ_DEFAULT_USER:-}" ] && echo "default_user = $RABBITMQ_DEFAULT_USER"
    [ -n "${RABBITMQ_DEFAULT_PASS:-}" ] && echo "default_pass = $RABBITMQ_DEFAULT_PASS"
    [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ] && echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
    true
  } >"$conf"
fi
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  printf '%s' "$RABBITMQ_ERLANG_COOKIE" >"$HOME/.erlang.cookie"
  chmod 400 "$HOME/.erlang.cookie"
fi
exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
