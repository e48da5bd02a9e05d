#!/usr/bin/env bash
# Scale-out benchmark (issue 10, BENCHMARKS.md "Scale-out"): one topic of 6 partitions holding
# COPIES x MovieLens-100k, then for N = 1, 2, 3 instances of `embedstream run` in a fresh
# consumer group and namespace: the time from start until Redis's `events_applied` holds every
# event (joining the group included), the CPU time of each instance per event, what Redis
# received per event (bytes, and Lua script calls), and how far each instance's copy of the
# items trailed Redis (`embedstream_item_feed_lag_seconds`: p99 and max bucket, from /metrics).
# All instances, Redis and the broker share this machine's cores: with two cores, a second
# instance adds no CPU, so the figures show the cost of the shared item state, not a speed-up.
# Usage: scripts/bench-scale.sh [copies of ml-100k, default 5] [instance counts, default "1 2 3"]
# Environment: EMBEDSTREAM_BENCH_BIN (a binary to use instead of building release);
# EMBEDSTREAM_BENCH_REDIS_PORT / _KAFKA_PORT / _HTTP_PORT (default 46379, 49092, 48080: the
# instances listen on it and the next ports); EMBEDSTREAM_BENCH_REDIS_CLUSTER=1: a three-master
# Redis Cluster (dev-up.sh, ports REDIS_PORT to REDIS_PORT + 2) with store.cluster, Redis
# traffic summed over its masters.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
copies=${1:-5}
counts=${2:-"1 2 3"}
export EMBEDSTREAM_DEV_DIR="$root/.dev-bench"
export EMBEDSTREAM_REDIS_PORT=${EMBEDSTREAM_BENCH_REDIS_PORT:-46379}
export EMBEDSTREAM_KAFKA_PORT=${EMBEDSTREAM_BENCH_KAFKA_PORT:-49092}
http_port=${EMBEDSTREAM_BENCH_HTTP_PORT:-48080}
run_id="scale-$(date +%s)"
work="$EMBEDSTREAM_DEV_DIR/$run_id"

scripts/fetch-movielens.sh >/dev/null
if [[ -n ${EMBEDSTREAM_BENCH_BIN:-} ]]; then
  bin=$EMBEDSTREAM_BENCH_BIN
else
  cargo build --release --locked --quiet --bin embedstream
  bin="${CARGO_TARGET_DIR:-$root/target}/release/embedstream"
fi
mkdir -p "$EMBEDSTREAM_DEV_DIR/bin" "$work"
cp "$bin" "$EMBEDSTREAM_DEV_DIR/bin/embedstream-scale"
bin="$EMBEDSTREAM_DEV_DIR/bin/embedstream-scale"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/dev-down.sh >/dev/null
}
trap cleanup EXIT
cluster=${EMBEDSTREAM_BENCH_REDIS_CLUSTER:-0}
export EMBEDSTREAM_REDIS_CLUSTER=$cluster
scripts/dev-up.sh "$run_id-events:6" "$run_id-dlq:1" >/dev/null
export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
if [[ "$cluster" == 1 ]]; then
  nodes=("$EMBEDSTREAM_REDIS_PORT" "$((EMBEDSTREAM_REDIS_PORT + 1))" "$((EMBEDSTREAM_REDIS_PORT + 2))")
  export EMBEDSTREAM_STORE__CLUSTER=true
  export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:${nodes[0]}/,redis://127.0.0.1:${nodes[1]}/,redis://127.0.0.1:${nodes[2]}/"
  meta_key() { echo "{$1}:meta"; }
else
  nodes=("$EMBEDSTREAM_REDIS_PORT")
  export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
  meta_key() { echo "$1:meta"; }
fi
export RUST_LOG=${EMBEDSTREAM_BENCH_LOG:-warn}
# Ingest only: nobody calls the HTTP side here.
export EMBEDSTREAM_AUTH__ENABLED=false
# -c follows cluster redirects; each_node runs a command on every master.
redis() { redis-cli -c -p "$EMBEDSTREAM_REDIS_PORT" "$@"; }
each_node() { for port in "${nodes[@]}"; do redis-cli -p "$port" "$@"; done; }

scripts/gen-ml-copies.py "$copies" "$work/events.jsonl"
"$bin" produce --input "$work/events.jsonl" --topic "$run_id-events" --json >/dev/null
total=$((copies * 100000))
ticks=$(getconf CLK_TCK)

echo "== $total events on 6 partitions; instances, CPU and Redis traffic per event"
echo "| instances | until all applied, s | events/s | CPU of each instance, s | CPU per event, all instances, us | bytes into Redis per event | Lua calls | item feed lag p99 / max, s (reads) |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
for n in $counts; do
  namespace="$run_id-n$n"
  each_node CONFIG RESETSTAT >/dev/null
  pids=()
  start=$(date +%s.%N)
  for i in $(seq "$n"); do
    "$bin" run --topic "$run_id-events" --group "$namespace" --namespace "$namespace" \
      --listen "127.0.0.1:$((http_port + i))" >"$work/$namespace-$i.log" 2>&1 &
    pids+=($!)
  done
  while :; do
    applied=$(redis HGET "$(meta_key "$namespace")" events_applied)
    [[ ${applied:-0} -ge $total ]] && break
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "instance $pid exited; log: $work" >&2; exit 1; }
    done
    sleep 0.2
  done
  end=$(date +%s.%N)
  cpu=()
  for pid in "${pids[@]}"; do
    # utime + stime (fields 14 and 15 of /proc/PID/stat), in clock ticks.
    cpu+=("$(awk '{ print $14 + $15 }' "/proc/$pid/stat")")
  done
  bytes=$(each_node INFO stats | awk -F: '/^total_net_input_bytes/ { s += $2 } END { print s }')
  calls=$(each_node INFO commandstats | awk -F'[:=,]' '/^cmdstat_eval:/ { s += $3 } END { print s + 0 }')
  # Let the followers read the last writes, then take their lag histograms.
  sleep 1
  for i in $(seq "$n"); do
    curl -s "127.0.0.1:$((http_port + i))/metrics" | grep '^embedstream_item_feed_lag_seconds' \
      >"$work/$namespace-$i.lag" || true
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  lag=$(python3 - "$work/$namespace" "$n" <<'PY'
import sys
prefix, n = sys.argv[1], int(sys.argv[2])
buckets, count = {}, 0
for i in range(1, n + 1):
    for line in open(f"{prefix}-{i}.lag"):
        name, value = line.rsplit(" ", 1)
        if name.startswith("embedstream_item_feed_lag_seconds_bucket"):
            le = name.split('le="')[1].split('"')[0]
            buckets[le] = buckets.get(le, 0) + float(value)
        elif name.startswith("embedstream_item_feed_lag_seconds_count"):
            count += float(value)
if count == 0:
    print("- (0)")
else:
    bounds = sorted((float("inf") if le == "+Inf" else float(le), c) for le, c in buckets.items())
    p99 = next(le for le, c in bounds if c >= 0.99 * count)
    top = next(le for le, c in bounds if c >= count)
    print(f"<= {p99:g} / <= {top:g} ({count:.0f})")
PY
)
  python3 - "$n" "$start" "$end" "$total" "$ticks" "$bytes" "${calls:-0}" "$lag" "${cpu[@]}" <<'PY'
import sys
n, start, end, total, ticks, redis_bytes, calls, lag = sys.argv[1:9]
cpu = [int(c) / int(ticks) for c in sys.argv[9:]]
seconds, total = float(end) - float(start), int(total)
per_instance = ", ".join(f"{c:.1f}" for c in cpu)
print(f"| {n} | {seconds:.1f} | {total / seconds:,.0f} | {per_instance} | {sum(cpu) / total * 1e6:.1f} "
      f"| {int(redis_bytes) / total:.0f} | {calls} | {lag} |")
PY
done
echo "(EVAL calls include the seen-list appends and the staging promotion: every Lua script call.)"
