#!/usr/bin/env bash
# The sandbox probe image for the kind suite's SecurityPolicy tests (e2e/tests/kind_policy.rs), made here and pushed to
# the kind registry (nothing is pulled from outside):
#   $REGISTRY/e2e/probe:<hash>   static busybox (sh, sleep, cat) + /bin/probe, the sandbox tests' static C probe
#                                (sandbox/tests/fixtures/probe.c: write/read/connect/bind/syscall…, prints "ok N" or
#                                "errno N"), on FROM scratch
# The tag is the probe source's hash; idempotent: skips an image the registry already has. Prints the reference.
#
#   bash scripts/kind/probe-image.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=env.sh
source "$here/env.sh"
# shellcheck source=../images/oci.sh
source "$repo/scripts/images/oci.sh"

src="$repo/sandbox/tests/fixtures/probe.c"
tag=$(cat "$src" /bin/busybox "$0" | sha256sum | cut -c1-12)
ref="$REGISTRY/e2e/probe:$tag"
if curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REGISTRY/v2/e2e/probe/manifests/$tag"; then
  echo "$ref"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
r="$work/root"
mkdir -p "$r/bin" "$r/tmp" "$r/etc" "$r/data"
chmod 1777 "$r/tmp" "$r/data"
cp /bin/busybox "$r/bin/busybox"
for a in sh sleep cat echo ls; do ln -s busybox "$r/bin/$a"; done
gcc -static -O2 -o "$r/bin/probe" "$src"
printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$r/etc/group"
oci_image "$r" "$work/oci" "$tag" 'entrypoint=["/bin/probe"]' 'env=["PATH=/bin"]'
skopeo copy -q --dest-tls-verify=false "oci:$work/oci:$tag" "docker://$ref"
kind_log "pushed $ref"
echo "$ref"
