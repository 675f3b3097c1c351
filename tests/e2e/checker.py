"""A workload that keeps writing and reading while faults are injected, and a checker of its
whole history.

The workload: one idempotent producer with acks=all writes numbered values (each value its
sequence number, partition = number mod partitions) and records every write it was told
succeeded, at the offset it was given; a consumer group of several members reads and records
every record with its partition and offset, and the assignments it got.

The checker, once the faults are healed and every replica is back in the ISR, reads each
partition whole and compares it with the history:
- lost: an acknowledged write not at its offset in the final log (or not there at all);
- duplicated: a value more than once in the final log (idempotence allows none);
- reordered: within a partition, a value after a larger one (one producer, in order);
- bad reads: a record a consumer read that the final log does not have at that offset (a read
  past the committed data of a replica that was then truncated);
- backwards: a consumer that, within one assignment, read an offset not above the last one;
- divergent: a replica whose log is not byte for byte the leader's.
It also checks that the group went on: its members read every acknowledged write.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer

from support import RDKAFKA_LOG, admin, consume, wait_until

# Writes per second: enough to keep every partition busy through a fault, few enough that a
# history of a minute stays small.
RATE = 500


@dataclass
class Read:
    partition: int
    offset: int
    value: int


@dataclass
class History:
    acked: dict[tuple[int, int], int] = field(default_factory=dict)  # (partition, offset) -> value
    failed: dict[int, str] = field(default_factory=dict)  # value -> error
    sent: int = 0
    # Per consumer: reads in order, with None marking a new assignment.
    reads: dict[int, list[Read | None]] = field(default_factory=lambda: defaultdict(list))
    consumer_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked_values(self) -> set[int]:
        with self.lock:
            return set(self.acked.values())

    def read_values(self) -> set[int]:
        with self.lock:
            return {r.value for rs in self.reads.values() for r in rs if r is not None}


class Workload:
    """Produces and consumes in background threads until stopped."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, consumers: int = 2):
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.group = f"{topic}-group"
        self.history = History()
        self._stop_producing = threading.Event()
        self._stop_consuming = threading.Event()
        self._threads: list[threading.Thread] = []
        self._producer = threading.Thread(target=self._produce, name="producer", daemon=True)
        self._consumers = [threading.Thread(target=self._consume, args=(i,), name=f"consumer{i}",
                                            daemon=True) for i in range(consumers)]
        self.producer_error: BaseException | None = None

    def start(self) -> "Workload":
        self._producer.start()
        for t in self._consumers:
            t.start()
        return self

    def acked_count(self) -> int:
        with self.history.lock:
            return len(self.history.acked)

    def wait_acked(self, more: int, timeout: float = 30.0, what: str = "") -> None:
        """Waits until `more` further writes are acknowledged."""
        target = self.acked_count() + more
        wait_until(lambda: self.acked_count() >= target, timeout=timeout,
                   message=f"{more} more acknowledged writes {what}".strip())

    def stop_producing(self, timeout: float = 90.0) -> None:
        self._stop_producing.set()
        self._producer.join(timeout)
        assert not self._producer.is_alive(), "the producer did not finish within its bound"
        if self.producer_error is not None:
            raise self.producer_error

    def abandon(self) -> None:
        """Stops the threads without waiting for them (at the teardown of a failed test)."""
        self._stop_producing.set()
        self._stop_consuming.set()

    def stop_consuming(self, timeout: float = 30.0) -> None:
        self._stop_consuming.set()
        for t in self._consumers:
            t.join(timeout)
            assert not t.is_alive(), f"{t.name} did not stop within its bound"

    def _delivered(self, err, msg) -> None:
        value = int(msg.value())
        with self.history.lock:
            if err is not None:
                self.history.failed[value] = str(err)
            else:
                self.history.acked[(msg.partition(), msg.offset())] = value

    def _produce(self) -> None:
        try:
            p = Producer({
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                # Long enough to outlast every fault: a write is retried, not given up.
                "message.timeout.ms": 60000,
                # A request to a leader that was cut off or paused is given up after this and
                # sent again where Metadata then says (librdkafka's default is 30 s).
                "request.timeout.ms": 10000,
                "logger": RDKAFKA_LOG,
            })
            n = 0
            start = time.monotonic()
            while not self._stop_producing.is_set():
                # Paced at RATE per second.
                ahead = n / RATE - (time.monotonic() - start)
                if ahead > 0:
                    p.poll(min(ahead, 0.05))
                    continue
                try:
                    p.produce(self.topic, value=str(n).encode(), partition=n % self.partitions,
                              on_delivery=self._delivered)
                    n += 1
                    self.history.sent = n
                except BufferError:
                    p.poll(0.05)
                p.poll(0)
            remaining = p.flush(70)
            assert remaining == 0, f"{remaining} writes neither delivered nor failed after 70 s"
        except BaseException as e:  # noqa: BLE001 - reported by stop_producing
            self.producer_error = e

    def _consume(self, index: int) -> None:
        reads = self.history.reads[index]

        def assigned(_consumer, _partitions) -> None:
            with self.history.lock:
                reads.append(None)

        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 500,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "logger": RDKAFKA_LOG,
        })
        try:
            c.subscribe([self.topic], on_assign=assigned)
            while not self._stop_consuming.is_set():
                msg = c.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        with self.history.lock:
                            self.history.consumer_errors.append(str(err))
                    continue
                with self.history.lock:
                    reads.append(Read(msg.partition(), msg.offset(), int(msg.value())))
        finally:
            c.close()


def log_bytes(data_dir: Path, topic: str, partition: int) -> bytes:
    """A replica's whole log, its segments in offset order."""
    d = data_dir / f"{topic}-{partition}"
    return b"".join(f.read_bytes() for f in sorted(d.glob("*.log")))


def partition_states(bootstrap: str, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """Partition -> (leader, replicas, ISR), from Metadata."""
    md = admin(bootstrap).list_topics(topic, timeout=10)
    return {p.id: (p.leader, sorted(p.replicas), sorted(p.isrs))
            for p in md.topics[topic].partitions.values()}


@dataclass
class Report:
    acknowledged: int
    failed: int
    lost: list = field(default_factory=list)
    duplicated: list = field(default_factory=list)
    reordered: list = field(default_factory=list)
    bad_reads: list = field(default_factory=list)
    backwards: list = field(default_factory=list)
    divergent: list = field(default_factory=list)
    unread: int = 0
    reads: int = 0

    def summary(self) -> str:
        return (f"writes acknowledged {self.acknowledged}, failed {self.failed}; "
                f"lost {len(self.lost)}, duplicated {len(self.duplicated)}, "
                f"reordered {len(self.reordered)}, divergent replicas {len(self.divergent)}; "
                f"consumer reads {self.reads}, past the committed log {len(self.bad_reads)}, "
                f"backwards {len(self.backwards)}, acknowledged but never read {self.unread}")

    def problems(self) -> list[str]:
        out = []
        for name in ("lost", "duplicated", "reordered", "bad_reads", "backwards", "divergent"):
            items = getattr(self, name)
            if items:
                out.append(f"{name}: {items[:5]}")
        if self.unread:
            out.append(f"{self.unread} acknowledged writes never read by the group")
        return out


def check(cluster, workload: Workload, replicas: int = 3, timeout: float = 60.0) -> Report:
    """Stops the producer, waits for the cluster to heal (every replica in the ISR) and the group
    to read everything, then checks the whole history against the final logs."""
    topic, partitions = workload.topic, workload.partitions
    workload.stop_producing()
    bootstrap = cluster.bootstrap
    wait_until(lambda: all(leader != -1 and len(isr) == replicas for leader, _, isr in
                           partition_states(bootstrap, topic).values()),
               timeout=timeout, interval=0.5, message="every replica back in the ISR")
    acked = workload.history.acked_values()
    try:
        wait_until(lambda: acked <= workload.history.read_values(), timeout=timeout,
                   interval=0.5, message="the group reading every acknowledged write")
    except AssertionError:
        pass  # reported below as unread, with the rest of the figures
    workload.stop_consuming()

    final = consume(bootstrap, topic, partitions, timeout=timeout)

    # Followers may still be taking the last batches: give them a bounded while to equal the
    # leader's log before the logs are compared.
    states = partition_states(bootstrap, topic)
    logs: dict[int, dict[int, bytes]] = {}
    for p in range(partitions):
        leader = states[p][0]
        wanted = log_bytes(cluster.node(leader).data_dir, topic, p)
        try:
            wait_until(lambda: all(log_bytes(n.data_dir, topic, p) == wanted
                                   for n in cluster.nodes), timeout=20, message="")
        except AssertionError:
            pass  # reported as divergent
        logs[p] = {leader: wanted}
        logs[p].update({n.node_id: log_bytes(n.data_dir, topic, p) for n in cluster.nodes
                        if n.node_id != leader})
    return compare(workload.history, [(r.partition, r.offset, int(r.value)) for r in final],
                   logs)


def compare(h: History, final: list[tuple[int, int, int]],
            logs: dict[int, dict[int, bytes]]) -> Report:
    """The checks, on what was gathered: the history, the final log read whole as (partition,
    offset, value) in order, and each partition's replica logs by node, its leader's first."""
    at: dict[tuple[int, int], int] = {(p, off): value for p, off, value in final}
    report = Report(acknowledged=len(h.acked), failed=len(h.failed))

    for (p, off), value in sorted(h.acked.items()):
        if at.get((p, off)) != value:
            report.lost.append((p, off, value, at.get((p, off))))
    seen: dict[int, tuple[int, int]] = {}
    last: dict[int, int] = {}
    for p, off, value in final:
        if value in seen:
            report.duplicated.append((value, seen[value], (p, off)))
        seen[value] = (p, off)
        if p in last and value <= last[p]:
            report.reordered.append((p, off, last[p], value))
        last[p] = value

    for consumer, reads in h.reads.items():
        position: dict[int, int] = {}
        for r in reads:
            if r is None:
                position.clear()
                continue
            report.reads += 1
            if at.get((r.partition, r.offset)) != r.value:
                report.bad_reads.append((consumer, r.partition, r.offset, r.value,
                                         at.get((r.partition, r.offset))))
            if r.partition in position and r.offset <= position[r.partition]:
                report.backwards.append((consumer, r.partition, position[r.partition], r.offset))
            position[r.partition] = r.offset
    report.unread = len(h.acked_values() - h.read_values())

    for p, by_node in sorted(logs.items()):
        (leader, wanted), *rest = by_node.items()
        for node, got in rest:
            if got != wanted:
                report.divergent.append((p, node, len(wanted), len(got)))
    return report
