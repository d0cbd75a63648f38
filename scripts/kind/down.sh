#!/usr/bin/env bash
# Removes what scripts/kind/up.sh made: the kind cluster ($KIND_CLUSTER, default kitfleet) and, once no other kind
# cluster is left on the machine, the registry container and its /etc/hosts line (the registry's storage and the built
# images stay cached under $KITFLEET_CACHE).
#
#   bash scripts/kind/down.sh
#   KIND_CLUSTER=kitfleet-demo bash scripts/kind/down.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
kind_podman_setup
k8s=$(bash "$repo/scripts/k8s-build.sh" 2>/dev/null | tail -1)
rm -f "$KIND_READY"
if "$k8s/bin/kind" get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  "$k8s/bin/kind" delete cluster --name "$KIND_CLUSTER" --kubeconfig "$KIND_KUBECONFIG" >&2
fi
rm -f "$KIND_KUBECONFIG"
if [ -z "$("$k8s/bin/kind" get clusters 2>/dev/null)" ]; then
  bash "$here/registry.sh" down
  kind_log "cluster $KIND_CLUSTER and registry removed"
else
  kind_log "cluster $KIND_CLUSTER removed; the registry stays for: $("$k8s/bin/kind" get clusters 2>/dev/null | tr '\n' ' ')"
fi
