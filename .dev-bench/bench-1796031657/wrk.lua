-- rate (requests/s over all connections) and path come from the environment
local rate = tonumber(os.getenv("RATE") or "0")
local path = os.getenv("WRK_PATH")
local connections = 8
function request()
  local uri = path
  if path == "recs" then
    uri = "/v1/users/" .. math.random(1, 943) .. "/recommendations?k=10"
  end
  return wrk.format("GET", uri)
end
function delay()
  if rate > 0 then return 1000 * connections / rate end
  return 0
end
function done(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
