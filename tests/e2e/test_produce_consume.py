"""Producing and consuming through confluent-kafka and kafka-python."""

from __future__ import annotations

import json
import os
import time

import pytest
from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, TIMESTAMP_CREATE_TIME, KafkaError,
                             TopicPartition)

from support import (DeliveryLog, by_partition, consume, consumer, create_topic, flush,
                     kp_consume_all, kp_consumer, kp_send_all, produce_and_confirm, producer,
                     unique_topic, wait_until, watermarks)


def sample_messages():
    """(key, value, headers) covering plain text, keys, JSON and edge cases."""
    msgs = [
        (None, b"plain text message", None),
        (None, "unicode: caf\u00e9 \u2603".encode(), None),
        (b"user-1", b"keyed message", None),
        (b"user-2", json.dumps({"id": 2, "tags": ["a", "b"], "nested": {"x": 1.5}}).encode(),
         [("content-type", b"application/json"), ("trace", b"\x00\x01\x02")]),
        (b"json-key", json.dumps([1, 2, 3]).encode(), [("dup", b"1"), ("dup", b"2")]),
        (b"", b"", None),            # empty key and empty value are not null
        (b"tombstone", None, None),  # null value
        (None, bytes(range(256)), [("empty-header", b"")]),
    ]
    return msgs


def assert_round_trip(sent, recs, check_headers=True):
    assert [r.offset for r in recs] == list(range(len(sent))), "offsets must be 0..n-1"
    for (key, value, headers), r in zip(sent, recs):
        assert r.key == key
        assert r.value == value
        if check_headers:
            assert [(k, v) for k, v in r.headers] == list(headers or [])


# ---------------------------------------------------------------- round trips

def test_confluent_round_trip(broker):
    topic = unique_topic("rt-ck")
    create_topic(broker.bootstrap, topic)
    sent = sample_messages()
    log = produce_and_confirm(broker.bootstrap, topic, sent)
    assert sorted(r.offset for r in log.ok) == list(range(len(sent)))

    recs = consume(broker.bootstrap, topic, [0])
    assert_round_trip(sent, recs)


def test_confluent_timestamps_preserved(broker):
    topic = unique_topic("ts")
    create_topic(broker.bootstrap, topic)
    p = producer(broker.bootstrap)
    stamps = [1_600_000_000_000, 1_600_000_000_123, 1_700_000_000_000]
    for i, ts in enumerate(stamps):
        p.produce(topic, value=f"m{i}".encode(), timestamp=ts)
    flush(p)
    c = consumer(broker.bootstrap)
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            got.append(m.timestamp())
    c.close()
    assert got == [(TIMESTAMP_CREATE_TIME, ts) for ts in stamps]


def test_kafka_python_round_trip(broker):
    topic = unique_topic("rt-kp")
    create_topic(broker.bootstrap, topic)
    sent = sample_messages()
    metas = kp_send_all(broker.bootstrap, topic, sent)
    assert [m.offset for m in metas] == list(range(len(sent)))

    recs = kp_consume_all(broker.bootstrap, topic, [0])
    assert_round_trip(sent, recs)


def test_produce_confluent_consume_kafka_python(broker):
    topic = unique_topic("x-ck-kp")
    create_topic(broker.bootstrap, topic)
    sent = sample_messages()
    produce_and_confirm(broker.bootstrap, topic, sent)
    assert_round_trip(sent, kp_consume_all(broker.bootstrap, topic, [0]))


def test_produce_kafka_python_consume_confluent(broker):
    topic = unique_topic("x-kp-ck")
    create_topic(broker.bootstrap, topic)
    sent = sample_messages()
    kp_send_all(broker.bootstrap, topic, sent)
    assert_round_trip(sent, consume(broker.bootstrap, topic, [0]))


def test_consume_from_middle_offset(broker):
    topic = unique_topic("mid")
    create_topic(broker.bootstrap, topic)
    produce_and_confirm(broker.bootstrap, topic, [(None, f"m{i}".encode()) for i in range(20)])
    recs = consume(broker.bootstrap, topic, [0], start=13)
    assert [(r.offset, r.value) for r in recs] == [(i, f"m{i}".encode()) for i in range(13, 20)]


# ---------------------------------------------------------------- keys & partitions

KEYS = 60
PER_KEY = 30


def keyed_stream():
    # Interleave keys so ordering is tested across batches and partitions.
    return [(f"key-{k}".encode(), f"key-{k}:{seq}".encode(), None)
            for seq in range(PER_KEY) for k in range(KEYS)]


def assert_key_affinity_and_order(recs, partitions):
    assert len(recs) == KEYS * PER_KEY
    for p, prs in by_partition(recs).items():
        assert 0 <= p < partitions
        assert [r.offset for r in prs] == list(range(len(prs))), f"partition {p} offsets"
    seen_partition = {}
    seqs = {}
    for r in recs:
        seen_partition.setdefault(r.key, set()).add(r.partition)
        key, seq = r.value.decode().split(":")
        assert key.encode() == r.key
        seqs.setdefault(r.key, []).append((r.partition, r.offset, int(seq)))
    split = {k: v for k, v in seen_partition.items() if len(v) != 1}
    assert not split, f"keys spread over several partitions: {list(split.items())[:5]}"
    for key, items in seqs.items():
        items.sort()
        assert [s for _, _, s in items] == list(range(PER_KEY)), f"order broken for {key!r}"
    used = {r.partition for r in recs}
    assert len(used) > 1, "60 keys should not all hash to one partition"


def test_same_key_same_partition_ordered_confluent(broker):
    topic = unique_topic("keys-ck")
    create_topic(broker.bootstrap, topic, partitions=6)
    log = produce_and_confirm(broker.bootstrap, topic, keyed_stream())
    recs = consume(broker.bootstrap, topic, range(6))
    assert_key_affinity_and_order(recs, 6)
    # What the producer was told matches what is stored.
    assert sorted((r.partition, r.offset, r.value) for r in log.ok) == \
        sorted((r.partition, r.offset, r.value) for r in recs)


def test_same_key_same_partition_ordered_kafka_python(broker):
    topic = unique_topic("keys-kp")
    create_topic(broker.bootstrap, topic, partitions=6)
    metas = kp_send_all(broker.bootstrap, topic, keyed_stream())
    recs = kp_consume_all(broker.bootstrap, topic, range(6))
    assert_key_affinity_and_order(recs, 6)
    assert sorted((m.partition, m.offset) for m in metas) == \
        sorted((r.partition, r.offset) for r in recs)


# ---------------------------------------------------------------- earliest vs latest

def test_earliest_vs_latest_confluent(broker):
    topic = unique_topic("latest-ck")
    create_topic(broker.bootstrap, topic)
    old = [(None, f"old-{i}".encode()) for i in range(5)]
    produce_and_confirm(broker.bootstrap, topic, old)

    c = consumer(broker.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_END)])
        early = []

        def reached_end():
            m = c.poll(0.2)
            if m is None:
                return None
            if m.error() is None:
                early.append(m)
                return None
            if m.error().code() == KafkaError._PARTITION_EOF:
                return m
            return None

        # The end-of-partition event means the logical "latest" offset has
        # been resolved to a concrete fetch position.
        eof = wait_until(reached_end, timeout=20, interval=0,
                         message="consumer at OFFSET_END to reach end of partition")
        assert eof.offset() == 5
        assert early == [], "a consumer starting at latest must not see old messages"

        new = [(None, f"new-{i}".encode()) for i in range(3)]
        produce_and_confirm(broker.bootstrap, topic, new)

        got = []
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append((m.offset(), m.value()))
        assert got == [(5, b"new-0"), (6, b"new-1"), (7, b"new-2")]
    finally:
        c.close()

    everything = consume(broker.bootstrap, topic, [0])
    assert [r.value for r in everything] == [v for _, v in old] + [b"new-0", b"new-1", b"new-2"]


def test_earliest_vs_latest_kafka_python(broker):
    from kafka import TopicPartition as KTP

    topic = unique_topic("latest-kp")
    create_topic(broker.bootstrap, topic)
    kp_send_all(broker.bootstrap, topic, [(None, f"old-{i}".encode()) for i in range(5)])

    tp = KTP(topic, 0)
    c = kp_consumer(broker.bootstrap, auto_offset_reset="latest")
    try:
        c.assign([tp])
        c.seek_to_end(tp)
        assert c.position(tp) == 5  # blocks until the end offset is resolved
        kp_send_all(broker.bootstrap, topic, [(None, f"new-{i}".encode()) for i in range(3)])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            for msgs in c.poll(timeout_ms=200).values():
                got += [(m.offset, m.value) for m in msgs]
        assert got == [(5, b"new-0"), (6, b"new-1"), (7, b"new-2")]
    finally:
        c.close(autocommit=False)

    everything = kp_consume_all(broker.bootstrap, topic, [0])
    assert len(everything) == 8 and everything[0].value == b"old-0"


# ---------------------------------------------------------------- compression

CODECS = ["gzip", "snappy", "lz4", "zstd"]


def compressible_messages(n=500):
    return [(f"k{i % 7}".encode(),
             (f"record {i} " + "lorem ipsum dolor sit amet " * 8).encode(), None)
            for i in range(n)]


@pytest.mark.parametrize("codec", CODECS)
def test_compression_confluent(broker, codec):
    topic = unique_topic(f"ck-{codec}")
    create_topic(broker.bootstrap, topic)
    sent = compressible_messages()
    produce_and_confirm(broker.bootstrap, topic, sent,
                        conf={"compression.type": codec, "linger.ms": 50})
    recs = consume(broker.bootstrap, topic, [0])
    assert [(r.key, r.value) for r in recs] == [(k, v) for k, v, _ in sent]
    assert [r.offset for r in recs] == list(range(len(sent)))


@pytest.mark.parametrize("codec", CODECS)
def test_compression_kafka_python(broker, codec):
    topic = unique_topic(f"kp-{codec}")
    create_topic(broker.bootstrap, topic)
    sent = compressible_messages()
    kp_send_all(broker.bootstrap, topic, sent, compression_type=codec, linger_ms=50)
    recs = kp_consume_all(broker.bootstrap, topic, [0])
    assert [(r.key, r.value) for r in recs] == [(k, v) for k, v, _ in sent]
    # ...and the other client decodes the same batches.
    recs = consume(broker.bootstrap, topic, [0])
    assert [(r.key, r.value) for r in recs] == [(k, v) for k, v, _ in sent]


# ---------------------------------------------------------------- volume & size

def test_fifty_thousand_messages_confluent(broker):
    topic = unique_topic("bulk-ck")
    create_topic(broker.bootstrap, topic, partitions=2)
    n = 50_000
    p = producer(broker.bootstrap, **{"linger.ms": 20, "batch.num.messages": 5000,
                                      "queue.buffering.max.messages": 200_000})
    log = DeliveryLog()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value=b"%08d" % i + b"x" * 92, partition=i % 2, on_delivery=log)
                break
            except BufferError:
                p.poll(0.05)
    flush(p, timeout=120)
    assert not log.failed, log.failed[:3]
    assert len(log.ok) == n

    recs = consume(broker.bootstrap, topic, [0, 1], timeout=90)
    assert len(recs) == n
    for part, prs in by_partition(recs).items():
        assert [r.offset for r in prs] == list(range(n // 2))
        assert [int(r.value[:8]) for r in prs] == list(range(part, n, 2))


def test_twenty_thousand_messages_kafka_python(broker):
    topic = unique_topic("bulk-kp")
    create_topic(broker.bootstrap, topic)
    n = 20_000
    metas = kp_send_all(broker.bootstrap, topic,
                        [(None, b"%08d" % i + b"y" * 50) for i in range(n)],
                        batch_size=256 * 1024, linger_ms=20)
    assert [m.offset for m in metas] == list(range(n))
    recs = consume(broker.bootstrap, topic, [0], timeout=60)
    assert [int(r.value[:8]) for r in recs] == list(range(n))


LARGE_SIZES = [900 * 1024, 1500 * 1024]


@pytest.mark.parametrize("size", LARGE_SIZES, ids=["900KiB", "1500KiB"])
def test_large_messages_confluent(broker_factory, size):
    b = broker_factory({"message.max.bytes": 2_000_000})
    topic = unique_topic("large-ck")
    create_topic(b.bootstrap, topic)
    blobs = [os.urandom(size) for _ in range(3)]
    produce_and_confirm(b.bootstrap, topic, [(f"b{i}".encode(), v) for i, v in enumerate(blobs)],
                        conf={"message.max.bytes": 2_100_000})
    recs = consume(b.bootstrap, topic, [0], timeout=60)
    assert [r.value for r in recs] == blobs


def test_large_message_kafka_python(broker_factory):
    b = broker_factory({"message.max.bytes": 2_000_000})
    topic = unique_topic("large-kp")
    create_topic(b.bootstrap, topic)
    blobs = [os.urandom(900 * 1024) for _ in range(2)]
    kp_send_all(b.bootstrap, topic, [(None, v) for v in blobs], max_request_size=2_100_000)
    recs = kp_consume_all(b.bootstrap, topic, [0], timeout=60)
    assert [r.value for r in recs] == blobs


# ---------------------------------------------------------------- acks

@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks_confluent(broker, acks):
    topic = unique_topic(f"acks{acks}-ck")
    create_topic(broker.bootstrap, topic)
    sent = [(None, f"acks={acks} #{i}".encode(), None) for i in range(100)]
    log = produce_and_confirm(broker.bootstrap, topic, sent, conf={"acks": acks})
    assert len(log.ok) == 100
    if acks != "0":
        assert sorted(r.offset for r in log.ok) == list(range(100))
    # acks=0 gets no response, so poll the log end until everything landed.
    wait_until(lambda: watermarks(broker.bootstrap, topic, 0)[1] == 100,
               message="high watermark 100")
    recs = consume(broker.bootstrap, topic, [0])
    assert [r.value for r in recs] == [v for _, v, _ in sent]


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks_kafka_python(broker, acks):
    topic = unique_topic(f"acks{acks}-kp")
    create_topic(broker.bootstrap, topic)
    sent = [(None, f"acks={acks} #{i}".encode()) for i in range(100)]
    metas = kp_send_all(broker.bootstrap, topic, sent, acks=acks)
    if acks != 0:
        assert [m.offset for m in metas] == list(range(100))
    wait_until(lambda: watermarks(broker.bootstrap, topic, 0)[1] == 100,
               message="high watermark 100")
    recs = kp_consume_all(broker.bootstrap, topic, [0])
    assert [r.value for r in recs] == [v for _, v in sent]
