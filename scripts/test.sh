#!/usr/bin/env bash
# The test command: fetches what the tests need, then format check, clippy (warnings are
# errors) and every test. Tests run in the release profile so that the MovieLens evaluation and
# replay tests take seconds, and share one build with the `embedstream` binary.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/fetch-movielens.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --release --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --release --locked --all-targets
