"""Client-side helpers shared by the end-to-end tests.

Consumers made here are assigned partitions with explicit start offsets and do
not commit; consumer groups have their own helpers in group_members/.
kafka-python producers keep the client's default, idempotent, settings.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError,
                             KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

import wire


# librdkafka's own log lines go through Python logging, so pytest shows them
# with the failing test instead of printing them to the terminal.
RDKAFKA_LOG = logging.getLogger("rdkafka")


def unique_topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.1,
               message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; return that value.
    Fails with `message` (and the last exception, if any) on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


def group_coordinator(bootstrap: str, group: str) -> int | None:
    """The node id of `group`'s coordinator as the first bootstrap broker names it, or None
    while there is none (the first lookup creates __consumer_offsets). Raw FindCoordinator:
    librdkafka's admin describe of a group, timed out while its coordinator lookup waits, has
    left the client to abort on the next call (librdkafka issue 4605)."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    with wire.Connection(host, int(port)) as conn:
        error, node = wire.find_coordinator(conn, group)
    return node if error == 0 else None


def proc_status_kib(pid: int, field: str) -> int:
    """A memory figure of a process from /proc/<pid>/status, e.g. VmRSS or VmHWM, in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list = field(default_factory=list)


# --------------------------------------------------------------------------
# confluent-kafka
# --------------------------------------------------------------------------

def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "logger": RDKAFKA_LOG})


def topic_partition_counts(bootstrap: str, a: AdminClient | None = None) -> dict[str, int]:
    a = a or admin(bootstrap)
    md = a.list_topics(timeout=10)
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def create_topic(bootstrap: str, name: str, partitions: int = 1,
                 config: dict[str, str] | None = None) -> None:
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                   config=config or {})], request_timeout=15)
    fs[name].result(timeout=20)
    wait_until(lambda: topic_partition_counts(bootstrap, a).get(name) == partitions,
               message=f"topic {name} with {partitions} partitions in metadata")


def producer(bootstrap: str, **conf) -> Producer:
    base = {"bootstrap.servers": bootstrap, "linger.ms": 5, "logger": RDKAFKA_LOG}
    base.update(conf)
    return Producer(base)


class DeliveryLog:
    """Collects delivery reports from a confluent-kafka producer."""

    def __init__(self):
        self.ok: list[Rec] = []
        self.failed: list[tuple[KafkaError, bytes | None]] = []

    def __call__(self, err, msg):
        if err is not None:
            self.failed.append((err, msg.value()))
        else:
            self.ok.append(Rec(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                               msg.value(), msg.headers() or []))

    @property
    def total(self) -> int:
        return len(self.ok) + len(self.failed)


def flush(p: Producer, timeout: float = 60.0) -> None:
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s flush"


def produce_and_confirm(bootstrap: str, topic: str, messages, conf: dict | None = None,
                        partition: int | None = None) -> DeliveryLog:
    """Produce (key, value[, headers]) tuples; assert every delivery succeeded."""
    p = producer(bootstrap, **(conf or {}))
    log = DeliveryLog()
    for m in messages:
        key, value = m[0], m[1]
        kwargs = {"key": key, "value": value, "on_delivery": log}
        if len(m) > 2 and m[2]:
            kwargs["headers"] = m[2]
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                p.produce(topic, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    flush(p)
    assert not log.failed, f"delivery failures: {log.failed[:5]} (of {len(log.failed)})"
    return log


def consumer(bootstrap: str, **conf) -> Consumer:
    base = {
        "bootstrap.servers": bootstrap,
        # Required by the client library; never used for group operations.
        "group.id": "caudal-e2e-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "logger": RDKAFKA_LOG,
    }
    base.update(conf)
    return Consumer(base)


def consume(bootstrap: str, topic: str, partitions, start=OFFSET_BEGINNING,
            count: int | None = None, timeout: float = 30.0, **conf) -> list[Rec]:
    """Assign `partitions` at `start` and read.

    With count=None, read until every partition has reported end-of-partition
    (requires production to be finished). With a count, read until that many
    records arrived, then keep reading until end-of-partition so surplus
    records are caught too."""
    if isinstance(partitions, int):
        partitions = range(partitions)
    partitions = list(partitions)
    c = consumer(bootstrap, **conf)
    out: list[Rec] = []
    errors = []
    try:
        c.assign([TopicPartition(topic, p, start) for p in partitions])
        eof = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                    if len(eof) == len(partitions) and (count is None or len(out) >= count):
                        break
                else:
                    errors.append(err)
                    if err.fatal():
                        raise KafkaException(err)
                continue
            eof.discard(msg.partition())
            out.append(Rec(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                           msg.value(), msg.headers() or []))
        else:
            raise AssertionError(
                f"consume from {topic} {partitions}: timed out after {timeout}s with "
                f"{len(out)} records (wanted {count if count is not None else 'all up to end'}), "
                f"partitions at end: {sorted(eof)}, client errors: {errors[:5]}")
    finally:
        c.close()
    return out


def watermarks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def by_partition(recs: list[Rec]) -> dict[int, list[Rec]]:
    out: dict[int, list[Rec]] = {}
    for r in recs:
        out.setdefault(r.partition, []).append(r)
    return out


# --------------------------------------------------------------------------
# kafka-python
# --------------------------------------------------------------------------

def kp_producer(bootstrap: str, **cfg):
    from kafka import KafkaProducer
    base = {"bootstrap_servers": bootstrap, "linger_ms": 5,
            "request_timeout_ms": 15000, "max_block_ms": 15000}
    base.update(cfg)
    return KafkaProducer(**base)


def kp_send_all(bootstrap: str, topic: str, messages, **cfg) -> list:
    """Send (key, value[, headers]) tuples; return RecordMetadata for each."""
    p = kp_producer(bootstrap, **cfg)
    try:
        futures = []
        for m in messages:
            kwargs = {"key": m[0], "value": m[1]}
            if len(m) > 2 and m[2]:
                kwargs["headers"] = m[2]
            futures.append(p.send(topic, **kwargs))
        p.flush(timeout=60)
        return [f.get(timeout=30) for f in futures]
    finally:
        p.close(timeout=10)


def kp_consumer(bootstrap: str, **cfg):
    from kafka import KafkaConsumer
    base = {"bootstrap_servers": bootstrap, "group_id": None, "enable_auto_commit": False,
            "auto_offset_reset": "earliest", "request_timeout_ms": 15000}
    base.update(cfg)
    return KafkaConsumer(**base)


def kp_consume_all(bootstrap: str, topic: str, partitions, timeout: float = 30.0,
                   **cfg) -> list[Rec]:
    """Read every partition from the beginning up to the end offsets observed
    at the start (production must be finished)."""
    from kafka import TopicPartition as KTP
    if isinstance(partitions, int):
        partitions = range(partitions)
    tps = [KTP(topic, p) for p in partitions]
    c = kp_consumer(bootstrap, **cfg)
    out: list[Rec] = []
    try:
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"kafka-python consume from {topic}: timed out with {len(out)} records; "
                    f"positions { {tp.partition: c.position(tp) for tp in tps} } "
                    f"ends { {tp.partition: e for tp, e in ends.items()} }")
            for tp, msgs in c.poll(timeout_ms=200).items():
                for m in msgs:
                    out.append(Rec(m.topic, m.partition, m.offset, m.key, m.value,
                                   list(m.headers or [])))
    finally:
        c.close(autocommit=False)
    return out
