#!/usr/bin/env bash
# Builds CoreDNS from Go source (the Go module proxy; CGO_ENABLED=0, so static) at the version kubeadm deploys, into a
# cache outside the clone keyed by the version and this script's hash. Prints the binary's path on its last stdout line.
#
#   bash scripts/kind/coredns-build.sh v1.12.1
set -euo pipefail
version=${1:?usage: coredns-build.sh VERSION (e.g. v1.12.1)}
case "$version" in v*) ;; *) version="v$version" ;; esac
cache=${KITFLEET_CACHE:-/var/cache/kitfleet}
out="$cache/coredns-$version-$(sha256sum "$0" | cut -c1-12)"
if [ -x "$out/coredns" ]; then
  echo "coredns-build: cached in $out" >&2
  echo "$out/coredns"
  exit 0
fi
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "coredns-build: go is not on PATH" >&2; exit 1; }
start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS='-trimpath -mod=mod'
cd "$work"
go mod init kitfleet.dev/coredns-build >/dev/null 2>&1
go mod edit -require "github.com/coredns/coredns@$version"
go mod download "github.com/coredns/coredns@$version"
# CoreDNS's go.mod pins its dependencies; build its main package (the module root) with them.
go get "github.com/coredns/coredns@$version" >/dev/null 2>&1
mkdir -p "$out.partial"
go build -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$version" -o "$out.partial/coredns" \
  github.com/coredns/coredns
rm -rf "$out"
mv "$out.partial" "$out"
echo "coredns-build: $version in $(( $(date +%s) - start )) s" >&2
echo "$out/coredns"
