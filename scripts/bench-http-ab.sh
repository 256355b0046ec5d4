#!/usr/bin/env bash
# Two shoal binaries side by side on the same data: vector search over HTTP on the corpus that
# scripts/bench-qdrant.sh keeps (make it with `scripts/bench-qdrant.sh --prepare`: 111,553
# MiniLM-embedded sentences, M 16, ef_construction 100), the 2,000 held-out sentences' vectors as
# queries cycled by `wrk` at 1 and 16 connections, each hit with its text and document id. Each
# binary runs on its own copy of the data directory (a newer binary may move the store to its
# format when it opens it: the time to its first ready answer is printed), and the two take turns,
# `--rounds` times. Each turn's memory is read too: the peak until loaded, after the load, and
# at rest 8 s after the searches (the node hands freed memory back once searches are quiet).
# `--a-env`/`--b-env` give a binary settings ("SHOAL_STORAGE__CACHE_MB=16 ..."), so one binary can
# be compared with itself; `--a-patch`/`--b-patch` change the collection once it is loaded (the
# body of a `PATCH /api/v1/collections/wiki`, e.g. '{"quantization":"int8","vectors_on_disk":true}';
# "loaded" is then when the shard has loaded again with it). The memory at rest is also split into
# anonymous memory and the resident pages of files (`RssAnon`, `RssFile`: with the vectors on disk
# these are the mapped vectors' pages, which the page cache may let go). Prints the figures and
# writes them to docs/benchmarks/http-ab.md (or --out FILE).
# Usage: scripts/bench-http-ab.sh --a BIN --b BIN [--a-env VARS] [--b-env VARS]
#        [--a-patch JSON] [--b-patch JSON] [--ef 64] [--seconds 10] [--rounds 2] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait.sh
a="" b="" a_env="" b_env="" a_patch="" b_patch="" ef=64 seconds=10 rounds=2
out=docs/benchmarks/http-ab.md
while [ $# -gt 0 ]; do
  case "$1" in
    --a) a="$(realpath "$2")"; shift 2 ;;
    --b) b="$(realpath "$2")"; shift 2 ;;
    --a-env) a_env="$2"; shift 2 ;;
    --b-env) b_env="$2"; shift 2 ;;
    --a-patch) a_patch="$2"; shift 2 ;;
    --b-patch) b_patch="$2"; shift 2 ;;
    --ef) ef="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$a" ] && [ -x "$b" ] || { echo "give two binaries: --a BIN --b BIN" >&2; exit 2; }
[ -d "$(dirname "$out")" ] || { echo "no folder for --out $out" >&2; exit 2; }
cache=bench-data/qdrant-bench
[ -s "$cache/complete" ] || { echo "no kept corpus: run scripts/bench-qdrant.sh --prepare" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is missing (scripts/bench-qdrant.sh installs it)" >&2; exit 1; }
venv=.venv-qdrant
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
count=$(cat "$cache/complete")

"$venv/bin/python" - "$work" "$ef" <<'EOF'
import sys
import numpy as np
sys.path.insert(0, "scripts")
from wiki_corpus import embedded, search_split
work, ef = sys.argv[1], int(sys.argv[2])
row = {t: i for i, t in enumerate(embedded())}
vectors = np.fromfile("bench-data/minilm_wiki.f32", dtype=np.float32).reshape(-1, 384)
queries, _, _ = search_split()
q = vectors[[row[t] for t in queries]]
q /= np.linalg.norm(q, axis=1, keepdims=True)
with open(f"{work}/bodies.txt", "w") as s:
    for v in q:
        vec = "[" + ",".join(f"{x:.7g}" for x in v) + "]"
        s.write(f'{{"vector":{vec},"top_k":10,"ef":{ef}}}\n')
EOF

port=7466
node="http://127.0.0.1:$port"
load() { # connections, seconds
  local threads=$(( $1 < 2 ? 1 : 2 ))
  BENCH_BODIES="$work/bodies.txt" BENCH_PATH=/api/v1/collections/wiki/search \
    wrk -t$threads -c"$1" -d"$2"s -s scripts/wrk-bodies.lua "$node" \
    | awk -F'\t' '/^RESULT/ {print $2 "\t" $3 "\t" $4 "\t" $5 "\t" $6 "\t" $7}'
}
rss_mb() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }
peak_mb() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status"; }
anon_mb() { awk '/RssAnon/ {print int($2 / 1024)}' "/proc/$1/status"; }
file_mb() { awk '/RssFile/ {print int($2 / 1024)}' "/proc/$1/status"; }
results="$work/results.tsv"
memory="$work/memory.tsv"
: >"$results"
: >"$memory"
for round in $(seq "$rounds"); do
  for side in a b; do
    bin=$a vars=$a_env patch=$a_patch
    [ "$side" = b ] && bin=$b vars=$b_env patch=$b_patch
    rm -rf "$work/data"; cp -r "$cache/shoal" "$work/data"
    t0=$(date +%s.%N)
    read -r -a settings <<<"$vars"
    env -- "${settings[@]}" "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --insecure-no-auth \
      >"$work/$side.log" 2>&1 &
    pid=$!
    wait_ready "$node/api/ready" "$pid" "$work/$side.log" 600
    ready_s=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
    wait_loaded "$node" wiki "$count" "$pid" "$work/$side.log"
    if [ -n "$patch" ]; then
      # (the answer comes once this node's shard has loaded again, or after 5 s; the old shard
      # answers meanwhile, so a longer load cannot be told from the outside)
      t_patch=$SECONDS
      curl -sS --fail-with-body --max-time 600 -X PATCH "$node/api/v1/collections/wiki" \
        -H 'content-type: application/json' -d "$patch" >/dev/null
      if [ $((SECONDS - t_patch)) -ge 5 ]; then
        echo "the PATCH took $((SECONDS - t_patch)) s: its shard may not have loaded yet" >&2
        exit 1
      fi
      wait_loaded "$node" wiki "$count" "$pid" "$work/$side.log"
    fi
    loaded_s=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
    loaded_mb=$(rss_mb "$pid") peak_loading_mb=$(peak_mb "$pid")
    for c in 1 16; do
      load "$c" 2 >/dev/null
      r=$(load "$c" "$seconds")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$side" "$round" "$c" "$r" "$ready_s" "$loaded_s" "$(rss_mb "$pid")" >>"$results"
      tail -1 "$results" >&2
    done
    sleep 8
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$side" "$round" "$peak_loading_mb" "$loaded_mb" \
      "$(rss_mb "$pid")" "$(anon_mb "$pid")" "$(file_mb "$pid")" >>"$memory"
    tail -1 "$memory" >&2
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
  echo "# Vector search over HTTP: two builds of shoal side by side"
  echo
  echo "Made by \`scripts/bench-http-ab.sh --ef $ef --seconds $seconds --rounds $rounds\` on $(date -u +%Y-%m-%d), $cpu,"
  echo "$(nproc) cores: the $count vectors that \`scripts/bench-qdrant.sh\` keeps, each build on its own copy of"
  echo "the data directory, the builds taking turns; wrk on the same cores (1 thread for 1 connection, 2 for 16),"
  echo "${seconds} s after a 2 s warm-up. \"ready\": seconds from start to the first ready answer (a store"
  echo "moved to a new format is moved before it); \"loaded\": until the graph answers every point."
  echo
  echo "a: \`$a\`${a_env:+ with $a_env}${a_patch:+, the collection patched with \`$a_patch\`}; b: \`$b\`${b_env:+ with $b_env}${b_patch:+, the collection patched with \`$b_patch\`}"
  echo
  echo "| build | round | connections | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | ready s | loaded s | RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12}' "$results"
  echo
  echo "Memory of each turn (MiB): the peak until loaded (VmHWM when every point answers), after the load, and at rest 8 s after its searches, that last one split into anonymous memory and files' resident pages."
  echo
  echo "| build | round | peak | after the load | at rest after the searches | of it anonymous | of it files' pages |"
  echo "|---|---|---|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}' "$memory"
} >"$out"
cat "$out"
