#!/usr/bin/env bash
# Resident memory of Kitfleet's processes on every node of the kind cluster ($KIND_CLUSTER, default kitfleet), as
# `ps` inside each node container shows it (`kubectl top` needs metrics-server, which the cluster does not run).
# scripts/test.sh prints it after the suites, before the lifecycle suite reinstalls Kitfleet.
#
#   bash scripts/kind/rss.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
kind_podman_setup
nodes=$(podman ps --format '{{.Names}}' | grep -E "^${KIND_CLUSTER}-(control-plane|worker[0-9]*)\$" | sort)
[ -n "$nodes" ] || { echo "rss.sh: no node containers of cluster $KIND_CLUSTER" >&2; exit 1; }
for n in $nodes; do
  # comm is cut at 15 characters (kitfleet-node-a…); the full name is the first word of args.
  podman exec "$n" ps -eo rss=,args= | awk -v n="$n" '$2 ~ /\/kitfleet-(node-agent|operator)$/ || $2 ~ /^kitfleet-(node-agent|operator)$/ {
      split($2, p, "/"); printf "%-24s %-20s %-12s %6.1f MiB\n", n, p[length(p)], $3, $1 / 1024 }'
done
