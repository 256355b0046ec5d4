#!/usr/bin/env bash
# The test command: fetch the model if missing, build the binary, run every test of the workspace.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo build --bin shoal
cargo test --workspace
