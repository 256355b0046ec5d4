#!/usr/bin/env bash
# Quick start: fetch the model if missing, build shoal (release) and run one node with its data
# under ./data, listening on 127.0.0.1:7400. Extra arguments go to `shoal serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
exec cargo run --release --bin shoal -- serve --data-dir ./data --model ./models/all-MiniLM-L6-v2 "$@"
