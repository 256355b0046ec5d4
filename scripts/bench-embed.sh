#!/usr/bin/env bash
# Side-by-side embedding benchmark: shoal's embedder (native engine, f32 and opt-in bf16), sentence-transformers (PyTorch CPU)
# and ONNX Runtime fp32 (an ONNX export of the same model made here), on the same inputs, with
# the same thread count. Installs the Python side into .venv-bench with pip (torch is large).
# Writes docs/benchmarks/embedding.md.  Usage: scripts/bench-embed.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
scripts/fetch-model.sh
scripts/fetch-bench-data.sh
venv=.venv-bench
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "sentence-transformers==5.*" onnxruntime onnx
fi
out=bench-data
"$venv/bin/python" scripts/embed_bench.py models/all-MiniLM-L6-v2 bench-data/summaries_en-us.json "$out" "$threads"
cargo build --release -p shoal-inference --example embed_bench
RAYON_NUM_THREADS="$threads" ./target/release/examples/embed_bench models/all-MiniLM-L6-v2 "$out/embed-inputs.json" "$threads" "$out/embed-shoal.json"
# the opt-in reduced precision, with its accuracy against f32 on the same inputs
EMBED_BENCH_PRECISION=bf16 RAYON_NUM_THREADS="$threads" ./target/release/examples/embed_bench models/all-MiniLM-L6-v2 "$out/embed-inputs.json" "$threads" "$out/embed-shoal-bf16.json"
"$venv/bin/python" scripts/embed_bench_report.py "$out/embed-python.json" "$out/embed-shoal.json" "$out/embed-inputs.json" docs/benchmarks/embedding.md "$out/embed-shoal-bf16.json"
