"""kafka-python: produce JSON objects.

Like ../producer_json.py: a value_serializer turns each dict into JSON bytes,
and the order id is the key.

Run:

    python kafka_python/producer_json.py --count 5 --topic orders

Read them with: python kafka_python/consumer_basic.py --topic orders --format json
"""

from __future__ import annotations

import argparse
import sys
import time

from kafka import KafkaProducer

from topics import BOOTSTRAP, JsonSerializer, StrSerializer, ensure_topic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--count", type=int, default=5)
    args = ap.parse_args()

    ensure_topic(args.topic)
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, key_serializer=StrSerializer(),
                             value_serializer=JsonSerializer())
    for n in range(args.count):
        order = {"order_id": f"order-{n}", "product": ["pen", "ink", "paper"][n % 3],
                 "quantity": n % 4 + 1, "created_ms": int(time.time() * 1000)}
        meta = producer.send(args.topic, key=order["order_id"], value=order).get(timeout=30)
        print(f"delivered partition {meta.partition} offset {meta.offset}: {order}")
    producer.close()
    print(f"sent {args.count} orders to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
