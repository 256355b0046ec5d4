# shellcheck shell=bash
# Waiting on a node from the benchmark scripts: on a condition, with a deadline, never a fixed
# sleep. Each function exits the script with a message when its deadline passes (every request
# has a time limit of its own, so a node that takes the connection and never answers cannot hold
# a wait past it). Source it after `cd` to the repository root: `. scripts/lib/wait.sh`.

# wait_alive PID LOG SECONDS WHAT COMMAND...: run COMMAND until it succeeds, while the process
# PID runs; exits saying WHAT did not happen, with the end of LOG, if PID ends first or SECONDS
# pass.
wait_alive() {
  local pid=$1 log=$2 limit=$3 what=$4
  shift 4
  local deadline=$((SECONDS + limit))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$what: the process ended first" >&2
      tail "$log" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$what: not within $limit s" >&2
      tail "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

# wait_ready URL PID LOG [SECONDS]: until URL answers with a 2xx (deadline: 120 s unless given),
# while the process PID serving it runs.
wait_ready() {
  wait_alive "$2" "$3" "${4:-120}" "$1 answering" curl -sf --max-time 5 -o /dev/null "$1"
}

# live_points NODE_URL COLLECTION [CURL ARGUMENTS...]: the live points in the collection's index
# (0 while it cannot be read, for example while its shard loads). The arguments go to curl (a
# credential header).
live_points() {
  local url=$1 collection=$2
  shift 2
  curl -sf --max-time 5 "$@" "$url/api/v1/collections/$collection" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["index"]["live_points"])' 2>/dev/null ||
    echo 0
}

# wait_until SECONDS WHAT COMMAND...: run COMMAND until it succeeds; exits saying WHAT did not
# happen if SECONDS pass first.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$what: not within $limit s" >&2
      exit 1
    fi
    sleep 0.05
  done
}

# has_live_points NODE_URL COLLECTION COUNT [CURL ARGUMENTS...]: whether the index holds at least
# COUNT live points (for wait_until).
has_live_points() {
  local url=$1 collection=$2 count=$3
  shift 3
  [ "$(live_points "$url" "$collection" "$@")" -ge "$count" ]
}

# wait_loaded NODE_URL COLLECTION COUNT PID LOG [SECONDS]: until the collection's index holds COUNT
# live points (a restarted node loads its shards in the background; deadline 600 s unless
# given), while the node's process PID runs.
wait_loaded() {
  wait_alive "$4" "$5" "${6:-600}" "the index of $2 at $1 holding $3 points" \
    has_live_points "$1" "$2" "$3"
}
