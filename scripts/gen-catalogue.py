#!/usr/bin/env python3
"""A generated catalogue for the ranking benchmark (BENCHMARKS.md): ITEMS items, each with at
least one event, plus a Zipf-like head; USERS users; event time 1 ms apart per 2 events.
Usage: gen-catalogue.py ITEMS USERS OUT.jsonl"""
import json, random, sys

items, users, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(7)
events = [(rng.randrange(users), item) for item in range(items)]
head = max(items // 50, 1)
events += [(rng.randrange(users), min(int(rng.paretovariate(1.2)) - 1, head - 1)) for _ in range(items // 2)]
rng.shuffle(events)
types = ["view", "view", "click", "like", "cart"]
base = 1_700_000_000_000
with open(out, "w") as f:
    for n, (user, item) in enumerate(events):
        f.write(json.dumps({"event_id": f"g{n}", "user_id": f"u{user}", "item_id": f"i{item}",
                            "event_type": types[n % len(types)], "ts": base + n // 2}) + "\n")
