#!/usr/bin/env bash
# Hyperparameter search on the validation split only (batch on the first 20% of the 5-star
# stream, test-then-learn on the next 10%): the last 70% is never looked at. Each setting is run
# with three seeds and the mean validation recall@10 printed, best last.
# Usage: scripts/tune.sh [u.data path]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
input=${1:-$root/data/ml-100k/u.data}
bin=$root/target/release/embedstream
[[ -x $bin ]] || cargo build --release --manifest-path "$root/Cargo.toml"
results=$(mktemp)
for lr in 0.02 0.05 0.1; do
  for reg in 0.001 0.01 0.05; do
    for share in 0.0 0.5 1.0; do
      for neg in 2 8; do
        for epochs in 1 5; do
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
          echo "$mean lr=$lr reg=$reg uniform_share=$share negatives=$neg epochs=$epochs" | tee -a "$results"
        done
      done
    done
  done
done
echo "best:"; sort -n "$results" | tail -5
