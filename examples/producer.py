#!/usr/bin/env python3
"""Publish events to embedstream's events topic from Python, with confluent-kafka.

What the service expects of a producer (README, "The event contract"): one JSON event per record
(schemas/event.schema.json), the record key = user_id, Kafka's murmur2 partitioner (the Java
client's default; librdkafka's is crc32 unless told), and an idempotent producer so that the
client's retries never duplicate. The service also deduplicates by event_id.

    pip install confluent-kafka
    python3 examples/producer.py --brokers 127.0.0.1:19092 --topic events --count 100
    python3 examples/producer.py --brokers 127.0.0.1:19092 --topic events --input events.jsonl

Prints one JSON summary line: {"delivered": N, "failed": M, "topic": ...}.
"""
import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Producer


def demo_events(count):
    """`count` click/like events of 10 users over 50 items, event time now (ms)."""
    now = int(time.time() * 1000)
    for n in range(count):
        yield {
            "event_id": str(uuid.uuid4()),
            "user_id": f"py-user-{n % 10}",
            "item_id": f"py-item-{(n * 7) % 50}",
            "event_type": "like" if n % 3 == 0 else "click",
            "ts": now + n,
        }


def file_events(path):
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", default="127.0.0.1:19092")
    parser.add_argument("--topic", default="events")
    parser.add_argument("--count", type=int, default=100, help="demo events to send")
    parser.add_argument("--input", help="a JSON-lines file of events instead of demo events")
    args = parser.parse_args()

    producer = Producer({
        "bootstrap.servers": args.brokers,
        "enable.idempotence": True,      # retries never duplicate
        "partitioner": "murmur2_random",  # the Java client's partitioner, as the service's own
        "linger.ms": 5,
    })
    outcome = {"delivered": 0, "failed": 0}

    def on_delivery(error, _message):
        outcome["failed" if error else "delivered"] += 1
        if error:
            print(f"delivery failed: {error}", file=sys.stderr)

    events = file_events(args.input) if args.input else demo_events(args.count)
    for event in events:
        producer.produce(
            args.topic,
            key=str(event["user_id"]).encode(),
            value=json.dumps(event, separators=(",", ":")).encode(),
            on_delivery=on_delivery,
        )
        producer.poll(0)
    remaining = producer.flush(30)
    outcome["failed"] += remaining
    print(json.dumps({**outcome, "topic": args.topic}))
    return 0 if outcome["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
