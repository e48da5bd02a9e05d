#!/usr/bin/env bash
# Redis frozen mid-ingest (BENCHMARKS.md, "Redis frozen"; issue 9, item 4), with the default
# configuration: starts Redis and the broker in .dev-freeze/ (ports of their own), publishes
# MovieLens-100k, runs `embedstream run`, and once 30,000 events are applied stops redis-server
# with SIGSTOP for N seconds, printing the /readyz ingest detail about once a second; then
# SIGCONT, waits until caught up, stops the service (SIGTERM) and compares `embedstream digest`
# with `embedstream replay --partitions 4`. Exits non-zero when they differ.
# Usage: scripts/fault-redis-freeze.sh [seconds frozen, default 30]
# (EMBEDSTREAM_BIN=path uses that binary; otherwise target/release/embedstream, built unless
# BENCH_NO_BUILD=1.)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seconds=${1:-30}
export EMBEDSTREAM_DEV_DIR="$root/.dev-freeze"
export EMBEDSTREAM_REDIS_PORT=46579 EMBEDSTREAM_KAFKA_PORT=49292
http_port=48280
bin="${EMBEDSTREAM_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/embedstream}"
run_id="freeze-$(date +%s)"

scripts/fetch-movielens.sh >/dev/null
[[ -n "${EMBEDSTREAM_BIN:-}${BENCH_NO_BUILD:-}" ]] || cargo build --release --locked --quiet --bins
service_pid=""
redis_pid=""
cleanup() {
  if [[ -n "$redis_pid" ]]; then kill -CONT "$redis_pid" 2>/dev/null || true; fi
  if [[ -n "$service_pid" ]]; then kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; fi
  scripts/dev-down.sh >/dev/null
}
trap cleanup EXIT
scripts/dev-up.sh "$run_id:4" "$run_id-dlq:1" >/dev/null
redis_pid=$(<"$EMBEDSTREAM_DEV_DIR/redis/redis.pid")
export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__TOPIC="$run_id" EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__GROUP_ID="$run_id" EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
export EMBEDSTREAM_STORE__NAMESPACE="$run_id"
# /readyz and /metrics need no token; nothing else is called.
export EMBEDSTREAM_AUTH__ENABLED=false RUST_LOG=warn

"$bin" produce --input data/ml-100k/u.data --format movielens >/dev/null
"$bin" run --listen "127.0.0.1:$http_port" 2>"$EMBEDSTREAM_DEV_DIR/$run_id-service.log" &
service_pid=$!

# Prints one line of /readyz; the first argument is the start of the clock (epoch seconds).
show() {
  curl -s -m 2 "localhost:$http_port/readyz" | python3 -c '
import json, sys, time
d = json.load(sys.stdin)
i = d["ingest"]
print("t=%5.1f s applied=%6d unflushed=%6d redis_ok=%-5s paused=%-15s breaker=%-9s degraded=%s%s" % (
    time.time() - float(sys.argv[1]), i["applied"], i["unflushed_events"], i["redis_ok"],
    i["paused"], d["breakers"]["redis"], ",".join(d["degraded"]) or "-",
    " caught_up" if i["caught_up"] else ""))' "$1" || echo "no /readyz answer within 2 s"
}
applied() {
  curl -s -m 2 "localhost:$http_port/readyz" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["ingest"]["applied"])' 2>/dev/null \
    || echo 0
}

until (( $(applied) >= 30000 )); do sleep 0.05; done
frozen=$(date +%s.%N)
kill -STOP "$redis_pid"
echo "redis-server $redis_pid stopped (SIGSTOP) for $seconds s"
while (( $(date +%s) - ${frozen%.*} < seconds )); do show "$frozen"; sleep 1; done
kill -CONT "$redis_pid"
echo "redis-server continued (SIGCONT)"
for _ in $(seq 1 120); do
  line=$(show "$frozen")
  echo "$line"
  [[ "$line" == *caught_up* ]] && break
  sleep 1
done
kill -TERM "$service_pid"
wait "$service_pid"
service_pid=""
stored=$("$bin" digest --json)
replay=$("$bin" replay --input data/ml-100k/u.data --format movielens --partitions 4 --json)
echo "stored: $stored"
python3 - "$stored" "$replay" <<'PY'
import json, sys
stored, replay = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("replay: digest %s users %d items %d applied %d" % (
    replay["digest"], replay["users"], replay["items"], replay["applied"]))
same = (stored["digest"], stored["users"], stored["events_applied"]) == (
    replay["digest"], replay["users"], replay["applied"])
print("digest equals the replay" if same else "DIGEST DIFFERS FROM THE REPLAY")
sys.exit(0 if same else 1)
PY
