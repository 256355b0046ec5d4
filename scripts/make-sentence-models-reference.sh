#!/usr/bin/env bash
# Recompute inference/tests/fixtures/sentence_models_reference.json: sentence-transformers vectors
# of folders made from all-MiniLM-L6-v2 with every pooling mode, Dense layers, prompts (included
# in and excluded from pooling), a default prompt and a Transformer in a subfolder, in the legacy
# and the current file formats. The fixture is committed; this only needs to run again when the
# variants or the texts change. Installs sentence-transformers (and torch, large) into .venv-ref.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/fetch-model.sh"
py="$("$root/scripts/reference-venv.sh")"
"$py" "$root/scripts/sentence_models_reference.py" \
  "$root/models/all-MiniLM-L6-v2" "$root/inference/tests/fixtures/sentence_models_reference.json"
