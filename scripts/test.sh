#!/usr/bin/env bash
# Every test Kitfleet has, on a fresh Debian 12 machine with Rust (run as root): installs what is missing, builds
# Kubernetes from Go source (cached outside the clone), checks formatting, lints and generated files, runs the whole
# workspace's tests (privileged ones and the real-apiserver fixture included), then the kind suite on a local cluster
# with Kitfleet as its CNI, which it creates and deletes itself.
#
#   bash scripts/test.sh              # everything
#   KITFLEET_SKIP_KIND=1 bash scripts/test.sh   # everything but the kind suite (not under CI=true)
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
# Each phase line shows the wall time so far and the CPU time of every finished child process (user+sys): on a loaded
# machine the CPU figure says what the same run costs on two otherwise idle cores (at best CPU/2 of wall time).
times_file=$(mktemp)
cleanup() { rm -f "$times_file"; }
trap cleanup EXIT
stamp() { # `times` runs in this shell: a subshell would know none of the finished children
  times > "$times_file"
  local c
  c=$(awk 'NR == 2 { split($1, u, "m"); split($2, s, "m"); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$times_file")
  echo "== [+$(( $(date +%s) - t0 )) s, CPU $c s] $*"
}

stamp "set-up (Debian packages, helm)"
bash scripts/setup.sh
stamp "Kubernetes binaries (scripts/k8s-build.sh; cached outside the clone)"
k8s=$(bash scripts/k8s-build.sh | tail -1)
export KITFLEET_K8S_BIN="$k8s/bin"

stamp "cargo fmt --check"
cargo fmt --all -- --check
stamp "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
stamp "generated CRDs are current"
cargo run -q -p kitfleet-api --bin crdgen -- --check

out="${CARGO_TARGET_DIR:-target}/test-output.txt"
mkdir -p "$(dirname "$out")"
: > "$out"
status=0
stamp "cargo test (workspace)"
cargo test --workspace --no-fail-fast 2>&1 | tee -a "$out" || status=1

if [ "${KITFLEET_SKIP_KIND:-}" = 1 ] && [ "${CI:-}" != true ]; then
  stamp "kind suite skipped (KITFLEET_SKIP_KIND=1)"
else
  stamp "kind cluster (scripts/kind/up.sh)"
  # up.sh deletes a cluster left by a killed run; the cluster is removed again whatever the suite's outcome.
  trap 'stamp "kind cluster down"; bash scripts/kind/down.sh >/dev/null 2>&1 || true; cleanup' EXIT
  if kubeconfig=$(bash scripts/kind/up.sh --fresh | tail -1); then
    # e2e/tests/kind.rs first, then every kind_*.rs by name, kind_lifecycle.rs (helm upgrade/uninstall) last.
    suites=(kind)
    for f in e2e/tests/kind_*.rs; do
      [ -e "$f" ] || continue
      n=$(basename "$f" .rs)
      [ "$n" = kind_lifecycle ] || suites+=("$n")
    done
    [ -e e2e/tests/kind_lifecycle.rs ] && suites+=(kind_lifecycle)
    for n in "${suites[@]}"; do
      if [ "$n" = kind_lifecycle ]; then
        # Memory of the Kitfleet processes that served every suite so far (the lifecycle suite reinstalls them).
        stamp "RSS after the kind suites (scripts/kind/rss.sh)"
        bash scripts/kind/rss.sh || true
      fi
      stamp "kind suite: $n"
      KITFLEET_KIND=1 KUBECONFIG="$kubeconfig" cargo test -p kitfleet-e2e --test "$n" -- --test-threads=1 2>&1 \
        | tee -a "$out" || status=1
    done
  else
    echo "kind cluster did not come up (log tails above)"
    echo "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out" >> "$out"
    status=1
  fi
fi

stamp "done"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$out"
exit $status
