#!/usr/bin/env bash
# Memory per entity (BENCHMARKS.md, "Memory per entity"; issue 9, item 7): folds a generated
# population (scripts/gen-population.py: USERS users, ITEMS items, EVENTS_PER_USER events per
# user) through Kafka into `embedstream run` and reads the service's VmRSS (/proc/PID/status)
# once it is caught up and quiet, next to the RSS of the same service caught up on an empty
# topic and the raw vectors (users x dim + items x (2 dim + 1) float32: p_u; q_i, c_i, b_i).
# Usage: scripts/bench-memory.sh [USERS, default 1000000] [ITEMS, default 100000] [EVENTS_PER_USER, default 2]
# A binary built with `--features heap-stats` also reports its live heap (bytes allocated and
# not freed) next to the RSS: the gap is what the allocator keeps resident beyond the live data.
# Environment: EMBEDSTREAM_BENCH_BIN (a binary to use instead of building the release one);
# EMBEDSTREAM_BENCH_REDIS_PORT / _KAFKA_PORT / _HTTP_PORT (default 46379, 49092, 48080).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
users=${1:-1000000}
items=${2:-100000}
per_user=${3:-2}
export EMBEDSTREAM_DEV_DIR="$root/.dev-bench"
export EMBEDSTREAM_REDIS_PORT=${EMBEDSTREAM_BENCH_REDIS_PORT:-46379}
export EMBEDSTREAM_KAFKA_PORT=${EMBEDSTREAM_BENCH_KAFKA_PORT:-49092}
http_port=${EMBEDSTREAM_BENCH_HTTP_PORT:-48080}
run_id="mem-$(date +%s)"
work="$EMBEDSTREAM_DEV_DIR/$run_id"

bin=${EMBEDSTREAM_BENCH_BIN:-}
if [[ -z $bin ]]; then
  cargo build --release --locked --quiet --bins
  bin="${CARGO_TARGET_DIR:-$root/target}/release/embedstream"
fi
mkdir -p "$EMBEDSTREAM_DEV_DIR/bin" "$root/.cache/bench"
cp "$bin" "$EMBEDSTREAM_DEV_DIR/bin/embedstream"
bin="$EMBEDSTREAM_DEV_DIR/bin/embedstream"
data="$root/.cache/bench/population-$users-$items-$per_user.jsonl"
[[ -f $data ]] || python3 scripts/gen-population.py "$users" "$items" "$per_user" "$data"

service_pid=""
cleanup() {
  [[ -n "$service_pid" ]] && kill "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
  scripts/dev-down.sh >/dev/null
}
trap cleanup EXIT
scripts/dev-up.sh "$run_id-full:4" "$run_id-empty:4" "$run_id-dlq:1" >/dev/null
mkdir -p "$work"
export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
export EMBEDSTREAM_AUTH__ENABLED=false
export RUST_LOG=warn
base="http://127.0.0.1:$http_port"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Runs the service on topic $1 until caught up with at least $2 events applied, waits 10 s of
# quiet (index rebuilds, flushes), prints its VmRSS in KiB and its live heap in KiB (0 unless
# the binary has the heap-stats feature), and stops it.
measure() {
  local topic=$1 want=$2
  EMBEDSTREAM_HEAP_STATS_FILE="$work/$topic.heap" "$bin" run --topic "$topic" --group "$topic" --namespace "$topic" \
    --listen "127.0.0.1:$http_port" >"$work/$topic.log" 2>&1 &
  service_pid=$!
  local started=$SECONDS
  while :; do
    kill -0 "$service_pid" 2>/dev/null || { tail -20 "$work/$topic.log" >&2; exit 1; }
    if curl -s "$base/readyz" | python3 -c 'import json,sys; d=json.load(sys.stdin); i=d["ingest"]; sys.exit(0 if d["ready"] and i["caught_up"] and i["applied"] >= int(sys.argv[1]) else 1)' "$want" 2>/dev/null; then
      break
    fi
    sleep 1
  done
  echo "   caught up after $((SECONDS - started)) s" >&2
  sleep 10
  local live=0
  [[ -s $work/$topic.heap ]] && live=$(($(cat "$work/$topic.heap") / 1024))
  echo "$(rss_kib "$service_pid") $live"
  kill "$service_pid" && wait "$service_pid" 2>/dev/null || true
  service_pid=""
}

echo "== publishing $(wc -l <"$data") events ($users users, $items items)"
"$bin" produce --input "$data" --format jsonl --topic "$run_id-full" >/dev/null
echo "== the service on an empty topic"
empty=$(measure "$run_id-empty" 0)
echo "== the service on the population"
full=$(measure "$run_id-full" 1)
python3 - "$users" "$items" $empty $full <<'PY'
import sys
users, items, empty_kib, empty_live_kib, full_kib, full_live_kib = (int(v) for v in sys.argv[1:])
dim = 64
raw = users * dim * 4 + items * (2 * dim + 1) * 4
grown = (full_kib - empty_kib) * 1024
print(f"RSS empty {empty_kib / 1024:.0f} MiB, with the population {full_kib / 1024:.0f} MiB")
print(f"raw vectors {raw / 2**20:.0f} MiB; growth {grown / 2**20:.0f} MiB = {grown / raw:.2f}x raw")
per_entity = (grown - raw) / (users + items)
print(f"beyond the raw vectors: {per_entity:.0f} bytes per entity ({users + items} entities)")
if full_live_kib:
    live = (full_live_kib - empty_live_kib) * 1024
    print(f"live heap empty {empty_live_kib / 1024:.0f} MiB, with the population {full_live_kib / 1024:.0f} MiB: "
          f"growth {live / 2**20:.0f} MiB = {live / raw:.2f}x raw, "
          f"{(live - raw) / (users + items):.0f} bytes per entity beyond the raw vectors; "
          f"resident beyond the live heap {(full_kib - full_live_kib) / 1024:.0f} MiB")
PY
