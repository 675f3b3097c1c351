"""The Rust producer and consumer examples (examples/rust, rdkafka crate) against a real broker."""

import os
import re
import subprocess
from pathlib import Path

from support import create_topic, unique_topic

EXAMPLES = Path(__file__).resolve().parents[2] / "target" / "release" / "examples"


def run(name, broker, *args):
    binary = EXAMPLES / name
    assert binary.exists(), f"{binary} missing: build with `cargo build --release --workspace --examples`"
    r = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "KAFKA_BOOTSTRAP": broker.bootstrap})
    assert r.returncode == 0, f"{name} failed: {r.stderr}"
    return r.stdout


def test_rust_producer_then_consumer(broker_factory):
    broker = broker_factory({"group.initial.rebalance.delay.ms": 0})
    topic = unique_topic("rust")
    create_topic(broker.bootstrap, topic, partitions=3)
    out = run("producer", broker, "--topic", topic, "--count", "6")
    delivered = re.findall(r"delivered key=(\S+) value=(.+) partition=(\d+) offset=(\d+)", out)
    assert len(delivered) == 18, out
    by_key = {}
    for key, _value, partition, _offset in delivered:
        if key != "-":
            by_key.setdefault(key, set()).add(partition)
    assert by_key and all(len(ps) == 1 for ps in by_key.values()), f"a key landed in two partitions: {by_key}"

    out = run("consumer", broker, "--topic", topic, "--count", "18", "--group", "rust-readers")
    consumed = re.findall(r"partition=(\d+) offset=(\d+) key=(\S+) value=(.+)", out)
    assert sorted((p, o) for p, o, _, _ in consumed) == sorted((p, o) for _, _, p, o in delivered)
    assert "consumed 18 records" in out
    # It committed as it went: the same group has nothing left to read.
    out = run("consumer", broker, "--topic", topic, "--count", "1", "--group", "rust-readers", "--idle-secs", "3")
    assert "consumed 0 records" in out


def test_rust_transactions(broker):
    topic = unique_topic("rust-txn")
    create_topic(broker.bootstrap, topic)
    out = run("transactions", broker, "--topic", topic, "--transactional-id", unique_topic("rt"))
    assert "read_committed sees 3: [\"committed 0\", \"committed 1\", \"committed 2\"]" in out, out
    assert "read_uncommitted sees 5:" in out, out
