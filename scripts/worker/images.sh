#!/usr/bin/env bash
# The ingredient images of the Kitfleet worker NodeImage (examples/nodeimage-worker.yaml), built without a Docker daemon
# (scripts/images/oci.sh: one reproducible layer each), cached outside the clone and pushed to the registry the builds
# pull from. Every image is referenced by digest.
#
#   bash scripts/worker/images.sh [REGISTRY]     # default kitfleet-registry:5000 (scripts/kind/registry.sh)
#
# Images (REGISTRY/kitfleet/worker/NAME:TAG):
#   kernel      Debian's cloud kernel in LinuxKit's kernel image layout: /kernel (the bzImage) and /kernel.tar
#               (lib/modules/<version>/ with every module of the package and depmod's indexes)
#   init        the init (shell, LinuxKit's model: initramfs copied to a tmpfs, busybox init, onboot containers run in
#               order, services started detached) with busybox-static and jq; see scripts/worker/README.md for why
#               it is not LinuxKit's Go init
#   runc        Debian's runc and the libraries it links (an init image: it lands in the root filesystem)
#   tools       the onboot steps: modprobe, metadata (qemu fw_cfg), net, sysctl, format, mount (busybox, mke2fs)
#   containerd  Debian's containerd (CRI) + shim + ctr + runc, a config, the CNI loopback and portmap plugins, nft
#               (a service)
#   kubelet     kubelet and kubeadm from scripts/k8s-build.sh, the join wrapper (a service)
#   pause       Kubernetes' pause (gcc -static), the sandbox image containerd's CRI pulls (not in the manifest)
#
# Writes $KITFLEET_CACHE/worker/refs.env (NAME=REGISTRY/kitfleet/worker/NAME@sha256:...) and
# $KITFLEET_CACHE/worker/nodeimage-worker.yaml (examples/nodeimage-worker.yaml with those digests and REGISTRY), and
# prints the latter's path on its last stdout line. Debian packages come from apt (apt-get download, dpkg -x: nothing is
# installed); a second run with unchanged inputs pushes identical digests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../images/oci.sh
source "$repo/scripts/images/oci.sh"
cache=${KITFLEET_CACHE:-/var/cache/kitfleet}
registry=${1:-kitfleet-registry:5000}
insecure=${KITFLEET_INSECURE_PUSH:-true}
wcache="$cache/worker"
kver=${KITFLEET_WORKER_KERNEL:-6.1.0-57-cloud-amd64}
start=$(date +%s)
log() { echo "worker-images: $*" >&2; }
die() { log "$*"; exit 1; }
for t in jq skopeo apt-get dpkg depmod nft; do command -v "$t" >/dev/null || die "$t is missing (bash scripts/setup.sh)"; done
mkdir -p "$wcache/debs" "$wcache/layouts"
exec 8>"$wcache/.lock"
flock 8

# Debian packages, downloaded once (apt-get download names the file after the exact version).
debs=(containerd runc containernetworking-plugins "linux-image-$kver")
(cd "$wcache/debs" && for p in "${debs[@]}"; do
  v=$(apt-cache policy "$p" | sed -n 's/^  Candidate: //p')
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "no candidate for $p (apt-get update?)"
  ls "${p}_"*.deb >/dev/null 2>&1 || apt-get download -q -o APT::Sandbox::User=root "$p=$v" >&2
done)
x="$wcache/x"
for p in "${debs[@]}"; do
  deb=$(ls "$wcache/debs/${p}_"*.deb | tail -1)
  if [ "$(cat "$x/$p/.deb" 2>/dev/null)" != "$(basename "$deb")" ]; then
    rm -rf "$x/$p"; mkdir -p "$x/$p"; dpkg -x "$deb" "$x/$p"; basename "$deb" > "$x/$p/.deb"
  fi
done
k8s=$(bash "$repo/scripts/k8s-build.sh" | tail -1)
# shellcheck source=/dev/null # KUBERNETES_VERSION, PAUSE_VERSION (kubeadm's defaults)
. "$k8s/versions.env"

work=$(mktemp -d "$wcache/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Copies a dynamically linked program and the libraries it names into ROOT, at the paths the loader looks for.
add_dyn() { # ROOT SRC DEST
  local root=$1 src=$2 dest=$3 lib
  install -D -m 0755 "$src" "$root$dest"
  ldd "$src" | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
    install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}
add_busybox() { # ROOT: busybox-static with every applet as a symlink in /bin
  local root=$1 a
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || die "/bin/busybox is not busybox-static"
  install -D -m 0755 /bin/busybox "$root/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"
  done
}
debtag() { # PACKAGE: its Debian version as an OCI tag (~ and + are not allowed there)
  cut -d_ -f2 < "$x/$1/.deb" | tr '~+:' '---'
}
add_files() { # ROOT DIR: a directory of scripts/worker/rootfs, copied with its modes
  cp -a "$here/rootfs/$2/." "$1/"
}

# kernel: bzImage + kernel.tar with the package's modules and depmod's indexes (the package leaves them to postinst).
r="$work/kernel"; mkdir -p "$r" "$work/kmods"
cp -a "$x/linux-image-$kver/lib" "$work/kmods/"
depmod -b "$work/kmods" "$kver"
install -m 0644 "$x/linux-image-$kver/boot/vmlinuz-$kver" "$r/kernel"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/kmods" -cf "$r/kernel.tar" lib
install -m 0644 "$x/linux-image-$kver/boot/config-$kver" "$r/config"
oci_image "$r" "$wcache/layouts/kernel" "$kver"

# init: the init scripts, busybox, jq (runtime.json is JSON); the empty directories the root filesystem needs.
r="$work/init"; mkdir -p "$r"
add_busybox "$r"
add_files "$r" init
add_dyn "$r" /usr/bin/jq /usr/bin/jq
mkdir -p "$r"/{proc,sys,dev,run,tmp,var,mnt,root,etc/kubernetes,etc/cni/net.d,opt/cni/bin,sbin,usr/sbin}
ln -sf ../bin/busybox "$r/sbin/init"
# The kernel's module autoloader (nftables expressions for kube-proxy and kitfleet-wg's masquerade) runs /sbin/modprobe.
ln -sf ../bin/busybox "$r/sbin/modprobe"
chmod 1777 "$r/tmp"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$r/etc/hosts"
oci_image "$r" "$wcache/layouts/init" 1

# runc (init image): Debian's runc and its libraries.
r="$work/runc"; mkdir -p "$r"
add_dyn "$r" "$x/runc/usr/sbin/runc" /usr/bin/runc
oci_image "$r" "$wcache/layouts/runc" "$(debtag runc)"

# tools (onboot): busybox, mke2fs, the onboot scripts and the default sysctls.
r="$work/tools"; mkdir -p "$r"
add_busybox "$r"
add_files "$r" tools
add_dyn "$r" /usr/sbin/mke2fs /usr/sbin/mke2fs
mkdir -p "$r"/{proc,sys,dev,run,tmp,var,etc}
oci_image "$r" "$wcache/layouts/tools" 1 'env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]'

# containerd (service): Debian's containerd with CRI, its runc shim, ctr, runc (the shim execs it), loopback CNI.
r="$work/containerd"; mkdir -p "$r"
add_busybox "$r"
add_files "$r" containerd
for b in containerd containerd-shim-runc-v2 ctr; do add_dyn "$r" "$x/containerd/usr/bin/$b" "/usr/bin/$b"; done
add_dyn "$r" "$x/runc/usr/sbin/runc" /usr/bin/runc
# loopback (containerd's CRI needs it) and portmap (the chart chains it after kitfleet-wg).
for p in loopback portmap; do
  install -D -m 0755 "$x/containernetworking-plugins/usr/lib/cni/$p" "$r/usr/lib/cni/$p"
done
# nft: kitfleet-wg runs in containerd's mount namespace and execs it for the pod network's masquerade.
add_dyn "$r" /usr/sbin/nft /usr/sbin/nft
mkdir -p "$r"/{proc,sys,dev,run,tmp,var,etc/cni/net.d,opt/cni/bin}
sed -i "s#^  sandbox_image = .*#  sandbox_image = \"$registry/kitfleet/worker/pause:$PAUSE_VERSION\"#" "$r/etc/containerd/config.toml"
oci_image "$r" "$wcache/layouts/containerd" "$(debtag containerd)" \
  'entrypoint=["/usr/bin/kitfleet-containerd"]'

# kubelet (service): the static kubelet and kubeadm of scripts/k8s-build.sh and the join wrapper.
r="$work/kubelet"; mkdir -p "$r"
add_busybox "$r"
add_files "$r" kubelet
for b in kubelet kubeadm; do install -D -m 0755 "$k8s/bin/$b" "$r/usr/bin/$b"; done
mkdir -p "$r"/{proc,sys,dev,run,tmp,var,etc/kubernetes}
# kubelet reads /etc/passwd and /etc/group at start (user-namespace mappings: the `kubelet` user, absent here).
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\n' > "$r/etc/group"
oci_image "$r" "$wcache/layouts/kubelet" "$KUBERNETES_VERSION" 'entrypoint=["/usr/bin/kitfleet-kubelet"]'

# pause (the CRI sandbox image): Kubernetes' pause.c, static, as scripts/kind/node-image.sh builds it.
r="$work/pause"; mkdir -p "$r"
gcc -Os -static -DVERSION="v$PAUSE_VERSION" -o "$r/pause" "$k8s/src/pause.c"
strip "$r/pause"
oci_image "$r" "$wcache/layouts/pause" "$PAUSE_VERSION" 'entrypoint=["/pause"]' 'env=[]'

# Push, record digests, render the example with them.
tls=$([ "$insecure" = true ] && echo false || echo true)
refs="$work/refs.env"; : > "$refs"
for name in kernel init runc tools containerd kubelet pause; do
  l="$wcache/layouts/$name"
  tag=$(jq -r '.manifests[0].annotations["org.opencontainers.image.ref.name"]' "$l/index.json")
  digest=$(jq -r '.manifests[0].digest' "$l/index.json")
  skopeo copy -q --dest-tls-verify="$tls" "oci:$l:$tag" "docker://$registry/kitfleet/worker/$name:$tag"
  size=$(jq '[.layers[].size] | add' "$l/blobs/sha256/${digest#sha256:}")
  log "$registry/kitfleet/worker/$name:$tag @$digest ($(( size / 1024 / 1024 )) MiB compressed)"
  echo "$name=$registry/kitfleet/worker/$name@$digest" >> "$refs"
done
mv "$refs" "$wcache/refs.env"
manifest="$wcache/nodeimage-worker.yaml"
cp "$repo/examples/nodeimage-worker.yaml" "$manifest.new"
while IFS== read -r name ref; do
  sed -i "s#[a-zA-Z0-9.:-]*/kitfleet/worker/$name@sha256:[0-9a-f]*#$ref#g" "$manifest.new"
done < "$wcache/refs.env"
sed -i "s#[a-zA-Z0-9.:-]*/kitfleet/nodes/worker#$registry/kitfleet/nodes/worker#g" "$manifest.new"
mv "$manifest.new" "$manifest"
log "done in $(( $(date +%s) - start )) s; refs in $wcache/refs.env"
echo "$manifest"
