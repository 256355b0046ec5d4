#!/usr/bin/env bash
# The test command: fetch the model if missing, check formatting and lints, build the binary, run
# every test of the workspace, run it again on the portable kernels (the path CPUs without AVX-512
# take), and run the native kernels under valgrind's memcheck. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --bin shoal
cargo test --workspace
echo "== the whole suite again on the portable kernels (SHOAL_FORCE_PORTABLE_KERNELS=1)" >&2
SHOAL_FORCE_PORTABLE_KERNELS=1 cargo test --workspace
scripts/check-kernels-valgrind.sh
