"""Delivery semantics: at-most-once, at-least-once and exactly-once.

When a consumer commits its offset decides what a crash costs:

* at-most-once: commit the offset BEFORE processing the record. If the
  consumer crashes while processing, the restarted consumer resumes after
  that record: it is never processed (lost), but nothing is processed twice.
* at-least-once: commit AFTER processing. If the consumer crashes between
  processing and committing, the restarted consumer reads the record again:
  nothing is lost, but it is processed twice (so processing should be
  idempotent, e.g. keyed upserts).
* exactly-once: a transactional producer writes each result AND the consumed
  offset in one transaction (send_offsets_to_transaction), then commits. If the
  processor crashes before the commit, its restarted instance (same
  transactional.id) fences it and the broker aborts the open transaction: the
  half-done result is never seen by read_committed readers, and the offset did
  not move, so the record is processed again, once.

The demo produces --count numbered payments, then for each mode: a consumer
processes them and "crashes" at record --crash-at (its process would die; the
demo closes it without committing anything more), a second consumer in the
same group takes over from the committed offset, and the demo reports which
records were lost or processed twice. For exactly-once the results go to
<topic>-processed and are read back with isolation.level=read_committed.

Run:

    python delivery_semantics.py                       # all modes
    python delivery_semantics.py --mode at-least-once --count 10 --crash-at 4

Exits 0 when each mode showed its expected behaviour.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer

from config import BOOTSTRAP, deserialize_str, ensure_topic, serialize_str


def new_consumer(topic: str, group: str) -> Consumer:
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group,
                  "auto.offset.reset": "earliest",
                  "enable.auto.commit": False,  # this demo commits by hand
                  "enable.partition.eof": True})
    c.subscribe([topic])
    return c


def run_consumer(topic: str, group: str, mode: str, run: str, crash_at: int | None,
                 processed: list[str], timeout: float) -> None:
    """Read until the end of the partition, or until the simulated crash."""
    c = new_consumer(topic, group)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return  # caught up
                print(f"    consumer error: {msg.error().str()}")
                continue
            value = deserialize_str(msg.value())
            if not value.startswith(f"payment-{run}-"):
                c.commit(message=msg, asynchronous=False)  # from an earlier run: skip
                continue
            n = int(value.rsplit("-", 1)[1])
            if mode == "at-most-once":
                c.commit(message=msg, asynchronous=False)  # 1. commit
                if n == crash_at:
                    print(f"    committed {value}, then CRASH while processing it")
                    return
                processed.append(value)                       # 2. process
                print(f"    committed, then processed {value}")
            else:
                processed.append(value)                       # 1. process
                if n == crash_at:
                    print(f"    processed {value}, then CRASH before committing it")
                    return
                c.commit(message=msg, asynchronous=False)  # 2. commit
                print(f"    processed, then committed {value}")
        raise TimeoutError(f"consumer did not reach the end of {topic} in {timeout:g}s")
    finally:
        c.close()  # a dead process would simply stop; closing spares a session timeout


def demo(mode: str, topic: str, run: str, count: int, crash_at: int, timeout: float) -> bool:
    group = f"semantics-{mode}-{run}"
    print(f"\n== {mode} (group {group}) ==")
    processed: list[str] = []
    print("  first consumer:")
    run_consumer(topic, group, mode, run, crash_at, processed, timeout)
    print("  restarted consumer, resuming from the committed offset:")
    run_consumer(topic, group, mode, run, None, processed, timeout)

    expected = [f"payment-{run}-{i}" for i in range(count)]
    lost = [v for v in expected if v not in processed]
    twice = sorted({v for v in processed if processed.count(v) > 1}, key=expected.index)
    print(f"  result: processed {len(processed)} of {count}; "
          f"lost: {lost or 'none'}; processed twice: {twice or 'none'}")
    crashed = [f"payment-{run}-{crash_at}"]
    if mode == "at-most-once":
        return lost == crashed and not twice
    return not lost and twice == crashed


def run_processor(topic: str, out: str, group: str, txn_id: str, run: str,
                  crash_at: int | None, timeout: float) -> None:
    """Consume, transform and produce, one transaction per record, until the end of the
    partition or the simulated crash."""
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True})
    c.subscribe([topic])
    # The same transactional.id as the instance before: this fences it, and the broker aborts
    # whatever transaction it left open.
    p = Producer({"bootstrap.servers": BOOTSTRAP, "transactional.id": txn_id})
    p.init_transactions(30)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return
                print(f"    consumer error: {msg.error().str()}")
                continue
            value = deserialize_str(msg.value())
            mine = value.startswith(f"payment-{run}-")
            p.begin_transaction()
            if mine:
                p.produce(out, value=serialize_str(f"processed {value}"))
            if mine and int(value.rsplit("-", 1)[1]) == crash_at:
                p.flush(30)
                print(f"    wrote the result of {value} in a transaction, then CRASH before "
                      "committing it")
                return  # the process dies: no commit, no abort
            # The consumed offset goes into the same transaction as the result.
            p.send_offsets_to_transaction(c.position(c.assignment()),
                                          c.consumer_group_metadata(), 30)
            p.commit_transaction(30)
            if mine:
                print(f"    processed {value}: result and offset committed together")
        raise TimeoutError(f"processor did not reach the end of {topic} in {timeout:g}s")
    finally:
        c.close()


def read_committed(topic: str, timeout: float) -> list[str]:
    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True})
    c.subscribe([topic])
    values: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return values
                continue
            values.append(deserialize_str(msg.value()))
        raise TimeoutError(f"could not read {topic} to its end in {timeout:g}s")
    finally:
        c.close()


def exactly_once(topic: str, run: str, count: int, crash_at: int, timeout: float) -> bool:
    group = f"semantics-exactly-once-{run}"
    out = f"{topic}-processed"
    ensure_topic(out, partitions=1)
    txn_id = f"semantics-processor-{run}"
    print(f"\n== exactly-once (group {group}, transactional.id {txn_id}) ==")
    print("  first processor:")
    run_processor(topic, out, group, txn_id, run, crash_at, timeout)
    print("  restarted processor, same transactional.id, resuming from the committed offset:")
    run_processor(topic, out, group, txn_id, run, None, timeout)
    results = [v.removeprefix("processed ") for v in read_committed(out, timeout)
               if v.startswith(f"processed payment-{run}-")]
    expected = [f"payment-{run}-{i}" for i in range(count)]
    lost = [v for v in expected if v not in results]
    twice = sorted({v for v in results if results.count(v) > 1}, key=expected.index)
    print(f"  result (read_committed from {out}): {len(results)} of {count}; "
          f"lost: {lost or 'none'}; processed twice: {twice or 'none'}")
    return not lost and not twice


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["all", "at-most-once", "at-least-once", "exactly-once"],
                    default="all")
    ap.add_argument("--topic", default="semantics-demo")
    ap.add_argument("--count", type=int, default=6, help="payments to produce")
    ap.add_argument("--crash-at", type=int, default=3, help="number of the payment that crashes")
    ap.add_argument("--duration", type=float, default=30,
                    help="give up if a consumer does not finish within this many seconds")
    args = ap.parse_args()
    if not 0 <= args.crash_at < args.count:
        ap.error("--crash-at must be between 0 and --count - 1")

    ensure_topic(args.topic, partitions=1)
    run = uuid.uuid4().hex[:6]
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    for i in range(args.count):
        producer.produce(args.topic, value=serialize_str(f"payment-{run}-{i}"))
    if producer.flush(30):
        print("could not produce the demo records", file=sys.stderr)
        return 1
    print(f"produced payment-{run}-0 .. payment-{run}-{args.count - 1} to {args.topic}")

    modes = (["at-most-once", "at-least-once", "exactly-once"] if args.mode == "all"
             else [args.mode])
    ok = all([
        exactly_once(args.topic, run, args.count, args.crash_at, args.duration)
        if m == "exactly-once" else demo(m, args.topic, run, args.count, args.crash_at,
                                         args.duration)
        for m in modes])
    print("\nas expected: at-most-once may lose, at-least-once may repeat, exactly-once "
          "neither" if ok else "\nunexpected result")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
