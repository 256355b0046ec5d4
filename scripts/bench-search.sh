#!/usr/bin/env bash
# Search under load with `shoal bench`: one node (release build) holding ~100k short real texts
# (bench-data/, fetched by scripts/fetch-bench-data.sh: the sentences of the English, Spanish and
# French Wikipedia lead summaries, and the clauses of the English ones),
# searched over HTTP by 1, 4 and 16 clients with held-out sentences as text queries (the query
# cache off, so every search embeds its query), with and without reranking (the seeded test
# cross-encoder: its scores mean nothing, its cost is a real MiniLM-sized cross-encoder's),
# idle and while an ingest stream runs, and with the query embedder's adaptive batching against
# the fixed gathering window it replaced. Writes docs/benchmarks/search-load.md.
# Usage: scripts/bench-search.sh [--docs N] [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait.sh
docs=0 # 0: every sentence but the held-out ones
seconds=10
while [ $# -gt 0 ]; do
  case "$1" in
    --docs) docs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/fetch-model.sh >/dev/null
scripts/fetch-bench-data.sh >/dev/null
cargo build --release --bin shoal
bin="$PWD/target/release/shoal"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# Texts: 2,000 English sentences held out as queries (their clauses too), 5,000 more for the
# ingest stream, the rest the corpus.
python3 - "$work" "$docs" <<'EOF'
import json, sys
sys.path.insert(0, "scripts")
from wiki_corpus import search_split
work, limit = sys.argv[1], int(sys.argv[2])
queries, stream, corpus = search_split(limit)
open(f"{work}/queries.txt", "w").write("\n".join(queries) + "\n")
open(f"{work}/stream.txt", "w").write("\n".join(stream) + "\n")
with open(f"{work}/corpus.jsonl", "w") as f:
    for i, s in enumerate(corpus):
        f.write(json.dumps({"id": f"s{i}", "text": s}) + "\n")
print(len(corpus), file=open(f"{work}/count", "w"))
EOF
count=$(cat "$work/count")
"$bin" make-test-reranker --from models/all-MiniLM-L6-v2 --out "$work/reranker" >/dev/null
port=7461
node="http://127.0.0.1:$port"
start_node() {
  SHOAL_MODEL__QUERY_CACHE_SIZE=0 "$@" "$bin" serve --listen "127.0.0.1:$port" \
    --data-dir "$work/data" --insecure-no-auth --reranker-model "$work/reranker" \
    >"$work/node.log" 2>&1 &
  pid=$!
  wait_ready "$node/api/ready" "$pid" "$work/node.log"
}
stop_node() { kill "$pid"; wait "$pid" 2>/dev/null || true; }

start_node env
curl -sf -X PUT "$node/api/v1/collections/wiki" >/dev/null
echo "ingesting $count sentences"
t0=$(date +%s.%N)
python3 scripts/ingest_jsonl.py "$node" wiki "$work/corpus.jsonl"
t1=$(date +%s.%N)
ingest_rate=$(python3 -c "print(round($count / ($t1 - $t0)))")
echo "indexed $count chunks at $ingest_rate chunks/s"
rss_mb=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status")

results="$work/results.tsv"
: >"$results"
run() { # label, then shoal bench flags
  local label="$1"; shift
  echo "== $label" >&2
  "$bin" bench --node "$node" --collection wiki --queries "$work/queries.txt" \
    --duration "${seconds}s" --quiet --json "$@" >"$work/run.json"
  python3 - "$label" "$work/run.json" >>"$results" <<'EOF'
import json, sys
label, r = sys.argv[1], json.load(open(sys.argv[2]))
ingest = r.get("ingest")
ing = f"{ingest['accepted_docs_per_s']:.0f} docs/s accepted" if ingest else ""
errors = sum(r["errors"].values())
print(f"{label}\t{r['clients']}\t{r['qps']:.0f}\t{r['p50_ms']:.2f}\t{r['p95_ms']:.2f}\t{r['p99_ms']:.2f}\t{r['max_ms']:.1f}\t{errors}\t{ing}")
EOF
  tail -1 "$results" >&2
}
for c in 1 4 16; do run "text search, adaptive batching" --clients $c; done
for c in 1 16; do run "text search + rerank (50 candidates)" --clients $c --rerank; done
for c in 1 16; do
  run "text search while ingesting 100 docs/s" --clients $c \
    --ingest-rate 100 --ingest-file "$work/stream.txt" --ingest-batch 20
done
stop_node
start_node env SHOAL_MODEL__ADAPTIVE_BATCHING=false
for c in 1 16; do run "text search, fixed 2 ms window (before)" --clients $c; done
stop_node

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
out=docs/benchmarks/search-load.md
{
  echo "# Search under load: \`shoal bench\` against one node"
  echo
  echo "Made by \`scripts/bench-search.sh --seconds $seconds\` on $(date -u +%Y-%m-%d), $cpu, $(nproc) cores,"
  echo "release build. One node holds $count chunks (sentences of the Wikipedia lead summaries,"
  echo "one chunk each; ingested at $ingest_rate chunks/s; RSS afterwards $rss_mb MiB, the model, the"
  echo "test cross-encoder and their buffers included). Queries: 2,000 held-out sentences as text,"
  echo "cycled, the query cache off (every search embeds its query), top_k 10, ef 64 (default)."
  echo "Each row is one \`shoal bench --clients N --duration ${seconds}s\` after a 2 s warm-up; the"
  echo "load generator runs on the same 2 cores as the node."
  echo
  echo "| run | clients | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | ingest |"
  echo "|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}' "$results"
} >"$out"
cat "$out"
