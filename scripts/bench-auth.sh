#!/usr/bin/env bash
# Auth overhead on search: p50/p95 of 2000 sequential cached-query searches (one client, one
# keep-alive connection) against one release node, with a token, with an API key, and with
# --insecure-no-auth, two rounds. Figures in docs/benchmarks.md ("Auth overhead").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/wait.sh
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cargo build --release --bin shoal >&2
B=target/release/shoal
rm -rf /tmp/ba && mkdir -p /tmp/ba
SHOAL_AUTH__ADMIN_KEY=bench-admin-key-0123456789 $B serve --listen 127.0.0.1:7481 --data-dir /tmp/ba/a > /tmp/ba/a.log 2>&1 &
PA=$!
wait_ready http://127.0.0.1:7481/api/ready $PA /tmp/ba/a.log
H="Authorization: Bearer bench-admin-key-0123456789"
curl -sf -H "$H" -X PUT localhost:7481/api/v1/collections/wiki >/dev/null
curl -sf -H "$H" -X POST localhost:7481/api/v1/collections/wiki/documents -d '{"documents":[{"id":"e","text":"The Eiffel Tower is a wrought-iron lattice tower in Paris."},{"id":"p","text":"Photosynthesis lets plants turn light into chemical energy."}]}' >/dev/null
curl -sf -H "$H" -X POST localhost:7481/api/v1/auth/users -d '{"username":"bench","password":"bench-password-1","role":"reader","collections":["*"]}' >/dev/null
TOKEN=$(curl -sf -X POST localhost:7481/api/v1/auth/token -d '{"username":"bench","password":"bench-password-1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
KEY=$(curl -sf -H "$H" -X POST localhost:7481/api/v1/auth/keys -d '{"name":"bench","role":"reader","collections":["*"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
wait_until 60 "the two documents indexed" has_live_points http://127.0.0.1:7481 wiki 2 -H "$H"
kill $PA; wait $PA || true
run() { # $1 = extra flag
  $B serve --listen 127.0.0.1:7481 --data-dir /tmp/ba/a $1 > /tmp/ba/a.log 2>&1 &
  P=$!
  wait_ready http://127.0.0.1:7481/api/ready $P /tmp/ba/a.log
}
for round in 1 2; do
  SHOAL_AUTH__ADMIN_KEY=bench-admin-key-0123456789 run ""
  echo "round $round token:   $(python3 scripts/bench_auth.py http://127.0.0.1:7481 $TOKEN 2000)"
  echo "round $round api key: $(python3 scripts/bench_auth.py http://127.0.0.1:7481 $KEY 2000)"
  kill $P; wait $P || true
  run "--insecure-no-auth"
  echo "round $round no auth: $(python3 scripts/bench_auth.py http://127.0.0.1:7481 - 2000)"
  kill $P; wait $P || true
done
