"""__consumer_offsets is compacted: many commits of the same offsets leave only the latest,
and the latest is what the group resumes from after a restart."""

from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from support import create_topic, unique_topic, wait_until


def offsets_log_bytes(data_dir: Path) -> int:
    return sum(f.stat().st_size for f in (data_dir / "__consumer_offsets-0").glob("*.log"))


def test_repeated_commits_are_compacted_and_the_latest_survives_restart(broker_factory):
    broker = broker_factory({
        "offsets.topic.num.partitions": 1,
        "offsets.topic.segment.bytes": 4096,
        "log.cleaner.backoff.ms": 100,
    })
    topic = unique_topic("compacted")
    create_topic(broker.bootstrap, topic, partitions=2)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "committer", "enable.auto.commit": False})
    for i in range(400):
        c.commit(offsets=[TopicPartition(topic, 0, i), TopicPartition(topic, 1, 1000 + i)], asynchronous=False)
    c.close()
    written = 400 * 2
    # Each commit record is ~50 bytes: uncompacted, the log would be > 40 KB.
    wait_until(lambda: offsets_log_bytes(broker.data_dir) < 8192, timeout=20,
               message="__consumer_offsets compacted below 8 KiB")
    assert "compacted" in broker.log_text()
    broker.kill9()
    broker.restart()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "committer", "enable.auto.commit": False})
    got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    c.close()
    assert [tp.offset for tp in got] == [399, 1399], f"after {written} commit records"


def test_compaction_keeps_the_last_committed_transactional_offset(broker_factory):
    """An exactly-once application whose transactions mostly abort (a crash-looping pipeline):
    the aborted offset commits are newer than the committed one, and compaction must not let them
    make it obsolete, nor keep them."""
    from confluent_kafka import Producer

    broker = broker_factory({
        "offsets.topic.num.partitions": 1,
        "offsets.topic.segment.bytes": 4096,
        "log.cleaner.backoff.ms": 100,
        "log.cleaner.delete.retention.ms": 0,
    })
    topic = unique_topic("eos-compacted")
    create_topic(broker.bootstrap, topic)
    group = unique_topic("eos-group")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": unique_topic("eos")})
    p.init_transactions(30)
    for i in range(150):
        p.begin_transaction()
        p.send_offsets_to_transaction([TopicPartition(topic, 0, i)],
                                      c.consumer_group_metadata(), 30)
        if i % 3 == 0:
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)
    # Commit records, aborted ones and markers: uncompacted, well over 20 KB.
    wait_until(lambda: offsets_log_bytes(broker.data_dir) < 8192, timeout=30,
               message="__consumer_offsets compacted below 8 KiB")
    got = c.committed([TopicPartition(topic, 0)], timeout=10)
    assert got[0].offset == 147
    c.close()
    broker.kill9()
    broker.restart()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    got = c.committed([TopicPartition(topic, 0)], timeout=10)
    c.close()
    assert got[0].offset == 147, "the last committed offset, rebuilt from the compacted log"
