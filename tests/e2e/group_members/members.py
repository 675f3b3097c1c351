"""Consumer-group members for the group tests: in-process members for
confluent-kafka and kafka-python with one interface, and members run as a
separate process (consumer.py next to this file).

In-process members are driven by the test thread: `poll_members` polls every
member in turn (joins, heartbeats-driven rejoins, rebalance callbacks and
fetches all happen inside poll) until a condition holds or a deadline passes.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException

from support import RDKAFKA_LOG, DeliveryLog, flush, producer

HERE = Path(__file__).resolve().parent
CONSUMER_SCRIPT = HERE / "consumer.py"

# Settings every group broker in these tests gets unless a test overrides
# them: no initial rebalance delay (the delay has its own test) and a low
# minimum session timeout so eviction tests do not wait 6 s or more.
FAST_GROUP_SETTINGS = {
    "group.initial.rebalance.delay.ms": 0,
    "group.min.session.timeout.ms": 1000,
}


# --------------------------------------------------------------------------
# in-process members
# --------------------------------------------------------------------------

class CkMember:
    """A confluent-kafka consumer subscribed to a topic as a group member."""

    kind = "confluent"

    def __init__(self, bootstrap: str, group: str, topic: str, name: str, **conf):
        self.name = name
        self.topic = topic
        base = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "logger": RDKAFKA_LOG,
            "error_cb": self._on_error,
        }
        base.update(conf)
        self.consumer = Consumer(base)
        self.events: list[tuple[float, str, frozenset[int]]] = []  # (t, "assign"/"revoke"/"lost", parts)
        self.records: list[tuple[int, int, bytes | None]] = []  # (partition, offset, value)
        self.errors: list[KafkaError] = []
        self.closed = False

    def _on_error(self, err: KafkaError) -> None:
        self.errors.append(err)

    def _cb(self, kind):
        def cb(consumer, partitions):  # noqa: ARG001
            self.events.append((time.monotonic(), kind,
                                frozenset(tp.partition for tp in partitions)))
        return cb

    def subscribe(self) -> None:
        self.consumer.subscribe([self.topic], on_assign=self._cb("assign"),
                                on_revoke=self._cb("revoke"), on_lost=self._cb("lost"))

    def poll(self, timeout: float = 0.05) -> None:
        msg = self.consumer.poll(timeout)
        if msg is None:
            return
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                self.errors.append(err)
            return
        self.records.append((msg.partition(), msg.offset(), msg.value()))

    def assignment(self) -> frozenset[int]:
        if self.closed:
            return frozenset()
        return frozenset(tp.partition for tp in self.consumer.assignment())

    def commit_sync(self) -> None:
        """Commit the positions of everything consumed so far."""
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            # Nothing consumed since the last commit is not a failure.
            if e.args[0].code() != KafkaError._NO_OFFSET:
                raise

    def close(self) -> None:
        if not self.closed:
            self.consumer.close()
            self.closed = True


class KpMember:
    """A kafka-python consumer subscribed to a topic as a group member.

    The consumer runs on its own thread (one thread per consumer, as the client
    is meant to be used): kafka-python 3.0.12 discards a JoinGroup/SyncGroup
    result that completes while the application is not inside poll() and then
    joins again, so one thread polling several consumers in turn makes the
    group rebalance forever. Other calls are handed to that thread."""

    kind = "kafka-python"

    def __init__(self, bootstrap: str, group: str, topic: str, name: str, **cfg):
        from kafka import KafkaConsumer
        self.name = name
        self.topic = topic
        base = {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "client_id": name,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "auto_offset_reset": "earliest",
            "enable_auto_commit": False,
            "request_timeout_ms": 15000,
        }
        base.update(cfg)
        self.consumer = KafkaConsumer(**base)
        self.events: list[tuple[float, str, frozenset[int]]] = []
        self.records: list[tuple[int, int, bytes | None]] = []
        self.errors: list[Exception] = []
        self.closed = False
        self._assignment: frozenset[int] = frozenset()
        self._calls: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self) -> None:
        from kafka import ConsumerRebalanceListener
        member = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                member.events.append((time.monotonic(), "revoke",
                                      frozenset(tp.partition for tp in revoked)))

            def on_partitions_assigned(self, assigned):
                member.events.append((time.monotonic(), "assign",
                                      frozenset(tp.partition for tp in assigned)))

        self.consumer.subscribe(topics=[self.topic], listener=Listener())
        self._thread = threading.Thread(target=self._run, name=f"kp-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            while True:
                try:
                    fn, box, done = self._calls.get_nowait()
                except queue.Empty:
                    break
                try:
                    box.append(("ok", fn()))
                except Exception as e:  # noqa: BLE001 - handed to the caller
                    box.append(("err", e))
                done.set()
            if self._stop.is_set():
                break
            try:
                batches = self.consumer.poll(timeout_ms=200)
                for tp, msgs in batches.items():
                    for m in msgs:
                        self.records.append((m.partition, m.offset, m.value))
            except Exception as e:  # noqa: BLE001 - examined by the tests
                self.errors.append(e)
                time.sleep(0.1)
            self._assignment = frozenset(tp.partition for tp in self.consumer.assignment())

    def call(self, fn, timeout: float = 30.0):
        """Run fn() on the consumer's thread and return its result."""
        if self._thread is None:
            return fn()
        box: list = []
        done = threading.Event()
        self._calls.put((fn, box, done))
        if not done.wait(timeout):
            raise AssertionError(f"{self.name}: call not run within {timeout}s")
        status, value = box[0]
        if status == "err":
            raise value
        return value

    def poll(self, timeout: float = 0.05) -> None:
        # The consumer's own thread polls; the caller only waits.
        time.sleep(timeout)

    def assignment(self) -> frozenset[int]:
        return frozenset() if self.closed else self._assignment

    def commit_sync(self) -> None:
        self.call(lambda: self.consumer.commit())

    def close(self) -> None:
        if self.closed:
            return
        def do_close():
            self.consumer.close(autocommit=False)
            self._stop.set()
        self.call(do_close)
        self.closed = True
        if self._thread is not None:
            self._thread.join(10)


def make_member(kind: str, bootstrap: str, group: str, topic: str, name: str):
    return (CkMember if kind == "confluent" else KpMember)(bootstrap, group, topic, name)


def poll_members(members, until, timeout: float = 30.0, message: str = "condition"):
    """Poll each open member in turn until `until()` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = until()
        if value:
            return value
        if time.monotonic() >= deadline:
            state = {m.name: sorted(m.assignment()) for m in members if not m.closed}
            errs = {m.name: [str(e) for e in m.errors[-3:]] for m in members}
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; "
                                 f"assignments {state}; recent client errors {errs}")
        for m in members:
            if not m.closed:
                m.poll(0.05)


def balanced(assignments: list[frozenset[int]], partitions: int) -> bool:
    """Disjoint, covering range(partitions), sizes differing by at most one."""
    total = sum(len(a) for a in assignments)
    union = frozenset().union(*assignments) if assignments else frozenset()
    sizes = [len(a) for a in assignments]
    return (total == partitions and union == frozenset(range(partitions))
            and max(sizes) - min(sizes) <= 1)


def produce_per_partition(bootstrap: str, topic: str, partitions: int, per_partition: int,
                          tag: str) -> dict[tuple[int, int], bytes]:
    """Produce `per_partition` records to every partition; return
    {(partition, offset): value} of the acknowledged records."""
    p = producer(bootstrap)
    log = DeliveryLog()
    for i in range(per_partition):
        for part in range(partitions):
            while True:
                try:
                    p.produce(topic, value=f"{tag}-{part}-{i}".encode(), partition=part,
                              on_delivery=log)
                    break
                except BufferError:
                    p.poll(0.05)
        p.poll(0)
    flush(p)
    assert not log.failed, f"delivery failures: {log.failed[:3]}"
    return {(r.partition, r.offset): r.value for r in log.ok}


# --------------------------------------------------------------------------
# members in their own process
# --------------------------------------------------------------------------

class ProcMember:
    """consumer.py running as a child process; its JSON-line events are
    collected by a reader thread."""

    def __init__(self, bootstrap: str, group: str, topic: str, name: str,
                 instance_id: str | None = None, session_timeout_ms: int = 6000,
                 heartbeat_interval_ms: int = 500, strategy: str = "range"):
        self.name = name
        cmd = [sys.executable, str(CONSUMER_SCRIPT), "--bootstrap", bootstrap, "--group", group,
               "--topic", topic, "--client-id", name,
               "--session-timeout-ms", str(session_timeout_ms),
               "--heartbeat-interval-ms", str(heartbeat_interval_ms), "--strategy", strategy]
        if instance_id:
            cmd += ["--instance-id", instance_id]
        self.events: list[dict] = []
        self.stderr_lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=str(HERE),
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "garbage", "line": line, "t": time.monotonic()}
            with self._lock:
                self.events.append(ev)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            with self._lock:
                self.stderr_lines.append(line.rstrip())

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.snapshot() if e["event"] == kind]

    def assignment(self) -> frozenset[int] | None:
        """Last reported applied assignment (None before the first report)."""
        reports = self.of("assignment")
        return frozenset(reports[-1]["assignment"]) if reports else None

    def running(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM: the member closes its consumer cleanly and exits."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        if self.running():
            self.proc.kill()
        self.proc.wait()

    def describe(self) -> str:
        return (f"{self.name} (pid {self.proc.pid}, exit {self.proc.poll()}): "
                f"last events {self.snapshot()[-8:]}, stderr tail {self.stderr_lines[-5:]}")

    def cleanup(self) -> None:
        if self.running():
            try:
                self.terminate(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill9()


def wait_procs(predicate, procs, timeout: float, message: str):
    """wait_until for process members: on timeout, the failure names the
    processes' latest events (collected then, not when the wait began)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; "
                                 + " | ".join(p.describe() for p in procs))
        time.sleep(0.05)


def is_fatal(event: dict) -> bool:
    """An error event from consumer.py that librdkafka raised as fatal. The
    error callback gets code _FATAL for it (KafkaError.fatal() is not set on
    that event)."""
    return event.get("fatal") or event.get("name") == "_FATAL"
