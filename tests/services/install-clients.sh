#!/usr/bin/env bash
# Installs the third-party clients the integration tests drive: Debian's mosquitto-clients
# (mosquitto_pub / mosquitto_sub) and openssl. Idempotent.
set -euo pipefail
# shellcheck source=tests/lib/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)/apt.sh"

missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
    echo "install-clients: installing ${missing[*]}" >&2
    apt-get update -qq
    apt_install "${missing[@]}"
fi
