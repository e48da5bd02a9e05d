"""Redis time per item of a flush's item writes (`ITEM_APPLY` of src/store/write.rs), taken from
the source, on the fast path a steady stream takes (the stored version is the writer's).

Writes N items (default 20,000) in chunks of 500 as a flush does (`ITEM_APPLY_CHUNK`), then
rewrites them five times; prints the best rewrite's time per item as the client saw it and
Redis's own time per item (`INFO commandstats`, `cmdstat_eval`). Usage (via
scripts/bench-item-apply.sh): bench-item-apply.py <redis port> [items] [script file]."""
import random
import re
import socket
import struct
import sys
import time

root = __file__.rsplit("/scripts/", 1)[0]
source = open(f"{root}/src/store/write.rs").read()
script = re.search(r'pub const ITEM_APPLY: &str = r#"(.*?)"#;', source, re.S).group(1)
chunk_size = int(re.search(r"pub const ITEM_APPLY_CHUNK: usize = (\d+);", source).group(1))
port = int(sys.argv[1])
items = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
if len(sys.argv) > 3:  # a variant of the script, to compare
    script = open(sys.argv[3]).read()
DIM = 64

connection = socket.create_connection(("127.0.0.1", port))
replies = connection.makefile("rb")


def encode(args):
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, (int, float)):
            arg = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def reply():
    line = replies.readline()
    kind = line[:1]
    if kind == b"-":
        raise RuntimeError(line.decode().strip())
    if kind == b"$":
        length = int(line[1:])
        return replies.read(length + 2)[:-2] if length >= 0 else None
    if kind == b"*":
        return [reply() for _ in range(int(line[1:]))]
    return line


def call(*args):
    connection.sendall(encode(list(args)))
    return reply()


def vector():
    values = [random.uniform(-0.1, 0.1) for _ in range(DIM)]
    return b"ESV1" + struct.pack("<HHI", 1, 1, DIM) + struct.pack(f"<{DIM}f", *values)


delta = struct.pack(f"<{DIM}f", *([0.001] * DIM))
ids = [f"i{n}" for n in range(items)]
versions = dict.fromkeys(ids, 0)
vectors = {item: vector() for item in ids}


def apply_all():
    took = 0.0
    for start in range(0, items, chunk_size):
        chunk = ids[start:start + chunk_size]
        args = ["EVAL", script, 2 + len(chunk), "bench:items", "bench:item_changes"]
        args += [f"bench:item:{item}" for item in chunk]
        args += [DIM, "4", "8", "bench-writer", 4096, "bench:quarantine:item:"]
        for item in chunk:
            args += [item, versions[item], vectors[item], vectors[item], "0.1", "0.5", "0.5", 3,
                     1000, "-1.5", delta, delta, "0.01", "0.1", "0.1", 1, "-3.0"]
        started = time.perf_counter()
        call(*args)
        took += time.perf_counter() - started
    for item in ids:
        versions[item] += 1
    return took


call("FLUSHALL")
apply_all()  # the items are new: stored at version 1
call("CONFIG", "RESETSTAT")
best = min(apply_all() for _ in range(5))
stats = call("INFO", "commandstats").decode()
calls, usec = map(int, re.search(r"cmdstat_eval:calls=(\d+),usec=(\d+)", stats).groups())
print(f"{items} items in chunks of {chunk_size}, fast path (stored version = the writer's):")
print(f"  client side, best of 5: {best / items * 1e6:.1f} us per item")
print(f"  Redis's own time (INFO commandstats, all 5): {usec / (calls * chunk_size):.1f} us per item,"
      f" {usec / calls / 1000:.1f} ms per call of {chunk_size}")
