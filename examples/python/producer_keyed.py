"""Produce keyed messages and show which partition each key lands in.

Kafka picks a record's partition by hashing its key, so every record with the
same key goes to the same partition. Within one partition records keep the
order they were written in, which gives you per-key ordering: all events of
"alice" are read back in the order they were produced, even though the topic
has several partitions. Records of different keys may interleave.

Run:

    python producer_keyed.py                      # topic "user-events", 3 partitions
    python producer_keyed.py --keys alice,bob,carol --count 4 --partitions 6

Output: one line per record (key -> partition @ offset), then a table of
key -> partition. The program checks that no key was split over partitions
and that each key's offsets increase, and exits 1 if not.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import Producer

from config import BOOTSTRAP, ensure_topic, serialize_str


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="user-events")
    ap.add_argument("--partitions", type=int, default=3,
                    help="partition count used if the topic must be created")
    ap.add_argument("--keys", default="alice,bob,carol,dave,erin",
                    help="comma-separated keys")
    ap.add_argument("--count", type=int, default=3, help="messages per key")
    args = ap.parse_args()

    keys = [k for k in args.keys.split(",") if k]
    partitions = ensure_topic(args.topic, partitions=args.partitions)
    print(f"topic {args.topic} has {partitions} partitions")

    # acks=all plus idempotence: retries can neither duplicate nor reorder records,
    # which is what you want when the order of a key's events matters.
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    placed: dict[str, list[tuple[int, int, str]]] = {k: [] for k in keys}
    failures = []

    def on_delivery(err, msg):
        key = msg.key().decode()
        if err is not None:
            failures.append(err)
            print(f"FAILED key={key}: {err.str()}")
            return
        placed[key].append((msg.partition(), msg.offset(), msg.value().decode()))
        print(f"key={key:<8} -> partition {msg.partition()} offset {msg.offset():<4} "
              f"value={msg.value().decode()}")

    for seq in range(args.count):
        for key in keys:
            producer.produce(args.topic, key=serialize_str(key),
                             value=serialize_str(f"{key}-event-{seq}"), on_delivery=on_delivery)
        producer.poll(0)
    if producer.flush(30) or failures:
        print("some messages were not delivered", file=sys.stderr)
        return 1

    print("\nkey       partition  offsets")
    ok = True
    for key in keys:
        parts = sorted({p for p, _, _ in placed[key]})
        offsets = [o for _, o, _ in placed[key]]
        print(f"{key:<9} {','.join(map(str, parts)):<10} {offsets}")
        if len(parts) != 1:
            print(f"  !! key {key} was spread over partitions {parts}")
            ok = False
        if offsets != sorted(offsets):
            print(f"  !! offsets of key {key} are not increasing")
            ok = False
    print("every key stayed in one partition, in order" if ok else "key placement broken")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
