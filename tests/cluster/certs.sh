# Makes the cluster's CA, serving and client certificates and kubeconfigs. Sourced by up.sh.
# shellcheck shell=bash

# make_cert NAME SUBJECT [SANS]: a key and a certificate signed by the cluster CA.
make_cert() {
  local name=$1 subject=$2 sans=${3:-}
  local dir="$CLUSTER_STATE/pki"
  openssl genrsa -out "$dir/$name.key" 2048 2>/dev/null
  openssl req -new -key "$dir/$name.key" -subj "$subject" -out "$dir/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$sans" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$dir/$name.ext"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 825 -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

# make_kubeconfig NAME CERT: a kubeconfig that authenticates with the client certificate CERT.
make_kubeconfig() {
  local name=$1 cert=$2
  local pki="$CLUSTER_STATE/pki"
  cat >"$CLUSTER_STATE/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tributary
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$pki/$cert.crt")
    client-key-data: $(base64 -w0 "$pki/$cert.key")
contexts:
- name: tributary
  context:
    cluster: tributary
    user: $name
current-context: tributary
EOF
  chmod 600 "$CLUSTER_STATE/$name.kubeconfig"
}

make_pki() {
  local dir="$CLUSTER_STATE/pki"
  [ -f "$dir/done" ] && return 0
  mkdir -p "$dir"
  chmod 700 "$dir"
  openssl genrsa -out "$dir/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=tributary-local-ca" -days 3650 \
    -sha256 -out "$dir/ca.crt" 2>/dev/null
  make_cert apiserver "/CN=kube-apiserver" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,DNS:$NODE_NAME,IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP"
  make_cert admin "/O=system:masters/CN=tributary-admin"
  make_cert controller-manager "/CN=system:kube-controller-manager"
  make_cert scheduler "/CN=system:kube-scheduler"
  make_cert kube-proxy "/CN=system:kube-proxy"
  make_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" \
    "DNS:$NODE_NAME,IP:$NODE_IP"
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  make_kubeconfig admin admin
  make_kubeconfig controller-manager controller-manager
  make_kubeconfig scheduler scheduler
  make_kubeconfig kube-proxy kube-proxy
  make_kubeconfig kubelet kubelet
  touch "$dir/done"
}
