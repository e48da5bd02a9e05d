#!/usr/bin/env bash
# Token endpoint flood (BENCHMARKS.md, "Token endpoint flood", issue 12.1): the attack of the
# issue replayed against a live service with its default limits, while the recommendation route
# is measured at a fixed rate.
#
#   1. quiet: wrk at RATE req/s (default 200) on GET /v1/users/{u}/recommendations?k=10 for 15 s;
#   2. flood: the same wrk run while 32 connections send wrong-secret token requests
#      (POST /v1/auth/token) from 20 loopback source addresses (127.0.0.2-21) without pause;
#   3. the service's VmRSS (/proc/PID/status) before, at its peak (sampled every 100 ms) and
#      10 s after the flood, and the answers the flood got.
#
# Rate limits are on (the defaults), except that the recs class is raised so that the one
# service token of wrk is not limited: the point is the cost of the flood, not the limiter.
# FLOOD=saturating is the worst case for the secret checks instead: every request presents a
# new random client_id (each has its own budget) and the per-address limit of the auth class
# is raised, so the checks run back to back at their concurrency bound for the whole flood.
# The flood client shares the machine's cores with the service and wrk; FLOOD_NICE=19 runs it
# at the lowest priority, closer to an attacker on another machine (its own CPU then steals
# less from the measurement; it also sends fewer requests: the answers are counted).
# Usage: scripts/bench-token-flood.sh. Env: EMBEDSTREAM_BIN (a binary to use as it is; default:
# build the release binary), RATE, FLOOD (issue | saturating), FLOOD_NICE (default 0),
# EMBEDSTREAM_DEV_DIR / EMBEDSTREAM_REDIS_PORT /
# EMBEDSTREAM_KAFKA_PORT (Redis and broker; started by dev-up.sh when not running, and then
# stopped at the end).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export EMBEDSTREAM_DEV_DIR="${EMBEDSTREAM_DEV_DIR:-$root/.dev-flood}"
export EMBEDSTREAM_REDIS_PORT="${EMBEDSTREAM_REDIS_PORT:-46379}" EMBEDSTREAM_KAFKA_PORT="${EMBEDSTREAM_KAFKA_PORT:-49092}"
rate="${RATE:-200}"
flood="${FLOOD:-issue}"
[[ $flood == issue || $flood == saturating ]] || { echo "FLOOD is issue or saturating" >&2; exit 2; }
http_port=48180
run_id="flood-$(date +%s)"
work="$EMBEDSTREAM_DEV_DIR/$run_id"
if [[ -n "${EMBEDSTREAM_BIN:-}" ]]; then
  bin="$EMBEDSTREAM_BIN"
else
  cargo build --release --locked --quiet --bins
  bin="${CARGO_TARGET_DIR:-$root/target}/release/embedstream"
fi
scripts/fetch-movielens.sh >/dev/null
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
started_dev=""
if ! redis-cli -p "$EMBEDSTREAM_REDIS_PORT" ping >/dev/null 2>&1; then
  started_dev=1
fi
service_pid=""
cleanup() {
  [[ -n "$service_pid" ]] && kill "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
  [[ -n "$started_dev" ]] && scripts/dev-down.sh >/dev/null
  return 0
}
trap cleanup EXIT
scripts/dev-up.sh "$run_id:4" "$run_id-dlq:1" >/dev/null
mkdir -p "$work"
export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
export RUST_LOG=warn
"$bin" auth keygen --dir "$work/auth" --kid bench >/dev/null
export EMBEDSTREAM_AUTH__JWKS_PATH="$work/auth/jwks.json"
export EMBEDSTREAM_AUTH__SIGNING_KEY_PATH="$work/auth/signing-key.pem"
export EMBEDSTREAM_AUTH__SIGNING_KID=bench
hash=$(printf '%s' "the-right-secret" | "$bin" auth hash-secret)
printf '[[clients]]\nclient_id = "recs"\nsecret_hash = %s\nscopes = ["recs:read"]\n' "'$hash'" >"$work/clients.toml"
export EMBEDSTREAM_AUTH__CLIENTS_PATH="$work/clients.toml"
export EMBEDSTREAM_RATE_LIMIT__RECS__RATE_PER_SECOND=100000 EMBEDSTREAM_RATE_LIMIT__RECS__BURST=100000
if [[ $flood == saturating ]]; then
  export EMBEDSTREAM_RATE_LIMIT__AUTH__RATE_PER_SECOND=100000 EMBEDSTREAM_RATE_LIMIT__AUTH__BURST=100000
fi
token=$("$bin" auth token --sub client:bench --scope recs:read --ttl-s 7200)

"$bin" produce --input data/ml-100k/u.data --format movielens --topic "$run_id" >/dev/null
"$bin" run --topic "$run_id" --group "$run_id" --namespace "$run_id" \
  --listen "127.0.0.1:$http_port" >"$work/serve.log" 2>&1 &
service_pid=$!
for _ in $(seq 300); do
  curl -s "127.0.0.1:$http_port/readyz" | grep -q '"caught_up":true' && break
  sleep 0.5
done
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$service_pid/status"; }
cat >"$work/wrk.lua" <<'LUA'
local rate = tonumber(os.getenv("RATE"))
local connections = 4
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
function request()
  return wrk.format("GET", "/v1/users/" .. math.random(1, 943) .. "/recommendations?k=10")
end
function delay() return 1000 * connections / rate end
function done(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout))
end
LUA
measure() { TOKEN=$token RATE=$rate wrk -t1 -c4 -d15s -s "$work/wrk.lua" "http://127.0.0.1:$http_port" | grep RESULT; }

echo "== quiet: recommendations at $rate req/s, RSS $(rss) MiB"
echo "quiet: $(measure)"

echo "== flood ($flood): wrong secrets from 20 source addresses at concurrency 32, recommendations at $rate req/s"
before=$(rss)
nice -n "${FLOOD_NICE:-0}" python3 - "$http_port" "$work/flood.json" "$flood" <<'PY' &
import http.client, json, sys, threading, time, urllib.parse, uuid
port, out, flood = int(sys.argv[1]), sys.argv[2], sys.argv[3]
stop = time.time() + 16
answers, lock = {}, threading.Lock()
body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "recs", "client_secret": "wrong"})
def worker(n):
    source = f"127.0.0.{2 + n % 20}"
    while time.time() < stop:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
            sent = body
            if flood == "saturating":
                sent = urllib.parse.urlencode({"grant_type": "client_credentials",
                                               "client_id": uuid.uuid4().hex, "client_secret": "wrong"})
            c.request("POST", "/v1/auth/token", sent, {"Content-Type": "application/x-www-form-urlencoded"})
            r = c.getresponse()
            error = json.loads(r.read() or b"{}")
            key = f"{r.status} {error.get('error') or error.get('error', {})}"
            c.close()
        except Exception as e:
            key = f"exception {type(e).__name__}"
        with lock:
            answers[key] = answers.get(key, 0) + 1
threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
[t.start() for t in threads]; [t.join() for t in threads]
json.dump(answers, open(out, "w"))
PY
flood_pid=$!
peak=$before
( while kill -0 "$flood_pid" 2>/dev/null; do r=$(rss); [[ $r -gt $peak ]] && peak=$r && echo "$peak" >"$work/peak"; sleep 0.1; done ) &
sampler_pid=$!
echo "flood: $(measure)"
wait "$flood_pid"
wait "$sampler_pid" || true
echo "flood answers: $(cat "$work/flood.json")"
sleep 10
echo "RSS MiB: before $before, peak $(cat "$work/peak" 2>/dev/null || echo "$before"), 10 s after $(rss)"
