"""Subscribe to a topic as part of a consumer group and poll for messages.

Shows the basic consumer loop:

1. create a Consumer with a group.id,
2. subscribe() to the topic; the broker (the group coordinator) assigns this
   consumer its partitions, reported by the on_assign callback,
3. call poll() in a loop; each call returns one message, an error event, or
   None when nothing arrived within the timeout,
4. close() at the end, which commits the final offsets and leaves the group.

Offsets are committed automatically (enable.auto.commit, every 5 s and at
close), so running it again with the same --group continues where it stopped.
A group that has no committed offset yet starts at the earliest message
(auto.offset.reset=earliest; see consumer_offsets.py).

Run:

    python consumer_basic.py                      # topic "greetings", until Ctrl-C
    python consumer_basic.py --topic orders --format json --count 5
    python consumer_basic.py --topic greetings --group my-app --duration 10

Exits 0 when it stopped normally, 1 if --count messages did not arrive
within --duration seconds.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError

from config import BOOTSTRAP, deserialize_json, deserialize_str


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="greetings")
    ap.add_argument("--group", default="basic-consumer", help="consumer group id")
    ap.add_argument("--format", choices=["text", "json"], default="text",
                    help="how to decode message values")
    ap.add_argument("--count", type=int, default=None, help="stop after this many messages")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = ap.parse_args()

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
    })

    def on_assign(c, partitions):
        print(f"assigned partitions: {[p.partition for p in partitions]}", flush=True)

    consumer.subscribe([args.topic], on_assign=on_assign)
    decode = deserialize_json if args.format == "json" else deserialize_str
    received = 0
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stopping:
            if args.count is not None and received >= args.count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            msg = consumer.poll(0.5)
            if msg is None:
                continue  # nothing new yet
            if msg.error():
                # Most errors are transient (the client retries); see consumer_errors.py.
                if msg.error().fatal():
                    print(f"fatal error: {msg.error().str()}", file=sys.stderr)
                    return 1
                print(f"error: {msg.error().str()}", file=sys.stderr)
                continue
            received += 1
            value = decode(msg.value())
            shown = json.dumps(value, sort_keys=True) if args.format == "json" else repr(value)
            print(f"partition {msg.partition()} offset {msg.offset()} "
                  f"key={deserialize_str(msg.key())!r} value={shown}", flush=True)
    finally:
        consumer.close()  # commit final offsets, leave the group

    print(f"received {received} messages")
    if args.count is not None and received < args.count:
        print(f"expected {args.count} messages, got {received}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
