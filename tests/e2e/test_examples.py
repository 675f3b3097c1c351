"""The runnable course examples in examples/python/, run against a real broker.

Each example runs as a subprocess with KAFKA_BOOTSTRAP pointing at the test's
broker, with short durations and a unique topic, and its output (and, where
it matters, the topics it wrote) is checked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from harness import REPO_ROOT, free_port
from support import (by_partition, consume, create_topic, produce_and_confirm,
                     topic_partition_counts, unique_topic, wait_until, watermarks)

EXAMPLES = REPO_ROOT / "examples" / "python"
NO_GROUP_DELAY = {"group.initial.rebalance.delay.ms": 0}


def env_for(bootstrap: str) -> dict[str, str]:
    return dict(os.environ, KAFKA_BOOTSTRAP=bootstrap, PYTHONUNBUFFERED="1")


def run(script: str, bootstrap: str, *args, timeout: float = 60,
        expect_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                          cwd=EXAMPLES, env=env_for(bootstrap), capture_output=True,
                          text=True, timeout=timeout)
    if expect_rc is not None:
        assert proc.returncode == expect_rc, (
            f"{script} exited {proc.returncode}, expected {expect_rc}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    return proc


class Running:
    """An example running in the background; its stdout lines are collected."""

    def __init__(self, script: str, bootstrap: str, *args):
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=EXAMPLES,
            env=env_for(bootstrap), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.stderr = ""
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _read_err(self):
        self.stderr = self.proc.stderr.read()

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate, timeout: float, message: str):
        def check():
            if self.proc.poll() is not None and not predicate(self.lines):
                self._threads[0].join(5)  # one last look once stdout is drained
                if not predicate(self.lines):
                    raise AssertionError(
                        f"example exited {self.proc.returncode} before {message}\n"
                        f"--- stdout ---\n{self.text()}\n--- stderr ---\n{self.stderr}")
            return predicate(self.lines)
        try:
            return wait_until(check, timeout=timeout, message=message)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- stdout so far ---\n{self.text()}") from None

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"example did not exit within {timeout}s\n{self.text()}")
        for t in self._threads:  # the pipes are closed: the readers finish
            t.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def running():
    started: list[Running] = []

    def start(script, bootstrap, *args) -> Running:
        r = Running(script, bootstrap, *args)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def total_records(bootstrap: str, topic: str) -> int:
    n = topic_partition_counts(bootstrap)[topic]
    return sum(high - low for low, high in (watermarks(bootstrap, topic, p) for p in range(n)))


# --------------------------------------------------------------------------
# producers and basic consumers
# --------------------------------------------------------------------------

def test_text_producer_then_basic_consumer(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    topic = unique_topic("ex-text")
    out = run("producer_text.py", b.bootstrap, "--topic", topic, "--count", 4,
              "--message", "hi").stdout
    delivered = re.findall(r"delivered 'hi #(\d)' -> topic \S+ partition 0 offset (\d+)", out)
    assert delivered == [(str(i), str(i)) for i in range(4)], out

    out = run("consumer_basic.py", b.bootstrap, "--topic", topic, "--group", "g-text",
              "--count", 4, "--duration", 30).stdout
    assert re.findall(r"offset (\d+) key=None value='hi #(\d)'", out) == \
        [(str(i), str(i)) for i in range(4)], out
    # The group committed its offsets at close: a second run finds nothing new.
    out = run("consumer_basic.py", b.bootstrap, "--topic", topic, "--group", "g-text",
              "--duration", 2).stdout
    assert "received 0 messages" in out, out


def test_keyed_producer_keeps_each_key_in_one_partition(broker_factory):
    b = broker_factory()
    topic = unique_topic("ex-keyed")
    keys = ["alice", "bob", "carol", "dave", "erin", "frank"]
    out = run("producer_keyed.py", b.bootstrap, "--topic", topic, "--partitions", 3,
              "--keys", ",".join(keys), "--count", 4).stdout
    lines = re.findall(r"key=(\S+)\s+-> partition (\d+) offset (\d+)\s+value=(\S+)", out)
    assert len(lines) == len(keys) * 4, out
    placement: dict[str, set[int]] = {}
    for key, part, _, value in lines:
        assert value.startswith(f"{key}-event-")
        placement.setdefault(key, set()).add(int(part))
    assert all(len(p) == 1 for p in placement.values()), placement
    assert "every key stayed in one partition, in order" in out

    # The topic agrees with what the producer printed, and each key's events
    # are stored in the order they were produced.
    recs = consume(b.bootstrap, topic, 3)
    assert len(recs) == len(keys) * 4
    for part, rs in by_partition(recs).items():
        for r in rs:
            assert placement[r.key.decode()] == {part}
    for key in keys:
        values = [r.value.decode() for r in recs if r.key.decode() == key]
        assert values == [f"{key}-event-{i}" for i in range(4)]


def test_json_producer_and_consumer(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    topic = unique_topic("ex-json")
    out = run("producer_json.py", b.bootstrap, "--topic", topic, "--count", 5,
              "--seed", 1).stdout
    produced = [json.loads(m) for m in re.findall(r"offset \d+: (\{.*\})", out)]
    assert [o["order_id"] for o in produced] == [f"order-{i}" for i in range(5)]

    out = run("consumer_basic.py", b.bootstrap, "--topic", topic, "--format", "json",
              "--group", "g-json", "--count", 5, "--duration", 30).stdout
    consumed = [(k, json.loads(v)) for k, v in re.findall(r"key='(\S+)' value=(\{.*\})", out)]
    assert consumed == [(o["order_id"], o) for o in produced]


def test_producer_modes_table(broker_factory):
    b = broker_factory()
    topic = unique_topic("ex-modes")
    n = 200
    out = run("producer_modes.py", b.bootstrap, "--topic", topic, "--count", n).stdout
    rows = {m.group(1): m.group(2).split() for m in
            re.finditer(r"^(fire-and-forget|synchronous|asynchronous|0|1|all)\s+(.*)$", out,
                         re.M)}
    assert set(rows) == {"fire-and-forget", "synchronous", "asynchronous", "0", "1", "all"}, out
    assert rows["fire-and-forget"][:2] == ["not", "checked"]
    assert rows["synchronous"][0] == rows["asynchronous"][0] == str(n)
    # acks=0: confirmed locally but the broker never reported an offset.
    assert rows["0"][:2] == [str(n), "0"]
    assert rows["1"][:2] == rows["all"][:2] == [str(n), str(n)]
    for r in rows.values():
        float(r[-2])  # seconds column is a number
    assert f"the topic received {6 * n} records (expected {6 * n})" in out
    assert total_records(b.bootstrap, topic) == 6 * n


def test_consumer_offsets_earliest_vs_latest(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    topic = unique_topic("ex-offsets")
    out = run("consumer_offsets.py", b.bootstrap, "--topic", topic, "--count", 3,
              "--duration", 30).stdout
    earliest = re.search(r"^earliest read \d+ messages: (.*)$", out, re.M).group(1).split(", ")
    latest = re.search(r"^latest\s+read \d+ messages: (.*)$", out, re.M).group(1).split(", ")
    assert [v.split("-")[0] for v in earliest] == ["old"] * 3 + ["new"] * 3, out
    assert [v.split("-")[0] for v in latest] == ["new"] * 3, out
    assert latest == earliest[3:]


# --------------------------------------------------------------------------
# error handling
# --------------------------------------------------------------------------

def test_consumer_errors_gives_up_when_no_broker():
    port = free_port()  # nothing listens here
    start = time.monotonic()
    proc = run("consumer_errors.py", f"127.0.0.1:{port}", "--connect-timeout", 2,
               timeout=30, expect_rc=2)
    assert time.monotonic() - start < 15
    assert "not reachable" in proc.stdout
    assert "could not reach Kafka" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_consumer_errors_waits_for_a_late_broker(broker_factory, running):
    port = free_port()
    topic = unique_topic("ex-late")
    ex = running("consumer_errors.py", f"127.0.0.1:{port}", "--topic", topic,
                 "--connect-timeout", 30, "--count", 1, "--duration", 40)
    ex.wait_for(lambda ls: any("attempt 1:" in l for l in ls), 15, "a failed first attempt")
    b = broker_factory(NO_GROUP_DELAY, port=port)
    create_topic(b.bootstrap, topic)
    produce_and_confirm(b.bootstrap, topic, [(None, b'{"n": 1}')])
    assert ex.finish(40) == 0, ex.text() + ex.stderr
    assert "connected to Kafka" in ex.text()
    assert 'OK partition 0 offset 0: {"n": 1}' in ex.lines


def test_consumer_errors_survives_restart_and_skips_bad_records(broker_factory, running):
    b = broker_factory(NO_GROUP_DELAY)
    topic = unique_topic("ex-errors")
    create_topic(b.bootstrap, topic)
    produce_and_confirm(b.bootstrap, topic, [
        (None, b'{"n": 0}'), (None, b'{"n": 1}'), (None, b"this is not json"),
        (None, b"\xff\xfe not utf-8"), (None, b'{"n": 2}')])
    ex = running("consumer_errors.py", b.bootstrap, "--topic", topic, "--group", "g-errors",
                 "--count", 5, "--duration", 60)
    ex.wait_for(lambda ls: sum(l.startswith("OK ") for l in ls) >= 3, 20,
                "the first three good records")
    assert sum(l.startswith("SKIPPED partition 0 offset 2") for l in ex.lines) >= 1
    assert sum(l.startswith("SKIPPED partition 0 offset 3") for l in ex.lines) >= 1

    b.restart()
    produce_and_confirm(b.bootstrap, topic, [(None, b'{"n": 3}'), (None, b'{"n": 4}')])
    assert ex.finish(45) == 0, ex.text() + "\n" + ex.stderr
    good = {json.loads(l.split(": ", 1)[1])["n"] for l in ex.lines if l.startswith("OK ")}
    assert good == {0, 1, 2, 3, 4}, ex.text()
    assert re.search(r"summary: \d+ records processed, \d+ skipped", ex.text())
    assert "Traceback" not in ex.stderr


# --------------------------------------------------------------------------
# streams
# --------------------------------------------------------------------------

def parse_summary(text: str, noun: str) -> dict[str, int]:
    m = re.search(rf"summary: sent (\d+) {noun} in [\d.]+ s \([\d.]+/s\), delivered (\d+), "
                  rf"failed (\d+)", text)
    assert m, text
    return {"sent": int(m.group(1)), "delivered": int(m.group(2)), "failed": int(m.group(3))}


def test_stream_sensors_stops_after_duration(broker_factory):
    b = broker_factory()
    topic = unique_topic("ex-sensors")
    start = time.monotonic()
    out = run("stream_sensors.py", b.bootstrap, "--topic", topic, "--rate", 40,
              "--duration", 1.5, "--quiet").stdout
    assert time.monotonic() - start < 20
    assert "stopped (duration reached)" in out
    s = parse_summary(out, "readings")
    assert 40 <= s["sent"] <= 70, out  # ~60 at 40/s for 1.5 s
    assert s["delivered"] == s["sent"] and s["failed"] == 0
    assert total_records(b.bootstrap, topic) == s["sent"]


def test_stream_payments_stops_cleanly_on_sigint(broker_factory, running):
    b = broker_factory()
    topic = unique_topic("ex-payments")
    ex = running("stream_payments.py", b.bootstrap, "--topic", topic, "--rate", 200,
                 "--quiet")
    ex.wait_for(lambda ls: any(l.startswith("streaming payments") for l in ls), 20,
                "the stream to start")
    wait_until(lambda: topic in topic_partition_counts(b.bootstrap)
               and total_records(b.bootstrap, topic) >= 20, timeout=20,
               message="payments arriving in the topic")
    ex.proc.send_signal(signal.SIGINT)
    assert ex.finish(20) == 0, ex.text() + ex.stderr
    text = ex.text()
    assert "stopped (SIGINT)" in text
    s = parse_summary(text, "payments")
    assert s["sent"] >= 20 and s["delivered"] == s["sent"] and s["failed"] == 0
    assert total_records(b.bootstrap, topic) == s["sent"]
    assert "Traceback" not in ex.stderr


# --------------------------------------------------------------------------
# groups, transform, delivery semantics
# --------------------------------------------------------------------------

def parse_table(block: str) -> dict[str, list[int]]:
    return {m.group(1): json.loads(m.group(2))
            for m in re.finditer(r"^  (c\d+) -> (\[.*\])$", block, re.M)}


def test_group_demo_rebalances_after_a_kill(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    topic = unique_topic("ex-group")
    out = run("group_demo.py", b.bootstrap, "--topic", topic, "--members", 3,
              "--partitions", 6, "--session-timeout-ms", 6000, "--duration", 30,
              timeout=80).stdout
    before_text, after_text = out.split("group is stable:", 1)[1].split("rebalance complete", 1)
    before, after = parse_table(before_text), parse_table(after_text)
    assert set(before) == {"c1", "c2", "c3"}, out
    assert sorted(p for ps in before.values() for p in ps) == list(range(6))
    assert all(len(ps) == 2 for ps in before.values()), out
    assert "killing c3" in out
    assert set(after) == {"c1", "c2"}, out
    assert sorted(p for ps in after.values() for p in ps) == list(range(6))
    assert all(len(ps) == 3 for ps in after.values()), out
    # The survivors took over exactly what the killed member owned.
    moved = dict(re.findall(r"(\d+) -> (c\d)", out.split("moved:", 1)[1]))
    assert sorted(int(p) for p in moved) == before["c3"]


def expected_transform(reading: dict) -> dict | None:
    c = reading.get("temperature_c")
    if reading.get("status") != "ok" or c is None:
        return None
    rooms = {"sensor-0": "kitchen", "sensor-1": "office", "sensor-2": "server room",
             "sensor-3": "hall", "sensor-4": "lab"}
    return {**reading, "temperature_f": round(c * 1.8 + 32, 2),
            "room": rooms[reading["sensor_id"]],
            "comfort": "cold" if c < 18 else "hot" if c > 26 else "comfortable"}


def test_transform_writes_filtered_enriched_records(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    source, target = unique_topic("ex-src"), unique_topic("ex-dst")
    run("stream_sensors.py", b.bootstrap, "--topic", source, "--count", 40, "--rate", 0,
        "--fault-rate", 0.25, "--seed", 7, "--quiet")
    out = run("transform.py", b.bootstrap, "--topic", source, "--target", target,
              "--count", 40, "--duration", 30).stdout
    m = re.search(r"summary: read 40, wrote (\d+) to \S+, dropped (\d+)", out)
    assert m, out
    written, dropped = int(m.group(1)), int(m.group(2))

    inputs = consume(b.bootstrap, source, 3)
    expected = {}
    for r in inputs:
        e = expected_transform(json.loads(r.value))
        if e is not None:
            expected[e["seq"]] = (r.key, e)
    assert 0 < dropped == 40 - len(expected) and written == len(expected), out
    outputs = consume(b.bootstrap, target, topic_partition_counts(b.bootstrap)[target])
    got = {}
    for r in outputs:
        v = json.loads(r.value)
        got[v["seq"]] = (r.key, v)
    assert got == expected


def test_delivery_semantics(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    topic = unique_topic("ex-semantics")
    out = run("delivery_semantics.py", b.bootstrap, "--topic", topic, "--count", 5,
              "--crash-at", 2).stdout
    amo = out.split("== at-most-once", 1)[1].split("== at-least-once", 1)[0]
    alo = out.split("== at-least-once", 1)[1].split("== exactly-once", 1)[0]
    eos = out.split("== exactly-once", 1)[1]
    assert re.search(r"processed 4 of 5; lost: \['payment-\w+-2'\]; processed twice: none", amo)
    assert re.search(r"processed 6 of 5; lost: none; processed twice: \['payment-\w+-2'\]", alo)
    assert re.search(r"CRASH before committing it", eos)
    assert re.search(r"5 of 5; lost: none; processed twice: none", eos), eos

    # Alone, against the same topic: earlier runs' records are skipped, their offsets
    # committed in transactions too.
    out = run("delivery_semantics.py", b.bootstrap, "--topic", topic, "--mode", "exactly-once",
              "--count", 4, "--crash-at", 0).stdout
    assert re.search(r"4 of 4; lost: none; processed twice: none", out), out


def test_exactly_once_pipeline_survives_its_worker_being_killed(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    topic = unique_topic("ex-pipeline")
    out = run("exactly_once_pipeline.py", b.bootstrap, "--topic", topic, "--count", 3000,
              "--kills", 4, "--seed", 3, timeout=150).stdout
    assert len(re.findall(r"kill -9 #\d of the worker", out)) == 4, out
    assert "read_committed:   3000 invoices for 3000 orders; missing: 0; twice: 0" in out, out
    # Invoices carry their orders' keys and amounts.
    invoices = consume(b.bootstrap, f"{topic}-invoices", range(3), timeout=30,
                       **{"isolation.level": "read_committed"})
    assert len(invoices) == 3000
    # What the kills left in aborted transactions is there for read_uncommitted readers.
    everything = consume(b.bootstrap, f"{topic}-invoices", range(3), timeout=30,
                         **{"isolation.level": "read_uncommitted"})
    reported = re.search(r"read_uncommitted: (\d+) records, (\d+) of them from", out)
    assert reported and int(reported[1]) == len(everything), out
    for r in invoices:
        bill = json.loads(r.value)
        cents = 100 + (bill["order"] * 37) % 9900
        assert bill["net"] == cents / 100 and r.key == f"customer-{bill['order'] % 17}".encode()


def alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_pipeline_worker_stops_once_its_supervisor_is_killed(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    topic = unique_topic("ex-orphan")
    create_topic(b.bootstrap, topic, partitions=1)
    create_topic(b.bootstrap, f"{topic}-invoices", partitions=1)
    # A stand-in supervisor: a shell that starts the worker, says its pid and waits for it.
    worker = (f"{sys.executable} {EXAMPLES / 'exactly_once_pipeline.py'} --worker --topic {topic}"
              f" --target {topic}-invoices --group {topic}-pipeline")
    shell = subprocess.Popen(["sh", "-c", f"{worker} & echo $!; wait"], cwd=EXAMPLES,
                             env=env_for(b.bootstrap), stdout=subprocess.PIPE, text=True)
    pid = int(shell.stdout.readline())
    try:
        assert shell.stdout.readline().strip() == "worker started"
        # Idle at the end of an empty input, the worker prints nothing that could fail.
        shell.send_signal(signal.SIGKILL)
        shell.wait(10)
        wait_until(lambda: not alive(pid), timeout=30, message="the orphaned worker to stop")
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------
# kafka-python
# --------------------------------------------------------------------------

def test_kafka_python_examples(broker_factory):
    b = broker_factory(NO_GROUP_DELAY)
    text_topic, keyed_topic, json_topic, offsets_topic = (
        unique_topic(p) for p in ("kp-text", "kp-keyed", "kp-json", "kp-offsets"))

    out = run("kafka_python/producer_text.py", b.bootstrap, "--topic", text_topic,
              "--count", 3, "--message", "hey").stdout
    assert len(re.findall(r"delivered 'hey #\d' -> topic \S+ partition 0 offset \d", out)) == 3
    out = run("kafka_python/consumer_basic.py", b.bootstrap, "--topic", text_topic,
              "--count", 3, "--duration", 30).stdout
    assert re.findall(r"value='(hey #\d)'", out) == ["hey #0", "hey #1", "hey #2"], out

    out = run("kafka_python/producer_keyed.py", b.bootstrap, "--topic", keyed_topic,
              "--keys", "alice,bob,carol,dave", "--count", 3).stdout
    placement: dict[str, set[int]] = {}
    for key, part in re.findall(r"key=(\S+)\s+-> partition (\d+)", out):
        placement.setdefault(key, set()).add(int(part))
    assert len(placement) == 4 and all(len(p) == 1 for p in placement.values()), out
    for r in consume(b.bootstrap, keyed_topic, 3):
        assert placement[r.key.decode()] == {r.partition}

    run("kafka_python/producer_json.py", b.bootstrap, "--topic", json_topic, "--count", 3)
    out = run("kafka_python/consumer_basic.py", b.bootstrap, "--topic", json_topic,
              "--format", "json", "--count", 3, "--duration", 30).stdout
    assert re.findall(r"key='(order-\d)' value=\{", out) == ["order-0", "order-1", "order-2"]

    out = run("kafka_python/consumer_offsets.py", b.bootstrap, "--topic", offsets_topic,
              "--count", 2).stdout
    earliest = re.search(r"^earliest read \d+ messages: (.*)$", out, re.M).group(1).split(", ")
    latest = re.search(r"^latest\s+read \d+ messages: (.*)$", out, re.M).group(1).split(", ")
    assert [v.split("-")[0] for v in earliest] == ["old", "old", "new", "new"], out
    assert latest == earliest[2:], out
