#!/usr/bin/env bash
# Upload to searchable for a 100-page PDF (extract/examples/extract_bench.rs writes it): the time to
# the 202 (extraction included) and until its job reads completed, three uploads, one debug node;
# then the time to the 202 of an upload of 50 small files (the cost of a worker process per file).
# Figures in docs/benchmarks.md ("Uploads").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait.sh
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cargo build --bin shoal >&2
cargo run --release -p shoal-extract --example extract_bench -- --write-pdf /tmp/manual100.pdf >&2
B=target/debug/shoal
rm -rf /tmp/ub && mkdir -p /tmp/ub
SHOAL_AUTH__ADMIN_KEY=bench-admin-key-0123456789 $B serve --listen 127.0.0.1:7482 --data-dir /tmp/ub/d > /tmp/ub/log 2>&1 &
P=$!
wait_ready http://127.0.0.1:7482/api/ready $P /tmp/ub/log
H="Authorization: Bearer bench-admin-key-0123456789"
job_completed() { # (a job that ends otherwise ends the script)
  local job
  job=$(curl -sf --max-time 5 -H "$H" "localhost:7482/api/v1/jobs/$1" || true)
  case "$job" in
  *'"state":"completed"'*) return 0 ;;
  *'"state":"completed_with_errors"'* | *'"state":"cancelled"'*)
    echo "job $1 did not complete: $job" >&2
    exit 1
    ;;
  *) return 1 ;;
  esac
}
curl -sf -H "$H" -X PUT localhost:7482/api/v1/collections/docs >/dev/null
for run in 1 2 3; do
  t0=$(date +%s%N)
  job=$(curl -sf -H "$H" -F "file=@/tmp/manual100.pdf" -F "id=manual-$run" localhost:7482/api/v1/collections/docs/documents | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
  t1=$(date +%s%N)
  wait_until 600 "upload $run's job $job completed" job_completed "$job"
  t2=$(date +%s%N)
  chunks=$(curl -sf -H "$H" localhost:7482/api/v1/collections/docs/documents/manual-$run | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')
  echo "run $run: 202 after $(( (t1-t0)/1000000 )) ms, searchable after $(( (t2-t0)/1000000 )) ms, $chunks chunks"
done
# one upload of 50 small files: each is read by a worker process of its own (two at a time),
# so this is what starting a worker costs per file
rm -rf /tmp/ub/files && mkdir -p /tmp/ub/files
args=()
for i in $(seq 1 50); do
  echo "Note $i: the meeting about topic $i moved to room $((i % 7))." > /tmp/ub/files/note-$i.txt
  args+=(-F "file=@/tmp/ub/files/note-$i.txt")
done
for run in 1 2 3; do
  curl -sf -H "$H" -X PUT localhost:7482/api/v1/collections/notes-$run >/dev/null
  t0=$(date +%s%N)
  curl -sf -H "$H" "${args[@]}" localhost:7482/api/v1/collections/notes-$run/documents >/dev/null
  t1=$(date +%s%N)
  echo "50 small files, run $run: 202 after $(( (t1-t0)/1000000 )) ms ($(( (t1-t0)/50000 )) us per file)"
done
kill $P; wait $P || true
