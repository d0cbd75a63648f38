#!/usr/bin/env bash
# Kitfleet's container images, built without a Docker daemon: static binaries (glibc, +crt-static, see
# ../shared/RECIPES.md "Static binaries") on FROM-scratch roots, written as OCI layouts (scripts/images/oci.sh) and
# pushed with skopeo.
#
#   operator    kitfleet-operator, CA roots, uid 65532
#   node-agent  kitfleet-node-agent, kitfleet-wg, kitfleet-sandbox, busybox (sh/cp/mv for the CNI install init container)
#   builder     kitfleet-build, qemu-img with its shared libraries, CA roots, uid 65532
#
#   bash scripts/images/build.sh [REGISTRY]     # default kitfleet-registry:5000 (scripts/kind/registry.sh)
#
# Each image is pushed as REGISTRY/kitfleet/<name>:<appVersion> and :<appVersion>-<content hash>; the last stdout line
# is that second tag (what scripts/kind/up.sh installs). The static binaries build once into
# $KITFLEET_CACHE/target-static (Cargo profile `image`: release without LTO, incremental — KITFLEET_IMAGE_PROFILE=release
# for release images — apart from the workspace's target dir); images never carry test or fault-hook features.
# For a real cluster: run it with your registry (HOST[:PORT], skopeo's credentials apply) and
# install the chart with --set image.registry=HOST[:PORT]/kitfleet --set image.tag=<the printed tag>.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=oci.sh
source "$here/oci.sh"
cache=${KITFLEET_CACHE:-/var/cache/kitfleet}
registry=${1:-kitfleet-registry:5000}
insecure=${KITFLEET_INSECURE_PUSH:-true}
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/charts/kitfleet/Chart.yaml")
triple=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="$cache/target-static"

# One image build at a time on this machine (several clusters or developers share the cache and the static target).
mkdir -p "$cache"
exec 9>"$cache/images.lock"
if ! flock -n 9; then
  echo "images: waiting for another image build (lock $cache/images.lock)" >&2
  flock 9
fi
start=$(date +%s)
src=$repo
if [ "${KITFLEET_IMAGES_FROM_HEAD:-0}" = 1 ]; then
  # The committed tree, not the working tree (which others may be editing): exported outside the clone.
  src="$cache/src-head"
  head=$(git -C "$repo" rev-parse HEAD)
  if [ "$(cat "$src/.commit" 2>/dev/null)" != "$head" ]; then
    rm -rf "$src"; mkdir -p "$src"
    git -C "$repo" archive HEAD | tar -x -C "$src"
    echo "$head" > "$src/.commit"
  fi
  echo "images: building $(git -C "$repo" rev-parse --short HEAD) (KITFLEET_IMAGES_FROM_HEAD=1)" >&2
fi
profile=${KITFLEET_IMAGE_PROFILE:-image}
echo "images: static build (profile $profile) into $CARGO_TARGET_DIR" >&2
(cd "$src" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile "$profile" --locked --target "$triple" \
  -p kitfleet-operator -p kitfleet-node-agent -p kitfleet-builder -p kitfleet-cni-wg -p kitfleet-sandbox \
  --bin kitfleet-operator --bin kitfleet-node-agent --bin kitfleet-build --bin kitfleet-wg --bin kitfleet-sandbox)
bin="$CARGO_TARGET_DIR/$triple/$profile"
for b in kitfleet-operator kitfleet-node-agent kitfleet-build kitfleet-wg kitfleet-sandbox; do
  if ldd "$bin/$b" >/dev/null 2>&1 && ! ldd "$bin/$b" 2>&1 | grep -q 'statically linked'; then
    echo "images: $b is not static" >&2; exit 1
  fi
  # Test fault hooks (cni-wg's `fault-injection` feature) never ship: their variable names must not be in a binary.
  if grep -q KITFLEET_WG_TEST "$bin/$b"; then
    echo "images: $b was built with test fault hooks (feature fault-injection); refusing" >&2; exit 1
  fi
done
echo "images: binaries ready after $(( $(date +%s) - start )) s" >&2

work=$(mktemp -d "$cache/.images.XXXXXX")
trap 'rm -rf "$work"' EXIT
layouts="$cache/images"
mkdir -p "$layouts"

base_root() { # DIR: /etc/passwd, /etc/group, /tmp, CA roots
  mkdir -p "$1/etc/ssl/certs" "$1/tmp" "$1/usr/local/bin"
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$1/etc/group"
  cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/"
}
add_bin() { install -m 0755 "$bin/$2" "$1/usr/local/bin/$2"; strip "$1/usr/local/bin/$2"; }

r="$work/operator"; base_root "$r"; add_bin "$r" kitfleet-operator
oci_image "$r" "$layouts/operator" "$version" 'entrypoint=["/usr/local/bin/kitfleet-operator"]' 'cmd=["run"]' \
  'user=65532:65532'

r="$work/node-agent"; base_root "$r"
# kitfleet-build: the upgrade agent pulls and verifies node-image artifacts with it.
for b in kitfleet-node-agent kitfleet-wg kitfleet-sandbox kitfleet-build; do add_bin "$r" "$b"; done
mkdir -p "$r/bin"
cp /bin/busybox "$r/bin/busybox"
for a in sh cp mv rm mkdir cat ls; do ln -s busybox "$r/bin/$a"; done
oci_image "$r" "$layouts/node-agent" "$version" 'entrypoint=["/usr/local/bin/kitfleet-node-agent"]' 'cmd=["mesh"]'

r="$work/builder"; base_root "$r"; add_bin "$r" kitfleet-build
mkdir -p "$r/usr/bin" "$r/home/nonroot"
chown 65532:65532 "$r/home/nonroot"
cp /usr/bin/qemu-img "$r/usr/bin/"
# raw-efi and UKI outputs wrap kernel + initrd + cmdline around systemd's EFI stub (kitfleet-build --uki-stub default).
mkdir -p "$r/usr/lib/systemd/boot/efi"
cp /usr/lib/systemd/boot/efi/linuxx64.efi.stub "$r/usr/lib/systemd/boot/efi/"
ldd /usr/bin/qemu-img | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
  mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; done
"$r/usr/bin/qemu-img" --version >/dev/null 2>&1 || true
oci_image "$r" "$layouts/builder" "$version" 'entrypoint=["/usr/local/bin/kitfleet-build"]' 'user=65532:65532' \
  'env=["PATH=/usr/local/bin:/usr/bin:/bin","HOME=/home/nonroot"]'

hash=$(cat "$layouts"/{operator,node-agent,builder}/index.json | sha256sum | cut -c1-12)
tag="$version-$hash"
for name in operator node-agent builder; do
  for t in "$version" "$tag"; do
    skopeo copy -q --dest-tls-verify="$([ "$insecure" = true ] && echo false || echo true)" \
      "oci:$layouts/$name:$version" "docker://$registry/kitfleet/$name:$t"
  done
  size=$(jq '[.layers[].size] | add' "$layouts/$name/blobs/sha256/$(jq -r '.manifests[0].digest' "$layouts/$name/index.json" | cut -d: -f2)")
  echo "images: $registry/kitfleet/$name:$tag ($(( size / 1024 / 1024 )) MiB compressed, $(du -sh --apparent-size "$work/$name" | cut -f1) unpacked)" >&2
done
echo "images: built and pushed in $(( $(date +%s) - start )) s" >&2
echo "$tag"
