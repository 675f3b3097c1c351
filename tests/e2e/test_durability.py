"""Acknowledged data survives crashes and restarts."""

from __future__ import annotations

import subprocess

from confluent_kafka import TopicPartition

import wire
from harness import caudal_bin
from support import (DeliveryLog, admin, by_partition, consume, consumer, create_topic, flush,
                     produce_and_confirm, producer, topic_partition_counts, unique_topic)

PARTITIONS = 3


def produce_keyed(p, topic, log, start, count):
    for i in range(start, start + count):
        while True:
            try:
                p.produce(topic, key=f"key-{i % 17}".encode(), value=f"msg-{i:06d}".encode(),
                          on_delivery=log)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)


def assert_acked_present(acked, stored):
    """Every acknowledged record is stored at the offset it was acknowledged
    with, and each partition is a gap-free sequence of offsets."""
    stored_at = {(r.partition, r.offset): r.value for r in stored}
    missing = [(r.partition, r.offset, r.value) for r in acked
               if stored_at.get((r.partition, r.offset)) != r.value]
    assert not missing, (f"{len(missing)} acknowledged records lost or changed, e.g. "
                         f"{missing[:5]}; stored {len(stored)} records")
    for part, recs in by_partition(stored).items():
        offsets = [r.offset for r in recs]
        assert offsets == list(range(len(offsets))), f"partition {part} offsets have gaps"


def test_acked_messages_survive_kill9(broker):
    topic = unique_topic("durable")
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)
    n = 5000
    p = producer(broker.bootstrap, acks="all")
    log = DeliveryLog()
    produce_keyed(p, topic, log, 0, n)
    flush(p)
    assert not log.failed, log.failed[:3]
    assert len(log.ok) == n, f"{len(log.ok)} of {n} delivery confirmations"

    broker.kill9()
    broker.restart()

    stored = consume(broker.bootstrap, topic, range(PARTITIONS), timeout=60)
    assert len(stored) == n
    assert_acked_present(log.ok, stored)
    # Per-partition order equals acknowledgement order.
    for part, recs in by_partition(stored).items():
        acked = sorted((r for r in log.ok if r.partition == part), key=lambda r: r.offset)
        assert [r.value for r in recs] == [r.value for r in acked]

    # New writes continue after the recovered end instead of reusing offsets.
    more = produce_and_confirm(broker.bootstrap, topic, [(None, b"after-restart")], partition=0)
    expected = sum(1 for r in log.ok if r.partition == 0)
    assert more.ok[0].offset == expected


def test_kill9_during_production(broker):
    topic = unique_topic("crash")
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)
    p = producer(broker.bootstrap, **{"acks": "all", "linger.ms": 2,
                                      "reconnect.backoff.max.ms": 500,
                                      "message.timeout.ms": 60000})
    log = DeliveryLog()
    i = 0
    # Produce until a good share has been acknowledged, then pull the plug
    # while more is queued and in flight.
    while len(log.ok) < 3000:
        produce_keyed(p, topic, log, i, 50)
        i += 50
        assert i < 200_000, "deliveries are not being confirmed"
    broker.kill9()
    acked_before_kill = list(log.ok)
    produce_keyed(p, topic, log, i, 1000)
    i += 1000

    broker.restart()
    flush(p, timeout=90)
    assert not log.failed, f"deliveries failed after restart: {log.failed[:3]}"

    stored = consume(broker.bootstrap, topic, range(PARTITIONS), timeout=60)
    assert_acked_present(acked_before_kill, stored)
    assert_acked_present(log.ok, stored)
    values = {r.value for r in stored}
    assert all(f"msg-{j:06d}".encode() in values for j in range(i)), \
        "every produced message must be stored at least once after retries"


def test_clean_restart_preserves_topics_and_data(broker):
    layout = {unique_topic("one"): 1, unique_topic("four"): 4}
    for name, parts in layout.items():
        create_topic(broker.bootstrap, name, partitions=parts)
        for part in range(parts):
            produce_and_confirm(broker.bootstrap, name,
                                [(None, f"{name}/{part}/{j}".encode()) for j in range(10)],
                                partition=part)

    assert broker.stop() == 0, "SIGTERM must shut the broker down with exit code 0"
    broker.start()

    counts = topic_partition_counts(broker.bootstrap)
    for name, parts in layout.items():
        assert counts.get(name) == parts, f"{name}: {counts.get(name)} partitions after restart"
        stored = consume(broker.bootstrap, name, range(parts))
        for part, recs in by_partition(stored).items():
            assert [r.value for r in recs] == [f"{name}/{part}/{j}".encode() for j in range(10)]
        assert len(stored) == 10 * parts


def test_deleted_topic_stays_deleted_after_restart(broker):
    keep, drop = unique_topic("keep"), unique_topic("drop")
    create_topic(broker.bootstrap, keep)
    create_topic(broker.bootstrap, drop)
    produce_and_confirm(broker.bootstrap, drop, [(None, b"gone")])
    a = admin(broker.bootstrap)
    a.delete_topics([drop], request_timeout=15)[drop].result(timeout=20)

    broker.kill9()
    broker.restart()
    counts = topic_partition_counts(broker.bootstrap)
    assert keep in counts
    assert drop not in counts

    # Re-creating the name starts from an empty log.
    create_topic(broker.bootstrap, drop)
    log = produce_and_confirm(broker.bootstrap, drop, [(None, b"fresh")])
    assert log.ok[0].offset == 0


def test_recovery_across_many_segments(broker_factory):
    b = broker_factory({"log.segment.bytes": 1048576})
    topic = unique_topic("segments")
    create_topic(b.bootstrap, topic)
    n = 6000  # ~6 MiB of payload: several 1 MiB segments
    payload = b"z" * 1000
    log = produce_and_confirm(b.bootstrap, topic,
                              [(None, b"%06d" % j + payload) for j in range(n)],
                              conf={"acks": "all"})
    assert len(log.ok) == n

    b.kill9()
    b.restart()

    # Reads starting inside later segments find the right records.
    for start in (0, 1234, 4321, n - 1):
        recs = consume(b.bootstrap, topic, [0], start=start, timeout=60)
        assert [int(r.value[:6]) for r in recs] == list(range(start, n)), f"from {start}"
    more = produce_and_confirm(b.bootstrap, topic, [(None, b"tail")])
    assert more.ok[0].offset == n



def test_kill9_under_idempotent_load_keeps_every_acked_value_once_in_order(broker):
    """An idempotent producer keeps sending while the broker is killed and restarted: every
    acknowledged value is stored exactly once, each partition in the order it was sent, and
    retries of batches the broker had already stored are not stored again."""
    topic = unique_topic("idem")
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)
    p = producer(broker.bootstrap, **{"enable.idempotence": True, "acks": "all",
                                      "linger.ms": 2, "message.timeout.ms": 90000,
                                      "reconnect.backoff.max.ms": 500})
    log = DeliveryLog()
    sent = 0

    def send(count):
        nonlocal sent
        for _ in range(count):
            while True:
                try:
                    p.produce(topic, value=f"{sent:07d}".encode(), partition=sent % PARTITIONS,
                              on_delivery=log)
                    break
                except BufferError:
                    p.poll(0.05)
            sent += 1
            p.poll(0)

    while len(log.ok) < 5000:
        send(100)
        assert sent < 200_000, "deliveries are not being confirmed"
    broker.kill9()
    send(3000)  # queued and retried while the broker is down
    broker.start()
    send(2000)
    flush(p, timeout=120)
    assert not log.failed, f"deliveries failed: {log.failed[:3]}"
    assert len(log.ok) == sent

    stored = consume(broker.bootstrap, topic, range(PARTITIONS), timeout=60)
    assert_acked_present(log.ok, stored)
    for part, recs in by_partition(stored).items():
        values = [int(r.value) for r in recs]
        assert len(values) == len(set(values)), f"partition {part}: a value stored twice"
        assert values == sorted(values), f"partition {part}: values out of order"
        assert values == list(range(part, sent, PARTITIONS)), \
            f"partition {part}: not every value sent was stored once"


def test_a_retry_after_a_restart_is_recognised_though_its_batch_lies_segments_back(
        broker_factory):
    """An idempotent producer's last batch lies several segments back when the broker is killed:
    after the restart its retry is answered with the original offsets, not stored again, and a
    gap in its sequence is still refused. The producer snapshot written at each segment roll
    carries its state; `caudal log dump` shows it."""
    b = broker_factory({"log.segment.bytes": 8192})
    topic = unique_topic("idem-old")
    create_topic(b.bootstrap, topic)
    producer_id = 4242

    def idempotent(sequence: int, values: list[bytes]) -> bytes:
        return wire.build_record_batch(wire.BatchSpec(
            records=[(None, v) for v in values], producer_id=producer_id, producer_epoch=0,
            base_sequence=sequence))

    first = idempotent(0, [b"a", b"b", b"c"])
    fillers = 200
    with wire.Connection(b.host, b.port) as conn:
        answer = wire.produce(conn, topic, 0, first, version=8)
        assert (answer.error_code, answer.base_offset) == (wire.NONE, 0), answer
        for i in range(fillers):
            plain = wire.build_batch([f"filler {i:04d} ".encode() * 8])
            assert wire.produce(conn, topic, 0, plain, version=8).error_code == wire.NONE
    end = 3 + fillers
    partition_dir = b.data_dir / f"{topic}-0"
    assert len(list(partition_dir.glob("*.log"))) >= 4, "the filler did not roll segments"
    newest = sorted(partition_dir.glob("*.snapshot"))[-1]
    shown = dump_log(newest)
    assert (f"producerId: {producer_id} producerEpoch: 0 firstSequence: 0 lastSequence: 2 "
            "baseOffset: 0 lastOffset: 2") in shown, shown

    b.kill9()
    b.restart()
    with wire.Connection(b.host, b.port) as conn:
        again = wire.produce(conn, topic, 0, first, version=8)
        assert (again.error_code, again.base_offset) == (wire.NONE, 0), \
            f"the retry was not recognised: {again}"
        gap = wire.produce(conn, topic, 0, idempotent(7, [b"x"]), version=8)
        assert gap.error_code == wire.OUT_OF_ORDER_SEQUENCE_NUMBER, gap
        following = wire.produce(conn, topic, 0, idempotent(3, [b"d"]), version=8)
        assert (following.error_code, following.base_offset) == (wire.NONE, end), following
    values = [r.value for r in consume(b.bootstrap, topic, [0], timeout=30)]
    assert values[:3] == [b"a", b"b", b"c"] and values[-1] == b"d" and len(values) == end + 1


def dump_log(path) -> str:
    r = subprocess.run([str(caudal_bin()), "log", "dump", str(path)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_an_index_pointing_between_batches_is_rebuilt_and_reads_stay_right(broker_factory):
    b = broker_factory({"log.segment.bytes": 8192, "log.index.interval.bytes": 256})
    topic = unique_topic("index")
    create_topic(b.bootstrap, topic)
    base = 1_700_000_000_000
    with wire.Connection(b.host, b.port) as conn:
        for i in range(300):
            batch = wire.build_batch([f"record {i:04d}".encode() * 4], base_timestamp=base + i)
            assert wire.produce(conn, topic, 0, batch, version=8).error_code == wire.NONE
    b.stop()
    # Shift the inner entries of the first (sealed) segment's offset index: still sorted and
    # inside the file, but pointing into the middle of batches.
    index = b.data_dir / f"{topic}-0" / "00000000000000000000.index"
    raw = bytearray(index.read_bytes())
    entries = len(raw) // 8
    assert entries >= 4, f"{entries} index entries"
    for e in range(1, entries - 1):
        at = e * 8 + 4
        raw[at:at + 4] = (int.from_bytes(raw[at:at + 4], "big") + 5).to_bytes(4, "big")
    index.write_bytes(bytes(raw))
    b.start()
    for start in (3, 17, 30, 41):
        recs = consume(b.bootstrap, topic, [0], start=start, count=1, timeout=20)
        assert recs[0].offset == start and recs[0].value == f"record {start:04d}".encode() * 4
    c = consumer(b.bootstrap)
    try:
        found = c.offsets_for_times([TopicPartition(topic, 0, base + 25)], timeout=10)
        assert found[0].offset == 25, found
    finally:
        c.close()
    assert "offset index is wrong" in b.log_text()
    assert len(consume(b.bootstrap, topic, [0], timeout=30)) == 300
