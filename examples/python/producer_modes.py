"""Compare ways of sending: fire-and-forget, synchronous, asynchronous; acks=0/1/all.

Part 1, three sending styles (all with acks=all):

* fire-and-forget: produce() and move on. Fast, but the program never learns
  whether a message failed.
* synchronous: after each produce(), flush() waits for that message's
  confirmation. Simple and safe, but every message costs a full round trip.
* asynchronous: produce() with a delivery callback. The client batches in the
  background and the callback reports each success or failure. Fast and safe;
  this is the usual choice.

Part 2, the acks setting (asynchronous style):

* acks=0: the broker sends no reply at all. Lowest latency, no confirmation:
  delivery reports carry no offset and a lost message goes unnoticed.
* acks=1: the partition leader replies once it has written the batch.
* acks=all: the reply waits for every in-sync replica. On a single-node Caudal
  broker that is the same broker, so acks=1 and acks=all cost about the same;
  on a replicated Kafka cluster acks=all is slower and the only setting that
  survives losing the leader.

Run:

    python producer_modes.py                      # 1000 messages per row
    python producer_modes.py --count 2000 --topic modes-test

Prints one table per part; the timings are wall-clock seconds including the
final flush, so every row has handed its messages to the broker at the end.
"""

from __future__ import annotations

import argparse
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from config import BOOTSTRAP, ensure_topic, serialize_str


def new_producer(acks: str) -> Producer:
    return Producer({"bootstrap.servers": BOOTSTRAP, "acks": acks, "linger.ms": 5})


def fire_and_forget(topic: str, count: int) -> dict:
    p = new_producer("all")
    start = time.perf_counter()
    for i in range(count):
        p.produce(topic, value=serialize_str(f"fire-and-forget {i}"))
        p.poll(0)
    p.flush(30)  # only so the process does not exit with messages still queued
    return {"seconds": time.perf_counter() - start, "confirmed": "not checked"}


def synchronous(topic: str, count: int) -> dict:
    p = new_producer("all")
    confirmed = 0
    start = time.perf_counter()
    for i in range(count):
        p.produce(topic, value=serialize_str(f"synchronous {i}"))
        if p.flush(10) == 0:  # blocks until this one message is confirmed
            confirmed += 1
    return {"seconds": time.perf_counter() - start, "confirmed": confirmed}


def asynchronous(topic: str, count: int, acks: str = "all") -> dict:
    p = new_producer(acks)
    result = {"confirmed": 0, "failed": 0, "with_offset": 0}

    def on_delivery(err, msg):
        if err is not None:
            result["failed"] += 1
            return
        result["confirmed"] += 1
        offset = msg.offset()  # with acks=0 the broker never says which offset: None
        if offset is not None and offset >= 0:
            result["with_offset"] += 1

    start = time.perf_counter()
    for i in range(count):
        p.produce(topic, value=serialize_str(f"async acks={acks} {i}"), on_delivery=on_delivery)
        p.poll(0)
    p.flush(30)
    result["seconds"] = time.perf_counter() - start
    return result


def stored_records(topic: str) -> int:
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "producer-modes-watermarks"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        return high - low
    finally:
        c.close()


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="producer-modes")
    ap.add_argument("--count", type=int, default=1000, help="messages per row")
    args = ap.parse_args()

    ensure_topic(args.topic, partitions=1)
    before = stored_records(args.topic)
    n = args.count

    print(f"Part 1: sending styles, {n} messages each, acks=all")
    print(f"{'style':<16} {'confirmed':>11} {'seconds':>8} {'msg/s':>9}")
    rows = [("fire-and-forget", fire_and_forget(args.topic, n)),
            ("synchronous", synchronous(args.topic, n)),
            ("asynchronous", asynchronous(args.topic, n))]
    ok = True
    for name, r in rows:
        print(f"{name:<16} {r['confirmed']!s:>11} {r['seconds']:>8.3f} {rate(n, r['seconds']):>9}")
        if name != "fire-and-forget" and r["confirmed"] != n:
            ok = False

    print(f"\nPart 2: acks, asynchronous, {n} messages each")
    print(f"{'acks':<6} {'confirmed':>9} {'with offset':>11} {'seconds':>8} {'msg/s':>9}")
    for acks in ("0", "1", "all"):
        r = asynchronous(args.topic, n, acks)
        print(f"{acks:<6} {r['confirmed']:>9} {r['with_offset']:>11} {r['seconds']:>8.3f} "
              f"{rate(n, r['seconds']):>9}")
        if r["confirmed"] != n:
            ok = False

    added = stored_records(args.topic) - before
    print(f"\nthe topic received {added} records (expected {6 * n})")
    print("acks=0 confirmations only mean 'handed to the network'; "
          "the offset column shows the broker never answered them.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
