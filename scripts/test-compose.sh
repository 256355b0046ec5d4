#!/usr/bin/env bash
# End-to-end test of the Docker deployment (docker-compose.yml, deploy/nginx/nginx.conf, the
# images of scripts/docker-images.sh): three shoal voters behind nginx, and the leader killed
# while searches go on through nginx.
#
#   1. builds the images (scripts/docker-images.sh; the shoal image from $SHOAL_BIN, default
#      target/debug/shoal, built with `cargo build --bin shoal` if missing);
#   2. starts the stack under a project name of its own, nginx on a free port of 127.0.0.1, and
#      waits until three voters have a leader and every node is healthy (Docker's health check);
#   3. creates a collection and ingests documents through nginx, and waits until every node finds
#      them;
#   4. searches through nginx without pause while it `docker kill`s the leader's container, waits
#      for a new leader, writes through nginx again, starts the killed node again and waits until
#      it has caught up (it finds the new document, nginx sends it searches again);
#   5. checks that no search failed (MAX_FAILED_SEARCHES, default 0: nginx passes a search that
#      fails on the dead node to another one), that every node has every document, and tears the
#      stack down (`down -v`, also on failure).
#
# With --monitoring (or TEST_MONITORING=1) it also builds the Prometheus and Alertmanager images,
# starts them (the `monitoring` profile) and checks that Prometheus scrapes the three nodes, loaded
# the rules and found Alertmanager; Grafana too when its image is present (Debian has no package,
# so there is no local one without a registry).
#
# No Docker engine (or no docker-compose): prints "skipped" and exits 0. Timings are printed.
# Environment: SHOAL_BIN, MAX_FAILED_SEARCHES (0), KILL_TARGET (leader | follower; leader),
#   DOWN_S (12: the least time the node stays down while searches go on),
#   KEEP_STACK=1 (leave the stack up for a look; `docker-compose -p NAME down -v` after).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { awk -v d="$1" 'BEGIN { printf "%.1f s", d / 1000 }'; }
T0=$(ms)
log() { printf '[%7.1f s] %s\n' "$(awk -v a="$T0" -v b="$(ms)" 'BEGIN { print (b - a) / 1000 }')" "$*" >&2; }

# --- what we need ------------------------------------------------------------------------------
if ! command -v docker >/dev/null 2>&1; then
    echo "test-compose: skipped: no Docker engine (docker is not installed)"
    exit 0
fi
if ! docker info >/dev/null 2>&1; then
    echo "test-compose: skipped: no Docker engine (docker info failed: no engine answers)"
    exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    echo "test-compose: skipped: no docker-compose (neither docker-compose nor docker compose)"
    exit 0
fi
if ! command -v jq >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "jq is missing: installing it"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends jq >/dev/null \
            || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends jq >/dev/null; }
    fi
    command -v jq >/dev/null 2>&1 || { echo "test-compose: jq is needed" >&2; exit 1; }
fi

MONITORING="${TEST_MONITORING:-0}"
for arg in "$@"; do
    case "$arg" in
        --monitoring) MONITORING=1 ;;
        *) echo "test-compose: unknown argument $arg" >&2; exit 2 ;;
    esac
done
MAX_FAILED_SEARCHES="${MAX_FAILED_SEARCHES:-0}"
KILL_TARGET="${KILL_TARGET:-leader}"
DOWN_S="${DOWN_S:-12}"
BIN="${SHOAL_BIN:-target/debug/shoal}"
if [ ! -x "$BIN" ]; then
    if [ -z "${SHOAL_BIN:-}" ] && command -v cargo >/dev/null 2>&1; then
        log "$BIN is missing: cargo build --bin shoal"
        cargo build --bin shoal
    fi
    [ -x "$BIN" ] || { echo "test-compose: no shoal binary at $BIN" >&2; exit 1; }
fi
scripts/fetch-model.sh >/dev/null

# --- images -------------------------------------------------------------------------------------
t=$(ms)
log "images: scripts/docker-images.sh --bin $BIN"
image_args=(--bin "$BIN")
[ "$MONITORING" = 1 ] && image_args+=(--monitoring)
image_env="$(scripts/docker-images.sh "${image_args[@]}")" || { echo "test-compose: FAILED: scripts/docker-images.sh" >&2; exit 1; }
eval "$image_env"
export SHOAL_IMAGE NGINX_IMAGE
T_IMAGES=$(( $(ms) - t ))

# --- the stack ----------------------------------------------------------------------------------
PROJECT="shoaltest$(date +%s)$$"
# A port of 127.0.0.1 nothing listens on (the kernel's pick; a random one without python3).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
        || echo $(( 20000 + RANDOM % 20000 ))
}
PORT="$(free_port)"
export SHOAL_HTTP_BIND=127.0.0.1 SHOAL_HTTP_PORT="$PORT"
SERVICES=(shoal1 shoal2 shoal3 shoal-init nginx)
if [ "$MONITORING" = 1 ]; then
    export MONITORING_BIND=127.0.0.1 PROMETHEUS_PORT="$(free_port)" ALERTMANAGER_PORT="$(free_port)" GRAFANA_PORT="$(free_port)"
    SERVICES+=(prometheus alertmanager)
    if docker image inspect "${GRAFANA_IMAGE:-grafana/grafana:11.1.0}" >/dev/null 2>&1; then
        SERVICES+=(grafana)
    else
        log "grafana: skipped (no image ${GRAFANA_IMAGE:-grafana/grafana:11.1.0} here; Debian does not package Grafana)"
    fi
fi
SHOAL_CLUSTER__SECRET="test-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SHOAL_CLUSTER__SECRET
SHOAL_AUTH__ADMIN_KEY="admin-$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export SHOAL_AUTH__ADMIN_KEY
API="http://127.0.0.1:$PORT"
COLL=compose-test
TMP="$(mktemp -d)"
LOOP_PID=""

dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }

cleanup() {
    local rc=$?
    set +e
    touch "$TMP/stop" 2>/dev/null
    if [ -n "$LOOP_PID" ]; then
        kill "$LOOP_PID" 2>/dev/null
        wait "$LOOP_PID" 2>/dev/null
    fi
    if [ "$rc" -ne 0 ]; then
        echo "---- test-compose FAILED; the stack's state and logs:" >&2
        dc ps >&2
        dc logs --no-color --tail=40 >&2 2>&1
    fi
    if [ "${KEEP_STACK:-0}" = 1 ]; then
        echo "test-compose: KEEP_STACK=1: stack left up: ${COMPOSE[*]} -p $PROJECT down -v" >&2
    else
        local t=$(ms)
        dc --profile monitoring down -v --remove-orphans -t 10 >/dev/null 2>&1
        log "torn down (down -v) in $(secs $(( $(ms) - t )))"
    fi
    rm -rf "$TMP"
    log "total $(secs $(( $(ms) - T0 )))"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "test-compose: FAILED: $*" >&2; exit 1; }

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_until() {
    local secs="$1" limit=$(( $(ms) + $1 * 1000 )) what="$2"
    shift 2
    until "$@" >"$TMP/last" 2>&1; do
        [ "$(ms)" -lt "$limit" ] || { tail -c 2000 "$TMP/last" >&2; fail "$what: not within $secs s"; }
        sleep 0.2
    done
}

api() { curl -sS --max-time 20 -H 'content-type: application/json' -H "Authorization: Bearer $SHOAL_AUTH__ADMIN_KEY" "$@"; }
cid() { dc ps -q "$1"; }
# A node's own API, from inside its container (the nodes publish no port).
node_api() {
    local c="$1"
    shift
    docker exec "$c" curl -sS --max-time 10 -H 'content-type: application/json' -H "Authorization: Bearer $SHOAL_AUTH__ADMIN_KEY" "$@"
}

cluster_formed() {
    api "$API/api/v1/cluster" | jq -e '.leader != null
        and ([.members[] | select(.role == "voter" and .status != null)] | length) == 3'
}
all_healthy() {
    local s
    for s in shoal1 shoal2 shoal3; do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "${CID[$s]}")" = healthy ] || { echo "$s not healthy"; return 1; }
    done
}

t=$(ms)
log "stack: ${COMPOSE[*]} -p $PROJECT up -d (nginx on $API)"
profile=()
[ "$MONITORING" = 1 ] && profile=(--profile monitoring)
dc "${profile[@]}" up -d "${SERVICES[@]}" >"$TMP/up.log" 2>&1 || { cat "$TMP/up.log" >&2; fail "up"; }
declare -A CID
for s in shoal1 shoal2 shoal3 nginx; do
    CID[$s]="$(cid "$s")"
    [ -n "${CID[$s]}" ] || fail "no container for $s"
done
wait_until 120 "three voters with a leader (GET /api/v1/cluster through nginx)" cluster_formed
T_CLUSTER=$(( $(ms) - t ))
log "cluster formed: $(api "$API/api/v1/cluster" | jq -c '{leader, term, members: [.members[] | {id, role}]}')"
wait_until 90 "every node healthy (Docker health check: /api/ready)" all_healthy
T_HEALTHY=$(( $(ms) - t ))
log "all nodes healthy after $(secs $T_HEALTHY)"

# --- monitoring (opt-in) ----------------------------------------------------------------------------
if [ "$MONITORING" = 1 ]; then
    t=$(ms)
    PROM="http://127.0.0.1:$PROMETHEUS_PORT"
    prom_ok() {
        api "$PROM/api/v1/targets" | jq -e '[.data.activeTargets[] | select(.labels.job == "shoal" and .health == "up")] | length == 3' || return 1
        api "$PROM/api/v1/rules" | jq -e '(.data.groups | length) > 0 and ([.data.groups[].rules[] | select(.health == "err")] | length) == 0' || return 1
        api "$PROM/api/v1/alertmanagers" | jq -e '(.data.activeAlertmanagers | length) >= 1'
    }
    wait_until 60 "Prometheus scraping the three nodes, rules loaded, Alertmanager found" prom_ok
    curl -fsS --max-time 5 "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready" >/dev/null || fail "Alertmanager not ready"
    if [[ " ${SERVICES[*]} " == *" grafana "* ]]; then
        grafana_ok() { curl -fsS --max-time 5 -u "${GRAFANA_ADMIN_USER:-admin}:${GRAFANA_ADMIN_PASSWORD:-admin}" "http://127.0.0.1:$GRAFANA_PORT/api/search?query=" | jq -e 'length > 0'; }
        wait_until 60 "Grafana up with the provisioned dashboard" grafana_ok
    fi
    log "monitoring: Prometheus scrapes shoal1..3 ($(api "$PROM/api/v1/rules" | jq '[.data.groups[].rules[]] | length') rules), Alertmanager ready, in $(secs $(( $(ms) - t )))"
fi

# --- documents ----------------------------------------------------------------------------------
t=$(ms)
code="$(api -o "$TMP/put" -w '%{http_code}' -X PUT "$API/api/v1/collections/$COLL")"
[ "$code" = 201 ] || { cat "$TMP/put" >&2; fail "create collection: HTTP $code"; }
DOCS="$(jq -n '[
  {id: "eiffel", text: "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889."},
  {id: "photosynthesis", text: "Photosynthesis lets green plants turn sunlight into chemical energy stored in sugar."},
  {id: "everest", text: "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level."},
  {id: "espresso", text: "Espresso is coffee brewed by forcing hot water under pressure through finely ground beans."},
  {id: "tcp", text: "TCP provides reliable, ordered delivery of a byte stream between applications over a network."},
  {id: "violin", text: "The violin is a bowed string instrument with four strings tuned in perfect fifths."},
  {id: "penicillin", text: "Alexander Fleming discovered penicillin, the first widely used antibiotic, in 1928."},
  {id: "marathon", text: "A marathon is a long-distance foot race of 42.195 kilometres."}
] + [range(0; 52) | {id: "filler-\(.)", text: "Routine maintenance log entry \(.): the inventory of spare parts was counted and filed."}]
| {documents: .}')"
NDOCS="$(jq '.documents | length' <<<"$DOCS")"
api -o "$TMP/job" -X POST -d "$DOCS" "$API/api/v1/collections/$COLL/documents" >/dev/null
JOB="$(jq -r '.job_id // empty' "$TMP/job")"
[ -n "$JOB" ] || { cat "$TMP/job" >&2; fail "add documents"; }
job_done() { api "$API/api/v1/jobs/$1" | tee "$TMP/jobstate" | jq -e '.state == "completed"'; }
wait_until 120 "ingest job $JOB completed" job_done "$JOB"
JOB_INDEX="$(jq -r '.index' "$TMP/jobstate")"
# Every node finds them once it has applied the job's last change.
QUERY="$(jq -n --argjson i "$JOB_INDEX" '{query: "famous landmark in the French capital", top_k: 3, min_index: $i}')"
for s in shoal1 shoal2 shoal3; do
    node_api "${CID[$s]}" -X POST -d "$QUERY" "http://127.0.0.1:7400/api/v1/collections/$COLL/search" >"$TMP/s"
    jq -e '.hits[0].document_id == "eiffel"' "$TMP/s" >/dev/null || { cat "$TMP/s" >&2; fail "$s does not find the Eiffel Tower first"; }
done
T_INGEST=$(( $(ms) - t ))
log "$NDOCS documents ingested and searchable on every node in $(secs $T_INGEST) (log index $JOB_INDEX)"

# --- searches through nginx while a node dies -----------------------------------------------------
# Each line: ok|fail, the time (ms), HTTP status, seconds taken (and for a failure the body).
search_loop() {
    local queries=(
        'famous landmark in the French capital|eiffel'
        'the tallest mountain in the world|everest'
        'how plants make food from light|photosynthesis'
        'a drug that kills bacteria|penicillin'
    ) i=0 q want out code
    while [ ! -e "$TMP/stop" ]; do
        q="${queries[$((i % 4))]%|*}"
        want="${queries[$((i % 4))]#*|}"
        i=$((i + 1))
        out="$(curl -sS -o "$TMP/body" -w '%{http_code} %{time_total}' --max-time 30 \
            -H 'content-type: application/json' -H "x-request-id: compose-search-$i" \
            -H "Authorization: Bearer $SHOAL_AUTH__ADMIN_KEY" \
            -d "{\"query\": \"$q\", \"top_k\": 3}" "$API/api/v1/collections/$COLL/search" 2>&1)" || true
        code="${out%% *}"
        if [ "$code" = 200 ] && grep -q "\"document_id\":\"$want\"" "$TMP/body"; then
            echo "ok $(ms) $out"
        else
            echo "fail $(ms) $out $(head -c 300 "$TMP/body" 2>/dev/null | tr '\n' ' ')"
        fi
    done >"$TMP/searches.log"
}
# count PATTERN FILE: matching lines (0 when none, or no file yet).
count() { local n; n="$(grep -c -- "$1" "$2" 2>/dev/null)" || true; echo "${n:-0}"; }
searches() { count . "$TMP/searches.log"; }
searches_ok_at_least() { [ "$(count '^ok' "$TMP/searches.log")" -ge "$1" ]; }
search_loop &
LOOP_PID=$!
wait_until 20 "searches through nginx answer" searches_ok_at_least 20

cluster="$(api "$API/api/v1/cluster")"
LEADER="$(jq -r '.leader' <<<"$cluster")"
if [ "$KILL_TARGET" = leader ]; then
    VICTIM="$LEADER"
else
    VICTIM="$(jq -r --argjson l "$LEADER" '[.members[] | select(.id != $l) | .id][0]' <<<"$cluster")"
fi
VSVC="shoal$VICTIM"
VCID="${CID[$VSVC]}"
[ -n "$VCID" ] || fail "node $VICTIM is not one of shoal1..3"
VIP="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$VCID")"
BEFORE_KILL=$(searches)
log "killing $VSVC (node $VICTIM, the $KILL_TARGET; leader is $LEADER) with $BEFORE_KILL searches done"
KILL_AT=$(ms)
docker kill "$VCID" >/dev/null

new_leader() {
    api "$API/api/v1/cluster" | jq -e --argjson old "$LEADER" --argjson v "$VICTIM" \
        '.leader != null and .leader != $v and (if $v == $old then .leader != $old else true end)'
}
wait_until 30 "a leader without node $VICTIM" new_leader
T_ELECTION=$(( $(ms) - KILL_AT ))
NEW_LEADER="$(api "$API/api/v1/cluster" | jq -r '.leader')"
log "leader is node $NEW_LEADER, $(secs $T_ELECTION) after the kill"

# A write through nginx, now that a leader answers (503 = no leader yet: nothing was proposed).
t=$(ms)
WRITE='{"documents": [{"id": "rhine", "text": "The Rhine rises in the Swiss Alps and flows into the North Sea at Rotterdam."}]}'
WRITE_TRIES=0
write_ok() {
    local code
    WRITE_TRIES=$((WRITE_TRIES + 1))
    code="$(api -o "$TMP/w" -w '%{http_code}' -X POST -d "$WRITE" "$API/api/v1/collections/$COLL/documents")"
    echo "HTTP $code $(cat "$TMP/w")"
    [ "$code" = 202 ]
}
wait_until 30 "a write through nginx after the failover" write_ok
JOB2="$(jq -r '.job_id' "$TMP/w")"
wait_until 60 "ingest job $JOB2 completed" job_done "$JOB2"
WRITE_INDEX="$(jq -r '.index' "$TMP/jobstate")"
RQUERY="$(jq -n --argjson i "$WRITE_INDEX" '{query: "which river flows from the Alps to the North Sea", top_k: 3, min_index: $i}')"
api -X POST -d "$RQUERY" "$API/api/v1/collections/$COLL/search" >"$TMP/s"
jq -e '.hits[0].document_id == "rhine"' "$TMP/s" >/dev/null || { cat "$TMP/s" >&2; fail "the document written after the failover is not found"; }
T_WRITE=$(( $(ms) - t ))
log "write after the failover accepted ($WRITE_TRIES tries), indexed and found in $(secs $T_WRITE) (log index $WRITE_INDEX)"

# Searches go on against the dead node's slot for a while: nginx tries a node again
# fail_timeout (5 s) after it failed, so DOWN_S (12 s) makes it meet the dead node a few times.
down_long_enough() { [ $(( $(ms) - KILL_AT )) -ge $(( DOWN_S * 1000 )) ]; }
wait_until $(( DOWN_S + 5 )) "node down for $DOWN_S s" down_long_enough

# The node comes back and catches up.
DOWN_FOR=$(( $(ms) - KILL_AT ))
RESTART_AT=$(ms)
RESTART_TS="$(date +%s)"
docker start "$VCID" >/dev/null
caught_up() {
    node_api "$VCID" "http://127.0.0.1:7400/api/ready" | jq -ce '.ready == true' || return 1
    node_api "$VCID" -X POST -d "$RQUERY" "http://127.0.0.1:7400/api/v1/collections/$COLL/search" \
        | jq -e '.hits[0].document_id == "rhine"'
}
wait_until 120 "$VSVC ready again and finding the document written while it was down" caught_up
T_CATCHUP=$(( $(ms) - RESTART_AT ))
log "$VSVC caught up $(secs $T_CATCHUP) after its start"
voter_again() {
    api "$API/api/v1/cluster" | jq -e --argjson v "$VICTIM" \
        '([.members[] | select(.role == "voter" and .status != null)] | length) == 3
         and ([.members[] | select(.id == $v)][0].status.applied_index >= '"$WRITE_INDEX"')'
}
wait_until 60 "node $VICTIM a voter again, seen by the cluster with the write applied" voter_again
NIP="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$VCID")"
[ "$NIP" = "$VIP" ] || log "note: $VSVC came back at $NIP (was $VIP): nginx still has the old address until reloaded"
# nginx takes the node back after fail_timeout: a search answered by it through nginx.
back_in_rotation() {
    # one grep on the captured log: a pipe into an early-exiting reader would fail on SIGPIPE
    local lines
    lines="$(docker logs --since "$RESTART_TS" "${CID[nginx]}" 2>&1)"
    grep -qE "/search HTTP.*upstream=([^ ]*, )?$NIP:7400 status=([0-9]+, )*200 " <<<"$lines"
}
wait_until 30 "nginx sending searches to $VSVC again" back_in_rotation
log "nginx sends searches to $VSVC again, $(secs $(( $(ms) - RESTART_AT ))) after its start"
wait_until 30 "$VSVC healthy again (Docker health check)" all_healthy

touch "$TMP/stop"
wait "$LOOP_PID" 2>/dev/null || true
LOOP_PID=""

# --- verdict -------------------------------------------------------------------------------------
TOTAL=$(searches)
FAILED=$(count '^fail' "$TMP/searches.log")
DURING=$(awk -v a="$KILL_AT" -v b="$(( RESTART_AT + T_CATCHUP ))" '$2 >= a && $2 <= b' "$TMP/searches.log" | grep -c . || true)
FAILED_DURING=$(awk -v a="$KILL_AT" -v b="$(( RESTART_AT + T_CATCHUP ))" '$1 == "fail" && $2 >= a && $2 <= b' "$TMP/searches.log" | grep -c . || true)
read -r P50 P99 MAX < <(awk '$1 == "ok" { print $4 }' "$TMP/searches.log" | sort -n \
    | awk '{ v[NR] = $1 }
           END { if (NR == 0) { print "- - -"; exit }
                 m = int((NR + 1) / 2); q = int(NR * 0.99); if (q < 1) q = 1
                 printf "%.3f %.3f %.3f\n", v[m], v[q], v[NR] }')
RETRIED=$(docker logs --since "$(( KILL_AT / 1000 - 1 ))" "${CID[nginx]}" 2>/dev/null | grep '/search HTTP' | grep -c 'upstream=[^ ]*, ' || true)

# Every node has every document.
for s in shoal1 shoal2 shoal3; do
    n="$(node_api "${CID[$s]}" "http://127.0.0.1:7400/api/v1/collections/$COLL" | jq -r '.documents')"
    [ "$n" = $((NDOCS + 1)) ] || fail "$s has $n documents, not $((NDOCS + 1))"
done

row() { printf '  %-44s %s\n' "$1" "$2" >&2; }
echo >&2
echo "test-compose: results ($PROJECT, killed $VSVC = the $KILL_TARGET)" >&2
row "images (docker-images.sh)" "$(secs $T_IMAGES)"
row "up -> three voters with a leader" "$(secs $T_CLUSTER)"
row "up -> every node healthy" "$(secs $T_HEALTHY)"
row "$NDOCS documents ingested, found on every node" "$(secs $T_INGEST)"
if [ "$KILL_TARGET" = leader ]; then
    row "kill -> new leader (seen through nginx)" "$(secs $T_ELECTION)"
else
    row "kill -> leader seen through nginx" "$(secs $T_ELECTION)"
fi
row "write after the kill (accepted, found)" "$(secs $T_WRITE), $WRITE_TRIES tries"
row "node down for" "$(secs $DOWN_FOR)"
row "start -> caught up" "$(secs $T_CATCHUP)"
row "searches through nginx" "$TOTAL, $FAILED failed"
row "  from the kill until caught up" "$DURING, $FAILED_DURING failed"
row "  passed by nginx to another node" "$RETRIED"
row "search latency p50 / p99 / max (s)" "$P50 / $P99 / $MAX"
if [ "$FAILED" -gt 0 ]; then
    echo "failed searches:" >&2
    grep '^fail' "$TMP/searches.log" | head -20 >&2
fi
[ "$FAILED" -le "$MAX_FAILED_SEARCHES" ] || fail "$FAILED searches failed through nginx (at most $MAX_FAILED_SEARCHES allowed)"
echo "test-compose: passed ($TOTAL searches through nginx while node $VICTIM was killed and came back, $FAILED failed)"
