#!/usr/bin/env bash
# The one registry address for everything: Debian's docker-registry (distribution 2.8) packaged as an image and run on
# the kind network at a fixed IP, published as $REGISTRY_NAME:$REGISTRY_PORT (kitfleet-registry:5000). The host reaches
# it through an /etc/hosts line this script keeps; nodes' containerd through the cluster config's mirror; pods through
# CoreDNS's hosts block (scripts/kind/up.sh). Its storage persists under $KITFLEET_CACHE/kind/registry, so pushed images
# survive cluster re-creation.
#
#   bash scripts/kind/registry.sh up     # idempotent
#   bash scripts/kind/registry.sh down   # stops it (the storage stays)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
kind_podman_setup

hosts_line="$REGISTRY_IP $REGISTRY_NAME # kitfleet kind registry"

network_up() {
  # Nodes find each other by name through the dnsname plugin (dnsmasq on the gateway): a network made before the
  # plugin was installed lacks it, and is replaced.
  if podman network exists "$KIND_NETWORK" && ! grep -qs '"dnsname"' "$KIND_STATE/podman/netd/$KIND_NETWORK.conflist"; then
    podman network rm -f "$KIND_NETWORK" >/dev/null
  fi
  if ! podman network exists "$KIND_NETWORK"; then
    [ -x /usr/lib/cni/dnsname ] || kind_die "the CNI dnsname plugin is missing (bash scripts/setup.sh)"
    # kind uses an existing network of this name as is: a fixed IPv4 subnet gives the registry a stable address.
    podman network create -d bridge --subnet "$KIND_SUBNET" --gateway "$KIND_GATEWAY" "$KIND_NETWORK" >/dev/null
    kind_log "created podman network $KIND_NETWORK ($KIND_SUBNET)"
  fi
}

image_up() {
  local img=localhost/kitfleet/registry:2.8
  if podman image exists "$img"; then echo "$img"; return 0; fi
  local r
  r=$(mktemp -d)
  mkdir -p "$r/usr/bin" "$r/etc/docker/registry" "$r/var/lib/registry" "$r/tmp"
  chmod 1777 "$r/tmp"
  cp /usr/bin/docker-registry "$r/usr/bin/"
  # Its shared libraries (glibc only, today), at the paths the binary names.
  ldd /usr/bin/docker-registry | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
    mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; done
  cat > "$r/etc/docker/registry/config.yml" <<'YML'
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: /var/lib/registry}
  delete: {enabled: true}
http: {addr: ":5000"}
YML
  tar --numeric-owner -C "$r" -c . | podman import -q \
    --change 'ENTRYPOINT ["/usr/bin/docker-registry"]' \
    --change 'CMD ["serve", "/etc/docker/registry/config.yml"]' - "$img" >/dev/null
  rm -rf "$r"
  echo "$img"
}

hosts_up() {
  grep -qF "$hosts_line" /etc/hosts && return 0
  # Replace a stale line for the name, keep everything else (cp, not mv: /etc/hosts may be a bind mount).
  { grep -v "[[:space:]]$REGISTRY_NAME\([[:space:]]\|$\)" /etc/hosts || true; echo "$hosts_line"; } > "$KIND_STATE/hosts.new"
  cp "$KIND_STATE/hosts.new" /etc/hosts
  rm -f "$KIND_STATE/hosts.new"
}

up() {
  network_up
  local img
  img=$(image_up)
  if [ "$(podman container inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null)" != true ]; then
    podman rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
    mkdir -p "$KIND_STATE/registry"
    podman run -d --name "$REGISTRY_NAME" --network "$KIND_NETWORK" --ip "$REGISTRY_IP" \
      -v "$KIND_STATE/registry:/var/lib/registry" "$img" >/dev/null
  fi
  hosts_up
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://$REGISTRY/v2/" 2>/dev/null && { kind_log "registry at http://$REGISTRY"; return 0; }
    sleep 0.1
  done
  podman logs --tail 20 "$REGISTRY_NAME" >&2 || true
  kind_die "registry did not answer on http://$REGISTRY/v2/"
}

down() {
  podman rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
  podman network rm -f "$KIND_NETWORK" >/dev/null 2>&1 || true
  if grep -qF "# kitfleet kind registry" /etc/hosts; then
    grep -vF "# kitfleet kind registry" /etc/hosts > "$KIND_STATE/hosts.new" || true
    cp "$KIND_STATE/hosts.new" /etc/hosts
    rm -f "$KIND_STATE/hosts.new"
  fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
