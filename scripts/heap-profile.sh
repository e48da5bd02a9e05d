#!/usr/bin/env bash
# Where the service's memory goes (BENCHMARKS.md, "Memory per entity"): heaptrack of
# `embedstream run` caught up on a generated population (scripts/gen-population.py), killed
# with SIGKILL once caught up and quiet, so that heaptrack's "leaked" is the live heap then;
# prints the live heap by the innermost function of ours (or of USearch, librdkafka,
# redis) that allocated it.
# Usage: scripts/heap-profile.sh [USERS, default 200000] [ITEMS, default 20000] [EVENTS_PER_USER, default 2]
# Needs heaptrack (Debian: apt-get install heaptrack). The binary is built with
# `--no-default-features` (glibc's malloc: heaptrack does not see mimalloc's allocations), in
# the `it` profile, or taken from EMBEDSTREAM_BENCH_BIN. Ports: EMBEDSTREAM_BENCH_REDIS_PORT /
# _KAFKA_PORT / _HTTP_PORT (default 46379, 49092, 48080).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
users=${1:-200000}
items=${2:-20000}
per_user=${3:-2}
command -v heaptrack >/dev/null || { echo "heaptrack is not installed" >&2; exit 1; }
export EMBEDSTREAM_DEV_DIR="$root/.dev-bench"
export EMBEDSTREAM_REDIS_PORT=${EMBEDSTREAM_BENCH_REDIS_PORT:-46379}
export EMBEDSTREAM_KAFKA_PORT=${EMBEDSTREAM_BENCH_KAFKA_PORT:-49092}
http_port=${EMBEDSTREAM_BENCH_HTTP_PORT:-48080}
run_id="heap-$(date +%s)"
work="$EMBEDSTREAM_DEV_DIR/$run_id"
bin=${EMBEDSTREAM_BENCH_BIN:-}
if [[ -z $bin ]]; then
  cargo build --profile it --locked --quiet --no-default-features --bin embedstream
  mkdir -p "$EMBEDSTREAM_DEV_DIR/bin"
  cp "${CARGO_TARGET_DIR:-$root/target}/it/embedstream" "$EMBEDSTREAM_DEV_DIR/bin/embedstream-glibc"
  bin="$EMBEDSTREAM_DEV_DIR/bin/embedstream-glibc"
fi
mkdir -p "$root/.cache/bench" "$work"
data="$root/.cache/bench/population-$users-$items-$per_user.jsonl"
[[ -f $data ]] || python3 scripts/gen-population.py "$users" "$items" "$per_user" "$data"

trap 'scripts/dev-down.sh >/dev/null' EXIT
scripts/dev-up.sh "$run_id:4" "$run_id-dlq:1" >/dev/null
export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
export EMBEDSTREAM_AUTH__ENABLED=false
export RUST_LOG=warn
"$bin" produce --input "$data" --format jsonl --topic "$run_id" >/dev/null
heaptrack -o "$work/heap" "$bin" run --topic "$run_id" --group "$run_id" --namespace "$run_id" \
  --listen "127.0.0.1:$http_port" >"$work/service.log" 2>&1 &
started=$SECONDS
until curl -s "http://127.0.0.1:$http_port/readyz" | python3 -c 'import json,sys; d=json.load(sys.stdin); i=d["ingest"]; sys.exit(0 if d["ready"] and i["caught_up"] and i["applied"] >= 1 else 1)' 2>/dev/null; do
  (( SECONDS - started < 1800 )) || { tail -20 "$work/service.log" >&2; exit 1; }
  sleep 2
done
echo "caught up after $((SECONDS - started)) s (under heaptrack)"
sleep 15
pid=$(pgrep -f "^$bin run --topic $run_id" | head -1)
kill -9 "$pid"
wait || true
profile=$(ls "$work"/heap*.zst)
heaptrack_print -f "$profile" --flamegraph-cost-type leaked -F "$work/live.stacks" >/dev/null
python3 - "$work/live.stacks" <<'PY'
import collections, re, sys
live = collections.Counter()
for line in open(sys.argv[1]):
    stack, _, size = line.rstrip().rpartition(" ")
    frames = stack.split(";")
    owner = next((f for f in reversed(frames)
                  if re.search(r"embedstream::|usearch::|rd_kafka|redis::", f)), frames[-1])
    live[re.sub(r"::h[0-9a-f]{16}$", "", owner)[:120]] += int(size)
print(f"live heap {sum(live.values()) / 2**20:.1f} MiB")
for owner, size in live.most_common(12):
    print(f"{size / 2**20:8.1f} MiB  {owner}")
PY
echo "profile: $profile (heaptrack --analyze for the whole picture)"
