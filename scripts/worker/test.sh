#!/usr/bin/env bash
# The worker NodeImage's tests (issue 17), outside the test command (they need the registry and take minutes under
# TCG): ingredient images, the CLI, then e2e/tests/worker_boot.rs.
#
#   bash scripts/worker/test.sh [TEST_FILTER]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
start=$(date +%s)
bash "$repo/scripts/kind/registry.sh" up
export KITFLEET_WORKER_MANIFEST
KITFLEET_WORKER_MANIFEST=$(bash "$repo/scripts/worker/images.sh" | tail -1)
cd "$repo"
cargo build -p kitfleet-builder --bin kitfleet-build
cargo test -p kitfleet-e2e --test worker_boot -- --ignored --test-threads=1 --nocapture "$@"
echo "worker tests: $(( $(date +%s) - start )) s" >&2
