#!/usr/bin/env bash
# The dashboard checked in headless Chromium (tests/dashboard/browser.cjs): the live stream
# subscribed, devices listed and online, the live chart's values changing while devices
# publish, no script or request errors; a screenshot saved.
#
#   tests/dashboard/browser.sh BASE_URL KEY_FILE SCREENSHOT
#
# Chromium comes from Debian (tests/cluster/install-deps.sh); puppeteer-core, which drives
# it, is installed with npm once into a cache directory keyed by its version.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[ $# -eq 3 ] || { echo "usage: $0 BASE_URL KEY_FILE SCREENSHOT" >&2; exit 2; }

PUPPETEER_VERSION=24.43.1 # the newest line that still runs on Debian bookworm's Node 18/20
cache="${TRIBUTARY_CACHE_DIR:-/var/cache/tributary}/node-puppeteer-core-$PUPPETEER_VERSION"
chromium="${CHROMIUM:-/usr/bin/chromium}"

[ -x "$chromium" ] || { echo "browser.sh: $chromium not found: run tests/cluster/install-deps.sh (Debian package chromium)" >&2; exit 1; }
command -v node >/dev/null || { echo "browser.sh: node not found" >&2; exit 1; }
if [ ! -f "$cache/node_modules/puppeteer-core/package.json" ]; then
  echo "browser.sh: installing puppeteer-core $PUPPETEER_VERSION into $cache (npm, once)" >&2
  mkdir -p "$cache.tmp"
  # Puppeteer must not download a browser of its own: Debian's Chromium is used.
  PUPPETEER_SKIP_DOWNLOAD=1 npm install --prefix "$cache.tmp" --silent --no-audit --no-fund \
    "puppeteer-core@$PUPPETEER_VERSION" >&2
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
CHROMIUM="$chromium" exec node "$repo/tests/dashboard/browser.cjs" "$cache" "$@"
