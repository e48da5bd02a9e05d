#!/usr/bin/env bash
# The main job end to end on real data: fetch MovieLens-100k, build, fold all 100,000 ratings
# through decode, windows and the model (printing the state digest), then run the prequential
# evaluation against the popularity baseline and write its chart to eval-recall.svg.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/fetch-movielens.sh
cargo build --release --locked
bin=target/release/embedstream

echo "== replay: all 100,000 MovieLens ratings through the fold"
"$bin" replay --input data/ml-100k/u.data --format movielens
echo
echo "== prequential evaluation (Kitazawa protocol, 5-star events)"
"$bin" eval --input data/ml-100k/u.data --plot eval-recall.svg
