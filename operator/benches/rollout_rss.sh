#!/usr/bin/env bash
# Operator memory with 1000 Nodes and 50 rollouts, for an optimised operator binary (a measurement, no assertion).
#
#   bash operator/benches/rollout_rss.sh [OPERATOR_BINARY]
#
# The same scenario as `tests/rollout_scale.rs` (which measures the test build by default), without compiling
# anything: a private etcd + kube-apiserver from scripts/k8s-build.sh's binaries (no controller-manager, no kubelet:
# Nodes stay as written), Kitfleet's CRDs, 1000 Ready Nodes (3 labels, 2 annotations each; 50 pools of 20) and
# 50 NodeImages whose status already names a published artifact, each rolling out over one pool with
# `maxUnavailable: 10%` (2 nodes staging per pool). The operator runs with the admin client certificate. Prints its
# RSS idle, with the Nodes, and once every rollout has written `status.nodes`.
# Default binary: the static one `scripts/images/build.sh` builds (profile `image`: release optimisations, no LTO).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${KITFLEET_CACHE:-/var/cache/kitfleet}
bin=${1:-$cache/target-static/x86_64-unknown-linux-gnu/image/kitfleet-operator}
k8s=$(ls -d "$cache"/k8s-v*/ | while read -r d; do [ -e "$d/.complete" ] && echo "$d"; done | tail -1)bin
[ -x "$bin" ] || { echo "no operator binary at $bin" >&2; exit 1; }
[ -x "$k8s/kube-apiserver" ] || { echo "no Kubernetes binaries (bash scripts/k8s-build.sh)" >&2; exit 1; }
work=$(mktemp -d /tmp/kf-rollout-rss.XXXXXX)
pids=()
cleanup() { # operator, apiserver, etcd: in reverse order, then whatever is left
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; sleep 1; done
  sleep 2
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
cd "$work"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port=$(free_port); peer_port=$(free_port); api_port=$(free_port)

openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=kf-rss-ca 2>/dev/null
cert() { # NAME SUBJECT EXTENSIONS (X.509 v3: rustls refuses v1 certificates)
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  printf '%b\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 1 -extfile "$1.ext" 2>/dev/null
}
cert apiserver /CN=kube-apiserver \
  'subjectAltName=IP:127.0.0.1,DNS:localhost\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth'
cert admin "/O=system:masters/CN=kf-rss-admin" 'keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth'
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

"$k8s/etcd" --name=rss --data-dir="$work/etcd" --listen-client-urls="http://127.0.0.1:$etcd_port" \
  --advertise-client-urls="http://127.0.0.1:$etcd_port" --listen-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" --initial-cluster="rss=http://127.0.0.1:$peer_port" \
  --unsafe-no-fsync --log-level=warn > etcd.log 2>&1 &
pids+=($!)
"$k8s/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 \
  --advertise-address=127.0.0.1 --secure-port="$api_port" --tls-cert-file=apiserver.crt \
  --tls-private-key-file=apiserver.key --client-ca-file=ca.crt --authorization-mode=Node,RBAC \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local --service-account-key-file=sa.pub \
  --service-account-signing-key-file=sa.key --service-cluster-ip-range=10.96.0.0/16 \
  --endpoint-reconciler-type=none --profiling=false --v=0 > apiserver.log 2>&1 &
pids+=($!)
cat > kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$work/ca.crt"}}]
users: [{name: u, user: {client-certificate: "$work/admin.crt", client-key: "$work/admin.key"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
EOF
export KUBECONFIG=$work/kubeconfig
k() { "$k8s/kubectl" "$@"; }
for _ in $(seq 120); do k get --raw /readyz >/dev/null 2>&1 && break; sleep 0.5; done
k get --raw /readyz >/dev/null
k apply --server-side -f "$repo/crds/" >/dev/null
k create namespace kitfleet-system >/dev/null
k wait --for=condition=Established crd --all --timeout=60s >/dev/null

rss() { awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
"$bin" run --builder-image kitfleet-build:test --identity op-rollout-rss --listen 127.0.0.1:0 \
  --cache-dir "$work/cache" > operator.log 2>&1 &
op=$!
pids+=("$op")
sleep 3
kill -0 "$op" 2>/dev/null || { tail -5 operator.log >&2; exit 1; }
echo "operator binary: $bin"
echo "idle (leading, no Node, no NodeImage): RSS $(rss "$op") MiB"

key=ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12ab12
digest=sha256:cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd
t=$(date +%s.%N)
python3 - "$work" <<'EOF'
import json, sys
items = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"scale-{i:04}",
          "labels": {"kitfleet.dev/pool": f"p{i % 50}", "kubernetes.io/os": "linux", "kubernetes.io/hostname": f"scale-{i:04}"},
          "annotations": {"agent.kitfleet.dev/booted-build-key": "00",
                          "agent.kitfleet.dev/wg-public-key": "A" * 43 + "="}}} for i in range(1000)]
json.dump({"apiVersion": "v1", "kind": "List", "items": items}, open(sys.argv[1] + "/nodes.json", "w"))
EOF
k create -f nodes.json >/dev/null
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ready="{\"status\":{\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KubeletReady\",\"message\":\"kubelet is posting ready status\",\"lastHeartbeatTime\":\"$now\",\"lastTransitionTime\":\"$now\"}]}}"
for i in $(seq 0 999); do printf 'scale-%04d\n' "$i"; done |
  xargs -P 8 -I{} "$k8s/kubectl" patch node {} --subresource=status --type=merge -p "$ready" >/dev/null
echo "1000 Nodes created and Ready in $(python3 -c "import time; print(round(time.time()-$t,1))") s"
sleep 5
echo "1000 Nodes, no NodeImage: RSS $(rss "$op") MiB"

tag=bk-$key
for i in $(seq 0 49); do
  n=$(printf 'scale-%02d' "$i")
  cat <<EOF
---
apiVersion: kitfleet.dev/v1alpha1
kind: NodeImage
metadata: {name: $n}
spec:
  kernel: {image: "127.0.0.1:9/fixtures/kernel:6.1"}
  init: ["127.0.0.1:9/fixtures/init:v1"]
  formats: ["kernel+initrd"]
  output: {repository: "127.0.0.1:9/kitfleet/$n"}
  rollout:
    nodeSelector: {matchLabels: {kitfleet.dev/pool: "p$i"}}
    maxUnavailable: "10%"
EOF
done > nis.yaml
k create -f nis.yaml >/dev/null
for i in $(seq 0 49); do
  n=$(printf 'scale-%02d' "$i")
  k patch nodeimage "$n" --subresource=status --type=merge -p \
    "{\"status\":{\"buildKey\":\"sha256:$key\",\"artifact\":{\"reference\":\"127.0.0.1:9/kitfleet/$n:$tag@$digest\",\"digest\":\"$digest\",\"shortDigest\":\"${digest:7:12}\"}}}" >/dev/null
done
t=$(date +%s.%N)
with=0
for _ in $(seq 600); do
  with=$(k get nodeimages -o json | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["items"] if (n.get("status") or {}).get("nodes")))')
  [ "$with" = 50 ] && break
  sleep 0.5
done
echo "$with/50 rollouts with status.nodes $(python3 -c "import time; print(round(time.time()-$t,1))") s after the last status patch"
sleep 5
staging=$(k get nodes -o json | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["items"] if "operator.kitfleet.dev/rollout-state" in (n["metadata"].get("annotations") or {})))')
echo "1000 Nodes, 50 rollouts ($staging nodes staging): RSS $(rss "$op") MiB (floor 128 MiB, goal 64 MiB)"
sleep 20
echo "20 s later: RSS $(rss "$op") MiB; peak (VmHWM) $(awk '/^VmHWM:/ {printf "%.1f", $2/1024}' "/proc/$op/status") MiB"
