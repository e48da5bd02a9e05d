#!/usr/bin/env bash
# The main job end to end on real data, on a fresh machine:
#   1. fetch MovieLens-100k and build embedstream;
#   2. start Redis and the Kafka-compatible broker (scripts/dev-up.sh, state in .dev-quickstart/);
#   3. publish all 100,000 ratings to a fresh topic (keyed by user, in event-time order);
#   4. run the service until every event is consumed, applied and flushed to Redis;
#   5. print the top 10 for three users, fetched with curl, and check the state digest in Redis
#      against a file replay of the same events;
#   6. print the URL of the demo page, and with --keep-running serve it until Ctrl-C;
#   7. stop everything it started.
set -euo pipefail
keep_running=false
for arg in "$@"; do
  case "$arg" in
    --keep-running) keep_running=true ;;
    *) echo "usage: scripts/quickstart.sh [--keep-running]" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

export EMBEDSTREAM_DEV_DIR="$root/.dev-quickstart"
export EMBEDSTREAM_REDIS_PORT="${EMBEDSTREAM_REDIS_PORT:-36379}"
export EMBEDSTREAM_KAFKA_PORT="${EMBEDSTREAM_KAFKA_PORT:-39092}"
http_port="${EMBEDSTREAM_HTTP_PORT:-38080}"
run_id="quickstart-$(date +%s)"
bin="${CARGO_TARGET_DIR:-$root/target}/release/embedstream"

scripts/fetch-movielens.sh
cargo build --release --locked
service_pid=""
cleanup() {
  if [[ -n "$service_pid" ]] && kill -0 "$service_pid" 2>/dev/null; then
    kill "$service_pid" && wait "$service_pid" || true
  fi
  scripts/dev-down.sh
}
trap cleanup EXIT
scripts/dev-up.sh "$run_id-events:4" "$run_id-dlq:1" >/dev/null

export EMBEDSTREAM_KAFKA__BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_KAFKA__DEAD_LETTER_TOPIC="$run_id-dlq"
export EMBEDSTREAM_KAFKA__SESSION_TIMEOUT_MS=6000
export EMBEDSTREAM_STORE__URL="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"
# Auth: a fresh key pair; the service verifies with the JWKS, curl sends an ops token.
"$bin" auth keygen --dir "$EMBEDSTREAM_DEV_DIR/auth" --kid quickstart >/dev/null
export EMBEDSTREAM_AUTH__JWKS_PATH="$EMBEDSTREAM_DEV_DIR/auth/jwks.json"
export EMBEDSTREAM_AUTH__SIGNING_KEY_PATH="$EMBEDSTREAM_DEV_DIR/auth/signing-key.pem"
export EMBEDSTREAM_AUTH__SIGNING_KID=quickstart
token=$("$bin" auth token --sub client:quickstart --scope recs:read --ttl-s 3600)

echo "== publishing MovieLens-100k to topic $run_id-events"
"$bin" produce --input data/ml-100k/u.data --format movielens --topic "$run_id-events"

echo "== running the service (namespace $run_id) until everything is consumed"
"$bin" run --topic "$run_id-events" --group "$run_id" --namespace "$run_id" --demo \
  --listen "127.0.0.1:$http_port" >"$EMBEDSTREAM_DEV_DIR/service.log" 2>&1 &
service_pid=$!
base="http://127.0.0.1:$http_port"
for _ in $(seq 600); do
  if ! kill -0 "$service_pid" 2>/dev/null; then
    echo "error: the service exited; log: $EMBEDSTREAM_DEV_DIR/service.log" >&2
    tail -20 "$EMBEDSTREAM_DEV_DIR/service.log" >&2
    exit 1
  fi
  ready=$(curl -s "$base/readyz" || true)
  if python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d["ready"] and d["ingest"]["caught_up"] and d["ingest"]["applied"] >= 100000 else 1)' "$ready" 2>/dev/null; then
    break
  fi
  sleep 0.5
done
python3 - "$ready" <<'PY'
import json, sys
d = json.loads(sys.argv[1])["ingest"]
print("applied %d events, rejected %d, %d flushes to redis, caught up: %s"
      % (d["applied"], d["rejected"], d["flushes"], d["caught_up"]))
PY

for user in 1 196 943; do
  echo
  echo "== curl -s '$base/v1/users/$user/recommendations?k=10'"
  curl -s -H "Authorization: Bearer $token" "$base/v1/users/$user/recommendations?k=10" | python3 -c '
import json, sys
body = json.load(sys.stdin)
print("user %s (source: %s)" % (body["user_id"], body["source"]))
for rank, item in enumerate(body["items"], 1):
    print("  %2d. item %5s  score %.4f" % (rank, item["item_id"], item["score"]))
'
done

echo
echo "== state digest in redis vs a file replay of the same events"
stored=$("$bin" digest --namespace "$run_id" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
replayed=$("$bin" replay --input data/ml-100k/u.data --format movielens --partitions 4 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["digest"])')
echo "redis   $stored"
echo "replay  $replayed"
[[ "$stored" == "$replayed" ]] && echo "identical" || { echo "error: digests differ" >&2; exit 1; }

echo
if $keep_running; then
  echo "== demo page: $base/demo (sign in as a user 1 to 943, like or view movies); Ctrl-C stops"
  # With a trap, the signal ends the wait at once; the EXIT trap then stops everything.
  trap 'echo; echo "== stopping"; exit 0' INT TERM
  wait "$service_pid" || true
else
  echo "== demo page: $base/demo while the service runs: scripts/quickstart.sh --keep-running"
fi
kill "$service_pid" && wait "$service_pid" || true
service_pid=""
