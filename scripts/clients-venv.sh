#!/usr/bin/env bash
# Make sure .venv-clients holds the real Python clients shoal's compatible endpoints are tested
# with (openai, cohere, huggingface_hub, and numpy, which the OpenAI and Hugging Face clients use
# to decode embeddings) and print its python. Used by tests/tests/clients.rs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-clients"
if ! "$venv/bin/python" -c 'import openai, cohere, huggingface_hub, numpy' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "openai>=1.40" "cohere>=5.11" "huggingface_hub>=0.28" numpy >&2
fi
echo "$venv/bin/python"
