#!/usr/bin/env bash
# Redis time per item of a flush's item writes (ITEM_APPLY, src/store/write.rs), on a private
# redis-server with nothing else running on it (scripts/bench-item-apply.py has the details).
# Under steady ingest on a large catalogue a flush rewrites most items (each event updates its
# item and 32 sampled negatives), all in the flush's last transaction: items x this time is how
# long that transaction holds Redis. Usage: scripts/bench-item-apply.sh [items]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${EMBEDSTREAM_BENCH_ITEM_REDIS_PORT:-47111}
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
echo "redis-server $(redis-server --version | grep -o 'v=[^ ]*')"
python3 "$root/scripts/bench-item-apply.py" "$port" "${1:-20000}"
