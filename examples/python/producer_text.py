"""Produce plain-text messages to a topic.

Shows the smallest useful producer: connect, send a few UTF-8 strings, and
wait for the broker to confirm each one. A confirmation (a "delivery report")
tells you the partition and the offset the broker gave the message.

Run (broker on localhost:9092, or set KAFKA_BOOTSTRAP):

    python producer_text.py                       # 5 messages to topic "greetings"
    python producer_text.py --count 20 --topic my-topic
    python producer_text.py --message "hello Caudal"

Read them back with consumer_basic.py --topic greetings.
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import Producer

from config import BOOTSTRAP, ensure_topic, serialize_str


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="greetings")
    ap.add_argument("--count", type=int, default=5, help="how many messages to send")
    ap.add_argument("--message", default="hello from Caudal",
                    help="text of each message; a sequence number is appended")
    args = ap.parse_args()

    ensure_topic(args.topic, partitions=1)
    producer = Producer({"bootstrap.servers": BOOTSTRAP})
    failures = []

    def on_delivery(err, msg):
        # Called from producer.poll()/flush(), once per message.
        if err is not None:
            failures.append(err)
            print(f"FAILED   {msg.value()!r}: {err.str()}")
        else:
            print(f"delivered {msg.value().decode()!r} -> topic {msg.topic()} "
                  f"partition {msg.partition()} offset {msg.offset()}")

    for i in range(args.count):
        # produce() only queues the message; the client sends batches in the background.
        producer.produce(args.topic, value=serialize_str(f"{args.message} #{i}"),
                         on_delivery=on_delivery)
        producer.poll(0)  # serve delivery reports that are already in

    remaining = producer.flush(30)  # wait until everything is confirmed (or failed)
    if remaining or failures:
        print(f"{len(failures)} failed, {remaining} not confirmed", file=sys.stderr)
        return 1
    print(f"sent {args.count} messages to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
