"""kafka-python: a new group starting at the earliest vs the latest offset.

Like ../consumer_offsets.py. auto_offset_reset only matters for a group with
no committed offset: "earliest" reads what was written before it started,
"latest" only what comes after. The demo writes --count old messages, starts
one consumer of each kind in a new group, waits until both know their start
position, writes --count new messages and shows what each one read.

Run:

    python kafka_python/consumer_offsets.py --count 3 --topic offsets-demo-kp

Exits 0 if earliest read old and new messages and latest only the new ones.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer

from topics import BOOTSTRAP, StrDeserializer, StrSerializer, ensure_topic


def produce(topic: str, values: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, value_serializer=StrSerializer())
    for v in values:
        producer.send(topic, v).get(timeout=30)
    producer.close()
    print(f"produced: {', '.join(values)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="offsets-demo-kp")
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--duration", type=float, default=30)
    args = ap.parse_args()

    ensure_topic(args.topic)
    run = uuid.uuid4().hex[:4]
    old = [f"old-{run}-{i}" for i in range(args.count)]
    new = [f"new-{run}-{i}" for i in range(args.count)]
    produce(args.topic, old)

    consumers = {}
    for reset in ("earliest", "latest"):
        group = f"offsets-demo-kp-{reset}-{uuid.uuid4().hex[:8]}"
        c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group,
                          auto_offset_reset=reset, enable_auto_commit=False,
                          value_deserializer=StrDeserializer())
        # Load the topic's metadata before joining the group, so the first
        # assignment already includes its partitions.
        c.partitions_for_topic(args.topic)
        c.subscribe([args.topic])
        consumers[reset] = c
        print(f"started consumer with auto_offset_reset={reset} in new group {group}")
    received = {name: [] for name in consumers}
    deadline = time.monotonic() + args.duration

    def poll_all() -> None:
        for name, c in consumers.items():
            for records in c.poll(timeout_ms=100).values():
                received[name].extend(r.value for r in records)

    try:
        # Wait for the partition assignments, then ask for the start positions:
        # position() resolves auto_offset_reset for a partition without an offset.
        while not all(c.assignment() for c in consumers.values()):
            if time.monotonic() > deadline:
                print("consumers did not get their partitions in time", file=sys.stderr)
                return 1
            poll_all()
        latest = consumers["latest"]
        print("latest starts at the end of the partition: offsets "
              f"{ {tp.partition: latest.position(tp) for tp in latest.assignment()} }")
        produce(args.topic, new)
        while time.monotonic() < deadline:
            ours = {n: [v for v in vals if f"-{run}-" in v] for n, vals in received.items()}
            if len(ours["earliest"]) >= 2 * args.count and len(ours["latest"]) >= args.count:
                break
            poll_all()
    finally:
        for c in consumers.values():
            c.close()

    for name in consumers:
        print(f"{name:<8} read {len(received[name])} messages: {', '.join(received[name])}")
    ok = (set(old + new) <= set(received["earliest"])
          and [v for v in received["latest"] if f"-{run}-" in v] == new)
    print("earliest saw the old and the new messages; latest only the new ones"
          if ok else "unexpected result")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
