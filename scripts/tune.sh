#!/usr/bin/env bash
# Hyperparameter search on the validation split only (batch on the first 20% of the 5-star
# stream, test-then-learn on the next 10%): the last 70% is never looked at. Each setting is run
# with three seeds and the mean validation recall@10 printed, best last.
# Usage: scripts/tune.sh [u.data path]; the grid is overridable with TUNE_LR, TUNE_REG,
# TUNE_SHARE, TUNE_NEGATIVES, TUNE_EPOCHS (space-separated values).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
input=${1:-$root/data/ml-100k/u.data}
bin=${EMBEDSTREAM_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/embedstream}
[[ -x $bin ]] || cargo build --release --manifest-path "$root/Cargo.toml"
results=$(mktemp)
for lr in ${TUNE_LR:-0.01 0.02 0.05}; do
  for reg in ${TUNE_REG:-0.01 0.05 0.1}; do
    for share in ${TUNE_SHARE:-0.5 1.0}; do
      for neg in ${TUNE_NEGATIVES:-8 16}; do
        for epochs in ${TUNE_EPOCHS:-1 5}; do
          sum=0
          for seed in 1 2 3; do
            recall=$(EMBEDSTREAM_MODEL__LEARNING_RATE=$lr EMBEDSTREAM_MODEL__REGULARIZATION=$reg \
              EMBEDSTREAM_MODEL__BIAS_REGULARIZATION=$reg EMBEDSTREAM_MODEL__UNIFORM_NEGATIVE_SHARE=$share \
              EMBEDSTREAM_MODEL__NEGATIVES=$neg EMBEDSTREAM_MODEL__SEED=$seed \
              "$bin" eval --input "$input" --split validation --batch-epochs "$epochs" \
              --plot /dev/null --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["model"]["recall_at_10"])')
            sum=$(python3 -c "print($sum + $recall)")
          done
          mean=$(python3 -c "print(round($sum / 3, 4))")
          echo "$mean lr=$lr reg=$reg uniform_share=$share negatives=$neg epochs=$epochs" >>"$results"
          echo "$mean lr=$lr reg=$reg uniform_share=$share negatives=$neg epochs=$epochs"
        done
      done
    done
  done
done
echo "best:"; sort -n "$results" | tail -5
