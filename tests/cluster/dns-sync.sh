#!/usr/bin/env bash
# Keeps the cluster DNS hosts file in step with the Services: every ClusterIP Service gets
# NAME.NAMESPACE.svc.DOMAIN; headless Services get their endpoints' addresses, and
# StatefulSet pods their HOSTNAME.NAME.NAMESPACE.svc.DOMAIN. dnsmasq re-reads on SIGHUP.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
set +e

hosts="$CLUSTER_STATE/dns/hosts"
render() {
  kubectl_ get services,endpoints --all-namespaces -o json | jq -r --arg d "$CLUSTER_DOMAIN" '
    (.items | map(select(.kind == "Service")) | map({key: "\(.metadata.namespace)/\(.metadata.name)", value: .}) | from_entries) as $svc
    | .items[]
    | if .kind == "Service" and .spec.clusterIP != "None" and (.spec.clusterIP // "") != "" then
        "\(.spec.clusterIP) \(.metadata.name).\(.metadata.namespace).svc.\($d)"
      elif .kind == "Endpoints" and ($svc["\(.metadata.namespace)/\(.metadata.name)"].spec.clusterIP // "") == "None" then
        . as $ep
        | ($svc["\($ep.metadata.namespace)/\($ep.metadata.name)"].spec.publishNotReadyAddresses // false) as $all
        | ($ep.subsets // [])[]
        | ((.addresses // []) + (if $all then (.notReadyAddresses // []) else [] end))[]
        | "\(.ip) \($ep.metadata.name).\($ep.metadata.namespace).svc.\($d)",
          (if .hostname then "\(.ip) \(.hostname).\($ep.metadata.name).\($ep.metadata.namespace).svc.\($d)" else empty end)
      else empty end' | sort -u
}

while true; do
  if next=$(render) && [ -n "$next" ]; then
    if [ "$next" != "$(cat "$hosts" 2>/dev/null)" ]; then
      printf '%s\n' "$next" >"$hosts.tmp" && mv "$hosts.tmp" "$hosts"
      pid=$(cat "$CLUSTER_STATE/pids/dnsmasq.pid" 2>/dev/null)
      [ -n "$pid" ] && kill -HUP "$pid" 2>/dev/null
    fi
  fi
  sleep 1
done
