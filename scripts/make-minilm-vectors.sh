#!/usr/bin/env bash
# MiniLM vectors of real short texts for the ANN benchmark, made by shoal itself: the sentences
# of the English, Spanish and French Wikipedia lead summaries and the clauses of the English ones
# (bench-data/, fetched by scripts/fetch-bench-data.sh; the corpus scripts/bench-search.sh
# ingests), embedded as documents through a release node's `/v1/embeddings`. Writes
# bench-data/minilm_wiki.f32 (little-endian float32, 384 per text; never committed).
# Usage: scripts/make-minilm-vectors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait.sh
out=bench-data/minilm_wiki.f32
[ -s "$out" ] && { echo "$out"; exit 0; }
scripts/fetch-model.sh >/dev/null
scripts/fetch-bench-data.sh >/dev/null
cargo build --release --bin shoal
bin="$PWD/target/release/shoal"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=7462
node="http://127.0.0.1:$port"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --insecure-no-auth \
  >"$work/node.log" 2>&1 &
wait_ready "$node/api/ready" $! "$work/node.log"
python3 - "$node" "$out.tmp" <<'PY'
import array, json, sys, urllib.request
sys.path.insert(0, "scripts")
from wiki_corpus import embedded
node, out = sys.argv[1], sys.argv[2]
corpus = embedded()
print(f"embedding {len(corpus)} texts", file=sys.stderr)
with open(out, "wb") as f:
    for i in range(0, len(corpus), 256):
        body = json.dumps({"input": corpus[i:i + 256], "input_type": "document"}).encode()
        req = urllib.request.Request(f"{node}/v1/embeddings", body, {"content-type": "application/json"})
        data = json.load(urllib.request.urlopen(req, timeout=600))["data"]
        array.array("f", [x for d in data for x in d["embedding"]]).tofile(f)
        if i % 12800 == 0:
            print(f"  {i}", file=sys.stderr)
PY
mv "$out.tmp" "$out"
echo "$out"
