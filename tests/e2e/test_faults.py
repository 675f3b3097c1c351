"""Faults on a three-node cluster of real `caudal` processes, each under continuous writes
(acks=all, idempotent) and a consumer group reading. After each fault heals, `checker.check`
compares the whole history with the final logs: nothing acknowledged lost, nothing duplicated or
reordered, no consumer read past committed data, no replica diverging from its leader. Each
scenario's figures are printed at the end of the run (and in its failure)."""

from __future__ import annotations

import signal

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import NewTopic

import wire
from checker import Workload, check, partition_states
from support import admin, unique_topic, wait_until

# A short broker session, so that each fault is noticed in seconds; the rules are the same.
SETTINGS = {
    "broker.session.timeout.ms": 3000,
    "broker.heartbeat.interval.ms": 500,
    "replica.lag.time.max.ms": 5000,
    "group.initial.rebalance.delay.ms": 0,
}
PARTITIONS = 3
# Each scenario is bounded by its own waits; together they can outlast the suite's default.
pytestmark = pytest.mark.timeout(300)
# How a write to a leader without its followers ends: given up by the client or by the broker,
# or refused for want of in-sync replicas.
WAITED_IN_VAIN = {KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS,
                  KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND}
# Workloads of the running test, abandoned at its teardown (the `workloads` fixture).
STARTED: list[Workload] = []


@pytest.fixture(autouse=True)
def workloads():
    """The scenario's workload, stopped at teardown should the test fail before it does."""
    yield STARTED
    for w in STARTED:
        w.abandon()
    STARTED.clear()


def start(cluster_factory, name: str, network=None):
    cluster = cluster_factory(3, settings=SETTINGS, network=network)
    topic = unique_topic(name)
    a = admin(cluster.bootstrap)
    fs = a.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3,
                                   config={"min.insync.replicas": "2"})], request_timeout=15)
    fs[topic].result(timeout=20)
    wait_until(lambda: all(len(isr) == 3 for _, _, isr in
                           partition_states(cluster.bootstrap, topic).values())
               and len(partition_states(cluster.bootstrap, topic)) == PARTITIONS,
               message=f"{topic} with three in-sync replicas per partition")
    workload = Workload(cluster.bootstrap, topic, PARTITIONS).start()
    STARTED.append(workload)
    workload.wait_acked(500, what="before the fault")
    return cluster, workload


def finish(cluster, workload: Workload, name: str, figures) -> None:
    workload.wait_acked(500, timeout=90, what="after the fault healed")
    report = check(cluster, workload)
    figures.append((name, report.summary()))
    problems = report.problems()
    assert not problems, f"{name}: {report.summary()}\n" + "\n".join(problems)
    assert report.acknowledged >= 1000


def leader_of(bootstrap: str, topic: str, partition: int = 0) -> int:
    return partition_states(bootstrap, topic)[partition][0]


def others(cluster, node_id: int) -> str:
    return ",".join(n.bootstrap for n in cluster.nodes if n.node_id != node_id)


def wait_new_leader(cluster, topic: str, old: int, partition: int = 0) -> int:
    bootstrap = others(cluster, old)
    return wait_until(lambda: (lambda l: l if l not in (-1, old) else None)(
        leader_of(bootstrap, topic, partition)), timeout=30,
        message=f"a new leader of partition {partition} other than node {old}")


def test_kill9_the_leader_and_bring_it_back(cluster_factory, fault_figures):
    cluster, workload = start(cluster_factory, "kill-leader")
    victim = leader_of(cluster.bootstrap, workload.topic)
    cluster.node(victim).kill9()
    wait_new_leader(cluster, workload.topic, victim)
    workload.wait_acked(500, timeout=90, what="with the old leader down")
    cluster.node(victim).start()
    finish(cluster, workload, "kill -9 a leader, restart it", fault_figures)


def test_kill9_the_active_controller(cluster_factory, fault_figures):
    cluster, workload = start(cluster_factory, "kill-controller")

    def controller(node) -> int:
        with wire.Connection("127.0.0.1", node.port) as conn:
            return wire.describe_cluster_controller(conn)
    victim = controller(cluster.nodes[0])
    cluster.node(victim).kill9()
    survivor = next(n for n in cluster.nodes if n.node_id != victim)
    wait_until(lambda: controller(survivor) not in (-1, victim), timeout=30,
               message="a new active controller")
    workload.wait_acked(500, timeout=90, what="with the old controller down")
    cluster.node(victim).start()
    finish(cluster, workload, "kill -9 the active controller", fault_figures)


def test_a_paused_leader_acknowledges_nothing_the_new_leader_lacks(cluster_factory,
                                                                    fault_figures):
    cluster, workload = start(cluster_factory, "sigstop-leader")
    victim = cluster.node(leader_of(cluster.bootstrap, workload.topic))
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        # Paused past its session: the controller fences it and elects new leaders, while
        # clients still hold connections to the paused process.
        wait_new_leader(cluster, workload.topic, victim.node_id)
        workload.wait_acked(500, timeout=90, what="with the old leader paused")
    finally:
        victim.proc.send_signal(signal.SIGCONT)
    finish(cluster, workload, "SIGSTOP a leader past its session, SIGCONT", fault_figures)


def test_a_broker_cut_off_from_its_peers_acknowledges_nothing_alone(network, cluster_factory,
                                                                     fault_figures):
    cluster, workload = start(cluster_factory, "isolated", network)
    topic = workload.topic
    victim = leader_of(cluster.bootstrap, topic)
    led = [p for p, (leader, _, _) in partition_states(cluster.bootstrap, topic).items()
           if leader == victim]
    network.cut(victim)
    try:
        # The other two fence it and elect new leaders; clients still reach it.
        wait_new_leader(cluster, topic, victim)
        workload.wait_acked(500, timeout=90, what="with a broker cut off")
        # Asked directly, the cut-off broker still takes itself for the leader, but with
        # min.insync.replicas=2 it cannot acknowledge a write with acks=all alone. The request
        # goes over one connection to it: a client library would find the new leader through
        # the other brokers and get its write acknowledged there, which proves nothing here.
        node = cluster.node(victim)
        with wire.Connection(node.host, node.port, timeout=20) as conn:
            answer = wire.produce(conn, topic, led[0], wire.build_batch([b"-1"]), version=8,
                                  timeout_ms=5000)
        assert answer.error_code != 0, \
            f"a broker cut off from its peers acknowledged a write alone: {answer}"
        # It waits for followers that never come: the write times out (or, had the ISR
        # shrunk, is refused); any other error would not show what this test is about.
        assert answer.error_code in WAITED_IN_VAIN, f"unexpected answer: {answer}"
    finally:
        network.heal(victim)
    finish(cluster, workload, "one broker cut off from the other two, then back",
           fault_figures)


def test_a_rolling_restart_under_load(cluster_factory, fault_figures):
    cluster, workload = start(cluster_factory, "rolling")
    for node in cluster.nodes:
        assert node.stop() == 0, f"node {node.node_id} did not stop cleanly"
        node.start()
        wait_until(lambda: all(len(isr) == 3 for _, _, isr in
                               partition_states(cluster.bootstrap, workload.topic).values()),
                   timeout=60, interval=0.5, message=f"node {node.node_id} back in every ISR")
        workload.wait_acked(200, timeout=60, what=f"after node {node.node_id} returned")
    finish(cluster, workload, "rolling restart of all three", fault_figures)
    # Each node handed its leaderships over before it stopped (controlled shutdown): the
    # producer retried through every move and no write failed.
    assert not workload.history.failed, list(workload.history.failed.items())[:3]


def test_kill9_all_three_at_once(cluster_factory, fault_figures):
    cluster, workload = start(cluster_factory, "kill-all")
    for node in cluster.nodes:
        node.proc.kill()
    for node in cluster.nodes:
        node.kill9()
    cluster.start()
    finish(cluster, workload, "kill -9 all three at once, restart", fault_figures)


@pytest.fixture
def fault_figures(request):
    """Collects each scenario's figures for the run's summary (conftest prints them)."""
    figures: list[tuple[str, str]] = []
    yield figures
    request.config._caudal_fault_figures = (
        getattr(request.config, "_caudal_fault_figures", []) + figures)
