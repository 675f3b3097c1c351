"""Produce JSON objects (orders) to a topic.

Kafka only sees bytes. To send structured data, serialize each object (here:
JSON, with serialize_json from config.py) and deserialize it in the consumer.
The order id is used as the key, so all updates of one order stay in order.

Run:

    python producer_json.py                       # 5 orders to topic "orders"
    python producer_json.py --count 50 --topic orders-test

Read them with: python consumer_basic.py --topic orders --format json
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from confluent_kafka import Producer

from config import BOOTSTRAP, ensure_topic, serialize_json, serialize_str

PRODUCTS = [("keyboard", 49.90), ("mouse", 19.50), ("monitor", 189.00), ("cable", 7.25)]


def make_order(n: int, rng: random.Random) -> dict:
    product, price = rng.choice(PRODUCTS)
    quantity = rng.randint(1, 3)
    return {
        "order_id": f"order-{n}",
        "customer": rng.choice(["alice", "bob", "carol"]),
        "product": product,
        "quantity": quantity,
        "total": round(price * quantity, 2),
        "created_ms": int(time.time() * 1000),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--seed", type=int, default=None, help="random seed (repeatable output)")
    args = ap.parse_args()

    ensure_topic(args.topic, partitions=1)
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    rng = random.Random(args.seed)
    failures = []

    def on_delivery(err, msg):
        if err is not None:
            failures.append(err)
            print(f"FAILED {msg.key()!r}: {err.str()}")
        else:
            print(f"delivered partition {msg.partition()} offset {msg.offset()}: "
                  f"{msg.value().decode()}")

    for n in range(args.count):
        order = make_order(n, rng)
        producer.produce(args.topic, key=serialize_str(order["order_id"]),
                         value=serialize_json(order), on_delivery=on_delivery)
        producer.poll(0)
    if producer.flush(30) or failures:
        print("some orders were not delivered", file=sys.stderr)
        return 1
    print(f"sent {args.count} orders to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
