"""Where does a new consumer group start reading? earliest vs latest.

A consumer group resumes from its committed offsets. A group that has none
yet (a new group.id) starts where auto.offset.reset says:

* earliest: at the oldest message still in the partition, so it also reads
  everything that was written before it started;
* latest: at the end of the partition, so it only sees messages written after
  it joined.

The demo writes --count "old" messages, starts one consumer of each kind
(each in a brand-new group), waits until both are positioned, writes --count
"new" messages, and shows what each consumer received.

Run:

    python consumer_offsets.py                    # topic "offsets-demo", 3 + 3 messages
    python consumer_offsets.py --count 5 --topic my-topic

Exits 0 if earliest read the old and the new messages and latest only the new
ones, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer

from config import BOOTSTRAP, deserialize_str, ensure_topic, serialize_str


def produce(topic: str, values: list[str]) -> None:
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    for v in values:
        p.produce(topic, value=serialize_str(v))
    if p.flush(30):
        raise RuntimeError("messages not delivered")
    print(f"produced: {', '.join(values)}")


def new_consumer(topic: str, reset: str) -> Consumer:
    group = f"offsets-demo-{reset}-{uuid.uuid4().hex[:8]}"  # new group: no committed offsets
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group,
                  "auto.offset.reset": reset, "enable.auto.commit": False,
                  # Report reaching the end of a partition as an event.
                  "enable.partition.eof": True})
    c.subscribe([topic])
    print(f"started consumer with auto.offset.reset={reset} in new group {group}")
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="offsets-demo")
    ap.add_argument("--count", type=int, default=3, help="old messages, and new messages")
    ap.add_argument("--duration", type=float, default=30,
                    help="give up after this many seconds")
    args = ap.parse_args()

    ensure_topic(args.topic, partitions=1)
    run = uuid.uuid4().hex[:4]  # tells this run's messages from earlier runs'
    old = [f"old-{run}-{i}" for i in range(args.count)]
    new = [f"new-{run}-{i}" for i in range(args.count)]
    produce(args.topic, old)

    consumers = {"earliest": new_consumer(args.topic, "earliest"),
                 "latest": new_consumer(args.topic, "latest")}
    received: dict[str, list[str]] = {name: [] for name in consumers}
    at_end: set[str] = set()  # consumers that reached the end of the partition
    deadline = time.monotonic() + args.duration

    def poll_all() -> None:
        for name, c in consumers.items():
            msg = c.poll(0.1)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(name)
                continue
            received[name].append(deserialize_str(msg.value()))

    try:
        # The "latest" consumer looks up the end offset only once it has its
        # partitions; anything written before that moment is invisible to it.
        # Wait until both have caught up with the end of the partition.
        while len(at_end) < len(consumers):
            if time.monotonic() > deadline:
                print("consumers did not get their partitions in time", file=sys.stderr)
                return 1
            poll_all()
        for name in consumers:
            print(f"{name:<8} reached the end of the partition after reading "
                  f"{len(received[name])} messages")

        produce(args.topic, new)
        while time.monotonic() < deadline:
            ours = {name: [v for v in vals if f"-{run}-" in v] for name, vals in received.items()}
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
