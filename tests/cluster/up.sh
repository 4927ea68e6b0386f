# Starts the single-node cluster. Sourced by cluster.sh after lib.sh.
# shellcheck shell=bash

LOGS="$CLUSTER_STATE/logs"
PIDS="$CLUSTER_STATE/pids"
CONTAINERD_SOCK="$CLUSTER_STATE/containerd/containerd.sock"

# Paths outside the state folder that the node's components create. `up` records which
# of them existed beforehand, so `down` removes only what the cluster added.
FOREIGN_PATHS=(/var/lib/cni /var/log/pods /var/log/containers /var/run/netns /run/netns
  /var/lib/kubelet /etc/cni /opt/cni /run/containerd/s /run/containerd)
# Kernel settings the node needs; their previous values are restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables)

# start_daemon NAME COMMAND...: runs COMMAND in the background with its log and PID file.
start_daemon() {
  local name=$1
  shift
  if pid_alive "$PIDS/$name.pid"; then
    return 0
  fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

# Fails with the end of the daemon's log when it died.
check_daemon() {
  local name=$1
  if ! pid_alive "$PIDS/$name.pid"; then
    tail -n 30 "$LOGS/$name.log" >&2 || true
    die "$name exited; log: $LOGS/$name.log"
  fi
}

record_host_state() {
  [ -f "$CLUSTER_STATE/host-before/recorded" ] && return 0
  mkdir -p "$CLUSTER_STATE/host-before"
  local p
  : >"$CLUSTER_STATE/host-before/paths"
  for p in "${FOREIGN_PATHS[@]}"; do
    [ -e "$p" ] && echo "$p" >>"$CLUSTER_STATE/host-before/paths"
  done
  : >"$CLUSTER_STATE/host-before/sysctls"
  local s
  for s in "${SYSCTLS[@]}"; do
    echo "$s=$(sysctl -n "$s" 2>/dev/null || echo missing)" >>"$CLUSTER_STATE/host-before/sysctls"
  done
  ip netns list 2>/dev/null | awk '{print $1}' >"$CLUSTER_STATE/host-before/netns"
  # iptables-nft creates its tables on first use; `down` removes the ones it added.
  nft list tables 2>/dev/null >"$CLUSTER_STATE/host-before/nft-tables" || true
  touch "$CLUSTER_STATE/host-before/recorded"
}

setup_network() {
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
  fi
  ip addr replace "$NODE_CIDR" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  # Pods may talk to each other, to Services and to the node, never beyond the machine.
  if ! iptables -w -L TRIB-EGRESS -n >/dev/null 2>&1; then
    iptables -w -N TRIB-EGRESS
    iptables -w -A TRIB-EGRESS -d "$POD_CIDR" -j RETURN
    iptables -w -A TRIB-EGRESS -d "$NODE_IP/32" -j RETURN
    iptables -w -A TRIB-EGRESS -j DROP
    iptables -w -I FORWARD 1 -s "$POD_CIDR" -j TRIB-EGRESS
  fi
}

write_configs() {
  mkdir -p "$CLUSTER_STATE/containerd" "$CLUSTER_STATE/cni/net.d" "$CLUSTER_STATE/kubelet"
  cat >"$CLUSTER_STATE/containerd/config.toml" <<EOF
version = 2
root = "$CLUSTER_STATE/containerd/root"
state = "$CLUSTER_STATE/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CLUSTER_STATE/containerd/containerd.sock.ttrpc"
[debug]
  address = "$CLUSTER_STATE/containerd/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_STATE/cni/net.d"
EOF
  cat >"$CLUSTER_STATE/cni/net.d/10-tributary.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "tributary",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$POD_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  : >"$CLUSTER_STATE/kubelet/resolv.conf"
  cat >"$CLUSTER_STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: ["$NODE_IP"]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $CLUSTER_STATE/kubelet/resolv.conf
tlsCertFile: $CLUSTER_STATE/pki/kubelet.crt
tlsPrivateKeyFile: $CLUSTER_STATE/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $CLUSTER_STATE/pki/ca.crt}
authorization: {mode: Webhook}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 87600h
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"}
serializeImagePulls: false
maxPods: 200
EOF
}

start_etcd() {
  start_daemon etcd etcd --name tributary --data-dir "$CLUSTER_STATE/etcd" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster tributary=http://127.0.0.1:23800 --listen-metrics-urls http://127.0.0.1:23810
  wait_for 60 "etcd health" curl -fsS http://127.0.0.1:23790/health || check_daemon etcd
  step "etcd ready"
}

start_apiserver() {
  local pki="$CLUSTER_STATE/pki"
  start_daemon kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:23790 \
    --advertise-address="$NODE_IP" --bind-address="$NODE_IP" --secure-port="$API_PORT" \
    --insecure-port=0 \
    --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-32767 \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key" \
    --kubelet-certificate-authority="$pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --enable-admission-plugins=NodeRestriction \
    --profiling=false --v=1
  wait_for 120 "kube-apiserver readiness" kubectl_ get --raw /readyz || check_daemon kube-apiserver
  step "kube-apiserver ready on https://$NODE_IP:$API_PORT"
}

start_controllers() {
  local pki="$CLUSTER_STATE/pki"
  start_daemon kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$CLUSTER_STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CLUSTER_STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_STATE/controller-manager.kubeconfig" \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --use-service-account-credentials=true --leader-elect=false \
    --bind-address=127.0.0.1 --port=0 --profiling=false --v=1
  start_daemon kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig="$CLUSTER_STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig="$CLUSTER_STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_STATE/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --port=0 --profiling=false --v=1
  sleep 1
  check_daemon kube-controller-manager
  check_daemon kube-scheduler
  step "kube-controller-manager and kube-scheduler started"
}

start_containerd() {
  start_daemon containerd containerd --config "$CLUSTER_STATE/containerd/config.toml"
  wait_for 60 "containerd socket" ctr --address "$CONTAINERD_SOCK" version || check_daemon containerd
  step "containerd ready"
}

import_pause_image() {
  if ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE"; then
    return 0
  fi
  local archive="$TRIBUTARY_CACHE/images/pause-3.2.tar"
  if [ ! -s "$archive" ]; then
    mkdir -p "$TRIBUTARY_CACHE/images"
    local ctr_id
    ctr_id=$(buildah from scratch)
    buildah copy "$ctr_id" "$K8S_BIN/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr_id"
    buildah commit -q "$ctr_id" "$PAUSE_IMAGE" >/dev/null
    buildah rm "$ctr_id" >/dev/null
    rm -f "$archive"
    buildah push -q "$PAUSE_IMAGE" "docker-archive:$archive:$PAUSE_IMAGE"
  fi
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >/dev/null
  step "pause image imported"
}

start_node() {
  start_daemon kubelet "$K8S_BIN/kubelet" \
    --config="$CLUSTER_STATE/kubelet/config.yaml" \
    --kubeconfig="$CLUSTER_STATE/kubelet.kubeconfig" \
    --root-dir="$CLUSTER_STATE/kubelet/root" \
    --container-runtime=remote --container-runtime-endpoint="unix://$CONTAINERD_SOCK" \
    --image-service-endpoint="unix://$CONTAINERD_SOCK" \
    --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" \
    --pod-infra-container-image="$PAUSE_IMAGE" \
    --seccomp-profile-root="$CLUSTER_STATE/kubelet/seccomp" \
    --cert-dir="$CLUSTER_STATE/kubelet/pki" --v=1
  start_daemon kube-proxy "$K8S_BIN/kube-proxy" \
    --kubeconfig="$CLUSTER_STATE/kube-proxy.kubeconfig" \
    --hostname-override="$NODE_NAME" --cluster-cidr="$POD_CIDR" --proxy-mode=iptables \
    --masquerade-all=true \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0 \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 --v=1
  sleep 1
  check_daemon kubelet
  check_daemon kube-proxy
  step "kubelet and kube-proxy started"
}

start_dns() {
  mkdir -p "$CLUSTER_STATE/dns"
  touch "$CLUSTER_STATE/dns/hosts"
  start_daemon dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll \
    --listen-address="$NODE_IP" --bind-interfaces --except-interface=lo \
    --pid-file="$CLUSTER_STATE/dns/dnsmasq.pid" \
    --addn-hosts="$CLUSTER_STATE/dns/hosts" --local="/$CLUSTER_DOMAIN/" \
    --domain-needed --log-facility=- --user=root --cache-size=0
  start_daemon dns-sync bash "$HERE/dns-sync.sh"
  sleep 0.5
  check_daemon dnsmasq
  check_daemon dns-sync
  step "cluster DNS (dnsmasq on $NODE_IP:53, synced from Services)"
}

node_ready() {
  kubectl_ get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}

default_service_account_exists() {
  kubectl_ -n default get serviceaccount default
}

cluster_up() {
  require_root
  if cluster_running; then
    step "cluster already running (kubeconfig: $KUBECONFIG_PATH)"
    return 0
  fi
  if [ -d "$CLUSTER_STATE" ]; then
    step "stale state from an earlier run found: cleaning it up first"
    cluster_down
  fi
  bash "$HERE/install-deps.sh"
  bash "$HERE/build-kubernetes.sh"
  mkdir -p "$CLUSTER_STATE" "$LOGS" "$PIDS"
  record_host_state
  setup_network
  step "network: $NODE_BRIDGE $NODE_CIDR, pods $POD_CIDR, services $SERVICE_CIDR"
  make_pki
  write_configs
  step "certificates and configs written to $CLUSTER_STATE"
  start_etcd
  start_apiserver
  start_controllers
  start_containerd
  import_pause_image
  start_node
  start_dns
  wait_for 180 "node $NODE_NAME Ready" node_ready || {
    kubectl_ describe node "$NODE_NAME" >&2 || true
    die "node did not become Ready; logs in $LOGS"
  }
  wait_for 60 "default ServiceAccount" default_service_account_exists
  touch "$CLUSTER_STATE/up"
  step "cluster ready: export KUBECONFIG=$KUBECONFIG_PATH"
}
