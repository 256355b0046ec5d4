#!/usr/bin/env bash
# Ingest fairness benchmark: ingest rate alone, under a saturating search load and beside
# CPU-bound processes, and memory per indexed chunk. Fetches the data (see fetch-bench-data.sh),
# builds release binaries, runs tests/src/bin/shoal-fairness.rs and writes
# docs/benchmarks/ingest-fairness.md.
# Usage: scripts/bench-fairness.sh [--docs N] [--clients N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
scripts/fetch-bench-data.sh
data=bench-data/summaries_en-us.json
cargo build --release --bin shoal --bin shoal-fairness
SHOAL_BIN="$PWD/target/release/shoal" ./target/release/shoal-fairness "$data" "$@"
