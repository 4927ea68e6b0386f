# Stops the cluster and removes everything it created. Sourced by cluster.sh after lib.sh
# and up.sh. Works on a healthy cluster and on the leftovers of a run that was killed.
# shellcheck shell=bash

# stop_pid NAME: stops the process in NAME's PID file (TERM, then KILL after a deadline).
stop_pid() {
  local name=$1 pidfile="$PIDS/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# PIDs of containerd shims that serve our containerd (their command line names our socket,
# which lives in our state folder): they outlive containerd and must be stopped too.
our_shims() {
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK"; then
      basename "$p"
    fi
  done
}

# Deletes every pod through the kubelet so the runtime stops sandboxes cleanly, which runs
# the CNI plugins' DEL (veths, iptables NAT chains, IP reservations).
drain_pods() {
  pid_alive "$PIDS/kube-apiserver.pid" && pid_alive "$PIDS/kubelet.pid" || return 0
  stop_pid kube-controller-manager
  stop_pid kube-scheduler
  kubectl_ delete pods --all --all-namespaces --grace-period=1 --wait=false >/dev/null 2>&1 || true
  wait_for 90 "pods to stop" no_pods_left || echo "warning: some pods did not stop in time" >&2
}

no_pods_left() {
  [ -z "$(kubectl_ get pods --all-namespaces -o name 2>/dev/null)" ] &&
    [ -z "$(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null)" ]
}

remove_iptables_rules() {
  local cmd
  for cmd in iptables ip6tables; do
    command -v "$cmd-save" >/dev/null || continue
    local saved
    saved=$("$cmd-save" 2>/dev/null) || continue
    if grep -qE 'KUBE-|CNI-|TRIB-' <<<"$saved"; then
      grep -vE 'KUBE-|CNI-|TRIB-|kubernetes' <<<"$saved" | "$cmd-restore" ||
        echo "warning: $cmd-restore failed; rules may remain" >&2
    fi
  done
}

unmount_under() {
  local root=$1 m
  # Deepest first.
  { findmnt -rn -o TARGET | grep -E "^$root(/|$)" || true; } | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

# Deletes the (now empty) nftables tables that iptables-nft created for the cluster.
remove_added_nft_tables() {
  command -v nft >/dev/null || return 0
  [ -f "$CLUSTER_STATE/host-before/nft-tables" ] || return 0
  local family name
  nft list tables 2>/dev/null | while read -r _ family name; do
    grep -qx "table $family $name" "$CLUSTER_STATE/host-before/nft-tables" && continue
    # Only tables without rules: anything someone else added stays.
    if ! nft list table "$family" "$name" 2>/dev/null | grep -qE '^\s+(ip|tcp|udp|meta|ct|counter|jump|goto|accept|drop|reject|mark)'; then
      nft delete table "$family" "$name" 2>/dev/null || true
    fi
  done
}

remove_netns() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case "$ns" in cni-*) ;; *) continue ;; esac
    if ! grep -qx "$ns" "$CLUSTER_STATE/host-before/netns" 2>/dev/null; then
      ip netns delete "$ns" 2>/dev/null || true
    fi
  done
}

# Processes of containers whose shim is gone (a killed run): every process in the
# kubelet's pod cgroups belongs to the cluster.
kill_pod_processes() {
  local f pid
  for f in /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs; do
    [ -f "$f" ] || continue
    while read -r pid; do
      kill -KILL "$pid" 2>/dev/null || true
    done <"$f"
  done
}

remove_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

restore_host_state() {
  local line key value p
  if [ -f "$CLUSTER_STATE/host-before/sysctls" ]; then
    while IFS='=' read -r key value; do
      [ "$value" = missing ] || sysctl -qw "$key=$value" 2>/dev/null || true
    done <"$CLUSTER_STATE/host-before/sysctls"
  fi
  if [ -f "$CLUSTER_STATE/host-before/recorded" ]; then
    for p in "${FOREIGN_PATHS[@]}"; do
      if [ -e "$p" ] && ! grep -qx "$p" "$CLUSTER_STATE/host-before/paths"; then
        unmount_under "$p"
        rm -rf "$p"
      fi
    done
  fi
}

cluster_down() {
  require_root
  [ -d "$CLUSTER_STATE" ] || {
    step "no cluster state at $CLUSTER_STATE: nothing to stop"
    return 0
  }
  rm -f "$CLUSTER_STATE/up"
  step "stopping pods"
  drain_pods
  stop_pid dns-sync
  stop_pid dnsmasq
  stop_pid kubelet
  if [ -x "$K8S_BIN/kube-proxy" ] && pid_alive "$PIDS/kube-proxy.pid"; then
    stop_pid kube-proxy
    "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  stop_pid kube-proxy
  stop_pid kube-scheduler
  stop_pid kube-controller-manager
  stop_pid kube-apiserver
  stop_pid etcd
  step "control plane and kubelet stopped"
  # Containers that were still running (a killed run) are stopped with their shims.
  if pid_alive "$PIDS/containerd.pid"; then
    local t
    for t in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$CONTAINERD_SOCK" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd
  local shim
  for shim in $(our_shims); do
    kill -KILL "$shim" 2>/dev/null || true
  done
  kill_pod_processes
  step "containerd and its shims stopped"
  remove_iptables_rules
  remove_added_nft_tables
  remove_netns
  local link
  for link in $(ip -o link show type veth 2>/dev/null | awk -F'[:@ ]+' '{print $2}'); do
    if [ "$(cat "/sys/class/net/$link/master/uevent" 2>/dev/null | sed -n 's/^INTERFACE=//p')" = "$POD_BRIDGE" ]; then
      ip link delete "$link" 2>/dev/null || true
    fi
  done
  ip link delete "$POD_BRIDGE" 2>/dev/null || true
  ip link delete "$NODE_BRIDGE" 2>/dev/null || true
  step "iptables rules, network namespaces and interfaces removed"
  unmount_under "$CLUSTER_STATE"
  remove_cgroups
  restore_host_state
  rm -rf "$CLUSTER_STATE"
  step "mounts, cgroups and state removed; host settings restored"
}
