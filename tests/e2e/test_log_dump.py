"""`caudal log dump` on segments and indexes the broker wrote."""

import re
import subprocess

from confluent_kafka import Producer

from harness import caudal_bin
from support import create_topic, unique_topic


def dump(*files, extra=()):
    r = subprocess.run([str(caudal_bin()), "log", "dump", *extra, *map(str, files)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_dump_shows_batches_records_and_index_entries(broker_factory):
    broker = broker_factory({"log.index.interval.bytes": 0})
    topic = unique_topic("dump")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "gzip",
                  "enable.idempotence": True, "linger.ms": 50})
    for i in range(5):
        p.produce(topic, key=f"key-{i}", value=f"value-{i}", headers=[("trace", f"t{i}".encode())])
    assert p.flush(15) == 0
    p.produce(topic, key=b"\x00\xff", value=None)  # a binary key and a null value
    assert p.flush(15) == 0
    broker.stop()

    segment = broker.data_dir / f"{topic}-0" / "00000000000000000000.log"
    out = dump(segment)
    batches = [l for l in out.splitlines() if l.startswith("baseOffset:")]
    assert len(batches) == 2, out
    assert "compression: gzip" in batches[0] and "isValid: true" in batches[0]
    assert int(re.search(r"producerId: (-?\d+)", batches[0]).group(1)) >= 0, "idempotent producer id shown"
    assert "baseSequence: 0" in batches[0]
    records = [l for l in out.splitlines() if l.startswith("| offset:")]
    assert len(records) == 6, out
    for i in range(5):
        assert f"| offset: {i} " in records[i]
        assert f"key: key-{i} value: value-{i} headers: [trace=t{i}]" in records[i]
    assert "key: 0x00ff value: null" in records[5]
    assert out.strip().endswith("2 batches")

    assert "| offset:" not in dump(segment, extra=["--batches-only"])

    index = dump(segment.with_suffix(".index"))
    assert "offset: 0 position: 0" in index
    assert re.search(r"offset: 5 position: \d+", index), index
    timeindex = dump(segment.with_suffix(".timeindex"))
    assert re.search(r"timestamp: \d+ offset: \d", timeindex), timeindex


def test_dump_refuses_files_it_does_not_know(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    r = subprocess.run([str(caudal_bin()), "log", "dump", str(other)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "not a .log, .index, .timeindex, .txnindex or .snapshot" in r.stderr
