#!/usr/bin/env bash
# The test command: fetch the model if missing, check formatting and lints, build the binary, run
# every test of the workspace, run it again on the portable kernels (the path CPUs without AVX-512
# take), run the native kernels under valgrind's memcheck, and run a short chaos campaign (a fixed
# seed and a random one, which it prints) against a three-node cluster. CI runs exactly this
# (.ci/run).
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
echo "== chaos: a fixed seed and a random one against three nodes (docs/chaos.md)" >&2
scripts/chaos-deps.sh
cargo build -p shoal-chaos --bin shoal-chaos
target/debug/shoal-chaos --seed 1,random --seconds 45
