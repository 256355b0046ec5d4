#!/usr/bin/env bash
# shoal's index with int8 codes and its vectors on disk, the page cache squeezed: runs
# target/release/shoal-ann-bench (`... int8 disk`) on the files scripts/ann_bench.py writes
# (DIR/base.f32, queries.f32, truth.i32; 384 dimensions) in a cgroup v1 memory group, and right
# after the build lowers the group's limit to the process's anonymous memory plus ROOM_MB, the
# input files' pages dropped from the page cache first. Prints the bench's lines and the group's
# figures. Needs root and the cgroup v1 memory controller (/sys/fs/cgroup/memory); used for
# docs/benchmarks.md, "Vectors on disk".
# Usage: scripts/ann-cold-cache.sh DIR ROOM_MB (wrap it in `timeout`: a squeezed run can crawl)
set -u
dir=$1 room=$2
bin="$(cd "$(dirname "$0")/.." && pwd)/target/release/shoal-ann-bench"
cg=/sys/fs/cgroup/memory/shoal-ann-cold
mkdir -p "$cg"
echo 9223372036854771712 > "$cg/memory.limit_in_bytes"
echo 0 > "$cg/memory.failcnt"
out="$(mktemp)" err="$(mktemp)"
trap 'kill $(jobs -p) 2>/dev/null; echo 9223372036854771712 > "$cg/memory.limit_in_bytes"; rm -f "$out" "$err"' EXIT
cd "$dir"
sh -c "echo \$\$ > $cg/cgroup.procs; exec $bin base.f32 queries.f32 truth.i32 384 16 100 32,64,128 cosine int8 disk" >"$out" 2>"$err" &
pid=$!
for _ in $(seq 1 1200); do grep -q built "$err" && break; sleep 0.1; done
python3 -c "
import os
for f in ['base.f32', 'queries.f32', 'truth.i32']:
    fd = os.open(f, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)"
anon_kb=$(awk '/^RssAnon/ {print $2}' /proc/$pid/status)
echo "built: $(grep -E '^Rss(Anon|File)' /proc/$pid/status | tr -s ' \t' ' ' | tr '\n' ' ')" >&2
echo $(( (anon_kb / 1024 + room) * 1024 * 1024 )) > "$cg/memory.limit_in_bytes"
echo "limit: anonymous + $room MB; then $(grep -E '^RssFile' /proc/$pid/status | tr -s ' \t' ' ')" >&2
wait $pid
cat "$err" >&2
cat "$out"
echo "limit hit $(cat "$cg/memory.failcnt") times; $(grep -E '^pgmajfault ' "$cg/memory.stat")" >&2
