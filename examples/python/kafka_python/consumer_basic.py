"""kafka-python: subscribe as part of a consumer group and read messages.

Like ../consumer_basic.py. KafkaConsumer joins the group given by group_id;
poll() returns a batch of records per partition. Offsets are committed
automatically, so a second run with the same --group continues where the
first stopped; a new group starts at the earliest message.

Run:

    python kafka_python/consumer_basic.py --topic greetings --count 5
    python kafka_python/consumer_basic.py --topic orders --format json --duration 10

Exits 0, or 1 if --count messages did not arrive within --duration seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

from kafka import KafkaConsumer

from topics import BOOTSTRAP, JsonDeserializer, StrDeserializer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="greetings")
    ap.add_argument("--group", default="basic-consumer-kp")
    ap.add_argument("--format", choices=["text", "json"], default="text")
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--duration", type=float, default=30)
    args = ap.parse_args()

    consumer = KafkaConsumer(
        bootstrap_servers=BOOTSTRAP, group_id=args.group, auto_offset_reset="earliest",
        key_deserializer=StrDeserializer(),
        value_deserializer=JsonDeserializer() if args.format == "json" else StrDeserializer())
    consumer.partitions_for_topic(args.topic)  # load metadata before joining the group
    consumer.subscribe([args.topic])
    received = 0
    deadline = time.monotonic() + args.duration
    try:
        while time.monotonic() < deadline and (args.count is None or received < args.count):
            limit = None if args.count is None else args.count - received
            for tp, records in consumer.poll(timeout_ms=500, max_records=limit).items():
                for r in records:
                    received += 1
                    print(f"partition {r.partition} offset {r.offset} key={r.key!r} "
                          f"value={r.value!r}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()  # commits the final offsets
    print(f"received {received} messages")
    return 1 if args.count is not None and received < args.count else 0


if __name__ == "__main__":
    sys.exit(main())
