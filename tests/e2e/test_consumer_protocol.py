"""Consumer groups of Kafka's new protocol (KIP-848, `group.protocol=consumer`) through
librdkafka: the broker assigns partitions (ConsumerGroupHeartbeat), members revoke before
others take over, and committed offsets carry over to new members.

Every member commits each record synchronously before polling the next, so a partition that
moves to another member resumes exactly after the last record handed to the application:
across all members, every produced record is consumed exactly once.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException

from support import RDKAFKA_LOG, admin, create_topic, produce_and_confirm, unique_topic

PARTITIONS = 6
PER_PARTITION = 30
# Members reconcile at each heartbeat: a short interval keeps rebalances quick.
SETTINGS = {"group.consumer.heartbeat.interval.ms": 300}
DEADLINE = 60.0
STALE_MEMBER_EPOCH = 113
STALE_EPOCH_RETRIES = 20


@pytest.fixture
def consumer_broker(broker_factory):
    return broker_factory(SETTINGS)


class Member:
    """A `group.protocol=consumer` member that records what it consumes and commits each
    record before it asks for the next."""

    def __init__(self, bootstrap: str, group: str, topic: str, name: str,
                 reset: str = "earliest"):
        self.name = name
        self.records: list[tuple[int, int]] = []
        self.errors: list[KafkaError] = []
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "group.protocol": "consumer",
            "client.id": name,
            "enable.auto.commit": False,
            "auto.offset.reset": reset,
            "logger": RDKAFKA_LOG,
        })
        self.consumer.subscribe([topic])
        self.closed = False

    def poll(self, timeout: float = 0.05) -> None:
        msg = self.consumer.poll(timeout)
        if msg is None:
            return
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            self.errors.append(err)
            return
        self.records.append((msg.partition(), msg.offset()))
        self.commit(msg)

    def commit(self, msg) -> None:
        """Commits `msg`'s offset. A commit that crosses an epoch bump gets STALE_MEMBER_EPOCH
        (as from Kafka's coordinator) and is retried, after a short backoff, once the client's
        own heartbeat has brought the new epoch."""
        for attempt in range(STALE_EPOCH_RETRIES + 1):
            try:
                self.consumer.commit(message=msg, asynchronous=False)
                return
            except KafkaException as e:
                if e.args[0].code() != STALE_MEMBER_EPOCH or attempt == STALE_EPOCH_RETRIES:
                    raise
            time.sleep(0.1)  # a retry backoff: the epoch arrives with the next heartbeat

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.consumer.close()


def poll_until(members, done, what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in members:
            m.poll()
        if done():
            return
    state = {m.name: (sorted(m.assignment()), len(m.records), m.errors[-3:]) for m in members}
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; members: {state}")


def balanced(members) -> bool:
    """Every partition assigned to exactly one member, each holding its share."""
    sets = [m.assignment() for m in members]
    union = set().union(*sets)
    share = PARTITIONS // len(members)
    return (sum(len(s) for s in sets) == PARTITIONS and union == set(range(PARTITIONS))
            and all(share <= len(s) <= share + 1 for s in sets))


def produce_round(bootstrap: str, topic: str, round_no: int) -> int:
    messages = [(f"k{p}".encode(), f"r{round_no}-p{p}-{i}".encode())
                for p in range(PARTITIONS) for i in range(PER_PARTITION)]
    per_partition = {}
    for p in range(PARTITIONS):
        part = [m for m in messages if m[0] == f"k{p}".encode()]
        produce_and_confirm(bootstrap, topic, part, partition=p)
        per_partition[p] = len(part)
    return sum(per_partition.values())


def consumed(members) -> list[tuple[int, int]]:
    return [r for m in members for r in m.records]


def test_members_split_partitions_take_over_and_resume_from_commits(consumer_broker):
    bootstrap = consumer_broker.bootstrap
    topic = unique_topic("cp")
    group = f"cg-{uuid.uuid4().hex[:10]}"
    create_topic(bootstrap, topic, PARTITIONS)
    members: list[Member] = []
    everyone: list[Member] = []
    try:
        produced = produce_round(bootstrap, topic, 0)

        # Two members split the six partitions and consume everything once.
        for name in ("m1", "m2"):
            m = Member(bootstrap, group, topic, name)
            members.append(m)
            everyone.append(m)
        poll_until(members, lambda: balanced(members) and len(consumed(members)) >= produced,
                   "two members to split the topic and consume the first round")
        assert all(len(m.assignment()) == 3 for m in members)

        # A third member joins: partitions move (revoked first) until each has two.
        m3 = Member(bootstrap, group, topic, "m3")
        members.append(m3)
        everyone.append(m3)
        produced += produce_round(bootstrap, topic, 1)
        poll_until(members, lambda: balanced(members) and len(consumed(everyone)) >= produced,
                   "three members to split the topic and consume the second round")
        assert all(len(m.assignment()) == 2 for m in members)

        # The group shows up as a consumer-protocol group.
        a = admin(bootstrap)
        listed = a.list_consumer_groups(request_timeout=10).result(timeout=15)
        mine = [g for g in listed.valid if g.group_id == group]
        assert mine, f"{group} not listed: {[g.group_id for g in listed.valid]}"
        assert str(mine[0].type).endswith("CONSUMER"), mine[0].type

        # m3 closes (it leaves the group): the other two take its partitions over.
        members.remove(m3)
        m3.close()
        produced += produce_round(bootstrap, topic, 2)
        poll_until(members, lambda: balanced(members) and len(consumed(everyone)) >= produced,
                   "the two remaining members to take over and consume the third round")

        records = consumed(everyone)
        assert len(records) == produced, "every record consumed once"
        assert len(set(records)) == len(records), "no record consumed twice"

        # Everyone leaves; a new member starts from the committed offsets, not the beginning.
        for m in members:
            m.close()
        members.clear()
        last_round = produce_round(bootstrap, topic, 3)
        m4 = Member(bootstrap, group, topic, "m4")
        everyone.append(m4)
        poll_until([m4], lambda: len(m4.records) >= last_round and len(m4.assignment()) == 6,
                   "a new member to consume the records produced after the last commits")
        # Anything already committed would show up again here if commits were ignored.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            m4.poll(0.1)
        assert len(m4.records) == last_round, "the new member resumed at the committed offsets"
        assert min(o for _, o in m4.records) >= 3 * PER_PARTITION
        records = consumed(everyone)
        assert len(set(records)) == len(records) == produced + last_round
    finally:
        for m in everyone:
            try:
                m.close()
            except Exception:  # noqa: BLE001 - teardown is best effort
                pass


def test_a_classic_member_cannot_join_an_active_consumer_group(consumer_broker):
    bootstrap = consumer_broker.bootstrap
    topic = unique_topic("cp")
    group = f"cg-{uuid.uuid4().hex[:10]}"
    create_topic(bootstrap, topic, 2)
    m = Member(bootstrap, group, topic, "new")
    classic = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "group.protocol": "classic",
        "logger": RDKAFKA_LOG,
    })
    try:
        poll_until([m], lambda: len(m.assignment()) == 2, "the consumer-protocol member's assignment")
        classic.subscribe([topic])
        errors = []
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and not errors:
            msg = classic.poll(0.1)
            m.poll()
            if msg is not None and msg.error() is not None:
                errors.append(msg.error())
        assert errors and errors[0].code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL, errors
        assert len(m.assignment()) == 2, "the consumer group kept its partitions"
    finally:
        classic.close()
        m.close()
