"""Consume a topic, transform each record, produce the result to another topic.

The classic "consume-transform-produce" loop, applied to the sensor readings
written by stream_sensors.py:

* filter:  faulty readings (status "fault" or no temperature) and records
           that are not valid JSON are dropped;
* convert: the Celsius temperature is converted to Fahrenheit (temperature_f);
* enrich:  each reading gets the room the sensor is in and a comfort label
           (cold below 18 C, hot above 26 C, comfortable in between).

The output keeps the input key (the sensor id), so per-sensor order carries
over to the target topic. Input offsets are committed only after the outputs
of a batch were confirmed by the broker: at-least-once processing, where a
crash can repeat a batch but never lose one.

Run:

    python stream_sensors.py --count 50 --rate 0        # some input
    python transform.py                                 # sensors -> sensors-enriched
    python consumer_basic.py --topic sensors-enriched --format json --count 5

Stops after --count input records or --duration seconds (or Ctrl-C), prints
a summary, exits 0 (1 if --count records did not arrive in time).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from confluent_kafka import Consumer, Producer

from config import BOOTSTRAP, deserialize_json, deserialize_str, ensure_topic, serialize_json

ROOMS = {"sensor-0": "kitchen", "sensor-1": "office", "sensor-2": "server room",
         "sensor-3": "hall", "sensor-4": "lab"}


def transform(reading: dict) -> dict | None:
    """The pure per-record logic: returns the output record, or None to drop it."""
    celsius = reading.get("temperature_c")
    if reading.get("status") != "ok" or not isinstance(celsius, (int, float)):
        return None
    comfort = "cold" if celsius < 18 else "hot" if celsius > 26 else "comfortable"
    return {**reading,
            "temperature_f": round(celsius * 9 / 5 + 32, 2),
            "room": ROOMS.get(reading.get("sensor_id"), "unknown"),
            "comfort": comfort}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="sensors", help="input topic")
    ap.add_argument("--target", default="sensors-enriched", help="output topic")
    ap.add_argument("--group", default="sensor-transform")
    ap.add_argument("--count", type=int, default=None, help="stop after this many input records")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--quiet", action="store_true", help="do not print every record")
    args = ap.parse_args()

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    source_partitions = ensure_topic(args.topic, partitions=3)
    ensure_topic(args.target, partitions=source_partitions)
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    consumer.subscribe([args.topic])
    print(f"transforming {args.topic} -> {args.target}", flush=True)

    stats = {"read": 0, "written": 0, "dropped": 0}
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stopping:
            if args.count is not None and stats["read"] >= args.count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            limit = 100 if args.count is None else max(1, min(100, args.count - stats["read"]))
            batch = consumer.consume(num_messages=limit, timeout=0.5)
            good = [m for m in batch if not m.error()]
            for m in batch:
                if m.error():
                    print(f"consumer error: {m.error().str()}", file=sys.stderr)
            for msg in good:
                stats["read"] += 1
                key = deserialize_str(msg.key())
                try:
                    out = transform(deserialize_json(msg.value()))
                except (ValueError, UnicodeDecodeError, AttributeError):
                    out = None
                if out is None:
                    stats["dropped"] += 1
                    if not args.quiet:
                        print(f"dropped  {key} (partition {msg.partition()} offset "
                              f"{msg.offset()}): faulty or unreadable", flush=True)
                    continue
                producer.produce(args.target, key=msg.key(), value=serialize_json(out))
                stats["written"] += 1
                if not args.quiet:
                    print(f"{key}: {out['temperature_c']} C -> {out['temperature_f']} F, "
                          f"{out['comfort']}, {out['room']}", flush=True)
            if good:
                # Outputs first, then the input offsets: never commit what was not written.
                if producer.flush(30):
                    print("output not confirmed; stopping without committing", file=sys.stderr)
                    return 1
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()

    print(f"summary: read {stats['read']}, wrote {stats['written']} to {args.target}, "
          f"dropped {stats['dropped']}")
    if args.count is not None and stats["read"] < args.count:
        print(f"expected {args.count} input records, got {stats['read']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
