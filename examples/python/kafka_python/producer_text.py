"""kafka-python: produce plain-text messages.

The kafka-python version of ../producer_text.py. send() returns a future;
future.get() waits for the broker's answer, which carries the partition and
offset. Serialization is set once on the producer (value_serializer).

Run:

    python kafka_python/producer_text.py --count 5 --topic greetings

Exits 0 when every message was confirmed.
"""

from __future__ import annotations

import argparse
import sys

from kafka import KafkaProducer

from topics import BOOTSTRAP, StrSerializer, ensure_topic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="greetings")
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--message", default="hello from kafka-python")
    args = ap.parse_args()

    ensure_topic(args.topic)
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, value_serializer=StrSerializer())
    futures = [producer.send(args.topic, f"{args.message} #{i}") for i in range(args.count)]
    producer.flush()
    for i, future in enumerate(futures):
        meta = future.get(timeout=30)  # raises if this message failed
        print(f"delivered '{args.message} #{i}' -> topic {meta.topic} "
              f"partition {meta.partition} offset {meta.offset}")
    producer.close()
    print(f"sent {args.count} messages to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
