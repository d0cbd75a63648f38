#!/usr/bin/env bash
# The worker NodeImage (examples/nodeimage-worker.yaml) joins a kind cluster as a VM (issue 17, step 4): the image is
# built by kitfleet-build here (or, with --in-cluster, by the operator's build Job from the NodeImage `worker`),
# booted under qemu (q35 + OVMF, TCG) with a TAP interface on the kind network's bridge at a static address, its join
# configuration (apiserver, bootstrap token, CA hash, address, /etc/hosts lines) in qemu's fw_cfg; it becomes a Ready
# Node once the chart's node-agent DaemonSet pod has installed kitfleet-wg on it.
#
#   KIND_CLUSTER=kf-worker bash scripts/kind/up.sh                          # the cluster, first
#   KIND_CLUSTER=kf-worker bash scripts/worker/join.sh up [--in-cluster]    # VM, Ready
#   KIND_CLUSTER=kf-worker bash scripts/worker/join.sh check                # pods VM <-> kind worker, only WireGuard on the TAP
#   KIND_CLUSTER=kf-worker bash scripts/worker/join.sh down                 # VM stopped, Node deleted, TAP removed
#   KIND_CLUSTER=kf-worker bash scripts/worker/join.sh console              # the VM's serial console so far
#   KIND_CLUSTER=kf-worker bash scripts/worker/join.sh logs                 # containerd's and kubelet's output (ttyS1)
#
# Settings (environment): KITFLEET_VM_NAME (node name, default kitfleet-vm-1), KITFLEET_VM_ADDRESS (default
# 10.89.77.240, in the kind subnet, reserved in podman's host-local IPAM so no container gets it), KITFLEET_VM_TAP
# (default kfw-tap0), KITFLEET_VM_MEM (MiB, default 3072), KITFLEET_VM_SMP (default 2), KITFLEET_WORKER_MANIFEST (the
# manifest images.sh rendered: images.sh is skipped), KITFLEET_BUILD_BIN (kitfleet-build, default target/debug's).
# State (disks, serial logs, pid, join.env) in $KITFLEET_CACHE/worker/vm-$KIND_CLUSTER. Prints the wall times of boot,
# join and Ready.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../kind/env.sh
source "$repo/scripts/kind/env.sh"
kind_podman_setup
cmd=${1:-up}
shift || true
local_build=true
for a in "$@"; do
  case "$a" in
    --in-cluster) local_build=false ;;
    *) echo "usage: $0 up [--in-cluster] | check | down | console | logs" >&2; exit 2 ;;
  esac
done
name=${KITFLEET_VM_NAME:-kitfleet-vm-1}
addr=${KITFLEET_VM_ADDRESS:-10.89.77.240}
tap=${KITFLEET_VM_TAP:-kfw-tap0}
mem=${KITFLEET_VM_MEM:-3072}
smp=${KITFLEET_VM_SMP:-2}
mac=${KITFLEET_VM_MAC:-52:54:00:4b:46:01}
state="$KITFLEET_CACHE/worker/vm-$KIND_CLUSTER"
ipam="/var/lib/cni/networks/$KIND_NETWORK"
cp_node="$KIND_CLUSTER-control-plane"
t0=$(date +%s)
log() { echo "worker-join: $* (+$(( $(date +%s) - t0 )) s)" >&2; }
die() { echo "worker-join: $*" >&2; exit 1; }
k8s=$(bash "$repo/scripts/k8s-build.sh" | tail -1)
export PATH="$k8s/bin:$PATH"
export KUBECONFIG="$KIND_KUBECONFIG"

vm_pid() { [ -f "$state/qemu.pid" ] && kill -0 "$(cat "$state/qemu.pid")" 2>/dev/null && cat "$state/qemu.pid"; }

down() {
  local pid
  if pid=$(vm_pid); then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "VM stopped (qemu pid $pid)"
  fi
  rm -f "$state/qemu.pid"
  ip link del "$tap" 2>/dev/null && log "TAP $tap removed" || true
  if [ -f "$ipam/$addr" ] && grep -q "^kitfleet-worker-vm" "$ipam/$addr"; then rm -f "$ipam/$addr"; fi
  if [ -f "$KIND_KUBECONFIG" ] && kubectl get node "$name" >/dev/null 2>&1; then
    kubectl delete node "$name" --wait=false >/dev/null && log "Node $name deleted"
  fi
}

# Step 2: a pod on the VM and a pod on a kind worker reach each other by pod IP (ICMP and HTTP both ways), and on the
# VM's interface (the TAP, captured here) every IP packet between the VM and that worker is WireGuard UDP (port 51820;
# ARP, which is not IP, is left out of the capture) and the request's marker never appears in clear.
check() {
  local ns=kf-worker-check worker="$KIND_CLUSTER-worker" image vm_ip kind_ip vm_addr w_addr pcap tpid n bad body body2
  kubectl get node "$name" >/dev/null 2>&1 || die "no Node $name: $0 up first"
  image=$(bash "$repo/scripts/kind/fixtures.sh" | tail -1)
  kubectl create namespace "$ns" >/dev/null 2>&1 || true
  for p in "on-vm:$name" "on-kind:$worker"; do
    kubectl apply -f - >/dev/null <<JSON
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "${p%%:*}", "namespace": "$ns"},
 "spec": {"nodeName": "${p#*:}", "terminationGracePeriodSeconds": 0, "tolerations": [{"operator": "Exists"}],
  "containers": [{"name": "c", "image": "$image", "command": ["sh", "-c", "httpd -p 8080 -h /www && exec sleep 1000000"]}]}}
JSON
  done
  kubectl -n "$ns" wait --for=condition=Ready pod/on-vm pod/on-kind --timeout=900s >&2 \
    || { kubectl -n "$ns" describe pod on-vm >&2; die "the pods are not Ready"; }
  log "pods Ready"
  vm_ip=$(kubectl -n "$ns" get pod on-vm -o jsonpath='{.status.podIP}')
  kind_ip=$(kubectl -n "$ns" get pod on-kind -o jsonpath='{.status.podIP}')
  vm_addr=$(kubectl get node "$name" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  w_addr=$(kubectl get node "$worker" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
  pcap="$state/check.pcap"
  tcpdump -i "$tap" -U -n -s 0 -w "$pcap" "ip and host $vm_addr and host $w_addr" 2>"$state/tcpdump.err" &
  tpid=$!
  sleep 2
  local marker=kitfleet-plaintext-marker-0123456789 rc=0
  kubectl -n "$ns" exec on-vm -- ping -c 3 -W 5 "$kind_ip" >&2 || rc=1
  kubectl -n "$ns" exec on-kind -- ping -c 3 -W 5 "$vm_ip" >&2 || rc=1
  body=$(kubectl -n "$ns" exec on-vm -- timeout 30 wget -q -O - "http://$kind_ip:8080/?$marker") || rc=1
  body2=$(kubectl -n "$ns" exec on-kind -- timeout 30 wget -q -O - "http://$vm_ip:8080/?$marker") || rc=1
  sleep 1
  kill -INT "$tpid"; wait "$tpid" || true
  [ $rc = 0 ] && [ "$body" = kitfleet-e2e ] && [ "$body2" = kitfleet-e2e ] \
    || die "pod $vm_ip (VM) <-> $kind_ip ($worker) failed (HTTP bodies '$body', '$body2')"
  n=$(tcpdump -r "$pcap" -n -q 2>/dev/null | wc -l)
  bad=$(tcpdump -r "$pcap" -n -q 2>/dev/null | awk '!(/ UDP,/ && /\.51820 /)' | wc -l)
  [ "$n" -ge 12 ] || die "only $n packets between $vm_addr and $w_addr on $tap"
  [ "$bad" = 0 ] || { tcpdump -r "$pcap" -n -q | awk '!(/ UDP,/ && /\.51820 /)' >&2; die "$bad packets on $tap that are not WireGuard UDP"; }
  if grep -aq "$marker" "$pcap"; then die "the pods' plaintext is visible on $tap"; fi
  kubectl delete namespace "$ns" --wait=false >/dev/null
  log "check passed: ICMP and HTTP both ways between pod $vm_ip on $name and pod $kind_ip on $worker; $n packets between $vm_addr and $w_addr on $tap, all WireGuard UDP (51820), no plaintext marker"
}

case "$cmd" in
  down) down; exit 0 ;;
  console) cat "$state/serial.log"; exit 0 ;;
  logs) cat "$state/services.log"; exit 0 ;;
  check) check; exit 0 ;;
  up) ;;
  *) echo "usage: $0 up [--in-cluster] | check | down | console | logs" >&2; exit 2 ;;
esac

for t in qemu-system-x86_64 podman skopeo jq openssl ip; do command -v "$t" >/dev/null || die "$t is missing (bash scripts/setup.sh)"; done
[ -f /usr/share/ovmf/OVMF.fd ] || die "/usr/share/ovmf/OVMF.fd is missing (apt-get install ovmf)"
[ -c /dev/net/tun ] || die "/dev/net/tun is missing: the VM's TAP needs it"
vm_pid >/dev/null && die "a VM runs already (pid $(cat "$state/qemu.pid")): $0 down first"

# --- the cluster, the kind network's bridge, the apiserver's address and certificate ---
# The cluster is scripts/kind/up.sh's (not made here: up.sh replaces a cluster whose scripts changed, and builds
# Kitfleet's images unless KITFLEET_IMAGE_TAG names pushed ones).
[ -f "$KIND_READY" ] && kubectl get --raw /readyz >/dev/null 2>&1 \
  || die "no ready cluster $KIND_CLUSTER: KIND_CLUSTER=$KIND_CLUSTER bash scripts/kind/up.sh first"
log "cluster $KIND_CLUSTER up"
bridge=$(jq -r '.plugins[] | select(.type == "bridge") | .bridge' "$KIND_STATE/podman/netd/$KIND_NETWORK.conflist")
[ -n "$bridge" ] && ip link show "$bridge" >/dev/null 2>&1 || die "no bridge for podman network $KIND_NETWORK"
prefix=${KIND_SUBNET#*/}
cp_ip=$(podman container inspect -f "{{(index .NetworkSettings.Networks \"$KIND_NETWORK\").IPAddress}}" "$cp_node")
[ -n "$cp_ip" ] || die "no address of $cp_node on $KIND_NETWORK"
# The VM discovers the cluster at the control plane's address and then uses cluster-info's server (the control plane's
# name, resolved through the VM's /etc/hosts): the apiserver's certificate must name both.
sans=$(podman exec "$cp_node" openssl x509 -in /etc/kubernetes/pki/apiserver.crt -noout -ext subjectAltName | tail -n +2)
for want in "IP Address:$cp_ip" "DNS:$cp_node"; do
  case "$sans" in *"$want"*) ;; *) die "the apiserver certificate does not name $want (SANs:$sans)" ;; esac
done
server=$(kubectl -n kube-public get configmap cluster-info -o jsonpath='{.data.kubeconfig}' | awk '/server:/ {print $2}')
log "apiserver $cp_ip:6443 (cluster-info names $server; certificate SANs:$(echo "$sans" | tr -d '\n'))"

# --- an address for the VM that podman's IPAM will not hand out ---
mkdir -p "$state"
if [ -f "$ipam/$addr" ] && ! grep -q "^kitfleet-worker-vm" "$ipam/$addr"; then
  die "$addr is allocated by podman's IPAM ($ipam/$addr): set KITFLEET_VM_ADDRESS"
fi
if ping -c 1 -W 1 "$addr" >/dev/null 2>&1; then die "$addr answers already: set KITFLEET_VM_ADDRESS"; fi
mkdir -p "$ipam"
printf 'kitfleet-worker-vm-%s\neth0' "$KIND_CLUSTER" > "$ipam/$addr"

# --- the images kubeadm's DaemonSets run on every node (kube-proxy): copied from the control plane's containerd to
# the registry, where the VM's containerd mirror for registry.k8s.io finds them ---
for img in $(kubectl get daemonsets -A -o jsonpath='{range .items[*]}{range .spec.template.spec.containers[*]}{.image}{"\n"}{end}{end}' \
    | grep '^registry.k8s.io/' | sort -u); do
  path=${img#registry.k8s.io/}
  if skopeo inspect --tls-verify=false "docker://$REGISTRY/$path" >/dev/null 2>&1; then continue; fi
  podman exec "$cp_node" ctr -n k8s.io images export --platform linux/amd64 /tmp/kf-export.tar "$img"
  podman cp "$cp_node:/tmp/kf-export.tar" "$state/export.tar"
  podman exec "$cp_node" rm -f /tmp/kf-export.tar
  skopeo copy -q --dest-tls-verify=false "oci-archive:$state/export.tar" "docker://$REGISTRY/$path"
  rm -f "$state/export.tar"
  log "$img copied to $REGISTRY/$path"
done

# --- the worker image ---
if [ -n "${KITFLEET_WORKER_MANIFEST:-}" ]; then
  manifest=$KITFLEET_WORKER_MANIFEST
else
  manifest=$(bash "$here/images.sh" "$REGISTRY" | tail -1)
  log "ingredient images pushed ($manifest)"
fi
out="$state/image"
rm -rf "$out"; mkdir -p "$out"
build=${KITFLEET_BUILD_BIN:-$repo/target/debug/kitfleet-build}
if [ ! -x "$build" ]; then (cd "$repo" && cargo build -q -p kitfleet-builder --bin kitfleet-build); fi
if $local_build; then
  "$build" build "$manifest" -o "$out" --format raw-efi --insecure-registry "$REGISTRY" \
    --cache "$KITFLEET_CACHE/worker/join-cache" --no-progress --json > "$state/build.json"
  buildkey=$(jq -r '.build.buildKey' "$state/build.json")
  log "built raw-efi here (build key $buildkey)"
else
  kubectl apply -f "$manifest" >/dev/null
  log "NodeImage worker applied; waiting for the operator's build Job"
  if ! kubectl wait --for=condition=Built nodeimage/worker --timeout=20m >/dev/null; then
    kubectl get nodeimage worker -o yaml >&2
    kubectl -n kitfleet-system logs -l app.kubernetes.io/component=operator --tail 30 >&2 || true
    die "the NodeImage was not built"
  fi
  ref=$(kubectl get nodeimage worker -o jsonpath='{.status.artifact.reference}')
  buildkey=$(kubectl get nodeimage worker -o jsonpath='{.status.buildKey}')
  log "built in the cluster: $ref (build key $buildkey)"
  "$build" pull --insecure-registry "$REGISTRY" --cache "$KITFLEET_CACHE/worker/join-cache" -o "$out" "$ref" >/dev/null
fi
raw=$(find "$out" -maxdepth 1 -name '*-efi.raw' | head -1)
[ -n "$raw" ] || die "no raw-efi disk in $out"
cp --sparse=always "$raw" "$state/disk.raw"
rm -f "$state/var.img"; truncate -s 8G "$state/var.img"
cp /usr/share/ovmf/OVMF.fd "$state/OVMF.fd"

# --- the join configuration (nothing of it is in the image) ---
token=$(podman exec "$cp_node" kubeadm token create --ttl 2h --description "kitfleet worker VM $name")
cahash="sha256:$(podman exec "$cp_node" cat /etc/kubernetes/pki/ca.crt | openssl x509 -noout -pubkey \
  | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)"
umask 077
cat > "$state/join.env" <<ENV
KITFLEET_APISERVER=$cp_ip:6443
KITFLEET_TOKEN=$token
KITFLEET_CA_HASH=$cahash
KITFLEET_NODE_NAME=$name
KITFLEET_ADDRESS=$addr/$prefix
KITFLEET_GATEWAY=$KIND_GATEWAY
KITFLEET_DNS=$KIND_GATEWAY
KITFLEET_HOSTS=$cp_ip $cp_node,$REGISTRY_IP $REGISTRY_NAME
ENV
umask 022
log "join configuration: apiserver $cp_ip:6443, token ${token%%.*}.<redacted>, CA $cahash, $name at $addr/$prefix"

# --- the TAP on the kind bridge, then qemu ---
ip link del "$tap" 2>/dev/null || true
ip tuntap add dev "$tap" mode tap
ip link set "$tap" master "$bridge"
ip link set "$tap" up
: > "$state/serial.log"; : > "$state/services.log"
qemu-system-x86_64 -accel tcg -machine q35 -m "$mem" -smp "$smp" -nodefaults -display none \
  -drive "if=pflash,format=raw,unit=0,file=$state/OVMF.fd" \
  -serial "file:$state/serial.log" -serial "file:$state/services.log" \
  -drive "file=$state/disk.raw,format=raw,if=virtio" \
  -drive "file=$state/var.img,format=raw,if=virtio" \
  -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=$mac" \
  -fw_cfg "name=opt/dev.kitfleet/join,file=$state/join.env" \
  -daemonize -pidfile "$state/qemu.pid" 2> "$state/qemu.stderr" || { cat "$state/qemu.stderr" >&2; die "qemu failed"; }
tq=$(date +%s)
log "qemu started (pid $(cat "$state/qemu.pid"), TAP $tap on $bridge, serial $state/serial.log)"

wait_console() { # TEXT TIMEOUT
  local end=$(( $(date +%s) + $2 ))
  while ! grep -q "$1" "$state/serial.log"; do
    vm_pid >/dev/null || { grep -a kitfleet "$state/serial.log" >&2; die "qemu exited before '$1'"; }
    if [ "$(date +%s)" -ge "$end" ]; then grep -a kitfleet "$state/serial.log" | tail -30 >&2; die "no '$1' within $2 s"; fi
    grep -aq "refusing to join\|join failed\|Kernel panic" "$state/serial.log" && { grep -a kitfleet "$state/serial.log" >&2; die "the VM did not join"; }
    sleep 1
  done
  echo $(( $(date +%s) - tq ))
}
t_boot=$(wait_console "kitfleet-init: boot done" 600)
log "boot done $t_boot s after qemu started"
t_join=$(wait_console "kitfleet-kubelet: kubelet healthy" 900)
log "kubelet joined and healthy $t_join s after qemu started"
end=$(( $(date +%s) + 1800 ))
until [ "$(kubectl get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
  vm_pid >/dev/null || die "qemu exited before the Node was Ready"
  if [ "$(date +%s)" -ge "$end" ]; then
    kubectl get node "$name" -o wide >&2 || true
    kubectl get pods -A -o wide --field-selector "spec.nodeName=$name" >&2 || true
    die "Node $name not Ready within 1800 s"
  fi
  sleep 2
done
t_ready=$(( $(date +%s) - tq ))
log "Node $name Ready $t_ready s after qemu started"
kubectl get node "$name" -o wide >&2
kubectl get pods -A -o wide --field-selector "spec.nodeName=$name" >&2
echo "boot=${t_boot}s join=${t_join}s ready=${t_ready}s buildkey=$buildkey" > "$state/times"
log "VM $name Ready: boot ${t_boot} s, join ${t_join} s, Ready ${t_ready} s after qemu started (TCG)"
echo "$name"
