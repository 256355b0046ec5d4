#!/usr/bin/env bash
# Vector search over HTTP, shoal against a Qdrant server, side by side in one run on the same
# vectors: the 111,553 texts of scripts/bench-search.sh's corpus (bench-data/, sentences of the
# Wikipedia lead summaries), their all-MiniLM-L6-v2 vectors made by shoal
# (scripts/make-minilm-vectors.sh), M 16 and ef_construction 100 in both, the 2,000 held-out
# sentences' vectors as queries, cycled by `wrk` (Debian's package, installed if missing) at 1 and
# 16 connections. Both engines answer with each hit's text and document id (Qdrant as payload).
# Prints and writes docs/benchmarks/qdrant.md: recall@10 against an exact search (numpy, in
# .venv-qdrant), req/s, p50/p95/p99/max, load time and RSS.
#
# Qdrant is not part of this project: build it from its source beside the project and give the
# path of its binary. shoal's data directory with the corpus is kept in bench-data/qdrant-bench/
# between runs (ingesting the corpus takes ~9 minutes on 2 cores); Qdrant is loaded afresh.
# `--prepare` only makes what is kept (the vectors, shoal's data directory) and stops.
# Usage: scripts/bench-qdrant.sh --qdrant PATH [--seconds S] [--ef "32 64 128"] [--shoal PATH]
#        scripts/bench-qdrant.sh --prepare
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait.sh
qdrant=""
seconds=10
efs="32 64 128"
bin=""
prepare=false
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) prepare=true; shift ;;
    --qdrant) qdrant="$(realpath "$2")"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --ef) efs="$2"; shift 2 ;;
    --shoal) bin="$(realpath "$2")"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
$prepare || [ -x "$qdrant" ] || { echo "give the Qdrant server's binary: --qdrant PATH" >&2; exit 2; }
if ! command -v wrk >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
  apt-get install -y -qq wrk >/dev/null
fi
venv=.venv-qdrant
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check numpy
fi
scripts/fetch-model.sh >/dev/null
scripts/fetch-bench-data.sh >/dev/null
scripts/make-minilm-vectors.sh >/dev/null
if [ -z "$bin" ]; then
  cargo build --release --bin shoal
  bin="$PWD/target/release/shoal"
fi
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cache=bench-data/qdrant-bench
mkdir -p "$cache"

# The corpus, the queries' bodies for both engines and the exact top 10 of each query.
"$venv/bin/python" - "$work" "$efs" <<'EOF'
import json, sys
import numpy as np
sys.path.insert(0, "scripts")
from wiki_corpus import embedded, search_split
work, efs = sys.argv[1], [int(e) for e in sys.argv[2].split()]
row = {t: i for i, t in enumerate(embedded())}
vectors = np.fromfile("bench-data/minilm_wiki.f32", dtype=np.float32).reshape(-1, 384)
queries, _, corpus = search_split()
base = vectors[[row[t] for t in corpus]]
base /= np.linalg.norm(base, axis=1, keepdims=True)
q = vectors[[row[t] for t in queries]]
q /= np.linalg.norm(q, axis=1, keepdims=True)
truth = []
for i in range(0, len(q), 200):
    sims = q[i:i + 200] @ base.T
    top = np.argpartition(-sims, 10, axis=1)[:, :10]
    for r, t in zip(sims, top):
        truth.append([int(x) for x in t[np.argsort(-r[t])]])
json.dump(truth, open(f"{work}/truth.json", "w"))
np.save(f"{work}/base.npy", base)
with open(f"{work}/corpus.jsonl", "w") as f:
    for i, s in enumerate(corpus):
        f.write(json.dumps({"id": f"s{i}", "text": s}) + "\n")
print(len(corpus), file=open(f"{work}/count", "w"))
for ef in efs:
    with open(f"{work}/shoal_ef{ef}.txt", "w") as s, open(f"{work}/qdrant_ef{ef}.txt", "w") as d:
        for v in q:
            vec = "[" + ",".join(f"{x:.7g}" for x in v) + "]"
            s.write(f'{{"vector":{vec},"top_k":10,"ef":{ef}}}\n')
            d.write(f'{{"vector":{vec},"limit":10,"with_payload":true,"params":{{"hnsw_ef":{ef}}}}}\n')
EOF
count=$(cat "$work/count")

rss_mb() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

# shoal: one node (default configuration, no auth) with the corpus, kept in the cache.
sport=7463
shoal="http://127.0.0.1:$sport"
start_shoal() {
  "$bin" serve --listen "127.0.0.1:$sport" --data-dir "$1" --insecure-no-auth \
    >"$work/shoal.log" 2>&1 &
  spid=$!
  wait_ready "$shoal/api/ready" "$spid" "$work/shoal.log"
}
start_shoal "$work/empty"
shoal_empty_mb=$(rss_mb "$spid")
kill "$spid"; wait "$spid" 2>/dev/null || true
if [ "$(cat "$cache/complete" 2>/dev/null)" != "$count" ]; then
  rm -rf "$cache/shoal" "$cache/complete"
  start_shoal "$cache/shoal"
  curl -sf -X PUT "$shoal/api/v1/collections/wiki" -H 'content-type: application/json' \
    -d '{"hnsw":{"m":16,"ef_construction":100}}' >/dev/null
  echo "ingesting $count texts into shoal"
  t0=$(date +%s.%N)
  python3 scripts/ingest_jsonl.py "$shoal" wiki "$work/corpus.jsonl"
  t1=$(date +%s.%N)
  python3 -c "print(round($t1 - $t0))" >"$cache/ingest_s"
  kill "$spid"; wait "$spid" 2>/dev/null || true
  echo "$count" >"$cache/complete"
fi
$prepare && { echo "prepared: $cache"; exit 0; }
shoal_ingest_s=$(cat "$cache/ingest_s")
start_shoal "$cache/shoal"
wait_loaded "$shoal" wiki "$count" "$spid" "$work/shoal.log"

# Qdrant: a fresh storage, the same vectors with each text and document id as payload.
qport=7464
qd="http://127.0.0.1:$qport"
mkdir -p "$work/qdrant"
(cd "$work/qdrant" && QDRANT__SERVICE__HTTP_PORT=$qport QDRANT__SERVICE__GRPC_PORT=7465 \
  QDRANT__STORAGE__STORAGE_PATH="$work/qdrant/storage" \
  QDRANT__STORAGE__SNAPSHOTS_PATH="$work/qdrant/snapshots" \
  QDRANT__TELEMETRY_DISABLED=true QDRANT__LOG_LEVEL=WARN exec "$qdrant" >"$work/qdrant.log" 2>&1) &
qpid=$!
wait_ready "$qd/readyz" "$qpid" "$work/qdrant.log"
qdrant_empty_mb=$(rss_mb "$qpid")
qversion=$(curl -sf "$qd/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
echo "loading $count vectors into Qdrant $qversion"
t0=$(date +%s.%N)
"$venv/bin/python" - "$work" "$qd" <<'EOF'
import json, sys, time, urllib.request
import numpy as np
work, qd = sys.argv[1], sys.argv[2]
def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(qd + path, data, {"content-type": "application/json"},
                                 method=method)
    return json.load(urllib.request.urlopen(req, timeout=600))
call("PUT", "/collections/wiki", {"vectors": {"size": 384, "distance": "Cosine"},
                                  "hnsw_config": {"m": 16, "ef_construct": 100}})
base = np.load(f"{work}/base.npy")
texts = [json.loads(l)["text"] for l in open(f"{work}/corpus.jsonl")]
for i in range(0, len(texts), 1000):
    points = [{"id": j, "vector": [float(x) for x in base[j]],
               "payload": {"document_id": f"s{j}", "text": texts[j]}}
              for j in range(i, min(i + 1000, len(texts)))]
    call("PUT", "/collections/wiki/points?wait=true", {"points": points})
# Until the optimizer has built the graph of every segment: green, and the count of indexed
# vectors complete (or no longer changing: a segment under the indexing threshold stays plain).
last, since = -1, time.time()
deadline = time.time() + 1800
while True:
    if time.time() > deadline:
        sys.exit(f"Qdrant had not indexed the vectors after 30 minutes ({last} of {len(texts)})")
    info = call("GET", "/collections/wiki")["result"]
    indexed = info.get("indexed_vectors_count") or 0
    if indexed != last:
        last, since = indexed, time.time()
    if info["status"] == "green" and (indexed >= len(texts) or time.time() - since > 30):
        print(f"{indexed} of {len(texts)} vectors indexed", file=sys.stderr)
        break
    time.sleep(0.5)
EOF
t1=$(date +%s.%N)
qdrant_load_s=$(python3 -c "print(round($t1 - $t0))")

# recall@10 of each engine at each ef, one query at a time
recall() { # engine, ef
  python3 - "$work" "$1" "$2" "$shoal" "$qd" <<'EOF'
import json, sys, urllib.request
work, engine, ef, shoal, qd = sys.argv[1:6]
truth = json.load(open(f"{work}/truth.json"))
url = (f"{shoal}/api/v1/collections/wiki/search" if engine == "shoal"
       else f"{qd}/collections/wiki/points/search")
found = 0
for line, want in zip(open(f"{work}/{engine}_ef{ef}.txt"), truth):
    req = urllib.request.Request(url, line.encode(), {"content-type": "application/json"})
    r = json.load(urllib.request.urlopen(req))
    if engine == "shoal":
        hits = r["hits"]
        assert all(h["text"] for h in hits)
        ids = [int(h["document_id"][1:]) for h in hits]
    else:
        hits = r["result"]
        assert all(h["payload"]["text"] for h in hits)
        ids = [h["id"] for h in hits]
    found += len(set(ids) & set(want))
print(f"{found / (10 * len(truth)):.3f}")
EOF
}

load() { # engine, ef, clients, seconds
  local url path threads=$(( $3 < 2 ? 1 : 2 ))
  if [ "$1" = shoal ]; then url=$shoal; path=/api/v1/collections/wiki/search
  else url=$qd; path=/collections/wiki/points/search; fi
  BENCH_BODIES="$work/$1_ef$2.txt" BENCH_PATH=$path \
    wrk -t$threads -c"$3" -d"$4"s -s scripts/wrk-bodies.lua "$url" | awk -F'\t' '/^RESULT/ {print $2 "\t" $3 "\t" $4 "\t" $5 "\t" $6 "\t" $7}'
}

results="$work/results.tsv"
: >"$results"
for ef in $efs; do
  rs=$(recall shoal "$ef"); rq=$(recall qdrant "$ef")
  for c in 1 16; do
    for engine in qdrant shoal; do # each measured right after the other
      load "$engine" "$ef" "$c" 2 >/dev/null
      r=$(load "$engine" "$ef" "$c" "$seconds")
      rec=$rs; [ "$engine" = qdrant ] && rec=$rq
      printf '%s\t%s\t%s\t%s\t%s\n' "$engine" "$ef" "$rec" "$c" "$r" >>"$results"
      tail -1 "$results" >&2
    done
  done
done
# Memory at rest: both idle for 8 s first (shoal hands the allocator's free space back to the
# system once searches have been quiet for 5 s).
sleep 8
shoal_mb=$(rss_mb "$spid")
qdrant_mb=$(rss_mb "$qpid")

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
out=docs/benchmarks/qdrant.md
{
  echo "# Vector search over HTTP: shoal and Qdrant side by side"
  echo
  echo "Made by \`scripts/bench-qdrant.sh --qdrant PATH --seconds $seconds\` on $(date -u +%Y-%m-%d), $cpu,"
  echo "$(nproc) cores; shoal's release build and Qdrant $qversion built from source (release). Both hold the"
  echo "same $count all-MiniLM-L6-v2 vectors of real short texts (sentences of the Wikipedia lead"
  echo "summaries), HNSW M 16, ef_construction 100, cosine, and answer each hit with its text and"
  echo "document id (Qdrant: \`with_payload\`). Queries: the vectors of 2,000 held-out sentences,"
  echo "cycled by \`wrk\` (1 thread for 1 connection, 2 threads for 16) for ${seconds} s after a 2 s"
  echo "warm-up, the engines taking turns; wrk runs on the same 2 cores. recall@10 is against an exact"
  echo "search (numpy) of the same vectors."
  echo
  echo "| engine | ef | recall@10 | connections | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}' "$results"
  echo
  echo "| | shoal | Qdrant |"
  echo "|---|---|---|"
  echo "| load | ingest of the texts, embedding included: ${shoal_ingest_s} s | upload of the vectors and payloads until every segment is indexed: ${qdrant_load_s} s |"
  echo "| RSS, started empty | ${shoal_empty_mb} MiB (the embedding model and its buffers) | ${qdrant_empty_mb} MiB |"
  echo "| RSS with the data, at rest 8 s after the runs | ${shoal_mb} MiB | ${qdrant_mb} MiB |"
  echo "| RSS per vector beyond the empty server | $(( (shoal_mb - shoal_empty_mb) * 1048576 / count )) B | $(( (qdrant_mb - qdrant_empty_mb) * 1048576 / count )) B |"
} >"$out"
cat "$out"
