"""kafka-python: keyed messages, and which partition each key lands in.

Like ../producer_keyed.py: records with the same key always go to the same
partition, so each key's records stay in order. kafka-python hashes keys with
murmur2, like the Java client. (librdkafka, under confluent-kafka, defaults
to a different hash, so the same key may land in another partition when
written by confluent-kafka; set its partitioner to "murmur2_random" to match.)

Run:

    python kafka_python/producer_keyed.py --keys alice,bob,carol --count 3

Prints key -> partition per record and a summary table; exits 1 if a key was
spread over several partitions.
"""

from __future__ import annotations

import argparse
import sys

from kafka import KafkaProducer

from topics import BOOTSTRAP, StrSerializer, ensure_topic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="user-events-kp")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--keys", default="alice,bob,carol,dave,erin")
    ap.add_argument("--count", type=int, default=3, help="messages per key")
    args = ap.parse_args()

    keys = [k for k in args.keys.split(",") if k]
    print(f"topic {args.topic} has {ensure_topic(args.topic, args.partitions)} partitions")
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, key_serializer=StrSerializer(),
                             value_serializer=StrSerializer(), acks="all")
    sent = [(key, f"{key}-event-{seq}", producer.send(args.topic, key=key,
                                                      value=f"{key}-event-{seq}"))
            for seq in range(args.count) for key in keys]
    producer.flush()
    placed: dict[str, list[tuple[int, int]]] = {k: [] for k in keys}
    for key, value, future in sent:
        meta = future.get(timeout=30)
        placed[key].append((meta.partition, meta.offset))
        print(f"key={key:<8} -> partition {meta.partition} offset {meta.offset:<4} value={value}")
    producer.close()

    print("\nkey       partition  offsets")
    ok = True
    for key in keys:
        parts = sorted({p for p, _ in placed[key]})
        offsets = [o for _, o in placed[key]]
        print(f"{key:<9} {','.join(map(str, parts)):<10} {offsets}")
        ok = ok and len(parts) == 1 and offsets == sorted(offsets)
    print("every key stayed in one partition, in order" if ok else "key placement broken")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
