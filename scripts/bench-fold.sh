#!/usr/bin/env bash
# Fold throughput on the MovieLens-100k replay: decode + window + model update at the configured
# dim (default 64), pinned to one core, file reading excluded (replay reads and converts the file
# before it starts its clock). Prints every run and the median. Usage: scripts/bench-fold.sh [runs]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
runs=${1:-7}
scripts/fetch-movielens.sh >/dev/null
cargo build --release --locked --quiet
for _ in $(seq "$runs"); do
  taskset -c 0 "${CARGO_TARGET_DIR:-target}/release/embedstream" replay --json --format movielens --input data/ml-100k/u.data
done | python3 -c '
import json, statistics, sys
runs = [json.loads(line) for line in sys.stdin]
rates = sorted(run["events_per_second"] for run in runs)
print("runs:", len(runs), " events per run:", runs[0]["received"], " digest:", runs[0]["digest"][:16])
print("events/s per run:", " ".join(f"{rate:,.0f}" for rate in rates))
print(f"median: {statistics.median(rates):,.0f} events/s  (min {rates[0]:,.0f}, max {rates[-1]:,.0f})")
'
