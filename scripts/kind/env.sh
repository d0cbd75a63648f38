#!/usr/bin/env bash
# Shared settings for the kind scripts (sourced, never run). Everything kind and podman keep lives outside the clone,
# under $KITFLEET_CACHE (default /var/cache/kitfleet), so a fresh clone reuses built images and a `git clean` loses
# nothing.
#
# podman runs with its own containers.conf/storage.conf (cgroupfs, runc behind a wrapper that drops the OCI spec's
# rlimits, file events logger, CNI networks in our own directory), so it never touches the machine's default podman
# state or /etc/cni/net.d. See ../shared/RECIPES.md, "Kubernetes and kind" and "podman".

KITFLEET_CACHE=${KITFLEET_CACHE:-/var/cache/kitfleet}
KIND_CLUSTER=${KIND_CLUSTER:-kitfleet}
# The kind network and the registry's fixed address on it: podman 4.3 with CNI has no container DNS here, so every
# consumer (host /etc/hosts, each node's containerd mirror, CoreDNS in the cluster) maps the name to this IP.
KIND_NETWORK=${KIND_NETWORK:-kind}
KIND_SUBNET=${KIND_SUBNET:-10.89.77.0/24}
KIND_GATEWAY=${KIND_GATEWAY:-10.89.77.1}
REGISTRY_NAME=${REGISTRY_NAME:-kitfleet-registry}
REGISTRY_IP=${REGISTRY_IP:-10.89.77.250}
REGISTRY_PORT=${REGISTRY_PORT:-5000}
REGISTRY="$REGISTRY_NAME:$REGISTRY_PORT"
KIND_STATE="$KITFLEET_CACHE/kind"
# One kubeconfig and one "ready" stamp per cluster, so several clusters (the test command's `kitfleet`, the demo's
# `kitfleet-demo`, a developer's own) can share the kind network and the registry.
if [ "$KIND_CLUSTER" = kitfleet ]; then
  KIND_KUBECONFIG=${KIND_KUBECONFIG:-$KIND_STATE/kubeconfig}
else
  KIND_KUBECONFIG=${KIND_KUBECONFIG:-$KIND_STATE/kubeconfig-$KIND_CLUSTER}
fi
KIND_READY="$KIND_STATE/ready-$KIND_CLUSTER"

export KIND_EXPERIMENTAL_PROVIDER=podman
export CONTAINERS_CONF="$KIND_STATE/podman/containers.conf"
export CONTAINERS_STORAGE_CONF="$KIND_STATE/podman/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$KIND_STATE/podman/registries.conf"

kind_log() { echo "kind: $*" >&2; }
kind_die() { echo "kind: $*" >&2; exit 1; }

# Writes podman's configuration (idempotent). The runtime wrapper removes process.rlimits from the bundle's config.json
# (and from `runc exec --process` files): root here lacks CAP_SYS_RESOURCE, so runc's setrlimit fails otherwise.
# Replaces FILE atomically with stdin (MODE applied before it appears): several clusters' scripts run at once, and a
# reader must never see a half-written configuration (podman: "The storage 'driver' option must be set").
kind_write() { # FILE [MODE]
  local tmp="$1.tmp.$$"
  cat > "$tmp"
  [ -z "${2:-}" ] || chmod "$2" "$tmp"
  mv -f "$tmp" "$1"
}

kind_podman_setup() {
  local d="$KIND_STATE/podman"
  mkdir -p "$d/storage" "$d/run" "$d/netd" "$d/tmp"
  kind_write "$d/runc-norlimits" 0755 <<'WRAP'
#!/bin/sh
# runc, minus the OCI spec's process.rlimits (written by scripts/kind/env.sh).
prev=""
for a in "$@"; do
  case "$prev" in
    --bundle|-b) f="$a/config.json" ;;
    --process|-p) f="$a" ;;
    *) f="" ;;
  esac
  case "$a" in --bundle=*) f="${a#--bundle=}/config.json" ;; --process=*) f="${a#--process=}" ;; esac
  if [ -n "$f" ] && [ -f "$f" ] && grep -q '"rlimits"' "$f"; then
    jq 'del(.process.rlimits) | del(.rlimits)' "$f" > "$f.kf" && mv "$f.kf" "$f"
  fi
  prev="$a"
done
exec /usr/sbin/runc "$@"
WRAP
  kind_write "$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni"]
network_config_dir = "$d/netd"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$d/events.log"
runtime = "kfrunc"
tmp_dir = "$d/run/libpod-tmp"
[engine.runtimes]
kfrunc = ["$d/runc-norlimits"]
CONF
  kind_write "$CONTAINERS_STORAGE_CONF" <<CONF
[storage]
driver = "overlay"
runroot = "$d/run/storage"
graphroot = "$d/storage"
CONF
  kind_write "$CONTAINERS_REGISTRIES_CONF" <<CONF
unqualified-search-registries = []
[[registry]]
location = "$REGISTRY"
insecure = true
CONF
}
