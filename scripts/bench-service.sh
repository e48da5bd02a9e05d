#!/usr/bin/env bash
# Service benchmarks (BENCHMARKS.md): start Redis and the broker (state in .dev-bench/), then
#   1. ingest: a bare rdkafka consumer (examples/raw_consume.rs) against `embedstream run
#      --exit-when-caught-up` on the same topic, side by side, each in a fresh consumer group;
#   2. HTTP: recommendation latency and throughput with wrk at fixed request rates (wrk's
#      delay() hook) against the no-op route /healthz of the same server;
#   3. freshness: from `embedstream produce` of one event to its effect visible over HTTP.
#   3. freshness: from `embedstream produce` of one event to its effect visible over HTTP, on a
#      quiet stream and with 500 events/s of other traffic.
# Usage: scripts/bench-service.sh [copies of ml-100k for the ingest topic, default 5]
# Environment: EMBEDSTREAM_BENCH_PROFILE=release (default) or it (the test profile: release
# optimisation without LTO, sharing the test build's dependencies); EMBEDSTREAM_BENCH_REDIS_PORT / _KAFKA_PORT / _HTTP_PORT (default 46379, 49092, 48080);
# EMBEDSTREAM_BENCH_SECTIONS: which sections to run, space-separated (default
# "ingest http freshness"; e.g. "ingest" for the ingest ratio alone);
# EMBEDSTREAM_BENCH_BIN and EMBEDSTREAM_BENCH_RAW_CONSUME: binaries to use instead of building
# (both or neither; e.g. private copies, when other builds share the target directory).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
copies=${1:-5}
export EMBEDSTREAM_DEV_DIR="$root/.dev-bench"
export EMBEDSTREAM_REDIS_PORT=${EMBEDSTREAM_BENCH_REDIS_PORT:-46379}
export EMBEDSTREAM_KAFKA_PORT=${EMBEDSTREAM_BENCH_KAFKA_PORT:-49092}
http_port=${EMBEDSTREAM_BENCH_HTTP_PORT:-48080}
profile=${EMBEDSTREAM_BENCH_PROFILE:-release}
out="${CARGO_TARGET_DIR:-$root/target}/$profile"
bin="$out/embedstream"
run_id="bench-$(date +%s)"
work="$EMBEDSTREAM_DEV_DIR/$run_id"

sections=" ${EMBEDSTREAM_BENCH_SECTIONS:-ingest http freshness} "
wants() { [[ $sections == *" $1 "* ]]; }

scripts/fetch-movielens.sh >/dev/null
raw_consume="$out/examples/raw_consume"
if [[ -n ${EMBEDSTREAM_BENCH_BIN:-} ]]; then
  bin=$EMBEDSTREAM_BENCH_BIN
  raw_consume=${EMBEDSTREAM_BENCH_RAW_CONSUME:?EMBEDSTREAM_BENCH_RAW_CONSUME goes with EMBEDSTREAM_BENCH_BIN}
elif [[ $profile == release ]]; then
  cargo build --release --locked --quiet --bins --examples
else
  # Examples bring the dev-dependencies in, so the features (and the dependency artifacts) are
  # those of the test build.
  cargo build --profile "$profile" --locked --quiet --bins --examples
fi
# Private copies: a build in the same target directory during the run cannot swap them.
mkdir -p "$EMBEDSTREAM_DEV_DIR/bin"
cp "$bin" "$EMBEDSTREAM_DEV_DIR/bin/embedstream"
cp "$raw_consume" "$EMBEDSTREAM_DEV_DIR/bin/raw_consume"
bin="$EMBEDSTREAM_DEV_DIR/bin/embedstream"
raw_consume="$EMBEDSTREAM_DEV_DIR/bin/raw_consume"
wants http && ! command -v wrk >/dev/null && { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
service_pid=""
cleanup() {
  [[ -n "$service_pid" ]] && kill "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
  scripts/dev-down.sh >/dev/null
}
trap cleanup EXIT
scripts/dev-up.sh "$run_id-ingest:4" "$run_id-serve:4" "$run_id-dlq:1" >/dev/null
mkdir -p "$work"
export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
export RUST_LOG=warn
# Auth: a fresh key pair; requests carry a service token (it may name any user). The latency
# section measures the ranking path, not the limiter: rate limits are off for it (see
# scripts/bench-overload.sh for the limiter and load shedding under overload).
"$bin" auth keygen --dir "$work/auth" --kid bench >/dev/null
export EMBEDSTREAM_AUTH__JWKS_PATH="$work/auth/jwks.json"
export EMBEDSTREAM_AUTH__SIGNING_KEY_PATH="$work/auth/signing-key.pem"
export EMBEDSTREAM_AUTH__SIGNING_KID=bench
token=$("$bin" auth token --sub client:bench --scope recs:read --ttl-s 7200)

if wants ingest; then
echo "== 1. ingest: $copies x MovieLens-100k, bare consumer vs embedstream"
scripts/gen-ml-copies.py "$copies" "$work/ingest.jsonl"
"$bin" produce --input "$work/ingest.jsonl" --topic "$run_id-ingest" --json
for round in 1 2 3; do
  raw=$("$raw_consume" "$EMBEDSTREAM_KAFKA__BROKERS" "$run_id-ingest")
  start=$(date +%s.%N)
  "$bin" run --topic "$run_id-ingest" --group "$run_id-run-$round" --namespace "$run_id-run-$round" \
    --listen 127.0.0.1:0 --exit-when-caught-up
  end=$(date +%s.%N)
  python3 - "$raw" "$start" "$end" "$((copies * 100000))" <<'PY'
import json, sys
raw = json.loads(sys.argv[1]); seconds = float(sys.argv[3]) - float(sys.argv[2]); records = int(sys.argv[4])
print(f"bare consumer {raw['records']} records in {raw['seconds']:.2f} s = {raw['records_per_second']:,.0f}/s | "
      f"embedstream run {records} events in {seconds:.2f} s = {records / seconds:,.0f}/s "
      f"(embedstream / bare {(records / seconds) / raw['records_per_second']:.2f}x; both include joining the group)")
PY
done
fi

if wants http || wants freshness; then
"$bin" produce --input data/ml-100k/u.data --format movielens --topic "$run_id-serve" >/dev/null
EMBEDSTREAM_RATE_LIMIT__ENABLED=false \
  "$bin" run --topic "$run_id-serve" --group "$run_id-serve" --namespace "$run_id-serve" \
  --listen "127.0.0.1:$http_port" >"$work/serve.log" 2>&1 &
service_pid=$!
for _ in $(seq 300); do
  curl -s "127.0.0.1:$http_port/readyz" | grep -q '"caught_up":true' && break
  sleep 0.5
done
fi

if wants http; then
echo "== 2. HTTP latency (wrk, 2 threads, 8 connections, 15 s per point; server and wrk share 2 cores)"
cat >"$work/wrk.lua" <<'LUA'
-- rate (requests/s over all connections) and path come from the environment
local rate = tonumber(os.getenv("RATE") or "0")
local path = os.getenv("WRK_PATH")
local connections = 8
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
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
LUA
for target in /healthz recs; do
  for rate in 1000 4000 0; do
    line=$(TOKEN=$token RATE=$rate WRK_PATH=$target wrk -t2 -c8 -d15s -s "$work/wrk.lua" "http://127.0.0.1:$http_port" | grep RESULT)
    label=$([[ $rate == 0 ]] && echo "unthrottled" || echo "$rate req/s")
    echo "$( [[ $target == recs ]] && echo recommendations || echo "no-op /healthz") @ $label: ${line#RESULT }"
  done
done
fi

if wants freshness; then
echo "== 3. freshness: produce one event for a new user, poll until its vector is served"
probe() { # $1 = label
  for probe in 1 2 3 4 5; do
    now=$(python3 -c 'import time; print(int(time.time() * 1000))')
    user="probe-$1-$probe"
    echo "{\"event_id\":\"$run_id-$user\",\"user_id\":\"$user\",\"item_id\":\"50\",\"event_type\":\"buy\",\"ts\":$now}" >"$work/probe.jsonl"
    start=$(date +%s.%N)
    "$bin" produce --input "$work/probe.jsonl" --topic "$run_id-serve" >/dev/null
    until curl -sf -H "Authorization: Bearer $token" "127.0.0.1:$http_port/v1/users/$user" >/dev/null; do sleep 0.01; done
    end=$(date +%s.%N)
    python3 -c "print('$1 probe $probe: produce to visible %.2f s' % ($end - $start))"
  done
}
probe quiet
echo "(quiet: the probe's window closes by the idle timeout, window.idle_timeout_ms = 1000 by default)"
# Busy: other users' live events at about 500/s (event time = now) while the probes run.
python3 - "$work/live.jsonl" <<'PY'
import json, sys, time
start = int(time.time() * 1000) + 2000
with open(sys.argv[1], "w") as f:
    for n in range(30000):
        f.write(json.dumps({"event_id": f"live-{start}-{n}", "user_id": str(1 + n % 943),
                            "item_id": str(1 + (n * 7) % 1682), "event_type": "view",
                            "ts": start + n * 2}) + "\n")
PY
"$bin" produce --input "$work/live.jsonl" --topic "$run_id-serve" --rate 500 >/dev/null 2>&1 &
live_pid=$!
sleep 5
probe busy
kill "$live_pid" 2>/dev/null || true
wait "$live_pid" 2>/dev/null || true
echo "(busy: about 500 events/s of other traffic; windows close by the watermark)"
fi
