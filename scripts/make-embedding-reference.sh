#!/usr/bin/env bash
# Recompute inference/tests/fixtures/minilm_reference.json: sentence-transformers embeddings of a fixed
# set of texts (one longer than 128 tokens) for all-MiniLM-L6-v2, with max_seq_length = 256.
# The fixture is committed; this script only needs to run again when the text set changes.
# It installs sentence-transformers (and torch, which is large) into .venv-ref with pip.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/fetch-model.sh"
py="$("$root/scripts/reference-venv.sh")"
"$py" "$root/scripts/embedding_reference.py" \
  "$root/models/all-MiniLM-L6-v2" "$root/inference/tests/fixtures/minilm_reference.json"
