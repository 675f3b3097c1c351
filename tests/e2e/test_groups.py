"""Consumer groups (Kafka's classic group protocol) through real clients.

Brokers here start with group.initial.rebalance.delay.ms=0 and a lowered
group.min.session.timeout.ms unless the test is about those settings (see
FAST_GROUP_SETTINGS). Members run in the test process (polled in turn) or, when
a test needs to kill or restart them, as separate processes
(group_members/consumer.py).
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, TopicPartition

from group_members.members import (FAST_GROUP_SETTINGS, CkMember, KpMember, ProcMember,
                                   balanced, is_fatal, make_member, poll_members,
                                   produce_per_partition, wait_procs)
import wire
from support import RDKAFKA_LOG, admin, create_topic, unique_topic, wait_until

PARTITIONS = 6
CLIENTS = ["confluent", "kafka-python"]


def unique_group(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def group_broker(broker_factory):
    return broker_factory(FAST_GROUP_SETTINGS)


@pytest.fixture
def cleanup():
    """Collects members (in-process or processes) to close at teardown."""
    items = []
    yield items
    for m in reversed(items):
        try:
            if isinstance(m, ProcMember):
                m.cleanup()
            else:
                m.close()
        except Exception:  # noqa: BLE001 - teardown is best effort
            pass


def assignments(members):
    return [m.assignment() for m in members]


def stable_split(members, partitions=PARTITIONS):
    a = assignments(members)
    return a if balanced(a, partitions) else None


def record_counts(members) -> dict[str, int]:
    """Snapshot to pass to consume_exactly; take it BEFORE producing (members
    on their own thread consume as soon as records arrive)."""
    return {m.name: len(m.records) for m in members}


def consume_exactly(members, expected: dict[tuple[int, int], bytes], start_counts: dict,
                    timeout: float = 30.0):
    """Poll until every expected (partition, offset) was consumed by someone
    since `start_counts` (member name -> records seen before), then poll one
    more second to catch surplus records. Returns {member name: new records}."""
    def new_records():
        return {m.name: m.records[start_counts[m.name]:] for m in members}

    def all_seen():
        seen = {(p, o) for recs in new_records().values() for p, o, _ in recs}
        return expected.keys() <= seen

    def progress():
        seen = {}
        for name, recs in new_records().items():
            for p, _, _ in recs:
                seen[(name, p)] = seen.get((name, p), 0) + 1
        return seen

    try:
        poll_members(members, all_seen, timeout=timeout,
                     message=f"{len(expected)} records to be consumed")
    except AssertionError as e:
        raise AssertionError(f"{e}; consumed so far per (member, partition): "
                             f"{sorted(progress().items())}") from None
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle:
        for m in members:
            if not m.closed:
                m.poll(0.05)
    return new_records()


def assert_exactly_once(new: dict[str, list], expected: dict[tuple[int, int], bytes],
                        owners: dict[str, frozenset[int]]):
    counts: dict[tuple[int, int], int] = {}
    for name, recs in new.items():
        for p, o, v in recs:
            counts[(p, o)] = counts.get((p, o), 0) + 1
            assert p in owners[name], f"{name} consumed partition {p} it does not own"
            assert expected.get((p, o)) == v, f"record at {(p, o)} is {v!r}"
    dups = {k: c for k, c in counts.items() if c > 1}
    missing = sorted(expected.keys() - counts.keys())
    extra = sorted(counts.keys() - expected.keys())
    assert not dups, f"{len(dups)} records consumed more than once, e.g. {list(dups.items())[:5]}"
    assert not missing, f"{len(missing)} records never consumed, e.g. {missing[:5]}"
    assert not extra, f"unexpected records consumed: {extra[:5]}"


def revocations_after(member, t: float):
    return [(kind, sorted(parts)) for ts, kind, parts in member.events
            if ts > t and kind in ("revoke", "lost")]


# ---------------------------------------------------------------- 1. split

@pytest.mark.parametrize("client", CLIENTS)
def test_three_members_split_six_partitions_and_consume_each_record_once(
        group_broker, cleanup, client):
    topic, group = unique_topic("split"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)
    members = [make_member(client, group_broker.bootstrap, group, topic, f"{client}-m{i}")
               for i in range(3)]
    cleanup.extend(members)
    for m in members:
        m.subscribe()

    split = poll_members(members, lambda: stable_split(members), timeout=45,
                         message="three members with 2 partitions each")
    assert all(len(a) == 2 for a in split), split
    assert frozenset().union(*split) == frozenset(range(PARTITIONS))
    stable_at = time.monotonic()
    owners = {m.name: m.assignment() for m in members}

    before = record_counts(members)
    expected = produce_per_partition(group_broker.bootstrap, topic, PARTITIONS, 50, "split")
    new = consume_exactly(members, expected, before)
    assert_exactly_once(new, expected, owners)
    # The group stayed stable while consuming.
    for m in members:
        assert revocations_after(m, stable_at) == [], f"{m.name} lost partitions: {m.events}"
        assert m.assignment() == owners[m.name]


# ---------------------------------------------------------------- 2. clean leave

@pytest.mark.parametrize("client", CLIENTS)
def test_member_leaving_cleanly_hands_its_partitions_to_the_others(group_broker, cleanup, client):
    topic, group = unique_topic("leave"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)
    members = [make_member(client, group_broker.bootstrap, group, topic, f"{client}-m{i}")
               for i in range(3)]
    cleanup.extend(members)
    for m in members:
        m.subscribe()
    poll_members(members, lambda: stable_split(members), timeout=45,
                 message="three members with 2 partitions each")

    # Consume a first batch and commit it, so whoever takes a partition over
    # starts after it.
    owners = {m.name: m.assignment() for m in members}
    before = record_counts(members)
    first = produce_per_partition(group_broker.bootstrap, topic, PARTITIONS, 20, "before")
    new = consume_exactly(members, first, before)
    assert_exactly_once(new, first, owners)
    for m in members:
        m.commit_sync()

    leaver, rest = members[2], members[:2]
    left_partitions = leaver.assignment()
    t_close = time.monotonic()
    leaver.close()
    t_closed = time.monotonic()
    split = poll_members(rest, lambda: stable_split(rest), timeout=30,
                         message="the two remaining members to cover all 6 partitions")
    t_assigned = time.monotonic()
    print(f"\n[figure] {client}: rebalance after a clean leave took "
          f"{t_assigned - t_close:.2f}s from close() (close() itself {t_closed - t_close:.2f}s) "
          f"to the remaining members' new assignment {[sorted(a) for a in split]}")
    assert all(len(a) == 3 for a in split)
    assert left_partitions <= frozenset().union(*split)

    owners = {m.name: m.assignment() for m in rest}
    before = record_counts(rest)
    second = produce_per_partition(group_broker.bootstrap, topic, PARTITIONS, 20, "after")
    new = consume_exactly(rest, second, before)
    # Committed offsets were honoured: nothing from the first batch again.
    assert_exactly_once(new, second, owners)


def test_leave_during_pending_rebalance_completes_it(group_broker, cleanup):
    """A member that cannot rejoin (its application stopped polling) holds a
    rebalance up to the rebalance timeout; its LeaveGroup must complete the
    rebalance at once for the members already waiting in JoinGroup."""
    from kafka import KafkaConsumer
    topic, group = unique_topic("pending"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)
    a = ProcMember(group_broker.bootstrap, group, topic, "pending-a")
    cleanup.append(a)
    stuck = KafkaConsumer(bootstrap_servers=group_broker.bootstrap, group_id=group,
                          client_id="pending-stuck", session_timeout_ms=6000,
                          heartbeat_interval_ms=500, max_poll_interval_ms=120000,
                          enable_auto_commit=False)
    try:
        stuck.subscribe([topic])
        deadline = time.monotonic() + 45
        while not (a.assignment() and stuck.assignment()
                   and balanced([a.assignment(),
                                 frozenset(tp.partition for tp in stuck.assignment())],
                                PARTITIONS)):
            assert time.monotonic() < deadline, "a and the kafka-python member never split"
            stuck.poll(timeout_ms=100)
        # From here on `stuck` is not polled, so it cannot rejoin.
        newcomer = ProcMember(group_broker.bootstrap, group, topic, "pending-new")
        cleanup.append(newcomer)
        a_revokes = len(a.of("revoke"))
        wait_procs(lambda: len(a.of("revoke")) > a_revokes and newcomer.of("started"),
                   [a, newcomer], timeout=20, message="a rebalance to begin")
        wait_until(lambda: describe(group_broker.bootstrap, group).state
                   == ConsumerGroupState.PREPARING_REBALANCING, timeout=10,
                   message="the group waiting in PreparingRebalance")
        t_close = time.monotonic()
    finally:
        stuck.close(autocommit=False)  # LeaveGroup
    wait_procs(lambda: a.assignment() and newcomer.assignment()
               and balanced([a.assignment(), newcomer.assignment()], PARTITIONS),
               [a, newcomer], timeout=10,
               message="the rebalance to complete after the stuck member's LeaveGroup "
                       "(rebalance timeout is 120 s)")
    print(f"\n[figure] rebalance completed {time.monotonic() - t_close:.2f}s after the "
          f"stuck member's LeaveGroup")


def test_abandoned_member_id_holds_a_join_only_until_its_session_timeout(group_broker, cleanup):
    """A JoinGroup v4 answered MEMBER_ID_REQUIRED whose client never comes back
    (it went away, or resubscribed) holds the join phase until that member id
    lapses, after the session timeout it asked for; the members that did join
    are then answered at once, not after their rebalance timeout."""
    abandoned_session_s, slack_s = 3.0, 10.0
    rebalance_timeout_s = 120.0
    topic, group = unique_topic("abandoned"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)
    t_abandoned = time.monotonic()
    with wire.Connection(group_broker.host, group_broker.port) as conn:
        r = wire.join_group_v4(conn, group, "", [topic],
                               session_timeout_ms=int(abandoned_session_s * 1000),
                               rebalance_timeout_ms=int(rebalance_timeout_s * 1000))
    assert r.error_code == wire.MEMBER_ID_REQUIRED, r
    assert r.member_id, "MEMBER_ID_REQUIRED carries the id to rejoin with"

    member = CkMember(group_broker.bootstrap, group, topic, "abandoned-survivor",
                      **{"session.timeout.ms": 6000,
                         "max.poll.interval.ms": int(rebalance_timeout_s * 1000)})
    cleanup.append(member)
    member.subscribe()
    poll_members([member], lambda: member.assignment() == frozenset(range(PARTITIONS)),
                 timeout=abandoned_session_s + slack_s,
                 message=f"the member's assignment once the abandoned member id lapsed "
                         f"({abandoned_session_s:.0f} s), not at the rebalance timeout "
                         f"({rebalance_timeout_s:.0f} s)")
    elapsed = time.monotonic() - t_abandoned
    print(f"\n[figure] assigned {elapsed:.2f}s after a member id was abandoned with a "
          f"{abandoned_session_s:.0f}s session timeout (rebalance timeout "
          f"{rebalance_timeout_s:.0f}s)")
    # The join did wait for the handed-out id, as Kafka's does: the test exercised it.
    assert elapsed >= abandoned_session_s - 0.5, elapsed


# ---------------------------------------------------------------- 3. SIGKILL

def test_killed_member_is_evicted_after_session_timeout(group_broker, cleanup):
    session_ms = 4000
    topic, group = unique_topic("kill"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)
    procs = []
    for i in range(3):
        procs.append(ProcMember(group_broker.bootstrap, group, topic, f"proc-m{i}",
                                session_timeout_ms=session_ms, heartbeat_interval_ms=500))
        cleanup.append(procs[-1])

    def split_of(ms):
        a = [m.assignment() for m in ms]
        return a if None not in a and balanced(a, PARTITIONS) else None

    wait_procs(lambda: split_of(procs), procs, timeout=45,
               message="three member processes with 2 partitions each")
    victim, rest = procs[0], procs[1:]
    victim_parts = victim.assignment()
    revokes_before = {m.name: len(m.of("revoke")) for m in rest}

    t_kill = time.monotonic()
    victim.kill9()
    split = wait_procs(lambda: split_of(rest), rest, timeout=session_ms / 1000 + 30,
                       message="the two surviving processes to cover all 6 partitions")
    t_taken = max(m.of("assignment")[-1]["t"] for m in rest)
    elapsed = t_taken - t_kill
    print(f"\n[figure] SIGKILLed member's partitions reassigned {elapsed:.2f}s after the kill "
          f"(session.timeout.ms={session_ms})")
    assert all(len(a) == 3 for a in split)
    assert victim_parts <= frozenset().union(*split)
    # No LeaveGroup was sent: the broker may only notice through the session
    # timeout (measured from the last heartbeat, at most one interval before).
    assert elapsed >= session_ms / 1000 - 1.0, (
        f"partitions moved {elapsed:.2f}s after SIGKILL, before the {session_ms} ms session "
        f"timeout could expire")
    for m in rest:
        assert len(m.of("revoke")) > revokes_before[m.name], f"{m.name} did not rebalance"

    # The survivors consume what is produced to the dead member's partitions.
    after = produce_per_partition(group_broker.bootstrap, topic, PARTITIONS, 5, "after-kill")

    def consumed():
        seen = {(e["partition"], e["offset"]) for m in rest for e in m.of("msg")}
        return after.keys() <= seen

    wait_procs(consumed, rest, timeout=30,
               message="survivors to consume records produced after the kill")
    for m in rest:
        assert not [e for e in m.of("error") if is_fatal(e)], m.describe()


# ---------------------------------------------------------------- 4. cooperative-sticky

def test_cooperative_sticky_revokes_only_moving_partitions(group_broker, cleanup):
    topic, group = unique_topic("coop"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)
    conf = {"partition.assignment.strategy": "cooperative-sticky"}
    first = CkMember(group_broker.bootstrap, group, topic, "coop-m0", **conf)
    cleanup.append(first)
    first.subscribe()
    poll_members([first], lambda: first.assignment() == frozenset(range(PARTITIONS)),
                 timeout=30, message="the only member to own all 6 partitions")
    assert [k for _, k, _ in first.events] == ["assign"]

    second = CkMember(group_broker.bootstrap, group, topic, "coop-m1", **conf)
    cleanup.append(second)
    second.subscribe()
    held: list[frozenset[int]] = []

    def settled():
        held.append(first.assignment())
        return stable_split([first, second])

    split = poll_members([first, second], settled, timeout=45,
                         message="two members with 3 partitions each")
    kept, moved = split[0], split[1]
    assert len(kept) == 3 and len(moved) == 3

    revokes = [parts for _, kind, parts in first.events if kind == "revoke"]
    lost = [parts for _, kind, parts in first.events if kind == "lost"]
    assert not lost, f"first member lost partitions: {lost}"
    assert revokes, "first member never had partitions revoked"
    # Incremental: each revocation names only partitions that moved, never
    # the whole assignment, and together they are exactly the moved ones.
    for parts in revokes:
        assert parts <= moved, (f"on_revoke got {sorted(parts)}, but only {sorted(moved)} moved "
                                f"(kept {sorted(kept)})")
    assert frozenset().union(*revokes) == moved
    # The kept partitions stayed assigned the whole time.
    assert all(kept <= a for a in held), [sorted(a) for a in held]
    assert not [e for e in second.events if e[1] in ("revoke", "lost")], second.events


# ---------------------------------------------------------------- 5. static membership

def describe(bootstrap: str, group: str):
    a = admin(bootstrap)
    return a.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)


def split_by_instance(desc) -> dict[str, frozenset[int]]:
    return {m.group_instance_id: frozenset(tp.partition for tp in m.assignment.topic_partitions)
            for m in desc.members}


def test_static_member_restart_within_session_timeout_causes_no_rebalance(group_broker, cleanup):
    session_ms = 10000
    topic, group = unique_topic("static"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)

    def member(name, instance):
        m = ProcMember(group_broker.bootstrap, group, topic, name, instance_id=instance,
                       session_timeout_ms=session_ms, heartbeat_interval_ms=500)
        cleanup.append(m)
        return m

    # a joins first (so it is the leader); b is the one restarted.
    a = member("static-a", "inst-a")
    wait_procs(lambda: a.assignment() == frozenset(range(PARTITIONS)), [a], timeout=30,
               message="static-a to own all partitions")
    b = member("static-b", "inst-b")
    wait_procs(lambda: a.assignment() and b.assignment()
               and balanced([a.assignment(), b.assignment()], PARTITIONS),
               [a, b], timeout=45, message="a and b to split the partitions")
    a_parts, b_parts = a.assignment(), b.assignment()
    desc = wait_until(lambda: (d := describe(group_broker.bootstrap, group)).state
                      == ConsumerGroupState.STABLE and d, timeout=15, message="group Stable")
    assert split_by_instance(desc) == {"inst-a": a_parts, "inst-b": b_parts}
    a_events_before = len(a.snapshot())

    t_stop = time.monotonic()
    assert b.terminate() == 0, b.describe()
    # A static member's close sends no LeaveGroup: still Stable, still two
    # members, same split.
    desc = describe(group_broker.bootstrap, group)
    assert desc.state == ConsumerGroupState.STABLE
    assert split_by_instance(desc) == {"inst-a": a_parts, "inst-b": b_parts}

    b2 = member("static-b2", "inst-b")
    wait_procs(lambda: b2.assignment(), [b2], timeout=session_ms / 1000,
               message="restarted static-b to get an assignment")
    assert time.monotonic() - t_stop < session_ms / 1000, "restart took longer than the session"
    assert b2.assignment() == b_parts, b2.describe()
    desc = describe(group_broker.bootstrap, group)
    assert desc.state == ConsumerGroupState.STABLE
    assert split_by_instance(desc) == {"inst-a": a_parts, "inst-b": b_parts}
    assert len(desc.members) == 2

    # Give a rebalance, had one been triggered, the time to reach a (a
    # heartbeat interval is 0.5 s): poll that a saw nothing for 3 s.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        later = [e for e in a.snapshot()[a_events_before:]
                 if e["event"] in ("revoke", "assign", "lost")]
        assert not later, f"static-a was rebalanced when static-b restarted: {later}"
        time.sleep(0.1)
    assert a.assignment() == a_parts


def test_duplicate_static_instance_id_fences_the_older_member(group_broker, cleanup):
    topic, group = unique_topic("fence"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=PARTITIONS)

    def member(name, instance):
        m = ProcMember(group_broker.bootstrap, group, topic, name, instance_id=instance,
                       session_timeout_ms=6000, heartbeat_interval_ms=500)
        cleanup.append(m)
        return m

    a = member("fence-a", "inst-a")
    old = member("fence-b-old", "inst-b")
    wait_procs(lambda: a.assignment() and old.assignment()
               and balanced([a.assignment(), old.assignment()], PARTITIONS),
               [a, old], timeout=45, message="a and b to split the partitions")
    b_parts = old.assignment()

    new = member("fence-b-new", "inst-b")
    fatal = wait_procs(lambda: [e for e in old.of("error") if is_fatal(e)], [old, new],
                       timeout=30, message="the older inst-b member to get a fatal error")
    # librdkafka turns FENCED_INSTANCE_ID into a fatal error (_FATAL) whose
    # text names the fencing, and gives up the assignment.
    assert fatal[0]["name"] == "_FATAL", fatal
    assert "fenced by other consumer with same group.instance.id" in fatal[0]["str"], fatal
    wait_procs(lambda: old.assignment() == frozenset(), [old], timeout=15,
               message="the fenced member to drop its partitions")
    wait_procs(lambda: new.assignment() == b_parts, [new], timeout=30,
               message="the newer inst-b member to own b's partitions")
    assert not [e for e in new.of("error") if is_fatal(e)], new.describe()
    assert not [e for e in a.of("error") if is_fatal(e)], a.describe()
    # The other member was not disturbed by the replacement.
    assert a.assignment() == frozenset(range(PARTITIONS)) - b_parts


# ---------------------------------------------------------------- 6. offsets survive kill -9

def test_committed_offsets_survive_broker_kill9(group_broker, cleanup):
    parts, per_part = 3, 100
    topic, group = unique_topic("commit"), unique_group()
    create_topic(group_broker.bootstrap, topic, partitions=parts)
    produced = produce_per_partition(group_broker.bootstrap, topic, parts, per_part, "c")

    first = CkMember(group_broker.bootstrap, group, topic, "commit-m0",
                     **{"max.partition.fetch.bytes": 1024})
    cleanup.append(first)
    first.subscribe()
    poll_members([first], lambda: len({p for p, _, _ in first.records}) == parts
                 and len(first.records) >= parts * per_part // 2, timeout=30,
                 message="the first consumer to read part of every partition")
    # Commit what was consumed so far, exactly, and make sure it is not all.
    upto = {}
    for p, o, _ in first.records:
        upto[p] = max(upto.get(p, -1), o + 1)
    assert any(v < per_part for v in upto.values()), f"consumed everything already: {upto}"
    first.consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in upto.items()],
                          asynchronous=False)

    group_broker.kill9()
    group_broker.restart()
    first.close()  # LeaveGroup on the restarted broker

    second = CkMember(group_broker.bootstrap, group, topic, "commit-m1")
    cleanup.append(second)
    committed = second.consumer.committed([TopicPartition(topic, p) for p in range(parts)],
                                          timeout=20)
    assert {tp.partition: tp.offset for tp in committed} == upto
    second.subscribe()
    expected = {k: v for k, v in produced.items() if k[1] >= upto[k[0]]}
    new = consume_exactly([second], expected, {second.name: 0})
    assert_exactly_once(new, expected, {second.name: frozenset(range(parts))})


# ---------------------------------------------------------------- 7. auto.offset.reset

def _setup_old(bootstrap, parts=2, per=5):
    topic = unique_topic("reset")
    create_topic(bootstrap, topic, partitions=parts)
    old = produce_per_partition(bootstrap, topic, parts, per, "old")
    return topic, old


def test_confluent_offset_reset_earliest_reads_from_start(group_broker, cleanup):
    topic, old = _setup_old(group_broker.bootstrap)
    m = CkMember(group_broker.bootstrap, unique_group(), topic, "reset-earliest",
                 **{"auto.offset.reset": "earliest"})
    cleanup.append(m)
    m.subscribe()
    new = consume_exactly([m], old, {m.name: 0})
    assert_exactly_once(new, old, {m.name: frozenset(range(2))})


def test_confluent_offset_reset_latest_reads_only_new_records(group_broker, cleanup):
    topic, old = _setup_old(group_broker.bootstrap)
    m = CkMember(group_broker.bootstrap, unique_group(), topic, "reset-latest",
                 **{"auto.offset.reset": "latest"})
    cleanup.append(m)
    m.subscribe()
    poll_members([m], lambda: m.assignment() == frozenset(range(2)), timeout=30,
                 message="assignment")
    # The position is resolved asynchronously after the assignment: keep
    # producing new records until some arrive on both partitions; none of the
    # old ones may ever show up.
    new_values = set()
    p_new = {}

    def got_new():
        more = produce_per_partition(group_broker.bootstrap, topic, 2, 1, f"new{len(p_new)}")
        p_new.update(more)
        new_values.update(more.values())
        for _ in range(10):
            m.poll(0.05)
        return {p for p, _, _ in m.records} == {0, 1}

    wait_until(got_new, timeout=30, interval=0.0, message="new records on both partitions")
    assert m.records, "nothing consumed"
    for p, o, v in m.records:
        assert v in new_values, f"latest consumer got an old record {v!r} at {(p, o)}"
        assert o >= 5
    assert not m.errors, m.errors


def test_confluent_offset_reset_error_reports_auto_offset_reset(group_broker, cleanup):
    topic, _ = _setup_old(group_broker.bootstrap)
    m = CkMember(group_broker.bootstrap, unique_group(), topic, "reset-error",
                 **{"auto.offset.reset": "error"})
    cleanup.append(m)
    m.subscribe()
    errs = poll_members([m], lambda: [e for e in m.errors
                                      if e.code() == KafkaError._AUTO_OFFSET_RESET],
                        timeout=30, message="an _AUTO_OFFSET_RESET error from poll")
    assert errs
    assert not m.records, "records consumed without a committed offset"


def test_kafka_python_offset_reset_earliest_and_latest(group_broker, cleanup):
    from kafka import TopicPartition as KTP
    topic, old = _setup_old(group_broker.bootstrap)
    early = make_member("kafka-python", group_broker.bootstrap, unique_group(), topic, "kp-early")
    cleanup.append(early)
    early.subscribe()
    new = consume_exactly([early], old, {early.name: 0})
    assert_exactly_once(new, old, {early.name: frozenset(range(2))})

    late = KpMember(group_broker.bootstrap, unique_group(), topic, "kp-late",
                    auto_offset_reset="latest")
    cleanup.append(late)
    late.subscribe()
    poll_members([late], lambda: late.assignment() == frozenset(range(2)), timeout=30,
                 message="assignment")
    # position() blocks until the reset to the end offset is done.
    assert late.call(lambda: [late.consumer.position(KTP(topic, p)) for p in range(2)]) == [5, 5]
    fresh = produce_per_partition(group_broker.bootstrap, topic, 2, 3, "new")
    got = consume_exactly([late], fresh, {late.name: 0})
    assert_exactly_once(got, fresh, {late.name: frozenset(range(2))})


def test_kafka_python_offset_reset_none_raises_no_offset(group_broker, cleanup):
    from kafka.errors import NoOffsetForPartitionError
    topic, _ = _setup_old(group_broker.bootstrap)
    m = KpMember(group_broker.bootstrap, unique_group(), topic, "kp-none",
                 auto_offset_reset="none")
    cleanup.append(m)
    m.subscribe()  # poll() runs on the member's thread; its exceptions are collected
    errs = wait_until(lambda: [e for e in m.errors if isinstance(e, NoOffsetForPartitionError)],
                      timeout=30, message="poll() to raise NoOffsetForPartitionError")
    assert errs
    assert not m.records


# ---------------------------------------------------------------- 9. standalone

def test_standalone_consumer_commit_without_members(group_broker, cleanup):
    topic, _ = _setup_old(group_broker.bootstrap, parts=2, per=10)
    group = unique_group("standalone")
    c = Consumer({"bootstrap.servers": group_broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "logger": RDKAFKA_LOG})
    try:
        c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
        c.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 3)],
                 asynchronous=False)
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
        assert {tp.partition: tp.offset for tp in got} == {0: 7, 1: 3}
    finally:
        c.close()

    # Another client sees it through OffsetFetch, and reading resumes there.
    c2 = Consumer({"bootstrap.servers": group_broker.bootstrap, "group.id": group,
                   "enable.auto.commit": False, "auto.offset.reset": "error",
                   "logger": RDKAFKA_LOG})
    try:
        got = c2.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
        assert {tp.partition: tp.offset for tp in got} == {0: 7, 1: 3}
        c2.assign([TopicPartition(topic, 0)])  # no offset: start from the committed one
        msg = wait_until(lambda: (m := c2.poll(0.2)) is not None and m.error() is None and m,
                         timeout=20, message="a record from the committed position")
        assert (msg.partition(), msg.offset()) == (0, 7)
    finally:
        c2.close()

    # kafka-python: standalone commit with generation -1, fetched back.
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata
    kp = KafkaConsumer(bootstrap_servers=group_broker.bootstrap, group_id=group,
                       enable_auto_commit=False)
    try:
        kp.assign([KTP(topic, 1)])
        kp.commit({KTP(topic, 1): OffsetAndMetadata(9, "kp-meta", -1)})
        assert kp.committed(KTP(topic, 1)) == 9
        assert kp.committed(KTP(topic, 0)) == 7
    finally:
        kp.close(autocommit=False)

    a = admin(group_broker.bootstrap)
    from confluent_kafka import ConsumerGroupTopicPartitions
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(20)
    assert {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions} == {
        (topic, 0): 7, (topic, 1): 9}


# ---------------------------------------------------------------- figures

def test_initial_rebalance_delay_figure(broker_factory, cleanup):
    """Default group.initial.rebalance.delay.ms (3000): how long from the first
    subscribe until all three members have their assignment. A figure for the
    report; the only assertion is that the group forms."""
    b = broker_factory()
    topic, group = unique_topic("delay"), unique_group()
    create_topic(b.bootstrap, topic, partitions=PARTITIONS)

    solo = CkMember(b.bootstrap, unique_group(), topic, "delay-solo")
    cleanup.append(solo)
    t0 = time.monotonic()
    solo.subscribe()
    poll_members([solo], lambda: solo.assignment() == frozenset(range(PARTITIONS)), timeout=30,
                 message="the only member's assignment")
    print(f"\n[figure] default initial rebalance delay: a lone member was assigned "
          f"{time.monotonic() - t0:.2f}s after subscribe")
    solo.close()

    members = [CkMember(b.bootstrap, group, topic, f"delay-m{i}") for i in range(3)]
    cleanup.extend(members)
    t0 = time.monotonic()
    for m in members:
        m.subscribe()
    poll_members(members, lambda: stable_split(members), timeout=60,
                 message="three members with 2 partitions each")
    elapsed = time.monotonic() - t0
    first_assign = min(ts for m in members for ts, k, _ in m.events if k == "assign")
    rounds = sum(1 for m in members for _, k, _ in m.events if k == "assign")
    print(f"[figure] default initial rebalance delay: all 3 members assigned {elapsed:.2f}s "
          f"after the first subscribe (first assignment at {first_assign - t0:.2f}s; "
          f"{rounds} assign callbacks in total)")
