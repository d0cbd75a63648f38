#!/usr/bin/env bash
# Builds Kubernetes' binaries, etcd and kind from Go source with the machine's Go and the Go module proxy, static
# (CGO_ENABLED=0), into a cache outside the clone keyed by the version and this script's hash. A second run on the same
# machine builds nothing. Prints the cache directory on its last line of stdout.
#
#   bash scripts/k8s-build.sh            # build (or find) the binaries; prints e.g. /var/cache/kitfleet/k8s-v1.36.3-0a1b2c3d4e5f
#   KITFLEET_CACHE=/some/dir bash scripts/k8s-build.sh
#
# Layout of the cache directory:
#   bin/            kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl etcd kind
#   src/pause.c     Kubernetes' pause container source (build/pause/linux), for the kind node image
#   src/kind-base/  kind's node base files (images/base/files of the kind module)
#   versions.env    KUBERNETES_VERSION, ETCD_VERSION, KIND_VERSION, COREDNS_VERSION, PAUSE_VERSION (kubeadm's defaults)
#   .complete       written last; a directory without it is rebuilt
set -euo pipefail

KUBERNETES_VERSION=v1.36.3
KIND_VERSION=v0.33.0
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)

here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/k8s-build.sh" | cut -c1-12)
cache_root=${KITFLEET_CACHE:-/var/cache/kitfleet}
out="$cache_root/k8s-$KUBERNETES_VERSION-$hash"

if [ -f "$out/.complete" ]; then
  echo "k8s-build: cached in $out" >&2
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "k8s-build: go is not on PATH (expected /usr/local/go/bin/go)" >&2; exit 1; }
start=$(date +%s)
mkdir -p "$cache_root"
rm -rf "$out.partial"
mkdir -p "$out.partial/bin" "$out.partial/src"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

export CGO_ENABLED=0 GOFLAGS=-trimpath GOTOOLCHAIN=local
cd "$work"
echo "k8s-build: resolving k8s.io/kubernetes $KUBERNETES_VERSION" >&2
go mod init kitfleet.dev/k8s-build >/dev/null 2>&1
modfile=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
srcdir=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -f "$modfile" ] || { echo "k8s-build: could not download k8s.io/kubernetes@$KUBERNETES_VERSION" >&2; exit 1; }

# k8s.io/kubernetes requires its staging modules at v0.0.0 with local replaces; pin each to its published v0.Y.Z.
staging_version="v0.${KUBERNETES_VERSION#v1.}"
go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
for m in $(sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$modfile"); do
  go mod edit -replace "$m=$m@$staging_version"
done

# -mod=mod lets each build add the requirements it needs; k8s.io/kubernetes's go.mod pins their versions.
export GOFLAGS='-trimpath -mod=mod'
go mod download go.etcd.io/etcd/server/v3
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)

# Version stamps as Kubernetes' own build sets them (hack/lib/version.sh): kubeadm, kind and `kubectl version` read them.
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

for b in "${BINARIES[@]}"; do
  t=$(date +%s)
  go build -ldflags "$ldflags" -o "$out.partial/bin/$b" "k8s.io/kubernetes/cmd/$b"
  echo "k8s-build: $b in $(( $(date +%s) - t )) s" >&2
done
t=$(date +%s)
go build -ldflags "-s -w" -o "$out.partial/bin/etcd" go.etcd.io/etcd/server/v3
echo "k8s-build: etcd $etcd_version in $(( $(date +%s) - t )) s" >&2

t=$(date +%s)
(cd / && GOBIN="$out.partial/bin" GOFLAGS=-trimpath go install -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION")
echo "k8s-build: kind $KIND_VERSION in $(( $(date +%s) - t )) s" >&2
kind_dir=$(cd "$work" && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')

install -m 0644 "$srcdir/build/pause/linux/pause.c" "$out.partial/src/pause.c"
cp -r "$kind_dir/images/base/files" "$out.partial/src/kind-base"
chmod -R u+w "$out.partial/src"
consts="$srcdir/cmd/kubeadm/app/constants/constants.go"
{
  echo "KUBERNETES_VERSION=$KUBERNETES_VERSION"
  echo "ETCD_VERSION=$etcd_version"
  echo "KIND_VERSION=$KIND_VERSION"
  echo "KUBEADM_ETCD_TAG=$(sed -n 's/^\tDefaultEtcdVersion = "\(.*\)"$/\1/p' "$consts")"
  echo "COREDNS_VERSION=$(sed -n 's/^\tCoreDNSVersion = "\(.*\)"$/\1/p' "$consts")"
  echo "PAUSE_VERSION=$(sed -n 's/^\tPauseVersion = "\(.*\)"$/\1/p' "$consts")"
} > "$out.partial/versions.env"

rm -rf "$out"
mv "$out.partial" "$out"
date -u +%FT%TZ > "$out/.complete"
echo "k8s-build: built in $(( $(date +%s) - start )) s into $out" >&2
echo "$out"
