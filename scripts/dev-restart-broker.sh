#!/usr/bin/env bash
# Crash and restart the broker that scripts/dev-up.sh started, leaving Redis (and moto) running:
# SIGKILL to the pid in $EMBEDSTREAM_DEV_DIR/tansu.pid (only when it is a live tansu), wait until
# it is gone, stay down for SECONDS_DOWN (default 0), then run scripts/dev-up.sh again with the
# same environment, which starts tansu with the same arguments and waits until it serves.
#
#   scripts/dev-restart-broker.sh [SECONDS_DOWN]
#
# Meant for the durable mode (EMBEDSTREAM_KAFKA_STORAGE=s3): with memory storage the restarted
# broker comes back empty. Used by the broker-restart fault test (tests/faults.rs).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev="${EMBEDSTREAM_DEV_DIR:-$root/.dev}"
pidfile="$dev/tansu.pid"
down_s="${1:-0}"

log() { echo "dev-restart-broker: $*" >&2; }
die() { echo "dev-restart-broker: error: $*" >&2; exit 1; }

[[ "$down_s" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "SECONDS_DOWN must be a number, got '$down_s'"
[[ "${EMBEDSTREAM_KAFKA_STORAGE:-memory}" == s3 ]] \
  || log "warning: memory storage: the broker restarts empty (set EMBEDSTREAM_KAFKA_STORAGE=s3)"

alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]]
}

[[ -s "$pidfile" ]] || die "no broker pidfile at $pidfile (is dev-up.sh running with this EMBEDSTREAM_DEV_DIR?)"
pid=$(<"$pidfile")
[[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || die "pid $pid in $pidfile is not running"
[[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == tansu ]] || die "pid $pid is not tansu"

kill -KILL "$pid"
for ((i = 0; i < 100; i++)); do
  alive "$pid" || break
  sleep 0.1
done
alive "$pid" && die "tansu (pid $pid) survived SIGKILL for 10 s"
rm -f "$pidfile"
log "killed tansu (pid $pid); down for ${down_s}s"
sleep "$down_s"
exec "$root/scripts/dev-up.sh" >/dev/null
