"""Every stored batch is valid, compressed or not: corrupt compressed batches are refused with
CORRUPT_MESSAGE before anything is stored, a zip bomb does not take the broker's memory,
zstd needs Produce v7, and a batch whose header misstates its max timestamp is stored with the
right one (and a CRC that matches it)."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TopicPartition

import wire
from support import consume, consumer, create_topic, proc_status_kib, unique_topic, watermarks

CODECS = ["gzip", "snappy", "lz4", "zstd"]
# A batch may inflate to at most message.max.bytes (1 MiB by default) times this.
FACTOR = 4


@pytest.mark.parametrize("codec", CODECS)
def test_corrupt_compressed_batches_are_refused_and_nothing_is_stored(broker_factory, codec):
    b = broker_factory({"message.max.decompression.factor": FACTOR})
    topic = unique_topic(f"bad-{codec}")
    create_topic(b.bootstrap, topic, partitions=1)
    values = [f"value {i} ".encode() * 8 for i in range(50)]
    records = b"".join(wire.encode_record(i, i, None, v) for i, v in enumerate(values))
    # Zeros inflate the most; snappy (at most ~21x) needs more of them in a 1 MB batch.
    zeros = b"\0" * ((16 << 20) if codec == "snappy" else (64 << 20))
    bad = {
        "a body that is not what the codec says": wire.build_batch(
            values, codec, body=b"\x13\x37 not compressed at all " * 20),
        "a cut-off stream": wire.build_batch(
            values, codec, body=wire.compress(codec, records)[:-9]),
        "a record count that lies": wire.build_batch(values, codec, count=len(values) + 1),
        "a zip bomb": wire.build_batch([zeros], codec),
    }
    del zeros
    assert len(bad["a zip bomb"]) < 1_048_588, "the bomb must pass the size check"
    with wire.Connection(b.host, b.port) as conn:
        r = wire.produce(conn, topic, 0, wire.build_batch([b"first"], codec), version=8)
        assert (r.error_code, r.base_offset) == (wire.NONE, 0), r
        for what, batch in bad.items():
            r = wire.produce(conn, topic, 0, batch, version=8)
            assert r.error_code == wire.CORRUPT_MESSAGE, f"{what}: {r}"
            assert watermarks(b.bootstrap, topic, 0) == (0, 1), f"{what} was stored"
        r = wire.produce(conn, topic, 0, wire.build_batch([b"last"], codec), version=8)
        assert (r.error_code, r.base_offset) == (wire.NONE, 1), r
    stored = consume(b.bootstrap, topic, [0], timeout=20, **{"check.crcs": True})
    assert [r.value for r in stored] == [b"first", b"last"]
    # Inflated whole, the bomb alone would have taken 64 MiB (16 for snappy, which is refused
    # from its length header before anything is allocated).
    peak_mib = proc_status_kib(b.proc.pid, "VmHWM") / 1024
    assert peak_mib < 40, f"peak RSS {peak_mib:.0f} MiB: the bomb inflated"
    assert b.is_running()


def test_zstd_needs_produce_v7(broker):
    topic = unique_topic("zstd")
    create_topic(broker.bootstrap, topic, partitions=1)
    batch = wire.build_batch([b"zstd record"], "zstd")
    with wire.Connection(broker.host, broker.port) as conn:
        r = wire.produce(conn, topic, 0, batch, version=6)
        assert r.error_code == wire.UNSUPPORTED_COMPRESSION_TYPE, r
        r = wire.produce(conn, topic, 0, batch, version=7)
        assert (r.error_code, r.base_offset) == (wire.NONE, 0), r
    assert [r.value for r in consume(broker.bootstrap, topic, [0])] == [b"zstd record"]


@pytest.mark.parametrize("codec", [None, "lz4"])
def test_a_batch_without_its_max_timestamp_is_stored_with_it(broker, codec):
    """sarama 1.22 writes -1 as a batch's max timestamp; Kafka's validator corrects it."""
    topic = unique_topic("maxts")
    create_topic(broker.bootstrap, topic, partitions=1)
    base = int(time.time() * 1000) - 60_000
    values = [f"at {i}".encode() for i in range(5)]
    with wire.Connection(broker.host, broker.port) as conn:
        r = wire.produce(conn, topic, 0, wire.build_batch([b"before"], base_timestamp=base - 10),
                         version=8)
        assert r.error_code == wire.NONE, r
        batch = wire.build_batch(values, codec, base_timestamp=base, max_timestamp=-1)
        r = wire.produce(conn, topic, 0, batch, version=8)
        assert (r.error_code, r.base_offset) == (wire.NONE, 1), r
    # The stored header's CRC is checked by the consumer: it must match the corrected header.
    stored = consume(broker.bootstrap, topic, [0], **{"check.crcs": True})
    assert [r.value for r in stored] == [b"before"] + values
    c = consumer(broker.bootstrap)
    try:
        found = c.offsets_for_times([TopicPartition(topic, 0, base + 3)], timeout=10)
        assert found[0].offset == 4, found
        found = c.offsets_for_times([TopicPartition(topic, 0, base + 5)], timeout=10)
        assert found[0].offset == -1, "nothing is newer than the batch's last record"
    finally:
        c.close()
