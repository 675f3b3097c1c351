"""A real broker on a small filesystem that fills up: nothing acknowledged is lost, admin changes
happen wholly or not at all, and the free-space guard keeps the disk from filling.

Each test mounts its own tmpfs (so it needs root, which CI has) and unmounts it at the end,
whatever happens in between.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

import wire
from support import (DeliveryLog, RDKAFKA_LOG, admin, consume, create_topic,
                     produce_and_confirm, producer, unique_topic, wait_until)

VALUE_PAD = b"x" * 1000


def value(i: int) -> bytes:
    return f"{i:08d}:".encode() + VALUE_PAD


@pytest.fixture
def small_fs(tmp_path):
    """mount(size, nr_inodes=None) -> a fresh tmpfs with an empty `data` directory in it."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the disk fault tests mount a tmpfs and need root; CI runs as root")
        pytest.skip("needs root to mount a small tmpfs")
    mounts = []

    def mount(size: str, nr_inodes: int | None = None):
        mount_point = tmp_path / f"fs{len(mounts)}"
        mount_point.mkdir()
        options = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                       check=True)
        mounts.append(mount_point)
        (mount_point / "data").mkdir()
        return mount_point

    yield mount
    for m in reversed(mounts):
        subprocess.run(["umount", "-l", str(m)], check=False)


def fill(path, chunk: int = 1 << 20) -> int:
    """Writes `path` until the filesystem is full; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        while chunk >= 512:
            try:
                f.write(b"\0" * chunk)
                written += chunk
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                chunk //= 2
    return written


def produce_until_refused(b, topic: str, most: int, **conf) -> tuple[DeliveryLog, set[bytes]]:
    """acks=all records of ~1 KB to partition 0, in rounds, until a delivery fails; returns the
    delivery reports and every value produced. Fails after `most` records."""
    p = producer(b.bootstrap, acks="all", **conf)
    log = DeliveryLog()
    produced = set()
    while not log.failed:
        for _ in range(500):
            v = value(len(produced))
            produced.add(v)
            p.produce(topic, value=v, partition=0, on_delivery=log)
        p.flush(30)
        assert len(produced) < most, f"{most} records produced and none was refused"
    return log, produced


def topic_names(bootstrap: str) -> set[str]:
    return set(admin(bootstrap).list_topics(timeout=10).topics)


def partition_dirs(data_dir, topic: str) -> list[str]:
    return sorted(n for n in os.listdir(data_dir) if n.startswith(f"{topic}-"))


def check_stored(stored, acked_values: set[bytes], produced_values: set[bytes]):
    """Every acknowledged value is stored once, nothing stored was never produced, and the
    offsets run without gaps."""
    values = [r.value for r in stored]
    assert len(values) == len(set(values)), "a record is stored twice"
    missing = acked_values - set(values)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:3]}"
    strangers = set(values) - produced_values
    assert not strangers, f"records nobody produced: {sorted(strangers)[:3]}"
    assert [r.offset for r in stored] == list(range(len(stored))), "offsets have gaps"


def test_filling_the_disk_then_freeing_it_loses_no_acknowledged_record(small_fs,
                                                                     broker_factory):
    fs = small_fs("24m")
    ballast = fs / "ballast"
    ballast.write_bytes(b"\0" * (6 << 20))
    # The guard off, so the writes meet a really full disk.
    b = broker_factory({"log.dir.min.free.bytes": 0, "offsets.topic.num.partitions": 1},
                       data_dir=fs / "data")
    topic = unique_topic("full")
    create_topic(b.bootstrap, topic, partitions=1)

    log, produced = produce_until_refused(
        b, topic, 60_000, **{"message.timeout.ms": 3000, "retry.backoff.ms": 100,
                             "batch.size": 65536})
    i = len(produced)
    assert "append failed" in b.log_text(), "the failures were not the disk filling"
    assert shutil.disk_usage(fs).free < 1 << 20

    # Full, but not broken: the partition stays online.
    meta = admin(b.bootstrap).list_topics(topic, timeout=10).topics[topic].partitions[0]
    assert meta.error is None and meta.leader == 1, meta

    ballast.unlink()
    more = [value(n) for n in range(i, i + 2000)]
    produced.update(more)
    after = produce_and_confirm(b.bootstrap, topic, [(None, v) for v in more], partition=0)
    acked = {r.value for r in log.ok} | {r.value for r in after.ok}

    check_stored(consume(b.bootstrap, topic, [0], timeout=60), acked, produced)
    # A crash makes the next start scan the log: torn bytes of a failed write would show there.
    b.kill9()
    b.start()
    check_stored(consume(b.bootstrap, topic, [0], timeout=60), acked, produced)
    assert "truncated" not in b.log_text().split("===== start #2")[-1], \
        "recovery found torn bytes: a failed write was left in the log"


def test_a_nearly_full_disk_refuses_produce_while_reads_commits_and_deletes_go_on(
        small_fs, broker_factory):
    fs = small_fs("32m")
    data = fs / "data"
    guard = 12 << 20
    b = broker_factory({"log.dir.min.free.bytes": guard, "offsets.topic.num.partitions": 1},
                       data_dir=data)
    big, small = unique_topic("big"), unique_topic("small")
    create_topic(b.bootstrap, big, partitions=1)
    create_topic(b.bootstrap, small, partitions=1)
    batch = wire.build_batch([value(n) for n in range(100)])
    stored = 0
    with wire.Connection(b.host, b.port) as conn:
        for _ in range(400):
            r = wire.produce(conn, big, 0, batch, version=8)
            if r.error_code != wire.NONE:
                break
            stored += 100
        assert r.error_code == wire.KAFKA_STORAGE_ERROR, r
        assert "nearly full" in (r.error_message or ""), r
        assert stored > 0
        free = shutil.disk_usage(fs).free
        assert free > guard - (1 << 20), f"the disk filled past the guard: {free} bytes free"

        # Consumers read everything, and a group commits its offsets.
        assert len(consume(b.bootstrap, big, [0], timeout=60)) == stored
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("g"),
                      "enable.auto.commit": False, "logger": RDKAFKA_LOG})
        try:
            c.commit(offsets=[TopicPartition(big, 0, 42)], asynchronous=False)
            committed = c.committed([TopicPartition(big, 0)], timeout=10)
            assert committed[0].offset == 42
        finally:
            c.close()

        # Deleting the topic frees the space, and produce is accepted again.
        a = admin(b.bootstrap)
        a.delete_topics([big])[big].result(timeout=15)
        wait_until(lambda: wire.produce(conn, small, 0, batch, version=8).error_code == wire.NONE,
                   timeout=20, message="produce accepted once the space is freed")
    text = b.log_text()
    assert "data directory nearly full" in text and "free space is back" in text


def test_create_and_delete_topics_on_a_full_disk_change_nothing(small_fs, broker_factory):
    fs = small_fs("16m")
    data = fs / "data"
    b = broker_factory({"log.dir.min.free.bytes": 0, "offsets.topic.num.partitions": 1},
                       data_dir=data)
    keep, new = unique_topic("keep"), unique_topic("new")
    create_topic(b.bootstrap, keep, partitions=2)
    produce_and_confirm(b.bootstrap, keep, [(None, value(n)) for n in range(100)], partition=0)
    ballast = fs / "ballast"
    fill(ballast)

    a = admin(b.bootstrap)
    with pytest.raises(KafkaException) as refused:
        a.create_topics([NewTopic(new, 8, 1)])[new].result(timeout=15)
    assert refused.value.args[0].code() == wire.KAFKA_STORAGE_ERROR
    assert new not in topic_names(b.bootstrap)
    assert partition_dirs(data, new) == []
    with pytest.raises(KafkaException) as refused:
        a.delete_topics([keep])[keep].result(timeout=15)
    assert refused.value.args[0].code() == wire.KAFKA_STORAGE_ERROR
    assert keep in topic_names(b.bootstrap)
    assert len(consume(b.bootstrap, keep, [0, 1], timeout=30)) == 100
    text = b.log_text()
    assert "creating topic failed" in text and "deleting topic failed" in text

    ballast.unlink()
    b.restart()
    assert keep in topic_names(b.bootstrap) and new not in topic_names(b.bootstrap)
    assert len(consume(b.bootstrap, keep, [0, 1], timeout=30)) == 100
    assert "set aside" not in b.log_text(), "a failed change left a directory behind"

    a = admin(b.bootstrap)
    a.delete_topics([keep])[keep].result(timeout=15)
    wait_until(lambda: partition_dirs(data, keep) == [], timeout=15,
               message="the deleted topic's directories removed")
    b.restart()
    assert keep not in topic_names(b.bootstrap)


def test_create_topics_failing_part_way_leaves_no_directories(small_fs, broker_factory):
    # Few inodes: a topic of many partitions runs out of them part-way through its files.
    fs = small_fs("64m", nr_inodes=300)
    data = fs / "data"
    b = broker_factory({"offsets.topic.num.partitions": 1}, data_dir=data)
    free_before = os.statvfs(data).f_ffree
    wide = unique_topic("wide")
    partitions = free_before // 5 + 20  # a directory and four files each
    a = admin(b.bootstrap)
    with pytest.raises(KafkaException) as refused:
        a.create_topics([NewTopic(wide, partitions, 1)])[wide].result(timeout=30)
    assert refused.value.args[0].code() == wire.KAFKA_STORAGE_ERROR
    assert "creating topic failed" in b.log_text()
    # Undone by a deletion, whose directories are removed in the background, as Kafka's are.
    wait_until(lambda: partition_dirs(data, wide) == [], timeout=15,
               message="the failed topic's directories removed")
    assert os.statvfs(data).f_ffree >= free_before - 1, "inodes of the failed topic kept"
    assert wide not in topic_names(b.bootstrap)
    ok = unique_topic("ok")
    create_topic(b.bootstrap, ok, partitions=2)
    produce_and_confirm(b.bootstrap, ok, [(None, b"still works")], partition=1)
    b.restart()
    assert wide not in topic_names(b.bootstrap)
    assert "set aside" not in b.log_text()


def test_partition_directories_of_no_topic_are_set_aside_not_adopted(broker_factory):
    b = broker_factory()
    topic = unique_topic("ghost")
    create_topic(b.bootstrap, topic, partitions=1)
    produce_and_confirm(b.bootstrap, topic, [(None, b"old data")], partition=0)
    b.stop()
    # As if a broker had crashed after its metadata dropped a topic but before it renamed the
    # topic's directories: files under the name of a partition no topic has.
    ghost = unique_topic("ghost")
    os.rename(b.data_dir / f"{topic}-0", b.data_dir / f"{ghost}-0")
    b.start()
    assert "set aside" in b.log_text()
    aside = partition_dirs(b.data_dir, ghost)
    assert len(aside) == 1 and aside[0].endswith("-stray"), aside
    # A new topic of that name starts empty; the old files stay aside.
    create_topic(b.bootstrap, ghost, partitions=1)
    assert consume(b.bootstrap, ghost, [0], timeout=15) == []
    assert sorted(partition_dirs(b.data_dir, ghost)) == sorted(aside + [f"{ghost}-0"])


@pytest.fixture
def failing_disk(small_fs):
    """An ext4 filesystem on a loop device whose backing file lives on a small tmpfs: the
    filesystem believes it has room, but once the tmpfs is full its writeback fails, so fsync
    fails, as on a dying disk (and ext4 then turns itself read-only). Returns (the ext4 mount
    point, repair), where repair() gives the disk room again, checks it and mounts it again, as
    an operator would before restarting the broker."""
    back = small_fs("48m")
    ballast = back / "ballast"
    image = back / "disk.img"
    subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    attached = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                              text=True)
    if attached.returncode != 0:
        message = f"no loop device for the failing-disk test: {attached.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    device = attached.stdout.strip()
    mount_point = back.parent / "ext4"
    mount_point.mkdir()

    def repair():
        ballast.unlink()
        subprocess.run(["umount", str(mount_point)], check=True)
        fsck = subprocess.run(["e2fsck", "-fy", device], capture_output=True, text=True)
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
        subprocess.run(["mount", device, str(mount_point)], check=True)

    try:
        subprocess.run(["mount", device, str(mount_point)], check=True)
        (mount_point / "data").mkdir()
        free = shutil.disk_usage(back).free
        ballast.write_bytes(b"\0" * (free - (12 << 20)))
        yield mount_point, repair
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def test_a_failed_fsync_takes_the_partition_offline_until_a_restart(failing_disk,
                                                                   broker_factory):
    disk, repair = failing_disk
    b = broker_factory({"log.dir.min.free.bytes": 0, "offsets.topic.num.partitions": 1},
                       data_dir=disk / "data")
    topic = unique_topic("eio")
    create_topic(b.bootstrap, topic, partitions=1)
    log, produced = produce_until_refused(
        b, topic, 100_000, **{"message.timeout.ms": 5000, "batch.size": 262144})
    text = b.log_text()
    assert "fsync failed" in text and "partition offline until a restart" in text, text[-3000:]

    # Offline, and it says so: Metadata, `caudal topic describe`, produce.
    meta = admin(b.bootstrap).list_topics(topic, timeout=10).topics[topic].partitions[0]
    assert meta.leader == -1 and meta.error is not None, meta
    assert meta.error.code() == wire.KAFKA_STORAGE_ERROR, meta.error
    described = subprocess.run([str(b.binary), "topic", "describe", topic,
                                "--bootstrap", b.bootstrap],
                               capture_output=True, text=True, timeout=30)
    lines = described.stdout.splitlines()
    header = next(line for line in lines if line.startswith("PARTITION"))
    row = next(line for line in lines if line.split()[:1] == ["0"])

    def cell(name: str, after: str) -> str:
        return row[header.index(name):header.index(after)].strip()

    assert cell("LEADER", "REPLICAS") == "none", described.stdout
    assert cell("OFFLINE", "START-OFFSET") == "1", described.stdout
    with wire.Connection(b.host, b.port) as conn:
        r = wire.produce(conn, topic, 0, wire.build_batch([b"late"]), version=8)
        assert r.error_code == wire.KAFKA_STORAGE_ERROR, r

    # The disk mended, a restart recovers the partition from its files.
    b.stop()
    repair()
    b.start()
    acked = {r.value for r in log.ok}
    assert acked, "nothing was acknowledged before the failure"
    stored = consume(b.bootstrap, topic, [0], timeout=60)
    values = {r.value for r in stored}
    assert acked <= values, f"{len(acked - values)} acknowledged records lost"
    assert values <= produced
    produce_and_confirm(b.bootstrap, topic, [(None, b"after the restart")], partition=0)
