"""Many partitions within a small open-file limit: the broker keeps at most half its limit of log
files open (closing the least recently used, reopening on use), so a node holds far more
partitions than it could keep files open for."""

from __future__ import annotations

import os

from support import (DeliveryLog, admin, consume, create_topic, flush, producer,
                     unique_topic)

PARTITIONS = 2000  # three files each: 6,000 files under a limit of 1,024 descriptors
OPEN_FILES = 1024


def test_thousands_of_partitions_within_a_small_open_file_limit(broker_factory):
    b = broker_factory({"offsets.topic.num.partitions": 1}, open_files=OPEN_FILES)
    topic = unique_topic("many")
    create_topic(b.bootstrap, topic, partitions=PARTITIONS)
    p = producer(b.bootstrap, acks="all")
    log = DeliveryLog()
    for i in range(PARTITIONS):
        p.produce(topic, value=f"partition {i}".encode(), partition=i, on_delivery=log)
        p.poll(0)
    flush(p, timeout=120)
    assert not log.failed, log.failed[:3]
    assert len(log.ok) == PARTITIONS

    def check():
        stored = consume(b.bootstrap, topic, range(PARTITIONS), timeout=120)
        assert sorted((r.partition, r.value) for r in stored) == [
            (i, f"partition {i}".encode()) for i in range(PARTITIONS)]

    check()
    open_now = len(os.listdir(f"/proc/{b.proc.pid}/fd"))
    assert open_now <= OPEN_FILES // 2 + 64, f"{open_now} descriptors open"
    b.restart()
    check()
    a = admin(b.bootstrap)
    a.delete_topics([topic])[topic].result(timeout=60)
    assert "Too many open files" not in b.log_text()
