"""Topic administration through real admin clients."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic, ResourceType

from support import (admin, consume, create_topic, produce_and_confirm, topic_partition_counts,
                     unique_topic, wait_until)


def _create_error(a, topic: NewTopic, **kwargs) -> KafkaError | None:
    fs = a.create_topics([topic], request_timeout=15, **kwargs)
    try:
        fs[topic.topic].result(timeout=20)
        return None
    except KafkaException as e:
        return e.args[0]


# ---------------------------------------------------------------- confluent-kafka

def test_create_topic_with_partitions_is_listed(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("created")
    err = _create_error(a, NewTopic(name, num_partitions=3, replication_factor=1))
    assert err is None, f"create_topics failed: {err}"

    md = wait_until(lambda: (m := a.list_topics(timeout=10)).topics.get(name) and m,
                    message=f"{name} in metadata")
    t = md.topics[name]
    assert t.error is None
    assert sorted(t.partitions) == [0, 1, 2]
    for p in t.partitions.values():
        assert p.error is None
        assert p.leader >= 0, f"partition {p.id} has no leader"
        assert p.leader in md.brokers, "leader must be one of the advertised brokers"
    # The broker advertises the address it was told to.
    assert [(b.host, b.port) for b in md.brokers.values()] == [("127.0.0.1", broker.port)]


def test_delete_topic(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("doomed")
    create_topic(broker.bootstrap, name, partitions=2)

    fs = a.delete_topics([name], request_timeout=15)
    fs[name].result(timeout=20)
    wait_until(lambda: name not in topic_partition_counts(broker.bootstrap, a),
               message=f"{name} to disappear from metadata")


def test_delete_unknown_topic_fails(broker):
    a = admin(broker.bootstrap)
    fs = a.delete_topics([unique_topic("never-existed")], request_timeout=15)
    with pytest.raises(KafkaException) as exc:
        list(fs.values())[0].result(timeout=20)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_create_validate_only_does_not_create(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("dry-run")
    err = _create_error(a, NewTopic(name, num_partitions=2, replication_factor=1),
                        validate_only=True)
    assert err is None, f"validate_only create should succeed, got {err}"
    assert name not in topic_partition_counts(broker.bootstrap, a)
    # ...and a real create afterwards still works (nothing half-created).
    err = _create_error(a, NewTopic(name, num_partitions=2, replication_factor=1))
    assert err is None, f"create after validate_only failed: {err}"


def test_create_validate_only_still_validates(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("dry-run-dup")
    create_topic(broker.bootstrap, name)
    err = _create_error(a, NewTopic(name, num_partitions=1, replication_factor=1),
                        validate_only=True)
    assert err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS, err


def test_create_existing_topic_fails(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("dup")
    create_topic(broker.bootstrap, name, partitions=2)
    err = _create_error(a, NewTopic(name, num_partitions=4, replication_factor=1))
    assert err is not None, "second create of the same topic must fail"
    assert err.code() == KafkaError.TOPIC_ALREADY_EXISTS, err
    # The existing topic is untouched.
    assert topic_partition_counts(broker.bootstrap, a)[name] == 2


@pytest.mark.parametrize("name", ["", ".", "..", "bad name!", "x" * 250, "slash/name"],
                         ids=["empty", "dot", "dotdot", "space-bang", "250-chars", "slash"])
def test_create_invalid_topic_name(broker, name):
    a = admin(broker.bootstrap)
    err = _create_error(a, NewTopic(name, num_partitions=1, replication_factor=1))
    assert err is not None, f"topic name {name!r} must be rejected"
    assert err.code() == KafkaError.TOPIC_EXCEPTION, err  # INVALID_TOPIC_EXCEPTION (17)
    assert name not in topic_partition_counts(broker.bootstrap, a)


def test_create_topic_name_at_length_limit(broker):
    a = admin(broker.bootstrap)
    name = "y" * 249
    err = _create_error(a, NewTopic(name, num_partitions=1, replication_factor=1))
    assert err is None, f"a 249-character name is legal, got {err}"
    wait_until(lambda: name in topic_partition_counts(broker.bootstrap, a),
               message="249-char topic in metadata")


def test_create_zero_partitions_fails(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("badparts")
    err = _create_error(a, NewTopic(name, num_partitions=0, replication_factor=1))
    assert err is not None, "num_partitions=0 must be rejected"
    assert err.code() == KafkaError.INVALID_PARTITIONS, err


def test_create_partitions_increases_count(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("grow")
    create_topic(broker.bootstrap, name, partitions=2)
    produce_and_confirm(broker.bootstrap, name, [(b"k", b"before")], partition=0)

    fs = a.create_partitions([NewPartitions(name, 5)], request_timeout=15)
    fs[name].result(timeout=20)
    wait_until(lambda: topic_partition_counts(broker.bootstrap, a).get(name) == 5,
               message=f"{name} to have 5 partitions")

    # The new partitions are usable and the old data is intact.
    log = produce_and_confirm(broker.bootstrap, name, [(b"k", b"after")], partition=4)
    assert log.ok[0].partition == 4 and log.ok[0].offset == 0
    recs = consume(broker.bootstrap, name, [0, 4])
    assert sorted((r.partition, r.offset, r.value) for r in recs) == [
        (0, 0, b"before"), (4, 0, b"after")]


def test_create_partitions_cannot_decrease(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("shrink")
    create_topic(broker.bootstrap, name, partitions=3)
    fs = a.create_partitions([NewPartitions(name, 2)], request_timeout=15)
    with pytest.raises(KafkaException) as exc:
        fs[name].result(timeout=20)
    assert exc.value.args[0].code() == KafkaError.INVALID_PARTITIONS
    assert topic_partition_counts(broker.bootstrap, a)[name] == 3


def test_auto_create_on_produce_uses_default_partitions(broker):
    name = unique_topic("auto")
    log = produce_and_confirm(broker.bootstrap, name, [(None, b"hello")])
    assert log.ok[0].offset == 0
    assert topic_partition_counts(broker.bootstrap)[name] == 1


def test_auto_create_honours_num_partitions(broker_factory):
    b = broker_factory({"num.partitions": 4})
    name = unique_topic("auto4")
    produce_and_confirm(b.bootstrap, name, [(None, b"hello")])
    assert topic_partition_counts(b.bootstrap)[name] == 4


def test_describe_configs_topic(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("configs")
    create_topic(broker.bootstrap, name)
    res = ConfigResource(ResourceType.TOPIC, name)
    configs = a.describe_configs([res], request_timeout=15)[res].result(timeout=20)

    for key in ("retention.ms", "cleanup.policy", "segment.bytes"):
        assert key in configs, f"{key} missing from DescribeConfigs: {sorted(configs)}"
    retention = int(configs["retention.ms"].value)
    assert retention == -1 or retention > 0
    assert configs["cleanup.policy"].value in ("delete", "compact", "compact,delete",
                                               "delete,compact")
    assert configs["cleanup.policy"].value == "delete", "Kafka's default cleanup.policy"
    assert int(configs["segment.bytes"].value) > 0
    for entry in configs.values():
        assert entry.name == entry.name.strip() and entry.name


def test_describe_configs_reflects_topic_overrides(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("configs-set")
    create_topic(broker.bootstrap, name, config={"retention.ms": "3600000"})
    res = ConfigResource(ResourceType.TOPIC, name)
    configs = a.describe_configs([res], request_timeout=15)[res].result(timeout=20)
    assert configs["retention.ms"].value == "3600000"


def test_describe_configs_follows_broker_segment_size(broker_factory):
    b = broker_factory({"log.segment.bytes": 1048576})
    a = admin(b.bootstrap)
    name = unique_topic("configs-seg")
    create_topic(b.bootstrap, name)
    res = ConfigResource(ResourceType.TOPIC, name)
    configs = a.describe_configs([res], request_timeout=15)[res].result(timeout=20)
    assert configs["segment.bytes"].value == "1048576"


def test_describe_configs_unknown_topic(broker):
    a = admin(broker.bootstrap)
    res = ConfigResource(ResourceType.TOPIC, unique_topic("nope"))
    with pytest.raises(KafkaException) as exc:
        a.describe_configs([res], request_timeout=15)[res].result(timeout=20)
    assert exc.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_describe_cluster(broker):
    a = admin(broker.bootstrap)
    desc = a.describe_cluster(request_timeout=15).result(timeout=20)
    assert len(desc.nodes) == 1
    node = desc.nodes[0]
    assert (node.host, node.port) == ("127.0.0.1", broker.port)
    assert desc.controller is not None and desc.controller.id == node.id
    assert desc.cluster_id, "cluster id must be non-empty"


# ---------------------------------------------------------------- kafka-python

def test_kafka_python_admin_create_list_delete(broker):
    from kafka import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        name = unique_topic("kp-admin")
        result = a.create_topics({name: {"num_partitions": 3, "replication_factor": 1}})
        assert [t["error_code"] for t in result["topics"]] == [0], result

        wait_until(lambda: name in a.list_topics(), message=f"{name} in list_topics()")
        described = {t["name"]: t for t in a.describe_topics([name])}
        assert len(described[name]["partitions"]) == 3

        result = a.delete_topics([name])
        assert [t["error_code"] for t in result["topics"]] == [0], result
        wait_until(lambda: name not in a.list_topics(), message=f"{name} gone from list_topics()")
    finally:
        a.close()


def test_kafka_python_admin_create_existing_raises(broker):
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=15000)
    try:
        name = unique_topic("kp-dup")
        a.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})
        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})
    finally:
        a.close()
