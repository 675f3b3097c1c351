"""Basic error handling in a consumer.

Three things go wrong in real deployments; this consumer handles each:

1. The broker is not reachable at start. The consumer retries for a bounded
   time (--connect-timeout), printing each attempt, then exits with code 2
   and a clear message instead of hanging forever.
2. The broker goes away while consuming (restart, network blip). The client
   library reconnects by itself; errors it reports meanwhile arrive through
   error_cb and are logged, not treated as fatal. Once the broker is back the
   consumer carries on from its committed offsets. Only errors the library
   marks as fatal end the program.
3. A message cannot be deserialized (here: the value is not valid JSON). It is
   logged with its partition and offset and skipped; its offset is still
   committed, so the consumer does not get stuck on it ("poison message").
   Real systems often also copy such records to a dead-letter topic.

Offsets are stored only after a record has been handled and committed in the
background every second (at-least-once: after a crash a few records may be
processed again).

Run:

    python consumer_errors.py --topic events
    # in another terminal: valid and invalid records
    python producer_json.py --topic events --count 3
    python producer_text.py --topic events --count 1     # not JSON: skipped
    # restart the broker now and then: the consumer keeps going

    KAFKA_BOOTSTRAP=localhost:1 python consumer_errors.py --connect-timeout 3   # exits 2

Stops after --count good records or --duration seconds (or Ctrl-C) and prints
a summary; exits 0, or 1 if --count records did not arrive in time.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from config import BOOTSTRAP, deserialize_json

QUIET = {"log_level": 0}  # errors are reported through error_cb / messages instead


def wait_for_broker(timeout: float) -> bool:
    """Retry a metadata request until the cluster answers or `timeout` passes."""
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP, **QUIET})
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            md = admin.list_topics(timeout=max(0.5, min(2.0, remaining)))
            print(f"connected to Kafka at {BOOTSTRAP} ({len(md.brokers)} broker(s))", flush=True)
            return True
        except KafkaException as e:
            print(f"attempt {attempt}: Kafka at {BOOTSTRAP} not reachable ({e.args[0].str()})",
                  flush=True)
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="events")
    ap.add_argument("--group", default="errors-demo")
    ap.add_argument("--count", type=int, default=None, help="stop after this many good records")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--connect-timeout", type=float, default=15,
                    help="seconds to keep retrying when the broker is not reachable at start")
    args = ap.parse_args()

    if not wait_for_broker(args.connect_timeout):
        print(f"ERROR: could not reach Kafka at {BOOTSTRAP} within {args.connect_timeout:g} s. "
              f"Is the broker running? Is KAFKA_BOOTSTRAP right?", file=sys.stderr)
        return 2

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    stats = {"ok": 0, "skipped": 0, "errors": 0}
    state = {"broker_down": False, "fatal": None}

    def on_error(err: KafkaError) -> None:
        # Called for client-level problems: lost connections, all brokers down...
        stats["errors"] += 1
        if err.fatal():
            state["fatal"] = err
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            state["broker_down"] = True
        line = (f"client error ({'fatal' if err.fatal() else 'will retry'}): "
                f"{err.name()}: {err.str()}")
        if line != state.get("last_error"):  # the client repeats itself while it retries
            print(line, flush=True)
            state["last_error"] = line

    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "enable.auto.offset.store": False,  # we store an offset once its record is handled
        "error_cb": on_error,
        **QUIET,
    })
    consumer.subscribe([args.topic])
    print(f"consuming {args.topic} as group {args.group}", flush=True)

    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stopping and state["fatal"] is None:
            if args.count is not None and stats["ok"] >= args.count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                err = msg.error()
                if err.fatal():
                    state["fatal"] = err
                else:
                    # e.g. the topic does not exist yet: log and keep polling
                    print(f"consumer error (will retry): {err.name()}: {err.str()}", flush=True)
                continue
            if state["broker_down"]:
                print("broker is reachable again, carrying on", flush=True)
                state["broker_down"] = False
                state["last_error"] = None
            where = f"partition {msg.partition()} offset {msg.offset()}"
            try:
                record = deserialize_json(msg.value())
            except (ValueError, UnicodeDecodeError) as e:
                stats["skipped"] += 1
                print(f"SKIPPED {where}: cannot deserialize {msg.value()[:60]!r} ({e})",
                      flush=True)
            else:
                stats["ok"] += 1
                print(f"OK {where}: {json.dumps(record, sort_keys=True)}", flush=True)
            consumer.store_offsets(message=msg)  # handled (or skipped): commit past it
    finally:
        consumer.close()

    print(f"summary: {stats['ok']} records processed, {stats['skipped']} skipped, "
          f"{stats['errors']} client errors survived")
    if state["fatal"] is not None:
        print(f"stopped on fatal error: {state['fatal'].str()}", file=sys.stderr)
        return 1
    if args.count is not None and stats["ok"] < args.count:
        print(f"expected {args.count} records, got {stats['ok']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
