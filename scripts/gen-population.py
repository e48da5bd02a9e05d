#!/usr/bin/env python3
"""A generated population for the memory benchmark (BENCHMARKS.md, "Memory per entity"): USERS
users and ITEMS items, every user with EVENTS_PER_USER events and every item with at least one;
items beyond that drawn with a Zipf-like head, event time 1 ms apart, a fixed seed.
Usage: gen-population.py USERS ITEMS EVENTS_PER_USER OUT.jsonl"""
import json, random, sys

users, items, per_user, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = random.Random(11)
types = ["view", "view", "click", "like", "cart"]
base = 1_700_000_000_000
n = 0
with open(out, "w") as f:
    def write(user, item):
        global n
        f.write(json.dumps({"event_id": f"m{n}", "user_id": f"u{user}", "item_id": f"i{item}",
                            "event_type": types[n % len(types)], "ts": base + n}) + "\n")
        n += 1
    head = max(items // 100, 1)
    for item in range(items):
        write(rng.randrange(users), item)
    for user in range(users):
        for _ in range(per_user):
            item = rng.randrange(items) if rng.random() < 0.5 else min(int(rng.paretovariate(1.1)) - 1, head - 1)
            write(user, item)
print(f"{n} events, {users} users, {items} items: {out}", file=sys.stderr)
