#!/usr/bin/env bash
# Every test Kitfleet has, on a fresh Debian 12 machine with Rust: installs what is missing, checks formatting, lints,
# generated files, then runs the whole workspace's tests (including the privileged ones: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== generated CRDs are current"
cargo run -q -p kitfleet-api --bin crdgen -- --check
echo "== cargo test"
out="${CARGO_TARGET_DIR:-target}/test-output.txt"
mkdir -p "$(dirname "$out")"
cargo test --workspace --no-fail-fast 2>&1 | tee "$out"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$out"
