# shellcheck shell=bash
# apt_install PACKAGE...: installs Debian packages without letting their maintainer scripts
# start services. The tests run their own server processes on loopback; a packaged service
# started by the install (mosquitto on 1883, prometheus on 9090, a second RabbitMQ or
# PostgreSQL) would take ports and memory and outlive the run.
#
# It does so through /usr/sbin/policy-rc.d (honoured by invoke-rc.d and deb-systemd-invoke),
# written only when the host has none and removed again afterwards.
apt_install() {
  local policy=/usr/sbin/policy-rc.d created=0 rc=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by tributary tests/lib/apt.sh for one install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || rc=$?
  if [ "$created" = 1 ]; then
    rm -f "$policy"
  fi
  return "$rc"
}
