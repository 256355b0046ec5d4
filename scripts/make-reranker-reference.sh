#!/usr/bin/env bash
# Recompute inference/tests/fixtures/reranker_reference.json: logits of Python transformers'
# BertForSequenceClassification on the seeded test cross-encoder (see inference/src/test_model.rs).
# The fixture is committed; this only needs to run again when the pairs or the formula change.
# Installs transformers and torch (large) into .venv-ref with pip.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/fetch-model.sh"
py="$("$root/scripts/reference-venv.sh")"
"$py" "$root/scripts/reranker_reference.py" \
  "$root/models/all-MiniLM-L6-v2" "$root/inference/tests/fixtures/reranker_reference.json"
