"""A consumer-group member run as its own process by the group tests.

It subscribes to one topic with confluent-kafka and reports what happens as
JSON lines on stdout, one object per event, each with a monotonic-clock
timestamp "t" (time.monotonic(), comparable with the parent's clock on the
same machine):

  {"event": "started"}
  {"event": "assign", "partitions": [0, 1]}
  {"event": "revoke", "partitions": [0]}
  {"event": "lost",   "partitions": [...]}
  {"event": "assignment", "assignment": [1, 4]}
  {"event": "msg", "partition": 3, "offset": 17}
  {"event": "error", "code": -150, "name": "_FATAL", "fatal": true, "str": "..."}
  {"event": "closed"}

"partitions" lists the partitions of the callback (incremental for the
cooperative protocol, the whole set for the eager one); "assignment" reports
the member's applied assignment whenever it changes. SIGTERM or SIGINT makes the member
close cleanly (Consumer.close()); SIGKILL leaves the broker to notice on its
own.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError


def emit(event: str, **fields) -> None:
    fields = {"event": event, "t": time.monotonic(), **fields}
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--client-id", default="group-member")
    ap.add_argument("--instance-id", default=None, help="group.instance.id (static member)")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--heartbeat-interval-ms", type=int, default=500)
    ap.add_argument("--strategy", default="range")
    ap.add_argument("--offset-reset", default="earliest")
    args = ap.parse_args()

    stop = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "client.id": args.client_id,
        "session.timeout.ms": args.session_timeout_ms,
        "heartbeat.interval.ms": args.heartbeat_interval_ms,
        "partition.assignment.strategy": args.strategy,
        "auto.offset.reset": args.offset_reset,
        "enable.auto.commit": False,
        "error_cb": lambda err: emit("error", code=err.code(), name=err.name(),
                                    fatal=err.fatal(), str=err.str()),
    }
    if args.instance_id:
        conf["group.instance.id"] = args.instance_id
    c = Consumer(conf)

    def current() -> list[int]:
        return sorted(tp.partition for tp in c.assignment())

    def on_assign(consumer, partitions):  # noqa: ARG001
        # Let the client apply the assignment (incremental or full) itself.
        emit("assign", partitions=sorted(tp.partition for tp in partitions))

    def on_revoke(consumer, partitions):  # noqa: ARG001
        emit("revoke", partitions=sorted(tp.partition for tp in partitions))

    def on_lost(consumer, partitions):  # noqa: ARG001
        emit("lost", partitions=sorted(tp.partition for tp in partitions))

    c.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    emit("started")
    last_reported = None
    try:
        while not stop:
            msg = c.poll(0.1)
            # The callbacks run before the client applies the change; report
            # the applied assignment separately once it differs.
            now = current()
            if now != last_reported:
                emit("assignment", assignment=now)
                last_reported = now
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    emit("error", code=err.code(), name=err.name(), fatal=err.fatal(),
                         str=err.str())
                continue
            emit("msg", partition=msg.partition(), offset=msg.offset())
    finally:
        c.close()
        emit("closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
