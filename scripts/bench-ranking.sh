#!/usr/bin/env bash
# Ranking benchmark (BENCHMARKS.md, "Ranking", issue 12.7): in one run, per state, wrk against
#   - GET /v1/users/{u}/recommendations?k=10 (a random user per request),
#   - GET /v1/whoami, the authenticated no-op (same token check, revocation check, scope and
#     rate limiter, no ranking),
#   - GET /healthz, the bare no-op,
# at 1,000 req/s (wrk's delay() hook) and unthrottled; then recommendations and whoami at
# 1,000 req/s while the service folds 1,000 events/s (`embedstream produce --rate`), followed
# by what those points cost the durable side (flushes, failed flushes, redis breaker openings,
# RSS; BENCHMARKS.md, "Flush pacing").
# States: MovieLens-100k (1,682 items) and a generated catalogue of 100,000 items
# (scripts/gen-catalogue.py, 150,000 events, 30,000 users). Auth on (a service token), rate
# limiting on (the service token's requests spend the service_recs budget from leases of the
# GCRA bucket topped up in the background, rate_limit.lease_ms; the budget is raised to
# 1,000,000/s so that no request is refused and every route does the same limiter work).
# Usage: scripts/bench-ranking.sh [seconds per point, default 10]
# Environment: EMBEDSTREAM_BIN (default target/it/embedstream; copied first), ports
# EMBEDSTREAM_BENCH_REDIS_PORT / _KAFKA_PORT / _HTTP_PORT (default 46579, 49292, 48280);
# EMBEDSTREAM_BENCH_STATES: which states, space-separated (default "ml cat"; "ml" alone takes a
# few minutes, the catalogue's HNSW builds take several more).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seconds=${1:-10}
export EMBEDSTREAM_DEV_DIR="$root/.dev-ranking"
export EMBEDSTREAM_REDIS_PORT=${EMBEDSTREAM_BENCH_REDIS_PORT:-46579}
export EMBEDSTREAM_KAFKA_PORT=${EMBEDSTREAM_BENCH_KAFKA_PORT:-49292}
http_port=${EMBEDSTREAM_BENCH_HTTP_PORT:-48280}
run_id="ranking-$(date +%s)"
work="$EMBEDSTREAM_DEV_DIR/$run_id"
mkdir -p "$work"
cp "${EMBEDSTREAM_BIN:-${CARGO_TARGET_DIR:-$root/target}/it/embedstream}" "$work/embedstream"
bin="$work/embedstream"
scripts/fetch-movielens.sh >/dev/null
# The load generator: Debian's wrk, installed when missing.
if ! command -v wrk >/dev/null; then
  as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q --no-install-recommends wrk >/dev/null \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q --no-install-recommends wrk >/dev/null; }
fi
service_pid="" producer_pid=""
cleanup() {
  [[ -n "$producer_pid" ]] && kill "$producer_pid" 2>/dev/null
  [[ -n "$service_pid" ]] && kill "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
  scripts/dev-down.sh >/dev/null
}
trap cleanup EXIT
scripts/dev-up.sh "$run_id-ml:4" "$run_id-cat:4" "$run_id-dlq:1" >/dev/null
export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
export EMBEDSTREAM_RATE_LIMIT__SERVICE_RECS__RATE_PER_SECOND=1000000
export EMBEDSTREAM_RATE_LIMIT__SERVICE_RECS__BURST=1000000
export RUST_LOG=warn
"$bin" auth keygen --dir "$work/auth" --kid bench >/dev/null
export EMBEDSTREAM_AUTH__JWKS_PATH="$work/auth/jwks.json"
export EMBEDSTREAM_AUTH__SIGNING_KEY_PATH="$work/auth/signing-key.pem"
export EMBEDSTREAM_AUTH__SIGNING_KID=bench
token=$("$bin" auth token --sub client:bench --scope recs:read --ttl-s 7200)

python3 scripts/gen-catalogue.py 100000 30000 "$work/cat.jsonl"
# Live traffic for the "under ingest" points: new events of known users and items.
python3 - "$work" <<'PY'
import json, sys, time
work = sys.argv[1]
now = int(time.time() * 1000)
for name, users, items, prefix_u, prefix_i in (("ml", 943, 1682, "", ""), ("cat", 30000, 100000, "u", "i")):
    with open(f"{work}/live-{name}.jsonl", "w") as f:
        for n in range(200_000):
            f.write(json.dumps({"event_id": f"live-{n}", "user_id": f"{prefix_u}{(n * 7919) % users + (0 if prefix_u else 1)}",
                                "item_id": f"{prefix_i}{(n * 104729) % items + (0 if prefix_i else 1)}",
                                "event_type": "click", "ts": now + n}) + "\n")
PY
"$bin" produce --input data/ml-100k/u.data --format movielens --topic "$run_id-ml" >/dev/null
"$bin" produce --input "$work/cat.jsonl" --topic "$run_id-cat" >/dev/null

cat >"$work/wrk.lua" <<'LUA'
local rate = tonumber(os.getenv("RATE") or "0")
local path = os.getenv("WRK_PATH")
local users = tonumber(os.getenv("USERS"))
local prefix = os.getenv("USER_PREFIX") or ""
local offset = tonumber(os.getenv("USER_OFFSET") or "0")
local connections = 8
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
function request()
  local uri = path
  if path == "recs" then
    uri = "/v1/users/" .. prefix .. (math.random(0, users - 1) + offset) .. "/recommendations?k=10"
  end
  return wrk.format("GET", uri)
end
function delay()
  if rate > 0 then return 1000 * connections / rate end
  return 0
end
function done(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f non2xx_or_errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
LUA
point() { # $1 label, $2 path, $3 rate
  local line
  line=$(TOKEN=$token RATE=$3 WRK_PATH=$2 wrk -t2 -c8 -d"${seconds}s" -s "$work/wrk.lua" "http://127.0.0.1:$http_port" | grep RESULT)
  echo "$state | $1 | $([[ $3 == 0 ]] && echo unthrottled || echo "$3/s") | ${line#RESULT }"
}
for state in ${EMBEDSTREAM_BENCH_STATES:-ml cat}; do
  if [[ $state == ml ]]; then export USERS=943 USER_PREFIX="" USER_OFFSET=1; else export USERS=30000 USER_PREFIX=u USER_OFFSET=0; fi
  "$bin" run --topic "$run_id-$state" --group "$run_id-$state" --namespace "$run_id-$state" \
    --listen "127.0.0.1:$http_port" >"$work/serve-$state.log" 2>&1 &
  service_pid=$!
  started=$(date +%s)
  # Caught up, and on the catalogue (above index.full_scan_threshold, where the graph answers)
  # the snapshot covers every item (nothing scored outside the graph). MovieLens is ranked by
  # the exact scan, and below the threshold the graph is never rebuilt, so only catch-up counts.
  need_graph=$([[ $state == cat ]] && echo 1 || echo 0)
  until curl -s "127.0.0.1:$http_port/readyz" | NEED_GRAPH=$need_graph python3 -c '
import json, os, sys
d = json.load(sys.stdin)
graph = os.environ["NEED_GRAPH"] == "1"
sys.exit(0 if d["ingest"]["caught_up"] and (not graph or (d["index_items"] > 0 and d["fresh_items"] == 0)) else 1)' 2>/dev/null; do
    sleep 2
  done
  ready=$(curl -s "127.0.0.1:$http_port/readyz")
  echo "== $state: ready after $(( $(date +%s) - started )) s: $(echo "$ready" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("index_items", d["index_items"], "fresh_items", d["fresh_items"], "applied", d["ingest"]["applied"])')"
  curl -s -H "Authorization: Bearer $token" "127.0.0.1:$http_port/v1/users/${USER_PREFIX}$((USER_OFFSET + 1))/recommendations?k=10" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("   sample answer: source", d["source"], "index", d["index"], "items", len(d["items"]))'
  echo "state | route | rate | result"
  for rate in 1000 0; do
    point "whoami (auth no-op)" /v1/whoami "$rate"
    point "recommendations" recs "$rate"
    point "healthz" /healthz "$rate"
  done
  curl -s "127.0.0.1:$http_port/metrics" >"$work/metrics-before-ingest-$state.txt"
  "$bin" produce --input "$work/live-$state.jsonl" --topic "$run_id-$state" --rate 1000 >/dev/null 2>&1 &
  producer_pid=$!
  sleep 3
  point "whoami, under ingest 1,000 ev/s" /v1/whoami 1000
  point "recommendations, under ingest 1,000 ev/s" recs 1000
  curl -s "127.0.0.1:$http_port/readyz" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("   after the ingest points: applied", d["ingest"]["applied"], "index_items", d["index_items"], "fresh_items", d["fresh_items"])'
  # What the ingest points cost the durable side: flushes (failed), their Redis time, the
  # redis breaker's openings, and the service's RSS at the end.
  curl -s "127.0.0.1:$http_port/metrics" >"$work/metrics-after-ingest-$state.txt"
  python3 - "$work/metrics-before-ingest-$state.txt" "$work/metrics-after-ingest-$state.txt" "$(ps -o rss= -p "$service_pid")" <<'PY'
import sys
def read(path):
    values = {}
    for line in open(path):
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values
before, after = read(sys.argv[1]), read(sys.argv[2])
delta = lambda name: after.get(name, 0.0) - before.get(name, 0.0)
flushes = delta('embedstream_redis_operation_duration_seconds_count{operation="flush"}')
seconds = delta('embedstream_redis_operation_duration_seconds_sum{operation="flush"}')
failed = delta('embedstream_redis_errors_total{operation="flush"}')
opened = delta('embedstream_circuit_breaker_transitions_total{breaker="redis",to="open"}')
print(f"   during the ingest points: {flushes:.0f} flushes ({failed:.0f} failed), {seconds:.1f} s in flush calls, "
      f"redis breaker opened {opened:.0f} times; service RSS at the end {int(sys.argv[3]) / 1024:.0f} MiB")
# The request path's Redis calls (failed: past http.redis_timeout_ms), and the recommendation
# route's own latency histogram (from the request's arrival in the service to its answer).
calls = lambda op: (delta(f'embedstream_redis_operation_duration_seconds_count{{operation="{op}"}}'),
                    delta(f'embedstream_redis_errors_total{{operation="{op}"}}'))
print("   request-path redis calls (failed): " + ", ".join(
    f"{op} {n:.0f} ({e:.0f})" for op, (n, e) in ((op, calls(op)) for op in ("auth_revoked", "rate_limit", "load_user"))))
route = 'embedstream_http_request_duration_seconds_bucket{route="/v1/users/{user_id}/recommendations",status="200",le="%s"}'
total = delta(route % "+Inf")
if total:
    print("   recommendations in the service: " + ", ".join(
        f"{100 * (total - delta(route % le)) / total:.1f}% over {float(le) * 1000:.0f} ms" for le in ("0.01", "0.025", "0.05")))
PY
  kill "$producer_pid" 2>/dev/null; wait "$producer_pid" 2>/dev/null || true; producer_pid=""
  kill "$service_pid"; wait "$service_pid" 2>/dev/null || true; service_pid=""
done
