#!/usr/bin/env bash
# OCI image layouts from root filesystem directories, without a Docker daemon or buildah (sourced, never run).
#
#   oci_image ROOTFS LAYOUT_DIR TAG [KEY=VALUE...]   # keys: entrypoint, cmd (JSON arrays), env (JSON array of
#                                                     # "K=V"), user, workdir, stopsignal
#
# One reproducible layer: sorted names, mtime 0, owner root unless the file says otherwise (numeric ids kept), gzip -n.
# The layout is then copied with skopeo: `skopeo copy oci:LAYOUT_DIR:TAG docker://HOST/NAME:TAG` or
# `docker-archive:FILE.tar:NAME:TAG` (what `ctr images import` reads).

oci_blob() { # FILE LAYOUT -> prints sha256 hex; moves FILE into blobs/sha256
  local hex
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  mv "$1" "$2/blobs/sha256/$hex"
  echo "$hex"
}

oci_image() {
  local rootfs=$1 layout=$2 tag=$3
  shift 3
  local entrypoint=null cmd=null env='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]' user="" workdir=""
  local stopsignal="" kv
  for kv in "$@"; do
    case "$kv" in
      entrypoint=*) entrypoint=${kv#entrypoint=} ;;
      cmd=*) cmd=${kv#cmd=} ;;
      env=*) env=${kv#env=} ;;
      user=*) user=${kv#user=} ;;
      workdir=*) workdir=${kv#workdir=} ;;
      stopsignal=*) stopsignal=${kv#stopsignal=} ;;
      *) echo "oci_image: unknown setting $kv" >&2; return 1 ;;
    esac
  done
  rm -rf "$layout"
  mkdir -p "$layout/blobs/sha256"
  tar --sort=name --mtime=@0 --numeric-owner --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$layout/layer.tar" .
  local diff_id layer_hex layer_size
  diff_id=$(sha256sum "$layout/layer.tar" | cut -d' ' -f1)
  gzip -n -6 "$layout/layer.tar"
  layer_size=$(stat -c %s "$layout/layer.tar.gz")
  layer_hex=$(oci_blob "$layout/layer.tar.gz" "$layout")
  jq -cn --argjson ep "$entrypoint" --argjson cmd "$cmd" --argjson env "$env" --arg user "$user" \
    --arg wd "$workdir" --arg ss "$stopsignal" --arg diff "sha256:$diff_id" '
    {architecture: "amd64", os: "linux",
     config: ({Env: $env}
       + (if $ep != null then {Entrypoint: $ep} else {} end)
       + (if $cmd != null then {Cmd: $cmd} else {} end)
       + (if $user != "" then {User: $user} else {} end)
       + (if $wd != "" then {WorkingDir: $wd} else {} end)
       + (if $ss != "" then {StopSignal: $ss} else {} end)),
     rootfs: {type: "layers", diff_ids: [$diff]},
     history: [{created: "1970-01-01T00:00:00Z", created_by: "kitfleet scripts/images/oci.sh"}]}' > "$layout/config.json"
  local config_size config_hex
  config_size=$(stat -c %s "$layout/config.json")
  config_hex=$(oci_blob "$layout/config.json" "$layout")
  jq -cn --arg c "sha256:$config_hex" --argjson cs "$config_size" --arg l "sha256:$layer_hex" --argjson ls "$layer_size" '
    {schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
     config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
     layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]}' > "$layout/manifest.json"
  local manifest_size manifest_hex
  manifest_size=$(stat -c %s "$layout/manifest.json")
  manifest_hex=$(oci_blob "$layout/manifest.json" "$layout")
  jq -cn --arg m "sha256:$manifest_hex" --argjson ms "$manifest_size" --arg tag "$tag" '
    {schemaVersion: 2, manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
      platform: {architecture: "amd64", os: "linux"}, annotations: {"org.opencontainers.image.ref.name": $tag}}]}' \
    > "$layout/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
}
