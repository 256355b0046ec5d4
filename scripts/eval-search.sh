#!/usr/bin/env bash
# Search quality per mode (vector, keyword, hybrid by reciprocal rank and by weight) with
# `shoal eval` on two labelled sets in BEIR layout made from real text: the English Wikipedia
# lead summaries (bench-data/, fetched by scripts/fetch-bench-data.sh). Every fifth article gives
# a query: its summary's first sentence with the words of its title removed; the one relevant
# document is that article. In "whole" the documents are the summaries as they are (the query's
# other words are in its document); in "rest" each document lacks its first sentence (the query
# must be found by what the rest of the summary says). Writes docs/benchmarks/search-quality.md.
# Usage: scripts/eval-search.sh [--docs N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait.sh
docs=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --docs) docs="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
scripts/fetch-model.sh >/dev/null
scripts/fetch-bench-data.sh >/dev/null
cargo build --release --bin shoal
bin="$PWD/target/release/shoal"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$work" "$docs" <<'EOF'
import json, os, re, sys
work, limit = sys.argv[1], int(sys.argv[2])
items = []
for v in json.load(open("bench-data/summaries_en-us.json")).values():
    title, text = (v.get("title") or "").strip(), (v.get("extract") or "").strip()
    parts = re.split(r"(?<=[.!?])\s+", text)
    if title and len(parts) >= 3 and len(parts[0]) >= 40:
        items.append((title, parts))
items = items[:limit]
words = lambda s: set(re.findall(r"\w+", s.lower()))
for name, keep_first in (("whole", True), ("rest", False)):
    d = f"{work}/{name}"
    os.makedirs(d)
    with open(f"{d}/corpus.jsonl", "w") as c, open(f"{d}/queries.jsonl", "w") as q, \
         open(f"{d}/qrels.tsv", "w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for i, (title, parts) in enumerate(items):
            body = " ".join(parts if keep_first else parts[1:])
            c.write(json.dumps({"_id": f"d{i}", "text": body}) + "\n")
            if i % 5 == 0:
                drop = words(title)
                question = " ".join(w for w in re.findall(r"\S+", parts[0])
                                    if not (words(w) and words(w) <= drop))
                q.write(json.dumps({"_id": f"q{i}", "text": question}) + "\n")
                r.write(f"q{i}\td{i}\t1\n")
print(len(items), file=open(f"{work}/count", "w"))
EOF
count=$(cat "$work/count")
port=7463
node="http://127.0.0.1:$port"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --insecure-no-auth \
  >"$work/node.log" 2>&1 &
wait_ready "$node/api/ready" $! "$work/node.log"
modes=keyword,hybrid,weighted:0.3,weighted:0.5,weighted:0.7
for set in whole rest; do
  echo "== $set" >&2
  # the first pass ingests (its latencies include the index settling after the ingest); the
  # figures come from a second pass
  "$bin" eval --node "$node" --dataset "$work/$set" --collection "$set" --ingest \
    --candidates 50 --modes "$modes" >/dev/null
  "$bin" eval --node "$node" --dataset "$work/$set" --collection "$set" \
    --candidates 50 --modes "$modes" --json >"$work/$set.json"
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
python3 - "$work" "$count" "$cpu" "$(nproc)" <<'EOF' >docs/benchmarks/search-quality.md
import json, sys, time
work, count, cpu, cores = sys.argv[1:5]
print("# Search quality by mode: vector, keyword (BM25), hybrid\n")
print(f"Made by `scripts/eval-search.sh` on {time.strftime('%Y-%m-%d')} ({cpu}, {cores} cores, release "
      f"build): {count} English Wikipedia lead summaries, every fifth article's first sentence with "
      f"the words of its title removed as a query (its article the one relevant document), "
      f"`shoal eval --modes ...` against one node, 50 candidates per query, hits folded into "
      f"documents. *whole*: the documents are the summaries as they are; *rest*: each document "
      f"lacks its first sentence, so the query's words are not simply in its document.\n")
for name in ("whole", "rest"):
    r = json.load(open(f"{work}/{name}.json"))
    print(f"## {name}: {r['queries']} queries\n")
    print("| mode | nDCG@10 | recall@10 | p50 ms |")
    print("|---|---|---|---|")
    b = r["baseline"]
    print(f"| vector | {b['ndcg']:.4f} | {b['recall']:.4f} | {b['p50_ms']:.1f} |")
    for m in r["modes"]:
        print(f"| {m['mode']} | {m['ndcg']:.4f} | {m['recall']:.4f} | {m['p50_ms']:.1f} |")
    print()
EOF
cat docs/benchmarks/search-quality.md
