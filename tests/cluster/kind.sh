# The same interface as the local node, on kind (used where kind and Docker exist).
# shellcheck shell=bash

KIND_NAME="${KIND_NAME:-tributary}"

kind_main() {
  case "${1:-}" in
    up)
      if kind get clusters 2>/dev/null | grep -qx "$KIND_NAME"; then
        step "kind cluster $KIND_NAME already running"
      else
        step "creating kind cluster $KIND_NAME"
        kind create cluster --name "$KIND_NAME" --wait 180s
      fi
      mkdir -p "$(dirname "$KUBECONFIG_PATH")"
      kind get kubeconfig --name "$KIND_NAME" >"$KUBECONFIG_PATH"
      step "cluster ready: export KUBECONFIG=$KUBECONFIG_PATH"
      ;;
    down)
      kind delete cluster --name "$KIND_NAME"
      rm -f "$KUBECONFIG_PATH"
      ;;
    status)
      kind get clusters 2>/dev/null | grep -qx "$KIND_NAME" && echo "running (kind)" || {
        echo "not running"
        return 1
      }
      ;;
    kubeconfig) echo "$KUBECONFIG_PATH" ;;
    load)
      shift
      local f
      for f in "$@"; do kind load image-archive "$f" --name "$KIND_NAME"; done
      ;;
    *)
      echo "usage: cluster.sh up|down|status|kubeconfig|load FILE..." >&2
      return 2
      ;;
  esac
}
