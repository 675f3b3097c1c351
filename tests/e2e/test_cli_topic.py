"""`caudal topic`: create, list, describe and delete against a real broker."""

import subprocess

from harness import caudal_bin


def cli(broker, *args, check=True):
    r = subprocess.run([str(caudal_bin()), "topic", "--bootstrap", broker.bootstrap, *args],
                       capture_output=True, text=True, timeout=30)
    if check:
        assert r.returncode == 0, f"caudal topic {args} failed: {r.stderr}"
    return r


def test_topic_lifecycle(broker):
    assert "created topic audit with 3 partition(s)" in cli(broker, "create", "audit", "--partitions", "3",
                                                            "--config", "retention.ms=3600000").stdout
    again = cli(broker, "create", "audit", check=False)
    assert again.returncode != 0 and "TopicAlreadyExists" in again.stderr
    assert "already exists" in cli(broker, "create", "audit", "--if-not-exists").stdout
    bad = cli(broker, "create", "bad name", check=False)
    assert bad.returncode != 0 and "InvalidTopicException" in bad.stderr
    listed = cli(broker, "list").stdout
    assert any(line.split() == ["audit", "3"] for line in listed.splitlines()), listed
    assert "__consumer_offsets" not in listed and "__consumer_offsets" in cli(broker, "list", "--internal").stdout
    described = cli(broker, "describe", "audit").stdout
    assert "Topic audit: 3 partition(s)" in described
    assert any(line.split() == ["retention.ms", "3600000", "topic"] for line in described.splitlines()), described
    assert any(line.split() == ["segment.bytes", "1073741824", "default"] for line in described.splitlines())
    assert "deleted topic audit" in cli(broker, "delete", "audit").stdout
    gone = cli(broker, "describe", "audit", check=False)
    assert gone.returncode != 0 and "UnknownTopicOrPartition" in gone.stderr


def test_create_with_a_replica_assignment(broker):
    """`--replica-assignment`, as kafka-topics takes it: partitions by commas, brokers by colons."""
    node = 1  # a single `caudal serve` is node 1 unless told otherwise
    assert "created topic pinned with 2 partition(s) of 1 replica(s)" in \
        cli(broker, "create", "pinned", "--replica-assignment", f"{node},{node}").stdout
    described = cli(broker, "describe", "pinned").stdout
    rows = [line.split() for line in described.splitlines() if line[:1].isdigit()]
    assert [row[:3] for row in rows] == [["0", str(node), str(node)], ["1", str(node), str(node)]], described
    # A broker that is not in the cluster is refused by the controller, naming the broker.
    absent = cli(broker, "create", "elsewhere", "--replica-assignment", f"{node + 7}", check=False)
    assert absent.returncode != 0 and "InvalidReplicaAssignment" in absent.stderr, absent.stderr
    assert str(node + 7) in absent.stderr, absent.stderr
    # A malformed assignment is refused before anything is sent, saying what was expected.
    typo = cli(broker, "create", "typo", "--replica-assignment", f"{node}:x", check=False)
    assert typo.returncode != 0 and "--replica-assignment" in typo.stderr and "1:2,2:3" in typo.stderr
    both = cli(broker, "create", "both", "--replica-assignment", f"{node}", "--partitions", "2", check=False)
    assert both.returncode != 0 and "cannot be used with" in both.stderr, both.stderr
    assert "typo" not in cli(broker, "list").stdout

