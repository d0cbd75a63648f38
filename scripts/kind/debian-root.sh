#!/usr/bin/env bash
# A Debian bookworm root filesystem from `debootstrap`, cached as a tarball outside the clone, keyed by the package list,
# the mirror and this script's hash. Uses the machine's own apt mirror (the first bookworm source in
# /etc/apt/sources.list{,.d/*}). Prints the tarball's path on its last stdout line.
#
#   bash scripts/kind/debian-root.sh NAME PACKAGE...     # e.g. NAME=kube-proxy iptables nftables conntrack
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 NAME [PACKAGE...]" >&2; exit 2; }
name=$1; shift
cache=${KITFLEET_CACHE:-/var/cache/kitfleet}

mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822 stanzas: the first with a plain "bookworm" suite.
    awk 'BEGIN{RS=""} /(^|\n)Types:[^\n]*deb([ \n]|$)/ && /(^|\n)Suites:[^\n]*[ ]bookworm([ \n]|$)/ {
           if (match($0, /URIs:[ ]*[^ \n]+/)) { s=substr($0, RSTART, RLENGTH); sub(/URIs:[ ]*/, "", s); print s; exit } }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1=="deb" && $3=="bookworm" {print $2; exit}' "$f"
  done
}
url=$(mirror | head -1)
[ -n "$url" ] || { echo "debian-root: no bookworm apt source in /etc/apt/sources.list*" >&2; exit 1; }

key=$( { sha256sum "$0" | cut -d' ' -f1; echo "$url"; printf '%s\n' "$@" | sort; } | sha256sum | cut -c1-12)
out="$cache/debian-bookworm-$name-$key.tar"
if [ -f "$out" ]; then
  echo "debian-root: cached $out" >&2
  echo "$out"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debian-root: debootstrap missing (bash scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/.debootstrap-$name.XXXXXX")
trap 'umount -R "$work/root/proc" "$work/root/sys" 2>/dev/null || true; rm -rf "$work"' EXIT
start=$(date +%s)
include=$(IFS=,; echo "$*")
echo "debian-root: debootstrap bookworm from $url ($name: ${include:-minbase})" >&2
debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$work/root" "$url" > "$work/log" 2>&1 \
  || { tail -30 "$work/log" >&2; echo "debian-root: debootstrap failed" >&2; exit 1; }
# Smaller and reproducible-ish: no package caches, lists or logs.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* "$work/root/var/log/"*.log \
  "$work/root/var/cache/debconf/"*-old "$work/root/debootstrap"
tar --numeric-owner --xattrs -C "$work/root" -cf "$work/root.tar" .
mv "$work/root.tar" "$out"
echo "debian-root: $name in $(( $(date +%s) - start )) s ($(du -h "$out" | cut -f1))" >&2
echo "$out"
