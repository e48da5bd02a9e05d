#!/usr/bin/env bash
# Overload benchmark (BENCHMARKS.md, "Overload"): the recommendation route driven by wrk at ~10x
# its measured saturation (~3,200 req/s there, so 32,000 req/s offered), with real tokens
# (`embedstream auth keygen` / `auth token`, 100 subjects, one random token per request).
# Runs, each on a freshly started service:
#   1. defaults: per-subject rate limit (Redis GCRA) and load shedding (256 in flight);
#   2. load shedding only (rate_limit.enabled = false);
#   3. neither (rate limit off, http.max_concurrent_requests = 1000000): the reference;
#   4. defaults, but all traffic from 5 subjects, so the rate limit (5 x 50/s) binds first;
#   5. defaults with http.max_concurrent_requests = 32.
# Per run: achieved req/s, p50/p99 latency, the share of 200/429/503, and the service's RSS
# (VmRSS from /proc/PID/status, sampled every second during the run).
# Usage: scripts/bench-overload.sh [seconds per run, default 20] [offered req/s, default 32000]
# (BENCH_NO_BUILD=1 uses the release binary as it is.)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seconds=${1:-20}
rate=${2:-32000}
connections=512
export EMBEDSTREAM_DEV_DIR="$root/.dev-overload"
export EMBEDSTREAM_REDIS_PORT=46479 EMBEDSTREAM_KAFKA_PORT=49192
http_port=48180
bin="${CARGO_TARGET_DIR:-$root/target}/release/embedstream"
run_id="overload-$(date +%s)"
work="$EMBEDSTREAM_DEV_DIR/$run_id"

scripts/fetch-movielens.sh >/dev/null
[[ -n "${BENCH_NO_BUILD:-}" ]] || cargo build --release --locked --quiet --bins
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
service_pid=""
sampler_pid=""
stop_service() {
  if [[ -n "$sampler_pid" ]]; then kill "$sampler_pid" 2>/dev/null || true; wait "$sampler_pid" 2>/dev/null || true; fi
  if [[ -n "$service_pid" ]]; then kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; fi
  sampler_pid="" service_pid=""
}
cleanup() {
  stop_service || true
  scripts/dev-down.sh >/dev/null
}
trap cleanup EXIT
scripts/dev-up.sh "$run_id:4" "$run_id-dlq:1" >/dev/null
mkdir -p "$work"
export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__TOPIC="$run_id"
export EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
export RUST_LOG=warn

# Real tokens: a key pair, then one token per subject (MovieLens users 1..100).
"$bin" auth keygen --dir "$work/keys" --kid bench >/dev/null
export EMBEDSTREAM_AUTH__JWKS_PATH="$work/keys/jwks.json"
export EMBEDSTREAM_AUTH__SIGNING_KEY_PATH="$work/keys/signing-key.pem"
export EMBEDSTREAM_AUTH__SIGNING_KID=bench
: >"$work/tokens.txt"
for user in $(seq 1 100); do
  echo "$user $("$bin" auth token --sub "$user" --scope recs:read --ttl-s 3600)" >>"$work/tokens.txt"
done

"$bin" produce --input data/ml-100k/u.data --format movielens --topic "$run_id" >/dev/null

start_service() {  # extra environment for this run, as NAME=value words
  env "$@" "$bin" run --topic "$run_id" --group "$run_id" --namespace "$run_id" \
    --listen "127.0.0.1:$http_port" >>"$work/serve.log" 2>&1 &
  service_pid=$!
  for _ in $(seq 300); do
    curl -s "127.0.0.1:$http_port/readyz" | grep -q '"caught_up":true' && break
    sleep 0.5
  done
}

cat >"$work/wrk.lua" <<LUA
local rate = $rate
local connections = $connections
local subjects = tonumber(os.getenv("SUBJECTS") or "100")
local tokens = {}
for line in io.lines("$work/tokens.txt") do
  local user, token = line:match("^(%S+) (%S+)$")
  if #tokens < subjects then table.insert(tokens, { user = user, auth = "Bearer " .. token }) end
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; limited = 0; shed = 0; other = 0 end
function request()
  local pick = tokens[math.random(1, #tokens)]
  return wrk.format("GET", "/v1/users/" .. pick.user .. "/recommendations?k=10",
    { ["Authorization"] = pick.auth })
end
function delay() return 1000 * connections / rate end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 429 then limited = limited + 1
  elseif status == 503 then shed = shed + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local counts = { ok = 0, limited = 0, shed = 0, other = 0 }
  for _, thread in ipairs(threads) do
    for name, _ in pairs(counts) do counts[name] = counts[name] + thread:get(name) end
  end
  local total = counts.ok + counts.limited + counts.shed + counts.other
  local share = function(n) return total > 0 and 100 * n / total or 0 end
  io.write(string.format(
    "RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f 200=%.1f%% 429=%.1f%% 503=%.1f%% other=%.1f%% socket_errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, share(counts.ok), share(counts.limited), share(counts.shed),
    share(counts.other),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

run() {  # label, subjects, then the run's extra environment
  local label=$1 subjects=$2
  shift 2
  start_service "$@"
  local rss_before
  rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$service_pid/status")
  (while kill -0 "$service_pid" 2>/dev/null; do
     awk '/VmRSS/ {print $2}' "/proc/$service_pid/status" 2>/dev/null || true
     sleep 1
   done) >"$work/rss-$label.txt" &
  sampler_pid=$!
  local line
  line=$(SUBJECTS=$subjects wrk -t2 -c"$connections" -d"${seconds}s" --timeout 10s -s "$work/wrk.lua" \
    "http://127.0.0.1:$http_port" | grep RESULT)
  sleep 2  # two more RSS samples after the load
  python3 - "$label" "$rss_before" "$work/rss-$label.txt" "${line#RESULT }" <<'PY'
import sys
label, before, path, result = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
samples = [int(x) for x in open(path).read().split()]
mb = lambda kb: kb / 1024
print(f"{label}: {result} | RSS MiB before {mb(before):.0f}, max {mb(max(samples)):.0f}, "
      f"after {mb(samples[-1]):.0f} ({len(samples)} samples; per second: "
      f"{' '.join(f'{mb(s):.0f}' for s in samples)})")
PY
  stop_service
}

echo "== overload: GET recommendations, wrk -t2 -c$connections, ${seconds}s per run, offered $rate req/s"
run "1-defaults-100-subjects" 100
run "2-shedding-only" 100 EMBEDSTREAM_RATE_LIMIT__ENABLED=false
run "3-no-limits" 100 EMBEDSTREAM_RATE_LIMIT__ENABLED=false EMBEDSTREAM_HTTP__MAX_CONCURRENT_REQUESTS=1000000
run "4-defaults-5-subjects" 5
run "5-defaults-32-in-flight" 100 EMBEDSTREAM_HTTP__MAX_CONCURRENT_REQUESTS=32
