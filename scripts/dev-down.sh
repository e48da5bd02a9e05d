#!/usr/bin/env bash
# Stop the services scripts/dev-up.sh started: exactly the processes named by its pidfiles
# (.dev/tansu.pid, .dev/redis/redis.pid, .dev/moto.pid of the durable-broker mode and
# .dev/redis-cluster/*/redis.pid of the cluster mode), and only
# when the pid still belongs to a process of the expected name. SIGTERM, then SIGKILL after
# EMBEDSTREAM_DEV_TIMEOUT (10 s). Safe to run twice. The broker keeps everything in memory (or in
# moto's memory), so its topics and offsets go with it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dev="${EMBEDSTREAM_DEV_DIR:-$root/.dev}"
timeout_s="${EMBEDSTREAM_DEV_TIMEOUT:-10}"

log() { echo "dev-down: $*" >&2; }

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]]
}

# stop NAME PIDFILE COMM
stop() {
  local name=$1 pidfile=$2 comm=$3 pid i
  if [[ ! -e "$pidfile" ]]; then
    log "$name: not running (no pidfile)"
    return 0
  fi
  pid=$(<"$pidfile")
  if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! alive "$pid"; then
    log "$name: not running (stale pidfile removed)"
    rm -f "$pidfile"
    return 0
  fi
  if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$comm" ]]; then
    log "$name: pid $pid is not $comm any more; left alone (stale pidfile removed)"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout_s * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "$name: pid $pid ignored SIGTERM for ${timeout_s}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "$name: stopped (pid $pid)"
}

stop tansu "$dev/tansu.pid" tansu
stop redis "$dev/redis/redis.pid" redis-server
stop moto "$dev/moto.pid" moto_server
# The nodes of EMBEDSTREAM_REDIS_CLUSTER=1; their cluster state (nodes.conf) goes with them.
for pidfile in "$dev"/redis-cluster/*/redis.pid; do
  [[ -e "$pidfile" ]] || continue
  stop "redis cluster node $(basename "$(dirname "$pidfile")")" "$pidfile" redis-server
  rm -f "$(dirname "$pidfile")/nodes.conf"
done
