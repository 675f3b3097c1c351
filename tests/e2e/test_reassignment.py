"""Moving replicas between brokers on three real `caudal` processes: AlterPartitionReassignments
and ListPartitionReassignments from kafka-python and `caudal cluster reassign`, the copy limited by
`leader.replication.throttled.rate`, completion (the old replica deleted, leadership handed
over) and cancellation."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from confluent_kafka.admin import NewTopic
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import KafkaAdminClient

from harness import caudal_bin
from support import admin, consume, produce_and_confirm, unique_topic, wait_until
from test_leadership import leadership
from test_replication import log_bytes


def create_on(bootstrap: str, topic: str, replicas: list[int]) -> None:
    a = admin(bootstrap)
    a.create_topics([NewTopic(topic, num_partitions=1, replica_assignment=[replicas])],
                    request_timeout=15)[topic].result(timeout=20)
    wait_until(lambda: leadership(bootstrap, topic)[1:] == (replicas, sorted(replicas)),
               timeout=20, message=f"{topic} on {replicas}, in sync")


def replica_dirs(data_dir: Path, topic: str) -> list[Path]:
    return [d for d in data_dir.glob(f"{topic}-0*") if d.is_dir()]


def replica_size(data_dir: Path, topic: str) -> int:
    d = data_dir / f"{topic}-0"
    return sum(f.stat().st_size for f in d.glob("*.log")) if d.is_dir() else 0


def reassign_cli(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(caudal_bin()), "cluster", "--bootstrap", bootstrap, "reassign",
                           *args], capture_output=True, text=True, timeout=120)


def test_a_reassignment_moves_a_partition_and_hands_over_its_leadership(cluster_factory):
    cluster = cluster_factory(3)
    topic = unique_topic("moved")
    create_on(cluster.bootstrap, topic, [1, 2])
    first = [(f"k{i}".encode(), f"v{i}".encode() * 50) for i in range(2000)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, first, {"acks": "all"}).ok) == 2000
    assert replica_dirs(cluster.node(3).data_dir, topic) == []

    # The tool starts the move and waits for it, showing progress.
    moved = reassign_cli(cluster.bootstrap, "--topic", topic, "--partition", "0",
                         "--replicas", "3,2", "--wait", "--timeout", "60")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "started" in moved.stdout and "Every move is done" in moved.stdout, moved.stdout

    # Broker 1, removed, handed its leadership to broker 3, the new preferred replica, and
    # deleted its copy; broker 3's copy is byte for byte broker 2's.
    wait_until(lambda: leadership(cluster.bootstrap, topic) == (3, [3, 2], [2, 3]), timeout=20,
               message="the partition on brokers 3 and 2, led by 3")
    wait_until(lambda: replica_dirs(cluster.node(1).data_dir, topic) == [], timeout=20,
               message="broker 1's copy deleted")
    wanted = log_bytes(cluster.node(2).data_dir, topic)
    wait_until(lambda: log_bytes(cluster.node(3).data_dir, topic) == wanted, timeout=20,
               message="broker 3's copy equal to broker 2's")
    second = [(b"k", f"after-{i}".encode()) for i in range(100)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, second, {"acks": "all"}).ok) == 100
    assert [(r.key, r.value) for r in consume(cluster.bootstrap, topic, 1)] == first + second

    listed = reassign_cli(cluster.bootstrap, "--list")
    assert listed.returncode == 0 and "No reassignment is under way" in listed.stdout, \
        listed.stdout + listed.stderr
    # Asking for the replicas it has is no move at all.
    same = reassign_cli(cluster.bootstrap, "--topic", topic, "--partition", "0",
                        "--replicas", "3,2")
    assert same.returncode == 0, same.stdout + same.stderr
    refused = reassign_cli(cluster.bootstrap, "--topic", topic, "--partition", "0",
                           "--replicas", "3,7")
    assert refused.returncode != 0 and "InvalidReplicaAssignment" in refused.stdout, \
        refused.stdout + refused.stderr


RATE = 200_000  # bytes per second


def test_a_throttled_reassignment_is_listed_and_can_be_cancelled(cluster_factory):
    cluster = cluster_factory(3, settings={"leader.replication.throttled.rate": RATE})
    topic = unique_topic("throttled")
    create_on(cluster.bootstrap, topic, [1, 2])
    records = [(f"k{i}".encode(), bytes([i % 256]) * 1000) for i in range(4000)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, records, {"acks": "all"}).ok) \
        == 4000
    total = replica_size(cluster.node(1).data_dir, topic)
    assert total > 4_000_000

    k = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=30000)
    try:
        tp = KafkaTopicPartition(topic, 0)
        started = time.monotonic()
        assert k.alter_partition_reassignments({tp: [3, 2]}) == {tp: None}
        # ListPartitionReassignments is answered from the image of whichever broker the client
        # asks (not forwarded to the controller yet): one may learn of the change a moment later.
        ongoing = {tp: {"replicas": [3, 2, 1], "adding_replicas": [3], "removing_replicas": [1]}}
        wait_until(lambda: k.list_partition_reassignments() == ongoing, timeout=10,
                   message="the reassignment listed")
        listed = reassign_cli(cluster.bootstrap, "--list")
        assert listed.returncode == 0, listed.stderr
        row = next(line.split() for line in listed.stdout.splitlines()
                   if line.startswith(topic))
        assert row[1:] == ["0", "3,2,1", "3", "1"], listed.stdout

        # The copy to broker 3 goes no faster than the rate (with one second saved up and one
        # fetch of up to 1 MiB past it): it cannot have finished yet.
        wait_until(lambda: replica_size(cluster.node(3).data_dir, topic) > 0, timeout=20,
                   message="broker 3 copying")
        time.sleep(3)  # a span to measure the rate over, not a synchronisation
        elapsed = time.monotonic() - started
        copied = replica_size(cluster.node(3).data_dir, topic)
        assert copied <= RATE * (elapsed + 1) + (1 << 20), (copied, elapsed)
        assert copied < total, "the throttled copy finished already"
        assert leadership(cluster.bootstrap, topic)[2] == [1, 2], "broker 3 not in sync yet"

        # Cancelled: back to brokers 1 and 2, and broker 3 deletes its partial copy.
        assert k.alter_partition_reassignments({tp: None}) == {tp: None}
        wait_until(lambda: k.list_partition_reassignments() == {}, timeout=10,
                   message="the cancelled reassignment no longer listed")
        wait_until(lambda: leadership(cluster.bootstrap, topic) == (1, [2, 1], [1, 2]),
                   timeout=20, message="the partition back on brokers 1 and 2")
        wait_until(lambda: replica_dirs(cluster.node(3).data_dir, topic) == [], timeout=20,
                   message="broker 3's partial copy deleted")
        # Nothing of the partition was lost on the way.
        assert [(r.key, r.value) for r in consume(cluster.bootstrap, topic, 1)] == records
    finally:
        k.close()
