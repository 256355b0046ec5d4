-- wrk script of the HTTP benchmarks (scripts/bench-qdrant.sh, scripts/bench-http-ab.sh): POSTs
-- the JSON bodies of the file $BENCH_BODIES (one per line), cycled, to the path $BENCH_PATH, and
-- prints one line: RESULT, req/s, p50, p95, p99 and max latency in ms, errors.
local bodies = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do bodies[#bodies + 1] = line end
local path = os.getenv("BENCH_PATH")
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT\t%.0f\t%.2f\t%.2f\t%.2f\t%.1f\t%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1e3,
    latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    e.connect + e.read + e.write + e.status + e.timeout))
end
