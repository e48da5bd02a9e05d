"""Prints every stall of a Redis server: a PING sent every 2 ms on a connection of its own, and
each answer slower than a threshold (default 5 ms) as `<unix time> <ms>`. Reconnects when the
server goes away (as the benchmarks' dev-up/dev-down restart it). Used beside
scripts/bench-ranking.sh to see how long a flush's transaction holds Redis (BENCHMARKS.md,
"Redis held for seconds by each flush"). Usage: watch-redis-stalls.py <port> [threshold ms]."""
import socket
import sys
import time

port = int(sys.argv[1])
threshold = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.005
while True:
    try:
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    except OSError:
        time.sleep(0.5)
        continue
    try:
        while True:
            sent = time.time()
            connection.sendall(b"PING\r\n")
            connection.recv(64)
            took = time.time() - sent
            if took > threshold:
                print(f"{sent:.3f} {took * 1000:.1f}", flush=True)
            time.sleep(0.002)
    except OSError:
        connection.close()
        time.sleep(0.5)
