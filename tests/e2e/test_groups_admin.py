"""Consumer-group administration through real admin clients: ListGroups,
DescribeGroups, DeleteGroups, OffsetFetch, OffsetCommit from an admin client
(generation -1) and OffsetDelete."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import (ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError,
                             KafkaException, TopicPartition)

from group_members.members import FAST_GROUP_SETTINGS, CkMember, balanced, poll_members
from support import admin, create_topic, produce_and_confirm, unique_topic, wait_until

PARTITIONS = 4


def unique_group(prefix: str = "ga") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def group_broker(broker_factory):
    return broker_factory(FAST_GROUP_SETTINGS)


@pytest.fixture
def active_group(group_broker):
    """A topic with records and a Stable group of two confluent-kafka members
    that consumed and committed everything. Yields (topic, group, members);
    members still open are closed at teardown."""
    topic, group = unique_topic("adm"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)
    for p in range(PARTITIONS):
        produce_and_confirm(group_broker.bootstrap, topic,
                            [(None, f"r{p}-{i}".encode()) for i in range(p + 2)], partition=p)
    members = [CkMember(group_broker.bootstrap, group, topic, f"admin-client-{i}")
               for i in range(2)]
    for m in members:
        m.subscribe()
    poll_members(members, lambda: balanced([m.assignment() for m in members], PARTITIONS),
                 timeout=45, message="two members splitting the topic")
    # Records consumed before the last rebalance do not count (their stored
    # offsets go with the revoked partitions): wait until each member's
    # position on each of its partitions is at the end, then commit.
    def at_end():
        for m in members:
            tps = [TopicPartition(topic, p) for p in sorted(m.assignment())]
            if not tps or any(tp.offset != tp.partition + 2
                              for tp in m.consumer.position(tps)):
                return False
        return True

    poll_members(members, at_end, timeout=30, message="members positioned at the end")
    for m in members:
        m.commit_sync()
    yield topic, group, members
    for m in members:
        m.close()


def committed_offsets_expected(topic):
    # Partition p holds p + 2 records, all consumed and committed.
    return {(topic, p): p + 2 for p in range(PARTITIONS)}


def listed(a, **kwargs) -> dict[str, object]:
    res = a.list_consumer_groups(request_timeout=15, **kwargs).result(timeout=20)
    assert not res.errors, res.errors
    return {g.group_id: g for g in res.valid}


def describe(a, group):
    return a.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)


def group_offsets(a, group) -> dict[tuple[str, int], int]:
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                        request_timeout=15)[group].result(timeout=20)
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions
            if tp.offset >= 0}


def kafka_error(future) -> KafkaError:
    with pytest.raises(KafkaException) as exc:
        future.result(timeout=20)
    return exc.value.args[0]


# ---------------------------------------------------------------- confluent-kafka

def test_list_consumer_groups_with_state_filter(group_broker, active_group):
    topic, group, members = active_group
    a = admin(group_broker.bootstrap)

    groups = listed(a)
    assert group in groups, sorted(groups)
    assert groups[group].state == ConsumerGroupState.STABLE
    assert groups[group].is_simple_consumer_group is False

    assert group in listed(a, states={ConsumerGroupState.STABLE})
    assert group not in listed(a, states={ConsumerGroupState.EMPTY})

    # Once both members have left, the group is Empty (its offsets keep it).
    for m in members:
        m.close()
    wait_until(lambda: group in listed(a, states={ConsumerGroupState.EMPTY}), timeout=15,
               message="group listed as Empty after its members closed")
    assert group not in listed(a, states={ConsumerGroupState.STABLE})


def test_describe_consumer_groups_members_and_assignments(group_broker, active_group):
    topic, group, members = active_group
    a = admin(group_broker.bootstrap)
    d = describe(a, group)
    print(f"\n[info] DescribeGroups: state={d.state} assignor={d.partition_assignor} "
          f"members={[(m.member_id, m.client_id, m.host, m.group_instance_id) for m in d.members]}")

    assert d.group_id == group
    assert d.state == ConsumerGroupState.STABLE
    assert d.is_simple_consumer_group is False
    assert d.partition_assignor == "range"
    assert d.coordinator.id == 1
    assert len(d.members) == 2
    assert sorted(m.client_id for m in d.members) == ["admin-client-0", "admin-client-1"]
    for m in d.members:
        assert m.member_id.startswith(m.client_id + "-"), m.member_id  # Kafka's member id form
        assert m.host.lstrip("/") == "127.0.0.1", m.host
        assert m.group_instance_id is None
    # Assignments as the clients hold them.
    by_client = {m.client_id: frozenset(tp.partition for tp in m.assignment.topic_partitions
                                        if tp.topic == topic) for m in d.members}
    assert by_client == {m.name: m.assignment() for m in members}
    assert balanced(list(by_client.values()), PARTITIONS)


def test_describe_unknown_group_is_dead(group_broker):
    a = admin(group_broker.bootstrap)
    d = describe(a, unique_group("never"))
    assert d.state == ConsumerGroupState.DEAD
    assert d.members == []


def test_delete_consumer_groups(group_broker, active_group):
    topic, group, members = active_group
    a = admin(group_broker.bootstrap)

    err = kafka_error(a.delete_consumer_groups([group], request_timeout=15)[group])
    assert err.code() == KafkaError.NON_EMPTY_GROUP, err
    assert group in listed(a)

    for m in members:
        m.close()
    wait_until(lambda: describe(a, group).state == ConsumerGroupState.EMPTY, timeout=15,
               message="group Empty after its members closed")
    assert group_offsets(a, group) == committed_offsets_expected(topic)
    a.delete_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
    assert group not in listed(a)
    assert group_offsets(a, group) == {}, "committed offsets survived the group's deletion"
    assert describe(a, group).state == ConsumerGroupState.DEAD

    unknown = unique_group("never")
    err = kafka_error(a.delete_consumer_groups([unknown], request_timeout=15)[unknown])
    assert err.code() == KafkaError.GROUP_ID_NOT_FOUND, err


def test_list_and_alter_consumer_group_offsets(group_broker, active_group):
    topic, group, members = active_group
    a = admin(group_broker.bootstrap)
    assert group_offsets(a, group) == committed_offsets_expected(topic)

    # Only some partitions asked for.
    res = a.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 1)])],
        request_timeout=15)[group].result(timeout=20)
    assert [(tp.partition, tp.offset) for tp in res.topic_partitions] == [(1, 3)]

    # alter = OffsetCommit with generation -1: accepted once the group is empty.
    for m in members:
        m.close()
    wait_until(lambda: describe(a, group).state == ConsumerGroupState.EMPTY, timeout=15,
               message="group Empty after its members closed")
    fut = a.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 1),
                                              TopicPartition(topic, 3, 0)])],
        request_timeout=15)[group]
    altered = fut.result(timeout=20)
    assert all(tp.error is None for tp in altered.topic_partitions), altered.topic_partitions
    expected = committed_offsets_expected(topic)
    expected[(topic, 0)] = 1
    expected[(topic, 3)] = 0
    assert group_offsets(a, group) == expected

    # A new member starts from the altered offsets.
    m = CkMember(group_broker.bootstrap, group, topic, "after-alter")
    try:
        m.subscribe()
        poll_members([m], lambda: len(m.records) >= 1 + 5, timeout=30,
                     message="records from the altered offsets")
        got = sorted((p, o) for p, o, _ in m.records)
        assert got == [(0, 1)] + [(3, o) for o in range(5)], got
    finally:
        m.close()


# ---------------------------------------------------------------- kafka-python

def test_kafka_python_admin_groups(group_broker, active_group):
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTP
    topic, group, members = active_group
    ka = KafkaAdminClient(bootstrap_servers=group_broker.bootstrap, request_timeout_ms=15000)
    try:
        groups = ka.list_groups()
        print(f"\n[info] kafka-python list_groups: {groups}")
        entry = [g for g in groups if g["group_id"] == group]
        assert entry, groups
        assert entry[0]["protocol_type"] == "consumer"
        stable = ka.list_groups(states_filter=["Stable"])
        assert group in [g["group_id"] for g in stable]
        assert group not in [g["group_id"] for g in ka.list_groups(states_filter=["Empty"])]

        desc = ka.describe_groups([group])[group]
        print(f"[info] kafka-python describe_groups: {desc}")
        assert desc["group_state"] == "Stable"
        assert desc["protocol_type"] == "consumer"
        assert desc["protocol_data"] == "range"
        assert sorted(m["client_id"] for m in desc["members"]) == [
            "admin-client-0", "admin-client-1"]
        parts = []
        for m in desc["members"]:
            assignment = m["member_assignment"]
            for entry in assignment["assigned_partitions"]:
                assert entry["topic"] == topic
                parts.extend(entry["partitions"])
            assert m["member_metadata"]["topics"] == [topic]
            assert m["client_host"].lstrip("/") == "127.0.0.1"
        assert sorted(parts) == list(range(PARTITIONS))

        offsets = ka.list_group_offsets({group: None})[group]
        assert {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()} == \
            committed_offsets_expected(topic)

        # OffsetDelete: refused while the group is subscribed to the topic,
        # accepted once it is empty.
        from kafka.errors import GroupSubscribedToTopicError, NoError
        res = ka.delete_group_offsets(group, [KTP(topic, 0)])
        assert res[KTP(topic, 0)] is GroupSubscribedToTopicError, res
        for m in members:
            m.close()
        wait_until(lambda: ka.describe_groups([group])[group]["group_state"] == "Empty",
                   timeout=15, message="group Empty after its members closed")
        res = ka.delete_group_offsets(group, [KTP(topic, 0)])
        assert res[KTP(topic, 0)] is NoError, res
        offsets = ka.list_group_offsets({group: None})[group]
        expected = committed_offsets_expected(topic)
        del expected[(topic, 0)]
        assert {(tp.topic, tp.partition): om.offset for tp, om in offsets.items()
                if om.offset >= 0} == expected

        result = dict(ka.delete_groups([group]))
        assert result[group] is NoError or getattr(result[group], "errno", 0) == 0, result
        assert group not in [g["group_id"] for g in ka.list_groups()]
    finally:
        ka.close()
