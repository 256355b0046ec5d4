#!/usr/bin/env bash
# The chaos campaign against the docker-compose stack (docs/chaos.md, "Against the compose
# stack"): three shoal containers of docker-compose.yml, faults by Docker itself (docker kill of
# the leader's container, docker pause of another, docker network disconnect of a third, docker
# stop, an actor panic), the same clients and the same checker as the campaign on namespaces.
#
#   1. builds the images (scripts/docker-images.sh; the shoal image from $SHOAL_BIN, default
#      target/debug/shoal, built with `cargo build --bin shoal` if missing) and shoal-chaos;
#   2. runs `shoal-chaos --compose` with the arguments given, or by default a fixed seed with
#      the faults taken in turn:
#        --seed 1 --seconds 45 --in-turn --faults kill_leader,pause_follower,partition_minority,
#          isolate_leader,pause_leader,kill_follower,graceful_restart,actor_panic
#      (the campaign starts the stack under a project of its own and takes it down at the end).
#
# Exit codes are shoal-chaos's: 0 no anomaly, 1 an anomaly, 2 the campaign could not run. No
# Docker engine (or no compose): prints "skipped" and exits 0.
# Examples: scripts/chaos-compose.sh --seed random --seconds 600
#           SHOAL_BIN=target/release/shoal scripts/chaos-compose.sh --seed 7 --seconds 120
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "chaos-compose: skipped: no Docker engine answers"
    exit 0
fi
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
    echo "chaos-compose: skipped: no docker-compose (neither docker-compose nor docker compose)"
    exit 0
fi

BIN="${SHOAL_BIN:-target/debug/shoal}"
if [ ! -x "$BIN" ]; then
    if [ -z "${SHOAL_BIN:-}" ]; then
        echo "chaos-compose: $BIN is missing: cargo build --bin shoal" >&2
        cargo build --bin shoal
    fi
    [ -x "$BIN" ] || { echo "chaos-compose: no shoal binary at $BIN" >&2; exit 2; }
fi
scripts/fetch-model.sh >/dev/null
image_env="$(scripts/docker-images.sh --bin "$BIN")" || { echo "chaos-compose: scripts/docker-images.sh failed" >&2; exit 2; }
eval "$image_env"
cargo build --workspace --bin shoal-chaos   # the workspace's features: no rebuild of dependencies

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
    args=(--seed 1 --seconds 45 --in-turn --faults
        kill_leader,pause_follower,partition_minority,isolate_leader,pause_leader,kill_follower,graceful_restart,actor_panic)
fi
echo "== chaos against the compose stack: shoal-chaos --compose --image $SHOAL_IMAGE ${args[*]}" >&2
exec target/debug/shoal-chaos --compose docker-compose.yml --image "$SHOAL_IMAGE" "${args[@]}"
