#!/usr/bin/env bash
# Cluster smoke test. Needs a running cluster with the images loaded
# (tests/cluster/cluster.sh up; tests/images/build-and-load.sh). Proves:
#  - a Deployment of a project image becomes Ready;
#  - another pod reaches it through its Service by DNS, full and short names;
#  - `kubectl logs` works;
#  - a client in a pod reaches the API server through the `kubernetes` Service, TLS verified;
#  - the PostgreSQL stand-in accepts the password given by POSTGRES_PASSWORD (and refuses
#    a wrong one); the RabbitMQ stand-in accepts AMQP and serves its management API;
#    the Redis stand-in answers.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cluster/lib.sh
source "$here/../cluster/lib.sh"
KUBECONFIG_PATH=$(bash "$here/../cluster/cluster.sh" kubeconfig)
NS=tributary-smoke
TOOLBOX=tributary/toolbox:0.1.0
passed=0
failed=0

k() { kubectl_ -n "$NS" "$@"; }

check() {
  local name=$1
  shift
  if "$@"; then
    echo "ok - $name"
    passed=$((passed + 1))
  else
    echo "FAIL - $name"
    failed=$((failed + 1))
  fi
}

# run_pod NAME IMAGE COMMAND...: runs a restricted one-shot pod; succeeds when it exits 0.
# Its output stays readable with `kubectl logs` afterwards.
run_pod() {
  local name=$1 image=$2
  shift 2
  local cmd
  cmd=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@")
  k delete pod "$name" --ignore-not-found --wait=true >/dev/null
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: main
      image: $image
      command: $cmd
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
EOF
  local deadline=$(($(date +%s) + 120)) phase=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    phase=$(k get pod "$name" -o jsonpath='{.status.phase}' 2>/dev/null || true)
    case "$phase" in Succeeded | Failed) break ;; esac
    sleep 0.5
  done
  if [ "$phase" != Succeeded ]; then
    echo "  pod $name ended in phase '${phase:-unknown}'; its log:" >&2
    k logs "$name" 2>&1 | sed 's/^/    /' >&2 || true
    return 1
  fi
}

logs_contain() {
  local pod=$1 text=$2 out
  out=$(k logs "$pod" 2>&1) || {
    echo "  kubectl logs $pod failed: $out" >&2
    return 1
  }
  grep -qF -- "$text" <<<"$out" || {
    echo "  log of $pod lacks '$text':" >&2
    sed 's/^/    /' <<<"$out" >&2
    return 1
  }
}

deployment_ready() {
  k rollout status deployment/hello --timeout=120s >/dev/null
}

pod_ready() {
  k wait --for=condition=Ready "pod/$1" --timeout=180s >/dev/null
}

step "smoke test in namespace $NS"
kubectl_ delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl_ create namespace "$NS" >/dev/null
kubectl_ label namespace "$NS" pod-security.kubernetes.io/enforce=restricted >/dev/null
k apply -f "$here/manifests.yaml" >/dev/null

check "deployment of a project image (tributary/gateway) becomes Ready" deployment_ready

# service_has_endpoint NAME: the Service's Endpoints list a ready address (within 60 s).
# A Deployment is Ready before the endpoints controller and then kube-proxy have caught up;
# a request sent in between is refused by the "no endpoints" rule.
service_has_endpoint() {
  local deadline=$(($(date +%s) + 60)) ips=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    ips=$(k get endpoints "$1" -o jsonpath='{.subsets[*].addresses[*].ip}' 2>/dev/null || true)
    [ -n "$ips" ] && return 0
    sleep 0.5
  done
  echo "  Service $1 has no ready endpoint after 60 s" >&2
  return 1
}
check "the hello Service lists the ready pod as its endpoint" service_has_endpoint hello

# kube-proxy writes its rules a moment after the Endpoints change: a refused connection is
# retried for up to 30 s (a wrong name or a missing Service still fails).
CURL_RETRY=(--retry 15 --retry-connrefused --retry-delay 2 --retry-max-time 30)

check "a pod reaches the Service by its full DNS name" \
  run_pod dns-full "$TOOLBOX" curl -fsS --max-time 10 "${CURL_RETRY[@]}" "http://hello.$NS.svc.$CLUSTER_DOMAIN/healthz"
check "kubectl logs shows that pod's output" logs_contain dns-full ok
check "a pod reaches the Service by its short DNS name" \
  run_pod dns-short "$TOOLBOX" curl -fsS --max-time 10 "${CURL_RETRY[@]}" http://hello/healthz
project_pod_logs() {
  local pod out
  pod=$(k get pod -l app=hello -o jsonpath='{.items[0].metadata.name}')
  out=$(k logs "$pod") && [ -n "$out" ]
}
check "kubectl logs of the project pod works" project_pod_logs

check "a client in a pod reaches the API through the kubernetes Service with TLS verified" \
  run_pod api-client tributary/operator:0.1.0 /usr/local/bin/tributary-operator check-api
check "the API client reached the kubernetes Service address" \
  logs_contain api-client "$API_SERVICE_IP"

check "postgres stand-in becomes Ready" pod_ready postgres
check "postgres stand-in accepts the POSTGRES_PASSWORD login" \
  run_pod pg-login "$TOOLBOX" env PGPASSWORD=smoke-secret PGCONNECT_TIMEOUT=10 \
  psql -h postgres -U postgres -d telemetry -tAc "select 'logged-in-' || current_user"
check "postgres login output seen" logs_contain pg-login "logged-in-postgres"
wrong_password_refused() {
  ! run_pod pg-wrong "$TOOLBOX" env PGPASSWORD=wrong PGCONNECT_TIMEOUT=10 \
    psql -h postgres -U postgres -d telemetry -tAc "select 1" 2>/dev/null &&
    logs_contain pg-wrong 'password authentication failed for user "postgres"'
}
check "postgres stand-in refuses a wrong password" wrong_password_refused

check "rabbitmq stand-in becomes Ready" pod_ready rabbitmq
check "rabbitmq stand-in accepts AMQP (declare, publish, consume)" \
  run_pod amqp "$TOOLBOX" sh -ec '
    url=amqp://smoke:smoke-secret@rabbitmq:5672
    amqp-declare-queue --url "$url" -d -q smoke
    echo "hello-amqp-$((6 * 7))" | amqp-publish --url "$url" -r smoke -p
    amqp-get --url "$url" -q smoke'
check "message came back over AMQP" logs_contain amqp hello-amqp-42
check "rabbitmq stand-in serves its management API" \
  run_pod mgmt "$TOOLBOX" curl -fsS --max-time 10 -u smoke:smoke-secret \
  http://rabbitmq:15672/api/overview
check "management API reports the management version" logs_contain mgmt '"management_version"'

check "redis stand-in becomes Ready" pod_ready redis
check "redis stand-in answers" run_pod redis-ping "$TOOLBOX" redis-cli -h redis ping
check "redis said PONG" logs_contain redis-ping PONG

if [ "$failed" -eq 0 ]; then
  kubectl_ delete namespace "$NS" --wait=false >/dev/null
fi
echo "smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
