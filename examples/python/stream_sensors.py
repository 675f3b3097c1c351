"""A continuous stream of sensor readings at a chosen rate.

Simulates --sensors temperature/humidity sensors, each reporting in turn. The
sensor id is the record key, so all readings of one sensor land in one
partition and stay in order. About --fault-rate of the readings are faults
(status "fault", no temperature), which transform.py filters out.

The loop sends at --rate records per second and keeps serving delivery
reports while it waits. Ctrl-C (SIGINT) or SIGTERM stops it cleanly: no more
records are produced, everything already produced is flushed, and a summary
is printed. --duration or --count stop it the same way.

Run:

    python stream_sensors.py                            # 5 readings/s until Ctrl-C
    python stream_sensors.py --rate 100 --duration 10 --quiet
    python stream_sensors.py --count 20 --rate 0        # 20 readings, as fast as possible

Exits 0 when every produced reading was delivered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time

from confluent_kafka import Producer

from config import BOOTSTRAP, ensure_topic, serialize_json, serialize_str


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="sensors")
    ap.add_argument("--partitions", type=int, default=3,
                    help="partition count used if the topic must be created")
    ap.add_argument("--rate", type=float, default=5, help="readings per second (0: no limit)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--count", type=int, default=None, help="stop after this many readings")
    ap.add_argument("--sensors", type=int, default=5, help="number of simulated sensors")
    ap.add_argument("--fault-rate", type=float, default=0.05, help="share of faulty readings")
    ap.add_argument("--seed", type=int, default=None, help="random seed (repeatable values)")
    ap.add_argument("--quiet", action="store_true", help="do not print every reading")
    args = ap.parse_args()

    stop_reason = None

    def on_signal(signum, frame):
        nonlocal stop_reason
        stop_reason = signal.Signals(signum).name  # checked by the loop below

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    ensure_topic(args.topic, partitions=args.partitions)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20})
    rng = random.Random(args.seed)
    temperature = {f"sensor-{i}": 20.0 + rng.uniform(-2, 2) for i in range(args.sensors)}
    humidity = {s: 45.0 + rng.uniform(-5, 5) for s in temperature}
    stats = {"sent": 0, "delivered": 0, "failed": 0, "faults": 0}
    per_sensor = {s: 0 for s in temperature}

    def on_delivery(err, msg):
        if err is not None:
            stats["failed"] += 1
            print(f"delivery failed: {err.str()}", file=sys.stderr)
        else:
            stats["delivered"] += 1

    print(f"streaming sensor readings to {args.topic} at "
          f"{'max' if args.rate <= 0 else f'{args.rate:g}/s'}; Ctrl-C to stop", flush=True)
    start = time.monotonic()
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    next_at = start
    seq = 0
    while stop_reason is None:
        now = time.monotonic()
        if args.count is not None and seq >= args.count:
            stop_reason = "count reached"
            break
        if args.duration is not None and now - start >= args.duration:
            stop_reason = "duration reached"
            break
        if now < next_at:
            producer.poll(min(next_at - now, 0.1))  # wait, serving delivery reports
            continue
        next_at += interval

        sensor = f"sensor-{seq % args.sensors}"
        temperature[sensor] += rng.gauss(0, 0.3)  # a slow random walk
        humidity[sensor] = min(100.0, max(0.0, humidity[sensor] + rng.gauss(0, 0.5)))
        reading = {"sensor_id": sensor, "seq": seq, "ts_ms": int(time.time() * 1000),
                   "status": "ok", "temperature_c": round(temperature[sensor], 2),
                   "humidity_pct": round(humidity[sensor], 1)}
        if rng.random() < args.fault_rate:
            reading.update(status="fault", temperature_c=None)
            stats["faults"] += 1
        try:
            producer.produce(args.topic, key=serialize_str(sensor), value=serialize_json(reading),
                             on_delivery=on_delivery)
        except BufferError:  # local queue full: let it drain, then retry this reading
            producer.poll(0.1)
            continue
        stats["sent"] += 1
        per_sensor[sensor] += 1
        seq += 1
        producer.poll(0)
        if not args.quiet:
            print(f"{sensor}: {reading['status']:<5} temperature={reading['temperature_c']} C "
                  f"humidity={reading['humidity_pct']}%", flush=True)

    remaining = producer.flush(15)
    elapsed = time.monotonic() - start
    print(f"\nstopped ({stop_reason})")
    print(f"summary: sent {stats['sent']} readings in {elapsed:.1f} s "
          f"({stats['sent'] / elapsed if elapsed > 0 else 0:.1f}/s), "
          f"delivered {stats['delivered']}, failed {stats['failed'] + remaining}, "
          f"faults {stats['faults']}")
    print("per sensor: " + ", ".join(f"{s}={n}" for s, n in per_sensor.items()))
    return 0 if stats["failed"] == 0 and remaining == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
