"""Leader epochs: every batch is stamped with one, each partition keeps where each epoch began in
`leader-epoch-checkpoint`, and OffsetForLeaderEpoch (API 23) answers from it, across restarts and
crashes."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

import wire
from support import create_topic, produce_and_confirm, unique_topic, wait_until

OFFSET_FOR_LEADER_EPOCH = 23
UNKNOWN_LEADER_EPOCH = 75
UNKNOWN_TOPIC_OR_PARTITION = 3


def offset_for_leader_epoch(bootstrap: str, topic: str, partition: int, leader_epoch: int,
                            current_leader_epoch: int = -1) -> tuple[int, int, int]:
    """(error code, leader epoch, end offset) from a raw OffsetForLeaderEpoch v3 request, sent as
    a consumer sends it (replica id -1)."""
    host, port = bootstrap.rsplit(":", 1)
    body = (wire.i32(-1) + wire.i32(1) + wire.string(topic) + wire.i32(1)
            + wire.i32(partition) + wire.i32(current_leader_epoch) + wire.i32(leader_epoch))
    with wire.Connection(host, int(port)) as conn:
        r = conn.request(OFFSET_FOR_LEADER_EPOCH, 3, body)
    r.i32()  # throttle time
    assert r.i32() == 1
    assert r.string() == topic
    assert r.i32() == 1
    error, got_partition, epoch, end = r.i16(), r.i32(), r.i32(), r.i64()
    assert got_partition == partition
    return error, epoch, end


def test_epoch_end_offsets_are_answered_and_kept_across_restarts_and_crashes(broker):
    topic = unique_topic("epochs")
    create_topic(broker.bootstrap, topic, partitions=1)
    produce_and_confirm(broker.bootstrap, topic, [(None, b"v%d" % i) for i in range(10)],
                        partition=0)
    assert offset_for_leader_epoch(broker.bootstrap, topic, 0, 0) == (0, 0, 10)
    assert offset_for_leader_epoch(broker.bootstrap, topic, 0, 0, current_leader_epoch=0) \
        == (0, 0, 10)
    error, _, _ = offset_for_leader_epoch(broker.bootstrap, topic, 0, 0, current_leader_epoch=3)
    assert error == UNKNOWN_LEADER_EPOCH
    error, _, _ = offset_for_leader_epoch(broker.bootstrap, topic, 7, 0)
    assert error == UNKNOWN_TOPIC_OR_PARTITION

    # A clean stop writes the checkpoint in Kafka's layout.
    assert broker.stop() == 0
    checkpoint = broker.data_dir / f"{topic}-0" / "leader-epoch-checkpoint"
    assert checkpoint.read_text() == "0\n1\n0 0\n"
    broker.start()
    assert offset_for_leader_epoch(broker.bootstrap, topic, 0, 0) == (0, 0, 10)

    # A crash with the checkpoint gone: the batches rebuild it.
    produce_and_confirm(broker.bootstrap, topic, [(None, b"w%d" % i) for i in range(5)],
                        partition=0)
    broker.kill9()
    checkpoint.unlink()
    broker.start()
    # Each start moves the leader epoch (the broker is fenced, then unfenced, as Kafka's is), so
    # the five records of the second run carry a later epoch than the first ten: epoch 0 still
    # ends at 10, and every later epoch the partition has had ends at 15.
    assert offset_for_leader_epoch(broker.bootstrap, topic, 0, 0) == (0, 0, 10)
    later = {answer for epoch in range(1, 8)
             if (answer := offset_for_leader_epoch(broker.bootstrap, topic, 0, epoch))[1] > 0}
    assert later and all(error == 0 and end == 15 for error, _, end in later), later


def consume_n(c: Consumer, n: int, timeout: float = 30.0) -> list:
    got: list = []

    def enough():
        got.extend(m for m in c.consume(n - len(got), 0.2) if m.error() is None)
        return len(got) >= n

    wait_until(enough, timeout=timeout, message=f"{n} records")
    return got


def test_a_committed_position_keeps_its_leader_epoch_and_a_consumer_resumes_there(broker):
    topic = unique_topic("validate")
    group = unique_topic("validate-group")
    create_topic(broker.bootstrap, topic, partitions=1)
    produce_and_confirm(broker.bootstrap, topic, [(None, b"m%02d" % i) for i in range(20)],
                        partition=0)

    first = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                      "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        first.assign([TopicPartition(topic, 0, 0)])
        last = consume_n(first, 12)[-1]
        first.commit(offsets=[TopicPartition(topic, 0, last.offset() + 1,
                                             leader_epoch=last.leader_epoch())],
                     asynchronous=False)
        committed = first.committed([TopicPartition(topic, 0)], timeout=10)[0]
        assert (committed.offset, committed.leader_epoch) == (12, 0)
    finally:
        first.close()

    broker.restart()

    # "latest" would skip the rest if the position were thrown away: it must not be. (librdkafka
    # asks OffsetForLeaderEpoch when the partition's epoch has moved past the committed one; on
    # one node the epoch stays 0, so here it fetches from the committed offset directly.)
    second = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                       "enable.auto.commit": False, "auto.offset.reset": "latest"})
    try:
        second.subscribe([topic])
        rest = consume_n(second, 8)
        assert [m.value() for m in rest] == [b"m%02d" % i for i in range(12, 20)]
    finally:
        second.close()
