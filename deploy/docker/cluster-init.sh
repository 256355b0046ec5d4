#!/usr/bin/env bash
# The `shoal-init` one-shot of docker-compose.yml: makes the stack's cluster at its first start,
# and does nothing afterwards. shoal2 and shoal3 are started with --join http://shoal1:7400 --voter
# and keep retrying until shoal1 belongs to a cluster; this makes it one (`shoal cluster init`).
#
# It never makes a second cluster: it waits until every node answers, and
#   - shoal1 already in a cluster (any start but the first): nothing to do;
#   - shoal1 in no cluster but a peer in one: shoal1's data volume is new (lost or removed), so it
#     joins the peers' cluster again as a voter, as docs/operations.md says a lost first node must;
#   - no node in a cluster (the first start): `shoal cluster init` on shoal1.
# Environment: SHOAL_CLUSTER__SECRET (the cluster's), SHOAL_INIT_FIRST (http://shoal1:7400),
# SHOAL_INIT_PEERS ("http://shoal2:7400 http://shoal3:7400"), SHOAL_INIT_TIMEOUT_S (300).
set -euo pipefail

first="${SHOAL_INIT_FIRST:-http://shoal1:7400}"
peers="${SHOAL_INIT_PEERS:-http://shoal2:7400 http://shoal3:7400}"
deadline=$((SECONDS + ${SHOAL_INIT_TIMEOUT_S:-300}))

log() { echo "shoal-init: $*" >&2; }
# The node's view of its cluster (GET /api/v1/cluster), once it answers.
cluster_of() {
    local out
    until out="$(curl -fsS --max-time 3 -H "x-shoal-cluster-secret: ${SHOAL_CLUSTER__SECRET:-}" "$1/api/v1/cluster" 2>/dev/null)"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$1 did not answer in ${SHOAL_INIT_TIMEOUT_S:-300} s; not deciding anything without it"
            exit 1
        fi
        sleep 1
    done
    printf '%s' "$out"
}
member() { ! grep -Eq '"cluster_id": *null' <<<"$1"; }

view="$(cluster_of "$first")"
if member "$view"; then
    log "$first already belongs to a cluster: nothing to do"
    exit 0
fi
for p in $peers; do
    if member "$(cluster_of "$p")"; then
        log "$first belongs to no cluster but $p does: $first's data is new; it joins back as a voter"
        exec shoal cluster join "$p" --voter --node "$first"
    fi
done
log "no node belongs to a cluster yet: making one on $first"
exec shoal cluster init --node "$first"
