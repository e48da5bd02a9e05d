#!/usr/bin/env bash
# The lint gate: rustfmt's check and clippy on every target with warnings as errors, in the `it`
# profile of the test command. CI (.ci/run) runs it after scripts/test.sh; run it before a commit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --profile it --all-targets --locked -- -D warnings
