#!/usr/bin/env bash
# Publish events over HTTP with plain curl: one event with POST /v1/events, then three with
# POST /v1/events:batch (one broker round trip, one result per event). Needs a token with the
# `events:write` scope (README, "Authentication"), for example from a service client:
#   TOKEN=$(curl -s -d grant_type=client_credentials -d client_id=demo \
#       --data-urlencode client_secret="$SECRET" localhost:8080/v1/auth/token | jq -r .access_token)
#   examples/http_events.sh http://localhost:8080 "$TOKEN"
# Prints each answer (JSON) on its own line; exits non-zero on an HTTP error.
set -euo pipefail
base=${1:?usage: http_events.sh BASE_URL TOKEN}
token=${2:?usage: http_events.sh BASE_URL TOKEN}
now=$(($(date +%s) * 1000))
run=$(date +%s%N)

# One event: 202 with its partition and offset once the broker acknowledged it.
curl -fsS -X POST "$base/v1/events" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"event_id\":\"curl-$run-0\",\"user_id\":\"curl-user\",\"item_id\":\"curl-item-1\",\"event_type\":\"view\",\"ts\":$now}"
echo

# A batch: 200 with {"accepted", "rejected", "failed", "results": [one per event]}.
curl -fsS -X POST "$base/v1/events:batch" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"events\":[
        {\"event_id\":\"curl-$run-1\",\"user_id\":\"curl-user\",\"item_id\":\"curl-item-2\",\"event_type\":\"click\",\"ts\":$now},
        {\"event_id\":\"curl-$run-2\",\"user_id\":\"curl-user\",\"item_id\":\"curl-item-3\",\"event_type\":\"like\",\"ts\":$now},
        {\"event_id\":\"curl-$run-3\",\"user_id\":\"curl-user-2\",\"item_id\":\"curl-item-2\",\"event_type\":\"buy\",\"ts\":$now}
      ]}"
echo
