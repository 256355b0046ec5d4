#!/usr/bin/env bash
# Make sure .venv-ref holds sentence-transformers (with transformers and torch) and print its
# python. Used by the scripts that recompute the committed reference fixtures.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-ref"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "sentence-transformers==5.*" >&2
fi
echo "$venv/bin/python"
