"""Replicated partitions on three real `caudal` processes: followers fetch from the leader and keep
byte-identical logs, acks=all is answered once every in-sync replica has the batch, and a
leader killed with kill -9 loses nothing that was acknowledged."""

from __future__ import annotations

import subprocess
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from harness import caudal_bin
from support import (RDKAFKA_LOG, admin, consume, group_coordinator, produce_and_confirm,
                     unique_topic, wait_until)

# Failover tests wait out a session; a shorter one keeps them quick without changing what
# they show.
FAST = {"broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 500}


def create_replicated(bootstrap: str, topic: str, partitions: int = 1, replicas: int = 3) -> None:
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(topic, num_partitions=partitions,
                                   replication_factor=replicas)], request_timeout=15)
    fs[topic].result(timeout=20)
    wait_until(lambda: topic in a.list_topics(topic, timeout=10).topics
               and len(a.list_topics(topic, timeout=10).topics[topic].partitions) == partitions,
               message=f"topic {topic} in metadata")


def partition_state(bootstrap: str, topic: str, partition: int = 0):
    md = admin(bootstrap).list_topics(topic, timeout=10)
    p = md.topics[topic].partitions[partition]
    return p.leader, sorted(p.replicas), sorted(p.isrs)


def log_bytes(data_dir: Path, topic: str, partition: int = 0) -> bytes:
    """A replica's whole log, its segments in offset order."""
    d = data_dir / f"{topic}-{partition}"
    return b"".join(f.read_bytes() for f in sorted(d.glob("*.log")))


def test_three_replicas_keep_identical_logs_and_acks_all_waits_for_them(cluster_factory):
    cluster = cluster_factory(3)
    topic = unique_topic("replicated")
    create_replicated(cluster.bootstrap, topic)
    leader, replicas, isr = partition_state(cluster.bootstrap, topic)
    assert replicas == [1, 2, 3] and isr == [1, 2, 3], (leader, replicas, isr)

    messages = [(f"k{i}".encode(), f"value-{i}".encode()) for i in range(500)]
    log = produce_and_confirm(cluster.bootstrap, topic, messages, {"acks": "all"})
    assert len(log.ok) == len(messages) and not log.failed, log.failed[:3]
    got = consume(cluster.nodes[0].bootstrap, topic, 1)
    assert [(r.key, r.value) for r in got] == messages

    # Every replica holds the leader's log byte for byte.
    wanted = log_bytes(cluster.node(leader).data_dir, topic)
    assert len(wanted) > 0
    for node in cluster.nodes:
        wait_until(lambda: log_bytes(node.data_dir, topic) == wanted, timeout=20,
                   message=f"node {node.node_id}'s replica equal to the leader's")
    assert partition_state(cluster.bootstrap, topic)[2] == [1, 2, 3]


def test_a_killed_leader_loses_no_acknowledged_write_and_rejoins_the_isr(cluster_factory):
    cluster = cluster_factory(3, settings=FAST)
    topic = unique_topic("failover")
    create_replicated(cluster.bootstrap, topic)
    first = [(f"k{i}".encode(), f"before-{i}".encode()) for i in range(300)]
    log = produce_and_confirm(cluster.bootstrap, topic, first, {"acks": "all"})
    assert len(log.ok) == len(first) and not log.failed

    old_leader, _, _ = partition_state(cluster.bootstrap, topic)
    cluster.node(old_leader).kill9()
    survivors = [n for n in cluster.nodes if n.node_id != old_leader]
    bootstrap = ",".join(n.bootstrap for n in survivors)

    def moved() -> bool:
        leader, _, isr = partition_state(bootstrap, topic)
        return leader not in (-1, old_leader) and old_leader not in isr
    wait_until(moved, timeout=30, message="a new leader elected from the ISR")
    # The operator's view: the partition is under-replicated while its old leader is away.
    described = subprocess.run(
        [str(caudal_bin()), "topic", "--bootstrap", bootstrap, "describe", topic,
         "--under-replicated"], capture_output=True, text=True, timeout=30)
    assert described.returncode == 0, described.stderr
    assert "1 partition(s)" in described.stdout and "1 under-replicated" in described.stdout, \
        described.stdout
    row = next(line.split() for line in described.stdout.splitlines()
               if line.split()[:1] == ["0"])
    assert sorted(row[2].split(",")) == ["1", "2", "3"] and str(old_leader) not in row[3], row

    second = [(f"k{i}".encode(), f"after-{i}".encode()) for i in range(300)]
    log = produce_and_confirm(bootstrap, topic, second, {"acks": "all"})
    assert len(log.ok) == len(second) and not log.failed, log.failed[:3]
    got = consume(bootstrap, topic, 1)
    assert [(r.key, r.value) for r in got] == first + second, "an acknowledged write was lost"

    # The old leader returns as a follower, catches up and is taken back into the ISR.
    cluster.node(old_leader).restart()
    wait_until(lambda: partition_state(bootstrap, topic)[2] == [1, 2, 3], timeout=60,
               message="the old leader back in the ISR")
    leader, _, _ = partition_state(bootstrap, topic)
    wanted = log_bytes(cluster.node(leader).data_dir, topic)
    wait_until(lambda: log_bytes(cluster.node(old_leader).data_dir, topic) == wanted, timeout=20,
               message="the returned replica equal to the leader's")


def test_group_offsets_are_replicated_and_the_coordinator_moves_with_its_partition(
        cluster_factory):
    cluster = cluster_factory(3, settings=FAST)
    topic = unique_topic("offsets-moved")
    create_replicated(cluster.bootstrap, topic, partitions=2)
    produce_and_confirm(cluster.bootstrap, topic,
                        [(None, f"v{i}".encode()) for i in range(20)], {"acks": "all"})
    group = unique_topic("group")
    positions = [TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 4)]
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "logger": RDKAFKA_LOG})
    try:
        c.commit(offsets=positions, asynchronous=False)
    finally:
        c.close()

    # __consumer_offsets has a replica on each of the three brokers, all in sync.
    offsets = admin(cluster.bootstrap).list_topics("__consumer_offsets", timeout=10)
    parts = offsets.topics["__consumer_offsets"].partitions.values()
    assert parts and all(sorted(p.replicas) == [1, 2, 3] for p in parts)

    def coordinator(bootstrap: str) -> int | None:
        return group_coordinator(bootstrap, group)
    old = coordinator(cluster.bootstrap)
    assert old is not None, "the group has a coordinator once its offsets are committed"
    wait_until(lambda: all(sorted(p.isrs) == [1, 2, 3] for p in admin(cluster.bootstrap)
                           .list_topics("__consumer_offsets", timeout=10)
                           .topics["__consumer_offsets"].partitions.values()),
               timeout=20, message="every __consumer_offsets replica in sync")
    cluster.node(old).kill9()
    survivors = ",".join(n.bootstrap for n in cluster.nodes if n.node_id != old)

    # Another broker leads the group's partition now, rebuilds the group from its replica and
    # answers for it with the offsets committed before.
    wait_until(lambda: coordinator(survivors) not in (None, old), timeout=30,
               message="a new coordinator for the group")

    def committed() -> list[tuple[int, int]]:
        c = Consumer({"bootstrap.servers": survivors, "group.id": group,
                      "enable.auto.commit": False, "logger": RDKAFKA_LOG})
        try:
            got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
            return sorted((p.partition, p.offset) for p in got)
        finally:
            c.close()
    assert wait_until(lambda: committed() == [(0, 7), (1, 4)], timeout=30,
                      message="the committed offsets from the new coordinator")
