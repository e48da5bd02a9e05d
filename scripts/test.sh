#!/usr/bin/env bash
# The test command: fetches MovieLens-100k, starts a Redis and a Kafka-compatible broker of its
# own (scripts/dev-up.sh on test ports, state in .dev-test/), runs every test, and stops the
# services it started. Tests run in the `it` profile (Cargo.toml: release optimisation, no LTO) so that the MovieLens tests take seconds while the one integration-test
# binary (tests/it/) links fast. The tests' other prerequisites (moto, promtool, chromium, two
# pinned PyPI tools) are installed in the background while the test binary compiles; their log is
# printed once they are done. Clippy is scripts/lint.sh (CI runs it after this).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

export EMBEDSTREAM_DEV_DIR="$root/.dev-test"
export EMBEDSTREAM_REDIS_PORT="${EMBEDSTREAM_TEST_REDIS_PORT:-26379}"
export EMBEDSTREAM_KAFKA_PORT="${EMBEDSTREAM_TEST_KAFKA_PORT:-29092}"

scripts/fetch-movielens.sh

install_prerequisites() {
  # The fault-injection tests (tests/faults.rs) start stacks of their own, one with the durable
  # broker (tansu on moto's S3): install moto here, once, rather than inside a test's time budget.
  echo "== fault-injection prerequisites (moto for the durable broker)"
  EMBEDSTREAM_KAFKA_STORAGE=s3 EMBEDSTREAM_DEV_INSTALL_ONLY=1 scripts/dev-up.sh

  # The alert-rule tests (tests/it/deploy.rs) run promtool, from Debian's prometheus package.
  echo "== promtool (Debian's prometheus package) for the alert-rule tests"
  if ! command -v promtool >/dev/null; then
    as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -q --no-install-recommends prometheus >/dev/null \
      || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
  fi

  # The demo page's browser test (tests/it/demo.rs) drives Debian's chromium through chromedriver.
  echo "== chromium and chromium-driver (Debian) for the demo page's browser test"
  if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null \
      || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; }
  fi

  # The compose-file test validates docker-compose.yml with check-jsonschema (PyPI, pinned), which
  # carries the Compose specification's JSON Schema; installed once into .cache/.
  echo "== check-jsonschema (PyPI) for the compose-file test"
  cjs="$root/.cache/check-jsonschema-0.39.0"
  if [[ ! -x "$cjs/bin/check-jsonschema" ]] || ! "$cjs/bin/check-jsonschema" --version >/dev/null 2>&1; then
    python3 -m venv "$cjs"
    "$cjs/bin/pip" install --quiet --disable-pip-version-check check-jsonschema==0.39.0
  fi

  # The producer-example test runs examples/producer.py with confluent-kafka (PyPI, pinned).
  echo "== confluent-kafka (PyPI) for the Python producer example"
  pyx="$root/.cache/py-examples-confluent-kafka-2.16.1"
  if [[ ! -x "$pyx/bin/python" ]] || ! "$pyx/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
    python3 -m venv "$pyx"
    "$pyx/bin/pip" install --quiet --disable-pip-version-check confluent-kafka==2.16.1
  fi
}
cjs="$root/.cache/check-jsonschema-0.39.0"
pyx="$root/.cache/py-examples-confluent-kafka-2.16.1"
export EMBEDSTREAM_CHECK_JSONSCHEMA="$cjs/bin/check-jsonschema"
export EMBEDSTREAM_EXAMPLES_PYTHON="$pyx/bin/python"

echo "== test prerequisites, in the background (log: .dev-test/prerequisites.log)"
mkdir -p "$EMBEDSTREAM_DEV_DIR"
install_prerequisites >"$EMBEDSTREAM_DEV_DIR/prerequisites.log" 2>&1 &
prerequisites=$!
trap 'kill "$prerequisites" 2>/dev/null || true' EXIT

echo "== cargo test --no-run (compiling the tests)"
cargo test --profile it --locked --all-targets --no-run

if ! wait "$prerequisites"; then
  cat "$EMBEDSTREAM_DEV_DIR/prerequisites.log"
  echo "installing the test prerequisites failed (log above)" >&2
  exit 1
fi
cat "$EMBEDSTREAM_DEV_DIR/prerequisites.log"

echo "== starting redis and the broker for the integration tests"
trap 'scripts/dev-down.sh' EXIT
scripts/dev-up.sh >/dev/null
export EMBEDSTREAM_TEST_BROKERS="127.0.0.1:$EMBEDSTREAM_KAFKA_PORT"
export EMBEDSTREAM_TEST_REDIS="redis://127.0.0.1:$EMBEDSTREAM_REDIS_PORT/"

# Four test threads on two cores: most integration tests wait on processes they start, kill and
# restart (broker, Redis, services), so two threads left the cores half idle. Measured on the
# development machine: the integration tests in 349 s with two threads, 180 and 190 s with four.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"

echo "== cargo test"
cargo test --profile it --locked --all-targets
