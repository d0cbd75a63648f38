#!/usr/bin/env bash
# Test fixture images for the kind suite, made here and pushed to the kind registry (nothing is pulled from outside):
#   $REGISTRY/e2e/busybox:1   static busybox (sh, ping, wget, nc, httpd, nslookup) on FROM scratch
# Idempotent: skips images the registry already has.
#
#   bash scripts/kind/fixtures.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
# shellcheck source=../images/oci.sh
source "$repo/scripts/images/oci.sh"

ref="$REGISTRY/e2e/busybox:1"
if curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REGISTRY/v2/e2e/busybox/manifests/1"; then
  echo "$ref"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r="$work/root"
mkdir -p "$r/bin" "$r/tmp" "$r/www" "$r/etc"
chmod 1777 "$r/tmp"
cp /bin/busybox "$r/bin/busybox"
for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
echo "kitfleet-e2e" > "$r/www/index.html"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$r/etc/group"
oci_image "$r" "$work/oci" 1 'entrypoint=["/bin/sh"]' 'env=["PATH=/bin"]'
skopeo copy -q --dest-tls-verify=false "oci:$work/oci:1" "docker://$ref"
kind_log "pushed $ref"
echo "$ref"
