#!/usr/bin/env bash
# The main job: Kitfleet on a local Kubernetes cluster, on a fresh Debian 12 machine with Rust.
#
#   bash scripts/demo.sh                 # cluster up (or reused), example NodeImage built in it, booted under qemu
#   bash scripts/demo.sh --down          # remove the demo cluster (and the registry once no cluster is left)
#   bash scripts/demo.sh --builder-only  # no cluster: kitfleet-build alone against a registry on 127.0.0.1
#
# Steps: installs what is missing (scripts/setup.sh), builds Kubernetes and kind from Go source (cached), makes the kind
# node image and a kind cluster named kitfleet-demo (podman; 1 control plane + 2 workers) whose nodes become Ready
# through Kitfleet's CNI, builds Kitfleet's images and `helm install`s the chart (scripts/kind/up.sh), pushes the
# fixture images examples/nodeimage-minimal.yaml names to kitfleet-registry:5000, applies that NodeImage, waits until
# the operator's build Job has published it (Built=True), shows its status, pulls the artifact and boots it under
# qemu (TCG) with the serial console on this terminal. The cluster stays up; its kubeconfig path is the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
case "${1:-}" in
  --down)
    KIND_CLUSTER=kitfleet-demo bash scripts/kind/down.sh
    exit 0 ;;
  --builder-only)
    shift
    bash scripts/setup.sh
    exec cargo run --release -p kitfleet-builder --example demo -- "$@" ;;
  "") ;;
  *) echo "usage: $0 [--down | --builder-only [--keep DIR]]" >&2; exit 2 ;;
esac

export KIND_CLUSTER=kitfleet-demo
# shellcheck source=kind/env.sh
source scripts/kind/env.sh
t0=$(date +%s)
step() { echo "==> $* (+$(( $(date +%s) - t0 )) s)"; }

bash scripts/setup.sh >&2
step "cluster $KIND_CLUSTER with Kitfleet installed (scripts/kind/up.sh; the first run builds everything)"
kubeconfig=$(bash scripts/kind/up.sh | tail -1)
export KUBECONFIG="$kubeconfig"
k8s=$(bash scripts/k8s-build.sh | tail -1)
export PATH="$k8s/bin:$PATH"
kubectl get nodes -o wide

step "building kitfleet-build and the demo helper"
cargo build --release -q -p kitfleet-builder --bin kitfleet-build --example demo
demo="$repo/target/release/examples/demo"
build="$repo/target/release/kitfleet-build"

step "pushing the fixture images (Debian cloud kernel, busybox+runc init, onboot marker) to $REGISTRY"
"$demo" fixtures "$REGISTRY"

step "kubectl apply -f examples/nodeimage-minimal.yaml"
kubectl apply -f examples/nodeimage-minimal.yaml
if ! kubectl wait --for=condition=Built nodeimage/minimal --timeout=15m; then
  kubectl get nodeimage minimal -o yaml >&2
  kubectl -n kitfleet-system logs -l app.kubernetes.io/component=operator --tail 30 >&2 || true
  echo "demo: the NodeImage was not built" >&2
  exit 1
fi
kubectl get nodeimages
kubectl get nodeimage minimal -o jsonpath='{.status}' | jq '{conditions: [.conditions[] | {type, status, reason}], buildKey, artifact}'

ref=$(kubectl get nodeimage minimal -o jsonpath='{.status.artifact.reference}')
out="$KITFLEET_CACHE/demo/minimal"
rm -rf "$out"; mkdir -p "$out"
step "kitfleet-build pull $ref"
"$build" pull --insecure-registry "$REGISTRY" --cache "$KITFLEET_CACHE/demo/cache" -o "$out" "$ref" \
  | jq -r '.files[] | "    \(.digest)  \(.size)  \(.path)"'

step "booting the built image under qemu-system-x86_64 -accel tcg (serial console follows)"
kernel=$(find "$out" -maxdepth 1 -name '*-kernel' | head -1)
initrd=$(find "$out" -maxdepth 1 -name '*-initrd.img' | head -1)
cmdline=$(kubectl get nodeimage minimal -o jsonpath='{.spec.kernel.cmdline}')
"$demo" boot "$kernel" "$initrd" "$cmdline" kitfleet-onboot-ok

step "done. The cluster stays up: kubectl get nodeimages; bash scripts/demo.sh --down removes it. KUBECONFIG:"
echo "$kubeconfig"
