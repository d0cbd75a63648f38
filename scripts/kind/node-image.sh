#!/usr/bin/env bash
# Builds kind's node image here, without Docker or any registry: a debootstrap Debian bookworm root with systemd,
# containerd, runc, the CNI base plugins, jq and kind's base layout (images/base/files of the kind module), the
# Kubernetes binaries from scripts/k8s-build.sh in /usr/bin, and the images kubeadm needs preloaded into containerd's
# k8s.io namespace (control plane and pause FROM scratch with static binaries, etcd, CoreDNS built from source,
# kube-proxy on a Debian root with iptables/nft/conntrack). Imported into podman's storage (scripts/kind/env.sh) with
# the settings kind's own `docker commit` gives its images.
#
# The image tarball is cached outside the clone, keyed by this script's hash and the binaries' caches; a second run
# only re-imports it when podman's storage lost it. Prints the image name on its last stdout line.
#
#   bash scripts/kind/node-image.sh        # e.g. localhost/kitfleet/kind-node:v1.36.3-0a1b2c3d4e5f
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
# shellcheck source=../images/oci.sh
source "$repo/scripts/images/oci.sh"

start=$(date +%s)
k8s=$(bash "$repo/scripts/k8s-build.sh" | tail -1)
# shellcheck disable=SC1091
source "$k8s/versions.env"
coredns=$(bash "$here/coredns-build.sh" "$COREDNS_VERSION" | tail -1)
node_pkgs=(systemd dbus containerd runc containernetworking-plugins conntrack iptables nftables iproute2 ethtool
  util-linux mount kmod libseccomp2 pigz bash ca-certificates jq procps)
node_root=$(bash "$here/debian-root.sh" node "${node_pkgs[@]}" | tail -1)
proxy_root=$(bash "$here/debian-root.sh" kube-proxy iptables nftables conntrack | tail -1)

key=$( { cat "$0" "$repo/scripts/images/oci.sh"; echo "$k8s $coredns $node_root $proxy_root"; } | sha256sum | cut -c1-12)
image="localhost/kitfleet/kind-node:$KUBERNETES_VERSION-$key"
out="$KITFLEET_CACHE/kind-node-$KUBERNETES_VERSION-$key"
kind_podman_setup

import_image() {
  if podman image exists "$image"; then return 0; fi
  local t
  t=$(date +%s)
  # What kind's `docker commit` and its base image's Dockerfile set: systemd is told it runs in a container, stops on
  # SIGRTMIN+3, and kind's entrypoint fixes up the container before it execs /sbin/init.
  podman import -q \
    --change 'ENV container=docker' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
    "$out/node.tar" "$image" >/dev/null
  kind_log "imported $image in $(( $(date +%s) - t )) s"
}

if [ -f "$out/.complete" ]; then
  import_image
  kind_log "node image cached in $out"
  echo "$image"
  exit 0
fi

mkdir -p "$KITFLEET_CACHE"
work=$(mktemp -d "$KITFLEET_CACHE/.kind-node.XXXXXX")
ctrd_pid=""
cleanup() {
  [ -n "$ctrd_pid" ] && kill "$ctrd_pid" 2>/dev/null && wait "$ctrd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
root="$work/root"
mkdir -p "$root"
tar --numeric-owner -C "$root" -xf "$node_root"

# --- kind's base layout (what images/base/Dockerfile does after installing packages) ---
base="$k8s/src/kind-base"
install -d -m 0755 "$root/kind" "$root/kind/bin" "$root/kind/manifests" "$root/etc/kubernetes/manifests" "$root/opt/cni/bin"
install -m 0755 "$base"/usr/local/bin/* "$root/usr/local/bin/"
install -m 0644 "$base"/kind/README.txt "$root/kind/"
install -m 0755 "$base"/kind/bin/* "$root/kind/bin/"
install -m 0644 "$base"/etc/crictl.yaml "$root/etc/"
install -d "$root/etc/containerd" "$root/etc/default" "$root/etc/sysctl.d" "$root/etc/systemd/system/kubelet.service.d"
install -m 0644 "$base"/etc/default/* "$root/etc/default/"
install -m 0644 "$base"/etc/sysctl.d/* "$root/etc/sysctl.d/"
install -m 0644 "$base"/etc/systemd/system/*.service "$base"/etc/systemd/system/*.slice "$root/etc/systemd/system/"
install -m 0644 "$base"/etc/systemd/system/kubelet.service.d/* "$root/etc/systemd/system/kubelet.service.d/"
# kind's units expect containerd in /usr/local/bin; Debian's is in /usr/bin.
ln -sf /usr/bin/containerd "$root/usr/local/bin/containerd"
# The CNI base plugins where the kubelet and Kitfleet's conflist (portmap) expect them.
for p in host-local loopback ptp portmap bridge; do cp "/usr/lib/cni/$p" "$root/opt/cni/bin/" 2>/dev/null \
  || cp "$root/usr/lib/cni/$p" "$root/opt/cni/bin/"; done
# containerd: kind's v2 config, with the pause image kubeadm expects, no fuse-overlayfs proxy plugin (not installed),
# and restrict_oom_score_adj (root here lacks CAP_SYS_RESOURCE; the cluster config sets it too).
sed -e "s#sandbox_image = .*#sandbox_image = \"registry.k8s.io/pause:$PAUSE_VERSION\"#" \
    -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
    "$base/etc/containerd/config.toml" \
  | awk '/^\[proxy_plugins/ {skip=1; next} /^\[/ {skip=0} !skip' > "$root/etc/containerd/config.toml"
# containerd's default OCI spec plus kind's product-files hook, without rlimits (as kind's Dockerfile builds it).
ctr oci spec \
  | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | jq 'del(.process.rlimits)' > "$root/etc/containerd/cri-base.json"
# systemd in a container: no units kind does not want, no kmsg.
find "$root/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$root"/lib/systemd/system/multi-user.target.wants/* "$root"/etc/systemd/system/*.wants/* \
  "$root"/lib/systemd/system/local-fs.target.wants/* "$root"/lib/systemd/system/sockets.target.wants/*udev* \
  "$root"/lib/systemd/system/sockets.target.wants/*initctl* "$root"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> "$root/etc/systemd/journald.conf"
ln -sf /usr/lib/systemd/systemd "$root/sbin/init"
systemctl --root="$root" enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
systemctl --root="$root" mask systemd-binfmt.service >/dev/null 2>&1
[ -L "$root/etc/systemd/system/multi-user.target.wants/kubelet.service" ] || kind_die "enabling kubelet.service failed"
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
touch "$root/etc/machine-id"

# --- Kubernetes ---
for b in kubelet kubeadm kubectl; do install -m 0755 "$k8s/bin/$b" "$root/usr/bin/$b"; done
printf '%s' "$KUBERNETES_VERSION" > "$root/kind/version"
# No local-path-provisioner: the StorageClass kind falls back to (host-path), written here so kind needs no fallback.
cat > "$root/kind/manifests/default-storage.yaml" <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/host-path
YAML

# --- the images kubeadm deploys, named as `kubeadm config images list` names them ---
mapfile -t wanted < <("$k8s/bin/kubeadm" config images list --kubernetes-version "$KUBERNETES_VERSION" 2>/dev/null)
img_of() { local w; for w in "${wanted[@]}"; do case "$w" in */"$1":*) echo "$w"; return 0 ;; esac; done
  kind_die "kubeadm lists no $1 image (${wanted[*]})"; }
mkdir -p "$work/images"
scratch_image() { # NAME BINARY_SRC BINARY_DEST [oci_image settings...]
  local name=$1 src=$2 dest=$3; shift 3
  local r="$work/rootfs-$name"
  mkdir -p "$r$(dirname "$dest")" "$r/tmp" "$r/etc"
  chmod 1777 "$r/tmp"
  install -m 0755 "$src" "$r$dest"
  echo "root:x:0:0:root:/:/sbin/nologin" > "$r/etc/passwd"
  echo "nonroot:x:65532:65532:nonroot:/:/sbin/nologin" >> "$r/etc/passwd"
  echo "root:x:0:" > "$r/etc/group"
  printf 'nonroot:x:65532:\n' >> "$r/etc/group"
  oci_image "$r" "$work/oci-$name" "$(img_of "$name" | sed 's/.*://')" "$@"
  skopeo copy -q "oci:$work/oci-$name:$(img_of "$name" | sed 's/.*://')" "docker-archive:$work/images/$name.tar:$(img_of "$name")"
  kind_log "image $(img_of "$name") ($(du -h "$work/images/$name.tar" | cut -f1))"
}
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  scratch_image "$b" "$k8s/bin/$b" "/usr/local/bin/$b" "entrypoint=[\"/usr/local/bin/$b\"]"
done
scratch_image etcd "$k8s/bin/etcd" /usr/local/bin/etcd 'entrypoint=["/usr/local/bin/etcd"]'
scratch_image coredns "$coredns" /coredns 'entrypoint=["/coredns"]'
pause_ver=${PAUSE_VERSION}
gcc -Os -static -DVERSION="v$pause_ver" -o "$work/pause" "$k8s/src/pause.c"
strip "$work/pause"
scratch_image pause "$work/pause" /pause 'entrypoint=["/pause"]' 'user=65535:65535'
# kube-proxy execs nft (or iptables) and conntrack: a Debian root.
kp="$work/rootfs-kube-proxy"
mkdir -p "$kp"
tar --numeric-owner -C "$kp" -xf "$proxy_root"
rm -rf "$kp/usr/share/doc" "$kp/usr/share/man" "$kp/usr/share/locale" "$kp/usr/share/info"
install -m 0755 "$k8s/bin/kube-proxy" "$kp/usr/local/bin/kube-proxy"
oci_image "$kp" "$work/oci-kube-proxy" "$KUBERNETES_VERSION" 'entrypoint=["/usr/local/bin/kube-proxy"]'
skopeo copy -q "oci:$work/oci-kube-proxy:$KUBERNETES_VERSION" "docker-archive:$work/images/kube-proxy.tar:$(img_of kube-proxy)"
kind_log "image $(img_of kube-proxy) ($(du -h "$work/images/kube-proxy.tar" | cut -f1))"

# Import them into the node's containerd store (k8s.io namespace, pinned, not unpacked: containerd unpacks on first
# use), as `kind build node-image` does, with the machine's containerd (the same Debian package the node runs).
mkdir -p "$work/ctrd"
cat > "$work/ctrd/config.toml" <<TOML
version = 2
root = "$root/var/lib/containerd"
state = "$work/ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/ctrd/sock"
TOML
containerd --config "$work/ctrd/config.toml" > "$work/ctrd/log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 50); do [ -S "$work/ctrd/sock" ] && break; sleep 0.1; done
[ -S "$work/ctrd/sock" ] || { tail -20 "$work/ctrd/log" >&2; kind_die "containerd did not start"; }
for t in "$work"/images/*.tar; do
  ctr -a "$work/ctrd/sock" -n k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms \
    --no-unpack --digests "$t" >/dev/null
done
ctr -a "$work/ctrd/sock" -n k8s.io images list -q | grep -v '^sha256:' | sed 's/^/kind: preloaded /' >&2
kill "$ctrd_pid"; wait "$ctrd_pid" 2>/dev/null || true; ctrd_pid=""

# --- the node image ---
rm -rf "$root/tmp/"* "$root/var/cache/apt/"*.bin "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale"
mkdir -p "$out.partial"
tar --numeric-owner --xattrs -C "$root" -cf "$out.partial/node.tar" .
rm -rf "$out"
mv "$out.partial" "$out"
podman rmi -f "$image" >/dev/null 2>&1 || true
import_image
date -u +%FT%TZ > "$out/.complete"
kind_log "node image built in $(( $(date +%s) - start )) s: $image ($(du -h "$out/node.tar" | cut -f1) tar)"
echo "$image"
