"""Invalid requests and hostile input: errors are reported, the broker survives."""

from __future__ import annotations

import os
import re
import socket
import struct
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

import wire
from support import (DeliveryLog, consume, create_topic, flush, produce_and_confirm, producer,
                     topic_partition_counts, unique_topic, wait_until, watermarks)

CLOSE_TIMEOUT = 10.0


def assert_broker_serves(broker):
    """A fresh client still gets proper answers."""
    with wire.Connection(broker.host, broker.port) as conn:
        resp = wire.api_versions(conn, 0, correlation_id=4242)
    assert resp.error_code == 0
    assert wire.API_VERSIONS in resp.api_keys
    assert broker.is_running()


# ---------------------------------------------------------------- client-level errors

def test_produce_to_unknown_partition(broker):
    topic = unique_topic("one-part")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = producer(broker.bootstrap, **{"message.timeout.ms": 10000})
    log = DeliveryLog()
    codes = (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART)
    try:
        p.produce(topic, value=b"nowhere", partition=5, on_delivery=log)
    except KafkaException as e:
        assert e.args[0].code() in codes, e
    else:
        flush(p, timeout=30)
        assert not log.ok, "a message for partition 5 of a 1-partition topic was accepted"
        assert len(log.failed) == 1
        assert log.failed[0][0].code() in codes, log.failed[0][0]
    assert watermarks(broker.bootstrap, topic, 0) == (0, 0)


def test_raw_produce_to_unknown_partition(broker):
    topic = unique_topic("one-part-raw")
    create_topic(broker.bootstrap, topic, partitions=1)
    batch = wire.build_record_batch(wire.BatchSpec(records=[(None, b"x")]))
    with wire.Connection(broker.host, broker.port) as conn:
        res = wire.produce_v3(conn, topic, 5, batch)
    assert res.error_code == wire.UNKNOWN_TOPIC_OR_PARTITION, res


def test_produce_unknown_topic_with_auto_create_disabled(broker_factory):
    b = broker_factory({"auto.create.topics.enable": False})
    topic = unique_topic("absent")
    p = producer(b.bootstrap, **{"message.timeout.ms": 10000,
                                 "topic.metadata.propagation.max.ms": 1000})
    log = DeliveryLog()
    p.produce(topic, value=b"lost", on_delivery=log)
    flush(p, timeout=30)
    assert not log.ok, "produce to a missing topic must fail when auto-create is off"
    assert log.failed[0][0].code() in (KafkaError._UNKNOWN_TOPIC,
                                       KafkaError.UNKNOWN_TOPIC_OR_PART), log.failed[0][0]
    assert topic not in topic_partition_counts(b.bootstrap)


def test_raw_produce_unknown_topic_with_auto_create_disabled(broker_factory):
    b = broker_factory({"auto.create.topics.enable": False})
    topic = unique_topic("absent-raw")
    batch = wire.build_record_batch(wire.BatchSpec(records=[(None, b"x")]))
    with wire.Connection(b.host, b.port) as conn:
        res = wire.produce_v3(conn, topic, 0, batch)
    assert res.error_code == wire.UNKNOWN_TOPIC_OR_PARTITION, res
    assert topic not in topic_partition_counts(b.bootstrap)


def test_explicit_create_works_with_auto_create_disabled(broker_factory):
    b = broker_factory({"auto.create.topics.enable": False})
    topic = unique_topic("explicit")
    create_topic(b.bootstrap, topic, partitions=2)
    log = produce_and_confirm(b.bootstrap, topic, [(None, b"ok")], partition=1)
    assert log.ok[0].offset == 0


def test_message_larger_than_message_max_bytes(broker_factory):
    b = broker_factory({"message.max.bytes": 10_000})
    topic = unique_topic("small-limit")
    create_topic(b.bootstrap, topic)
    p = producer(b.bootstrap, **{"message.timeout.ms": 10000})
    log = DeliveryLog()
    p.produce(topic, value=os.urandom(20_000), on_delivery=log)
    flush(p, timeout=30)
    assert not log.ok, "a 20 kB record was accepted with message.max.bytes=10000"
    assert log.failed[0][0].code() == KafkaError.MSG_SIZE_TOO_LARGE, log.failed[0][0]
    assert watermarks(b.bootstrap, topic, 0) == (0, 0)

    # Records within the limit are still accepted on the same topic.
    ok = produce_and_confirm(b.bootstrap, topic, [(None, os.urandom(2_000))])
    assert ok.ok[0].offset == 0


def test_raw_message_larger_than_message_max_bytes(broker_factory):
    b = broker_factory({"message.max.bytes": 10_000})
    topic = unique_topic("small-limit-raw")
    create_topic(b.bootstrap, topic)
    batch = wire.build_record_batch(wire.BatchSpec(records=[(None, os.urandom(20_000))]))
    with wire.Connection(b.host, b.port) as conn:
        res = wire.produce_v3(conn, topic, 0, batch)
    assert res.error_code == wire.MESSAGE_TOO_LARGE, res
    assert watermarks(b.bootstrap, topic, 0) == (0, 0)


# ---------------------------------------------------------------- raw socket abuse

@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    struct.pack(">i", 16) + b"\x7f\x7f" + os.urandom(14),        # unknown api key
    struct.pack(">i", 8) + struct.pack(">hhi", 3, 0, 1),          # header without client id
    struct.pack(">i", -1) + b"\x00" * 8,                          # negative length
], ids=["http", "unknown-api-key", "short-header", "negative-length"])
def test_garbage_closes_connection(broker, payload):
    with wire.Connection(broker.host, broker.port) as conn:
        conn.send_raw(payload)
        assert conn.wait_closed(CLOSE_TIMEOUT), \
            f"broker kept the connection open {CLOSE_TIMEOUT}s after garbage {payload[:16]!r}"
    assert_broker_serves(broker)


# A Metadata v0 request header without its client id: a frame that does not decode.
MALFORMED_FRAME = struct.pack(">i", 8) + struct.pack(">hhi", 3, 0, 1)
# What connection.rs logs for each such frame, and the summary of those not logged.
MALFORMED_LINE = "closing connection: malformed request"
SUMMARY_LINE = re.compile(
    r"suppressed (\d+) log lines about closed connections in the last (\d+) s: (.*)$")


def suppressed_counts(log: str) -> list[dict[str, int]]:
    """The counts by reason of each summary line in the broker log."""
    out = []
    for line in log.splitlines():
        m = SUMMARY_LINE.search(line)
        if m:
            counts = dict((k, int(v)) for k, v in (kv.split("=") for kv in m.group(3).split()))
            assert sum(counts.values()) == int(m.group(1)), line
            out.append(counts)
    return out


def test_malformed_frame_warnings_are_rate_limited(broker):
    frames = 5000
    t0 = time.monotonic()
    for _ in range(frames):
        s = socket.create_connection((broker.host, broker.port), timeout=5)
        s.sendall(MALFORMED_FRAME)
        s.close()
    sent_in = time.monotonic() - t0

    def every_frame_accounted_for():
        log = broker.log_text()
        logged = log.count(MALFORMED_LINE)
        counted = sum(c.get("malformed_request", 0) for c in suppressed_counts(log))
        return (logged, counted) if logged + counted >= frames else None

    # The summary comes with the next periodic flush (every 10 s), with no further bad frame.
    logged, counted = wait_until(every_frame_accounted_for, timeout=40, interval=0.5,
                                 message=f"warn lines plus summary counts to reach {frames}")
    assert logged + counted == frames, f"{logged} logged + {counted} counted for {frames} frames"
    summaries = suppressed_counts(broker.log_text())
    # At most 5 full lines per reason per 10 s interval: the sending took `sent_in` seconds,
    # spread over at most that many intervals plus the two it started and ended in.
    intervals = int(sent_in // 10) + 2
    assert logged <= 5 * intervals, f"{logged} warn lines for {frames} malformed frames"
    assert 1 <= len(summaries) <= intervals, summaries
    assert counted >= frames - 5 * intervals
    assert_broker_serves(broker)


def test_frame_larger_than_socket_request_max_bytes(broker_factory):
    limit = 1_048_576
    b = broker_factory({"socket.request.max.bytes": limit})
    with wire.Connection(b.host, b.port) as conn:
        # Announce a frame over the limit, send only its start: the broker must
        # drop the connection without waiting for (or allocating) the rest.
        conn.send_raw(struct.pack(">i", 2 * limit) + wire.request_header_v1(wire.API_VERSIONS, 0, 1))
        assert conn.wait_closed(CLOSE_TIMEOUT), "oversized frame did not close the connection"
    assert_broker_serves(b)


def test_frame_at_socket_request_max_bytes_is_read(broker_factory):
    limit = 1_048_576
    b = broker_factory({"socket.request.max.bytes": limit, "message.max.bytes": 2_000_000})
    topic = unique_topic("near-limit")
    create_topic(b.bootstrap, topic)
    batch = wire.build_record_batch(wire.BatchSpec(records=[(None, os.urandom(limit - 300))]))
    with wire.Connection(b.host, b.port) as conn:
        res = wire.produce_v3(conn, topic, 0, batch)
    assert res.error_code == 0, res


def test_half_request_then_disconnect(broker):
    body = wire.request_header_v1(wire.API_VERSIONS, 0, 1)
    for cut in (2, 4 + len(body) // 2):
        s = socket.create_connection((broker.host, broker.port), timeout=5)
        s.sendall((struct.pack(">i", len(body)) + body)[:cut])
        s.close()
    assert_broker_serves(broker)


def test_stalled_client_does_not_block_others(broker):
    topic = unique_topic("stall")
    create_topic(broker.bootstrap, topic)
    stalled = []
    try:
        for _ in range(5):
            s = socket.create_connection((broker.host, broker.port), timeout=5)
            s.sendall(struct.pack(">i", 100) + b"\x00\x12")  # 2 of 100 announced bytes
            stalled.append(s)
        t0 = time.monotonic()
        assert_broker_serves(broker)
        produce_and_confirm(broker.bootstrap, topic, [(None, b"still working")])
        assert [r.value for r in consume(broker.bootstrap, topic, [0])] == [b"still working"]
        assert time.monotonic() - t0 < 20
    finally:
        for s in stalled:
            s.close()


def test_many_concurrent_connections(broker):
    conns = [wire.Connection(broker.host, broker.port) for _ in range(50)]
    try:
        for i, c in enumerate(conns):
            c.send_raw(wire.frame(wire.request_header_v1(wire.API_VERSIONS, 0, 1000 + i)))
        for i, c in enumerate(conns):
            r = wire.Reader(c.recv_frame())
            assert r.i32() == 1000 + i
            assert r.i16() == 0
    finally:
        for c in conns:
            c.close()


def test_pipelined_requests_answered_in_order(broker):
    with wire.Connection(broker.host, broker.port) as conn:
        conn.send_raw(b"".join(
            wire.frame(wire.request_header_v1(wire.API_VERSIONS, 0, cid)) for cid in range(1, 21)))
        got = [wire.Reader(conn.recv_frame()).i32() for _ in range(20)]
    assert got == list(range(1, 21))


# ---------------------------------------------------------------- record batch validation

@pytest.fixture
def two_partition_topic(broker):
    topic = unique_topic("crc")
    create_topic(broker.bootstrap, topic, partitions=2)
    return topic


def _valid_batch(n=3):
    return wire.build_record_batch(wire.BatchSpec(
        records=[(f"k{i}".encode(), f"value {i}".encode()) for i in range(n)]))


def test_raw_produce_valid_batch_is_accepted(broker, two_partition_topic):
    topic = two_partition_topic
    with wire.Connection(broker.host, broker.port) as conn:
        res = wire.produce_v3(conn, topic, 0, _valid_batch())
        assert (res.topic, res.partition, res.error_code, res.base_offset) == (topic, 0, 0, 0)
        res = wire.produce_v3(conn, topic, 0, _valid_batch(), correlation_id=12)
        assert (res.error_code, res.base_offset) == (0, 3)
    recs = consume(broker.bootstrap, topic, [0])
    assert [(r.offset, r.key, r.value) for r in recs] == [
        (i + j * 3, f"k{i}".encode(), f"value {i}".encode()) for j in range(2) for i in range(3)]


def _produce_bad_then_check(broker, topic, bad_batch, expected_codes):
    with wire.Connection(broker.host, broker.port) as conn:
        # The valid batch must pass first, so a broker that rejects everything
        # cannot pass this test.
        ok = wire.produce_v3(conn, topic, 0, _valid_batch())
        assert ok.error_code == 0, f"valid batch rejected: {ok}"
        bad = wire.produce_v3(conn, topic, 1, bad_batch, correlation_id=99)
        assert bad.error_code in expected_codes, \
            f"expected error in {expected_codes}, broker answered {bad}"
        # The connection stays usable after a rejected batch.
        ok2 = wire.produce_v3(conn, topic, 0, _valid_batch(), correlation_id=100)
        assert ok2.error_code == 0 and ok2.base_offset == 3, ok2
    low, high = watermarks(broker.bootstrap, topic, 1)
    assert low == high == 0, f"rejected batch left data behind: earliest={low} latest={high}"
    assert watermarks(broker.bootstrap, topic, 0) == (0, 6)


def test_raw_produce_wrong_crc_is_corrupt_message(broker, two_partition_topic):
    bad = wire.with_crc_flipped(_valid_batch())
    _produce_bad_then_check(broker, two_partition_topic, bad, {wire.CORRUPT_MESSAGE})


def test_raw_produce_flipped_payload_byte_is_corrupt_message(broker, two_partition_topic):
    bad = bytearray(_valid_batch())
    bad[-3] ^= 0x01  # inside the last record's value; the CRC no longer matches
    _produce_bad_then_check(broker, two_partition_topic, bytes(bad), {wire.CORRUPT_MESSAGE})


def test_raw_produce_batch_length_too_short_is_corrupt_message(broker, two_partition_topic):
    good = _valid_batch()
    # Claims to end 5 bytes early: the CRC over the claimed range cannot match.
    bad = wire.with_batch_length(good, wire.batch_length(good) - 5)
    _produce_bad_then_check(broker, two_partition_topic, bad, {wire.CORRUPT_MESSAGE})


def test_raw_produce_batch_length_overruns_data(broker, two_partition_topic):
    good = _valid_batch()
    bad = wire.with_batch_length(good, wire.batch_length(good) + 40)
    # A batch whose length field runs past the records section. Kafka reports
    # this as INVALID_RECORD (87): it finds no complete batch in the section;
    # CORRUPT_MESSAGE (2) is the other acceptable rejection.
    _produce_bad_then_check(broker, two_partition_topic, bad,
                            {wire.CORRUPT_MESSAGE, wire.INVALID_RECORD})


def test_raw_produce_batch_length_below_header_size(broker, two_partition_topic):
    bad = wire.with_batch_length(_valid_batch(), 4)
    _produce_bad_then_check(broker, two_partition_topic, bad,
                            {wire.CORRUPT_MESSAGE, wire.INVALID_RECORD})


def test_raw_produce_record_count_mismatch(broker, two_partition_topic):
    # A self-consistent CRC over a batch that claims 5 records but holds 3.
    spec = wire.BatchSpec(records=[(None, b"a"), (None, b"b"), (None, b"c")])
    good = wire.build_record_batch(spec)
    body = bytearray(good[21:])          # attributes .. end (CRC-covered part)
    struct.pack_into(">i", body, 36, 5)  # records count field
    struct.pack_into(">i", body, 2, 4)   # lastOffsetDelta to match the claim
    bad = good[:17] + struct.pack(">I", wire.crc32c(bytes(body))) + bytes(body)
    _produce_bad_then_check(broker, two_partition_topic, bad,
                            {wire.CORRUPT_MESSAGE, wire.INVALID_RECORD})


def test_raw_produce_of_a_transaction_marker_is_invalid_record(broker, two_partition_topic):
    # A commit marker (control batch: key version 0, type 1; value version 0, coordinator
    # epoch 0), as only a broker may write one.
    marker = wire.build_record_batch(wire.BatchSpec(
        records=[(b"\x00\x00\x00\x01", b"\x00\x00\x00\x00\x00\x00")],
        attributes=0x30, producer_id=1000, producer_epoch=0))
    _produce_bad_then_check(broker, two_partition_topic, marker, {wire.INVALID_RECORD})


def test_raw_produce_of_a_transaction_nobody_coordinates_is_refused(broker, two_partition_topic):
    # A transactional batch of a producer id no transaction coordinator handed out: it would
    # open a transaction nobody ever ends, holding back read_committed consumers.
    batch = wire.build_record_batch(wire.BatchSpec(
        records=[(None, b"v")], attributes=0x10, producer_id=4242, producer_epoch=0,
        base_sequence=0))
    _produce_bad_then_check(broker, two_partition_topic, batch,
                            {wire.TRANSACTIONAL_ID_AUTHORIZATION_FAILED})
    # Partition 1 stays readable to a read_committed consumer.
    with wire.Connection(broker.host, broker.port) as conn:
        assert wire.produce_v3(conn, two_partition_topic, 1, _valid_batch()).error_code == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("rc"),
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(two_partition_topic, 1, 0)])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
        assert got == [f"value {i}".encode() for i in range(3)]
    finally:
        c.close()


def test_raw_produce_of_a_transactional_batch_without_producer_is_invalid_record(
        broker, two_partition_topic):
    batch = wire.build_record_batch(wire.BatchSpec(records=[(None, b"v")], attributes=0x10))
    _produce_bad_then_check(broker, two_partition_topic, batch, {wire.INVALID_RECORD})


# ---------------------------------------------------------------- ApiVersions

REQUIRED_APIS = {
    wire.PRODUCE, wire.FETCH, wire.LIST_OFFSETS, wire.METADATA, wire.API_VERSIONS,
    wire.CREATE_TOPICS, wire.DELETE_TOPICS, wire.DESCRIBE_CONFIGS, wire.CREATE_PARTITIONS,
    wire.DESCRIBE_CLUSTER,
}


def test_api_versions_v0(broker):
    with wire.Connection(broker.host, broker.port) as conn:
        resp = wire.api_versions(conn, 0)
    assert resp.error_code == 0
    assert wire.API_VERSIONS in resp.api_keys
    missing = REQUIRED_APIS - set(resp.api_keys)
    assert not missing, f"ApiVersions does not list api keys {sorted(missing)}"
    for key, (lo, hi) in resp.api_keys.items():
        assert 0 <= lo <= hi, f"api key {key}: bad range {lo}..{hi}"
    lo, hi = resp.api_keys[wire.API_VERSIONS]
    assert lo == 0 and hi >= 3
    lo, hi = resp.api_keys[wire.PRODUCE]
    assert lo <= 3 <= hi, "Produce v3 (used by these tests) must be supported"


def test_api_versions_unsupported_version(broker):
    with wire.Connection(broker.host, broker.port) as conn:
        resp = wire.api_versions(conn, 99, correlation_id=31337)
        assert resp.error_code == wire.UNSUPPORTED_VERSION
        assert wire.API_VERSIONS in resp.api_keys, \
            "the error response must tell the client which ApiVersions versions exist"
        lo, hi = resp.api_keys[wire.API_VERSIONS]
        assert lo == 0 and hi >= 3
        # The connection remains usable for a supported version.
        again = wire.api_versions(conn, 0, correlation_id=31338)
        assert again.error_code == 0


def test_api_versions_v3_flexible(broker):
    # v3 uses request header v2 (tagged fields) and a compact body, but the
    # response header stays v0 for ApiVersions.
    def compact_string(s: str) -> bytes:
        raw = s.encode()
        return wire.uvarint(len(raw) + 1) + raw

    header = wire.i16(wire.API_VERSIONS) + wire.i16(3) + wire.i32(77) + wire.string("e2e") + b"\x00"
    body = compact_string("caudal-e2e") + compact_string("1.0") + b"\x00"
    with wire.Connection(broker.host, broker.port) as conn:
        conn.send_raw(wire.frame(header + body))
        data = conn.recv_frame()
    r = wire.Reader(data)
    assert r.i32() == 77
    assert r.i16() == 0
    # compact array of (i16 key, i16 min, i16 max, tagged fields)
    count = r.uvarint() - 1
    keys = set()
    for _ in range(count):
        keys.add(r.i16())
        r.i16(), r.i16()
        assert r.uvarint() == 0, "no tagged fields expected"
    r.i32()  # throttle_time_ms
    missing = REQUIRED_APIS - keys
    assert not missing, f"ApiVersions v3 does not list api keys {sorted(missing)}"
