"""Three real `caudal` processes as one cluster: each node a broker and a voter of the metadata
quorum, talking over their CONTROLLER listeners. Real clients (confluent-kafka, kafka-python,
kcat) reach the cluster through any node and follow the Metadata it gives them."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewPartitions, NewTopic

import wire
from support import (DeliveryLog, admin, consume, create_topic, group_coordinator,
                     produce_and_confirm, producer, unique_topic, wait_until)

# Failover tests wait out a session; a shorter one keeps them quick without changing what
# they show.
FAST = {"broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 500}


def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    md = admin(bootstrap).list_topics(topic, timeout=10)
    return {p.id: p.leader for p in md.topics[topic].partitions.values()}


def describe_cluster(bootstrap: str):
    a = admin(bootstrap)  # kept alive until the answer is in
    return a.describe_cluster(request_timeout=10).result(timeout=15)


def controller_id(bootstrap: str) -> int:
    """The active controller, from DescribeCluster itself: librdkafka's describe_cluster reads
    Metadata, whose controller id is any live broker, as with Kafka 4."""
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    with wire.Connection(host, int(port)) as conn:
        return wire.describe_cluster_controller(conn)


def test_three_nodes_form_one_cluster_and_spread_partitions(cluster_factory):
    cluster = cluster_factory(3)
    for node in cluster.nodes:
        md = admin(node.bootstrap).list_topics(timeout=10)
        assert sorted(md.brokers) == [1, 2, 3], f"node {node.node_id} lists {md.brokers}"
        assert {(b.host, b.port) for b in md.brokers.values()} == {
            ("127.0.0.1", n.port) for n in cluster.nodes}
    described = describe_cluster(cluster.nodes[0].bootstrap)
    assert sorted(n.id for n in described.nodes) == [1, 2, 3]
    # Every node names the same active controller.
    assert len({controller_id(n.bootstrap) for n in cluster.nodes}) == 1

    topic = unique_topic("spread")
    create_topic(cluster.nodes[1].bootstrap, topic, partitions=6)
    by_leader: dict[int, int] = {}
    for leader in leaders(cluster.bootstrap, topic).values():
        by_leader[leader] = by_leader.get(leader, 0) + 1
    assert by_leader == {1: 2, 2: 2, 3: 2}, f"leaders of {topic}: {by_leader}"
    # Every node says the same.
    for node in cluster.nodes:
        wait_until(lambda: leaders(node.bootstrap, topic) == leaders(cluster.bootstrap, topic),
                   message=f"node {node.node_id} agreeing on the leaders")


def test_produce_and_consume_across_every_broker(cluster_factory):
    cluster = cluster_factory(3)
    topic = unique_topic("across")
    create_topic(cluster.bootstrap, topic, partitions=6)
    messages = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(600)]
    # One node as bootstrap: the client finds the other leaders through Metadata.
    log = produce_and_confirm(cluster.nodes[2].bootstrap, topic, messages, {"acks": "all"})
    assert {r.partition for r in log.ok} == set(range(6))
    got = consume(cluster.nodes[0].bootstrap, topic, 6)
    assert sorted((r.key, r.value) for r in got) == sorted(messages)


def test_kafka_python_and_kcat_follow_the_cluster(cluster_factory):
    from kafka import KafkaConsumer, KafkaProducer

    cluster = cluster_factory(3)
    topic = unique_topic("clients")
    create_topic(cluster.bootstrap, topic, partitions=3)
    producer = KafkaProducer(bootstrap_servers=cluster.nodes[0].bootstrap, acks="all")
    for i in range(30):
        producer.send(topic, key=f"k{i}".encode(), value=f"kp{i}".encode())
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=cluster.nodes[1].bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=10000,
                             enable_auto_commit=False)
    values = sorted(m.value for m in consumer)
    consumer.close()
    assert values == sorted(f"kp{i}".encode() for i in range(30))

    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        pytest.fail("kcat is not installed (the test command installs it with apt-get)")
    listing = subprocess.run([kcat, "-b", cluster.nodes[2].bootstrap, "-L", "-t", topic],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert "3 brokers:" in listing, listing
    for node in cluster.nodes:
        assert f"broker {node.node_id} at 127.0.0.1:{node.port}" in listing, listing
    out = subprocess.run([kcat, "-b", cluster.nodes[2].bootstrap, "-C", "-t", topic, "-e",
                          "-f", "%s\n"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    assert sorted(out.split()) == sorted(f"kp{i}" for i in range(30))


def test_produce_to_a_broker_that_does_not_lead_is_refused(cluster_factory):
    cluster = cluster_factory(3)
    topic = unique_topic("wrong")
    create_topic(cluster.bootstrap, topic, partitions=1)
    leader = leaders(cluster.bootstrap, topic)[0]
    other = next(n for n in cluster.nodes if n.node_id != leader)
    batch = wire.build_batch([b"misdirected"])
    with wire.Connection("127.0.0.1", other.port) as conn:
        result = wire.produce(conn, topic, 0, batch, version=8)
    assert result.error_code == 6, f"NOT_LEADER_OR_FOLLOWER expected: {result}"
    with wire.Connection("127.0.0.1", cluster.node(leader).port) as conn:
        result = wire.produce(conn, topic, 0, batch, version=8)
    assert result.error_code == 0, result


def test_admin_requests_on_a_follower_are_forwarded_to_the_controller(cluster_factory):
    cluster = cluster_factory(3)
    active = controller_id(cluster.bootstrap)
    follower = next(n for n in cluster.nodes if n.node_id != active)
    topic = unique_topic("forwarded")
    a = admin(follower.bootstrap)
    a.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)],
                    request_timeout=15)[topic].result(timeout=20)
    wait_until(lambda: len(leaders(cluster.bootstrap, topic)) == 4,
               message="the forwarded creation in metadata")
    a.create_partitions([NewPartitions(topic, 6)],
                        request_timeout=15)[topic].result(timeout=20)
    wait_until(lambda: len(leaders(cluster.bootstrap, topic)) == 6,
               message="the forwarded partition addition in metadata")
    a.delete_topics([topic], request_timeout=15)[topic].result(timeout=20)
    wait_until(lambda: topic not in admin(cluster.bootstrap).list_topics(timeout=10).topics,
               message="the forwarded deletion in metadata")


def test_a_group_whose_coordinator_is_another_broker_keeps_its_offsets(cluster_factory):
    from confluent_kafka import Consumer

    cluster = cluster_factory(3)
    topic = unique_topic("grp")
    create_topic(cluster.bootstrap, topic, partitions=3)
    for p in range(3):
        produce_and_confirm(cluster.bootstrap, topic,
                            [(None, f"m{p}-{i}".encode()) for i in range(10)], partition=p)
    # A group whose coordinator is not the node the consumer bootstraps from.
    bootstrap = cluster.nodes[0].bootstrap
    # The first FindCoordinator creates __consumer_offsets.
    wait_until(lambda: group_coordinator(bootstrap, f"g-{topic}-probe") is not None,
               timeout=30, message="group coordinators available")
    group, coordinator = None, None
    for i in range(200):
        candidate = f"g-{topic}-{i}"
        found = group_coordinator(bootstrap, candidate)
        if found is not None and found != 1:
            group, coordinator = candidate, found
            break
    assert group is not None, "no group hashed to another coordinator"

    def committed() -> dict[int, int]:
        c = Consumer({"bootstrap.servers": cluster.nodes[0].bootstrap, "group.id": group})
        try:
            parts = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=15)
            return {tp.partition: tp.offset for tp in parts}
        finally:
            c.close()

    c = Consumer({"bootstrap.servers": cluster.nodes[0].bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 30 and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            seen += 1
    assert seen == 30, f"read {seen} of 30"
    c.commit(asynchronous=False)
    c.close()
    before = committed()
    assert before == {0: 10, 1: 10, 2: 10}, before

    node = cluster.node(coordinator)
    node.stop()
    node.start()
    wait_until(lambda: committed() == before, timeout=30,
               message="committed offsets back after the coordinator's broker restarted")


def test_the_cluster_survives_the_active_controller_being_killed(cluster_factory):
    cluster = cluster_factory(3, FAST)
    active = controller_id(cluster.bootstrap)
    survivors = [n for n in cluster.nodes if n.node_id != active]
    bootstrap = ",".join(n.bootstrap for n in survivors)
    # Under load: a producer writes to a partition on every broker through the kill.
    load = unique_topic("load")
    create_topic(cluster.bootstrap, load, partitions=3)
    assert sorted(leaders(cluster.bootstrap, load).values()) == [1, 2, 3]
    deliveries = DeliveryLog()
    stop_load = threading.Event()

    def produce_load() -> None:
        p = producer(bootstrap, acks="all", **{"message.timeout.ms": 10000})
        i = 0
        while not stop_load.is_set():
            p.produce(load, value=f"load-{i}".encode(), partition=i % 3, on_delivery=deliveries)
            p.poll(0.002)
            i += 1
        p.flush(30)

    loader = threading.Thread(target=produce_load, daemon=True)
    loader.start()
    wait_until(lambda: len(deliveries.ok) >= 300, message="the load running before the kill")
    cluster.node(active).kill9()
    killed_at = time.monotonic()
    topic = unique_topic("after")
    a = admin(bootstrap)

    def created() -> bool:
        fs = a.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)],
                             request_timeout=5)
        try:
            fs[topic].result(timeout=10)
            return True
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            return "already exists" in str(e).lower()

    wait_until(created, timeout=30, interval=0.05, message="a topic created after the kill")
    elapsed = time.monotonic() - killed_at
    print(f"kill -9 of the active controller to a successful CreateTopics: {elapsed:.2f}s")
    assert controller_id(bootstrap) != active
    # Once its session runs out the dead node is fenced: gone from Metadata, and whatever it
    # led (the new topic too may have been placed on it before then) without a leader.
    wait_until(lambda: active not in admin(bootstrap).list_topics(timeout=10).brokers,
               message="the killed controller fenced")
    assert set(leaders(bootstrap, topic).values()) <= {n.node_id for n in survivors} | {-1}
    acked_after_kill = len(deliveries.ok)
    wait_until(lambda: len(deliveries.ok) > acked_after_kill + 100,
               message="the load going on after the controller died")
    stop_load.set()
    loader.join(60)
    assert not loader.is_alive(), "the load producer did not finish"
    cluster.node(active).start()
    wait_until(lambda: len(admin(cluster.bootstrap).list_topics(timeout=10).brokers) == 3,
               message="the old controller back as a broker")
    wait_until(lambda: -1 not in leaders(cluster.bootstrap, load).values(), timeout=30,
               message="every load partition led again")
    # Nothing acknowledged is lost: on the survivors, nor on the killed node once it is back.
    stored = {r.value for r in consume(cluster.bootstrap, load, 3)}
    missing = [r.value for r in deliveries.ok if r.value not in stored]
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {missing[:3]}"


def test_a_killed_broker_is_fenced_and_returns_with_every_record(cluster_factory):
    cluster = cluster_factory(3, FAST)
    topic = unique_topic("fence")
    create_topic(cluster.bootstrap, topic, partitions=3)
    messages = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(300)]
    produce_and_confirm(cluster.bootstrap, topic, messages, {"acks": "all"})
    active = controller_id(cluster.bootstrap)
    victim = next(n for n in cluster.nodes if n.node_id != active)
    led = [p for p, l in leaders(cluster.bootstrap, topic).items() if l == victim.node_id]
    assert led, "the victim leads a partition"
    others = ",".join(n.bootstrap for n in cluster.nodes if n is not victim)
    victim.kill9()
    wait_until(lambda: all(leaders(others, topic)[p] == -1 for p in led), timeout=20,
               message=f"partitions {led} without a leader while node {victim.node_id} is down")
    victim.start()
    wait_until(lambda: all(leaders(cluster.bootstrap, topic)[p] == victim.node_id for p in led),
               timeout=30, message="the partitions led again by the restarted broker")
    got = consume(cluster.bootstrap, topic, 3)
    assert sorted((r.key, r.value) for r in got) == sorted(messages)


def test_sigterm_moves_leadership_off_before_the_broker_stops(cluster_factory):
    cluster = cluster_factory(3, FAST)
    topic = unique_topic("shutdown")
    create_topic(cluster.bootstrap, topic, partitions=3)
    active = controller_id(cluster.bootstrap)
    victim = next(n for n in cluster.nodes if n.node_id != active)
    assert victim.stop() == 0
    assert "controlled shutdown complete" in victim.log_text()
    others = ",".join(n.bootstrap for n in cluster.nodes if n is not victim)
    # One replica each: nothing to move leadership to, so the partitions it led are offline
    # at once, not after a session timeout.
    assert victim.node_id not in leaders(others, topic).values()
    # The clean stop is recorded with its broker epoch, for the next registration, which takes
    # the record: a crash of the next incarnation must not pass for a clean stop.
    record = victim.data_dir / "clean-shutdown"
    assert re.search(r"^broker\.epoch=\d+$", record.read_text(), re.M), record.read_text()
    victim.start()
    assert not record.exists()
    wait_until(lambda: len(admin(cluster.bootstrap).list_topics(timeout=10).brokers) == 3,
               message="the stopped broker registered again")


def test_all_three_restart_with_everything(cluster_factory):
    cluster = cluster_factory(3)
    topic = unique_topic("restart")
    create_topic(cluster.bootstrap, topic, partitions=6)
    messages = [(None, f"r{i}".encode()) for i in range(120)]
    produce_and_confirm(cluster.bootstrap, topic, messages, {"acks": "all"})
    assert cluster.stop_all() == [0, 0, 0]
    cluster.start()
    wait_until(lambda: -1 not in leaders(cluster.bootstrap, topic).values(), timeout=30,
               message="every partition led after the restart")
    got = consume(cluster.bootstrap, topic, 6)
    assert sorted(r.value for r in got) == sorted(v for _, v in messages)


def test_a_controller_only_voter_serves_broker_only_nodes(cluster_factory):
    """Node 1 is the only voter and runs no broker; nodes 2 and 3 are brokers that follow the
    metadata log as learners. Clients see two brokers; the topic spreads over both; admin
    requests reach the controller-only node; a broker-only node restarted catches up."""
    cluster = cluster_factory(3, roles=["controller", "broker", "broker"])
    controller, b2, b3 = cluster.nodes
    for node in cluster.brokers:
        md = admin(node.bootstrap).list_topics(timeout=10)
        assert sorted(md.brokers) == [2, 3], f"node {node.node_id} lists {md.brokers}"
    assert sorted(n.id for n in describe_cluster(b2.bootstrap).nodes) == [2, 3]
    # Clients are never sent to the controller-only node.
    assert controller_id(b3.bootstrap) in (2, 3)
    log = controller.log_text()
    for broker in (2, 3):
        assert f"node_id={broker}" in log and "added to the metadata quorum as a learner" in log, \
            f"the controller never added broker {broker} as a learner:\n{controller.log_tail()}"

    topic = unique_topic("roles")
    create_topic(b3.bootstrap, topic, partitions=4)
    by_leader: dict[int, int] = {}
    for leader in leaders(cluster.bootstrap, topic).values():
        by_leader[leader] = by_leader.get(leader, 0) + 1
    assert by_leader == {2: 2, 3: 2}, f"leaders of {topic}: {by_leader}"
    first = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(200)]
    produce_and_confirm(b2.bootstrap, topic, first, {"acks": "all"})

    # A broker-only node restarted is a learner already: it catches up and leads again.
    b3.restart()
    wait_until(lambda: sorted(admin(b2.bootstrap).list_topics(timeout=10).brokers) == [2, 3],
               timeout=30, message="broker 3 back in Metadata")
    wait_until(lambda: set(leaders(cluster.bootstrap, topic).values()) == {2, 3}, timeout=30,
               message="broker 3 leading its partitions again")
    second = [(f"k{i}".encode(), f"w{i}".encode()) for i in range(200)]
    produce_and_confirm(b3.bootstrap, topic, second, {"acks": "all"})
    got = consume(b2.bootstrap, topic, 4)
    assert sorted((r.key, r.value) for r in got) == sorted(first + second)


def test_roles_that_contradict_the_voters_are_refused_at_start(tmp_path, caudal_binary):
    """A broker-only node listed as a voter, and a controller-only node that is not, refuse to
    start, naming the setting and the fix."""
    voters = "1@127.0.0.1:19093"
    cases = [
        (1, "broker", "PLAINTEXT://127.0.0.1:0,CONTROLLER://127.0.0.1:0",
         "node.id 1 is in controller.quorum.voters"),
        (2, "controller", "CONTROLLER://127.0.0.1:0",
         "node.id 2 is not in controller.quorum.voters"),
    ]
    for node_id, roles, listen, expected in cases:
        out = subprocess.run(
            [str(caudal_binary), "serve", "--listen", listen,
             "--data-dir", str(tmp_path / f"refused-{node_id}"), "--node-id", str(node_id),
             "--controller.quorum.voters", voters, "--process.roles", roles],
            capture_output=True, text=True, timeout=30)
        assert out.returncode != 0, f"process.roles={roles} as node {node_id} started"
        assert expected in out.stderr and "process.roles" in out.stderr, out.stderr
