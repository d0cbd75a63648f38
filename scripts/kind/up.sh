#!/usr/bin/env bash
# A local kind cluster with Kitfleet as its CNI: 1 control plane + 2 workers (podman provider, node image built here by
# scripts/kind/node-image.sh), no default CNI, the local registry kitfleet-registry:5000 on the kind network (reachable
# from the host, every node's containerd and pods), Kitfleet's images built and pushed (scripts/images/build.sh), and
# `helm install charts/kitfleet --wait` with the cluster's pod CIDR. Nodes become Ready only once Kitfleet's node agent
# has installed kitfleet-wg.
#
#   bash scripts/kind/up.sh               # idempotent: reuses a complete cluster, replaces a half-made one
#   bash scripts/kind/up.sh --fresh       # always a new cluster
#   bash scripts/kind/up.sh --no-install  # the cluster only (nodes stay NotReady: no CNI)
#   KITFLEET_IMAGE_TAG=0.1.0-abc bash scripts/kind/up.sh   # install images pushed earlier instead of building them
#
# Prints the kubeconfig path on its last stdout line. scripts/kind/down.sh removes everything.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
fresh=false install=true
for a in "$@"; do
  case "$a" in
    --fresh) fresh=true ;;
    --no-install) install=false ;;
    *) echo "usage: $0 [--fresh] [--no-install]" >&2; exit 2 ;;
  esac
done
t0=$(date +%s)
phase() { kind_log "$* (+$(( $(date +%s) - t0 )) s)"; }

bash "$repo/scripts/setup.sh" >&2
k8s=$(bash "$repo/scripts/k8s-build.sh" | tail -1)
export PATH="$k8s/bin:$PATH"
image=$(bash "$here/node-image.sh" | tail -1)
phase "node image $image"
bash "$here/registry.sh" up
# Every node's kubelet, containerd and systemd take inotify instances from the host's per-user pool (128 by default):
# with several clusters, or after kubelet restarts, kubelet dies with "inotify_init: too many open files".
if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 1024 ]; then
  sysctl -qw fs.inotify.max_user_instances=1024
fi
mkdir -p "$KIND_STATE"
ready="$KIND_READY"
want="$image $(cat "$repo/scripts/kind/"*.sh "$repo/scripts/images/"*.sh | sha256sum | cut -c1-12) install=$install"

diagnose() { # the failing component's log tail
  kind_log "cluster did not come up; last lines of each node's kubelet and containerd:"
  local n
  for n in $(kind get nodes --name "$KIND_CLUSTER" 2>/dev/null); do
    echo "--- $n: journalctl -u kubelet" >&2
    podman exec "$n" journalctl -u kubelet --no-pager -n 30 >&2 2>&1 || true
    echo "--- $n: journalctl -u containerd" >&2
    podman exec "$n" journalctl -u containerd --no-pager -n 15 >&2 2>&1 || true
  done
  kubectl --kubeconfig "$KIND_KUBECONFIG" get nodes,pods -A -o wide >&2 2>&1 || true
  kubectl --kubeconfig "$KIND_KUBECONFIG" -n kitfleet-system logs -l app.kubernetes.io/component=node-agent \
    --all-containers --tail 30 --prefix >&2 2>&1 || true
}

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  if ! $fresh && [ -f "$ready" ] && [ "$(cat "$ready")" = "$want" ] \
      && kubectl --kubeconfig "$KIND_KUBECONFIG" get --raw /readyz >/dev/null 2>&1; then
    phase "cluster $KIND_CLUSTER is up (reused)"
    echo "$KIND_KUBECONFIG"
    exit 0
  fi
  phase "deleting cluster $KIND_CLUSTER (left by an earlier run or out of date)"
  kind delete cluster --name "$KIND_CLUSTER" >&2
fi
rm -f "$ready"

cat > "$KIND_STATE/cluster-$KIND_CLUSTER.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: true
  kubeProxyMode: nftables
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/16
nodes:
  - role: control-plane
  - role: worker
  - role: worker
kubeadmConfigPatches:
  # The machine is on cgroup v1 (hybrid): kubelet >= 1.35 refuses it unless told not to, and kubeadm's system
  # verification would too.
  - |
    kind: KubeletConfiguration
    failCgroupV1: false
  - |
    kind: InitConfiguration
    nodeRegistration:
      ignorePreflightErrors: [SystemVerification]
  - |
    kind: JoinConfiguration
    nodeRegistration:
      ignorePreflightErrors: [SystemVerification]
containerdConfigPatches:
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its parent's.
  - |-
    [plugins."io.containerd.grpc.v1.cri"]
      restrict_oom_score_adj = true
  # The one registry address: nodes reach $REGISTRY at its fixed IP on the kind network, over HTTP.
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REGISTRY"]
      endpoint = ["http://$REGISTRY_IP:$REGISTRY_PORT"]
YAML
phase "creating cluster $KIND_CLUSTER"
tc=$(date +%s)
if ! kind create cluster --name "$KIND_CLUSTER" --image "$image" --config "$KIND_STATE/cluster-$KIND_CLUSTER.yaml" \
    --kubeconfig "$KIND_KUBECONFIG" --retain >&2; then
  diagnose
  kind_die "kind create cluster failed (the nodes are kept for inspection; scripts/kind/down.sh removes them)"
fi
phase "kind create cluster took $(( $(date +%s) - tc )) s"
export KUBECONFIG="$KIND_KUBECONFIG"

# Pods resolve the registry's name through CoreDNS (the nodes' resolv.conf knows nothing of the kind network).
kubectl -n kube-system get configmap coredns -o json \
  | jq --arg ip "$REGISTRY_IP" --arg name "$REGISTRY_NAME" '
      if (.data.Corefile | contains($name)) then . else
      .data.Corefile |= sub("\\.:53 \\{\n"; ".:53 {\n    hosts {\n       \($ip) \($name)\n       fallthrough\n    }\n")
      end' \
  | kubectl replace -f - >/dev/null
kubectl -n kube-system rollout restart deployment coredns >/dev/null

if $install; then
  # KITFLEET_IMAGE_TAG: images already pushed by scripts/images/build.sh (skips the build).
  tag=${KITFLEET_IMAGE_TAG:-$(bash "$repo/scripts/images/build.sh" "$REGISTRY" | tail -1)}
  phase "images $REGISTRY/kitfleet/*:$tag pushed"
  cidrs=$(kubectl -n kube-system get configmap kubeadm-config -o jsonpath='{.data.ClusterConfiguration}' \
    | awk '/podSubnet:/ {print $2}' | tr -d '"')
  [ -n "$cidrs" ] || kind_die "no podSubnet in kubeadm-config"
  # With KITFLEET_IMAGES_FROM_HEAD=1 the chart comes from the same commit as the images: the working tree may hold
  # someone's half-done chart edit that the images know nothing of.
  chart="$repo/charts/kitfleet"
  if [ "${KITFLEET_IMAGES_FROM_HEAD:-0}" = 1 ]; then
    chart_src=$(mktemp -d "${TMPDIR:-/tmp}/kitfleet-chart.XXXXXX")
    git -C "$repo" archive HEAD charts/kitfleet | tar -x -C "$chart_src"
    chart="$chart_src/charts/kitfleet"
    phase "chart from $(git -C "$repo" rev-parse --short HEAD) (KITFLEET_IMAGES_FROM_HEAD=1)"
  fi
  th=$(date +%s)
  if ! helm upgrade --install kitfleet "$chart" --namespace kitfleet-system --create-namespace \
      --wait --timeout 5m \
      --set "image.registry=$REGISTRY/kitfleet" --set "image.tag=$tag" \
      --set "nodeAgent.clusterCIDRs={${cidrs//,/\\,}}" --set "operator.insecureRegistries={$REGISTRY}" \
      --set nodeAgent.upgrade.executor=kind >&2; then
    diagnose
    kind_die "helm install failed"
  fi
  phase "helm install --wait took $(( $(date +%s) - th )) s"
  [ -z "${chart_src:-}" ] || rm -rf "$chart_src"
  if ! kubectl wait --for=condition=Ready nodes --all --timeout=180s >&2; then
    diagnose
    kind_die "nodes did not become Ready"
  fi
  kubectl -n kube-system rollout status deployment coredns --timeout=180s >&2 || { diagnose; kind_die "CoreDNS is not up"; }
fi
echo "$want" > "$ready"
phase "cluster $KIND_CLUSTER ready; KUBECONFIG=$KIND_KUBECONFIG"
echo "$KIND_KUBECONFIG"
