#!/usr/bin/env python3
"""COPIES x MovieLens-100k as one JSON-lines event stream, for the ingest benchmarks.

Usage: scripts/gen-ml-copies.py COPIES OUT.jsonl (run from the project root, after
scripts/fetch-movielens.sh). Events in time order; copy c has event ids prefixed `c{c}-` and its
times shifted by c years, so copies are distinct events (nothing is deduplicated) and the
stream keeps moving forward in event time. Ratings of 4 and 5 are `like`, the rest `view`.
"""
import json
import sys

copies, out = int(sys.argv[1]), sys.argv[2]
rows = []
for number, line in enumerate(open("data/ml-100k/u.data")):
    user, item, rating, ts = line.split("\t")
    rows.append((int(ts), number, user, item, int(rating)))
rows.sort()
year_ms = 365 * 24 * 3600 * 1000
with open(out, "w") as f:
    for copy in range(copies):
        for ts, _, user, item, rating in rows:
            f.write(json.dumps({"event_id": f"c{copy}-{user}-{item}", "user_id": user, "item_id": item,
                                "event_type": "like" if rating >= 4 else "view",
                                "ts": ts * 1000 + copy * year_ms, "rating": rating}) + "\n")
