#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine with Rust: installs what is missing, starts a local OCI registry on
# 127.0.0.1, makes the fixture images (kernel, init, onboot), builds the example NodeImage with kitfleet-build,
# publishes it as an OCI artifact, and boots it under qemu (TCG) with the serial console on this terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release -p kitfleet-builder --example demo -- "$@"
