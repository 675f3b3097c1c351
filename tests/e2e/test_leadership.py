"""Operating partition leadership on three real `caudal` processes: preferred-leader elections
asked for with ElectLeaders (confluent-kafka, kafka-python and `caudal cluster elect-leaders`),
the controller's own preferred-leader balancing, eligible leader replicas (KIP-966) when the
whole ISR is gone, an unclean election when nothing else can lead, and DescribeLogDirs."""

from __future__ import annotations

import subprocess

from confluent_kafka import ElectionType, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from kafka.admin import KafkaAdminClient

from harness import caudal_bin
from support import admin, consume, produce_and_confirm, unique_topic, wait_until
from test_cluster_status import tables
from test_replication import FAST, create_replicated, log_bytes

PREFERRED_LEADER_NOT_AVAILABLE = 80
ELECTION_NOT_NEEDED = 84


def leadership(bootstrap: str, topic: str, partition: int = 0):
    """(leader, replicas in the controller's order, sorted ISR) as Metadata tells them."""
    p = admin(bootstrap).list_topics(topic, timeout=10).topics[topic].partitions[partition]
    return p.leader, list(p.replicas), sorted(p.isrs)


def elect_cli(bootstrap: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(caudal_bin()), "cluster", "--bootstrap", bootstrap,
                           "elect-leaders", *args], capture_output=True, text=True, timeout=60)


def move_leadership_away(cluster, topic: str) -> tuple[int, str]:
    """Kills the preferred leader of `topic`'s partition 0 and brings it back: it returns as a
    follower, in sync. Returns its id and a bootstrap list of every node."""
    leader, replicas, _ = leadership(cluster.bootstrap, topic)
    preferred = replicas[0]
    assert leader == preferred, "a new partition is led by its first replica"
    cluster.node(preferred).kill9()
    others = ",".join(n.bootstrap for n in cluster.nodes if n.node_id != preferred)
    wait_until(lambda: leadership(others, topic)[0] not in (-1, preferred), timeout=30,
               message="leadership moved off the killed preferred replica")
    cluster.node(preferred).restart()
    everyone = ",".join(n.bootstrap for n in cluster.nodes)
    wait_until(lambda: leadership(everyone, topic)[2] == [1, 2, 3], timeout=60,
               message="the preferred replica back in the ISR")
    return preferred, everyone


def test_a_preferred_election_gives_leadership_back_and_is_not_needed_twice(cluster_factory):
    cluster = cluster_factory(3, settings={**FAST, "auto.leader.rebalance.enable": "false"})
    topic = unique_topic("preferred")
    create_replicated(cluster.bootstrap, topic)
    preferred, everyone = move_leadership_away(cluster, topic)
    assert leadership(everyone, topic)[0] != preferred, "no balancing while it is disabled"

    # confluent-kafka: the preferred replica is back in the ISR, so it may lead again.
    a = admin(everyone)
    tp = TopicPartition(topic, 0)
    result = a.elect_leaders(ElectionType.PREFERRED, [tp]).result(timeout=30)
    assert list(result.values()) == [None], result
    wait_until(lambda: leadership(everyone, topic)[0] == preferred, timeout=20,
               message="the preferred replica leads again")
    result = a.elect_leaders(ElectionType.PREFERRED, [tp]).result(timeout=30)
    (error,) = result.values()
    assert error is not None and error.code() == KafkaError.ELECTION_NOT_NEEDED, result

    # kafka-python: an unknown partition is named as such.
    k = KafkaAdminClient(bootstrap_servers=everyone, request_timeout_ms=30000)
    try:
        response = k.elect_leaders(0, {topic: [0, 9]}, raise_errors=False)
    finally:
        k.close()
    codes = {p.partition_id: p.error_code
             for t in response.replica_election_results for p in t.partition_result}
    assert codes == {0: ELECTION_NOT_NEEDED, 9: 3}, codes  # 3: UNKNOWN_TOPIC_OR_PARTITION

    # The tool: every partition already has its preferred leader, so there is nothing to do.
    done = elect_cli(everyone)
    assert done.returncode == 0, done.stderr
    assert "already has the leader" in done.stdout, done.stdout


def test_the_controller_gives_leadership_back_by_itself(cluster_factory):
    cluster = cluster_factory(3, settings={**FAST, "leader.imbalance.check.interval.seconds": 1})
    topic = unique_topic("balanced")
    create_replicated(cluster.bootstrap, topic)
    preferred, everyone = move_leadership_away(cluster, topic)
    wait_until(lambda: leadership(everyone, topic)[0] == preferred, timeout=30,
               message="the controller moved leadership back to the preferred replica")
    messages = [(b"k", f"after-{i}".encode()) for i in range(50)]
    log = produce_and_confirm(everyone, topic, messages, {"acks": "all"})
    assert len(log.ok) == len(messages) and not log.failed, log.failed[:3]


def test_an_unclean_election_brings_back_a_partition_whose_isr_is_gone(cluster_factory):
    cluster = cluster_factory(3, settings={**FAST, "auto.leader.rebalance.enable": "false"})
    topic = unique_topic("unclean")
    a = admin(cluster.bootstrap)
    a.create_topics([NewTopic(topic, num_partitions=1, replica_assignment=[[2, 3]])],
                    request_timeout=15)[topic].result(timeout=20)
    wait_until(lambda: leadership(cluster.bootstrap, topic) == (2, [2, 3], [2, 3]), timeout=20,
               message="the topic on brokers 2 and 3, led by 2")
    first = [(b"k", f"first-{i}".encode()) for i in range(100)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, first, {"acks": "all"}).ok) == 100

    # Broker 3 goes: the ISR shrinks to 2, which takes writes 3 never sees.
    cluster.node(3).kill9()
    wait_until(lambda: leadership(cluster.bootstrap, topic)[2] == [2], timeout=30,
               message="broker 3 out of the ISR")
    lost = [(b"k", f"only-on-2-{i}".encode()) for i in range(100)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, lost, {"acks": "all"}).ok) == 100

    # Broker 2 goes too; broker 3 comes back, out of sync: the partition has no leader, and
    # a preferred election cannot help (broker 2 is down).
    cluster.node(2).kill9()
    cluster.node(3).restart()
    alive = ",".join(cluster.node(i).bootstrap for i in (1, 3))
    wait_until(lambda: leadership(alive, topic)[0] == -1, timeout=30,
               message="the partition without a leader")
    refused = elect_cli(alive, "--topic", topic)
    assert refused.returncode != 0 and "PreferredLeaderNotAvailable" in refused.stdout, \
        refused.stdout + refused.stderr

    # The operator chooses availability: broker 3 leads with what it has.
    elected = elect_cli(alive, "--election-type", "unclean", "--topic", topic, "--partition", "0")
    assert elected.returncode == 0, elected.stdout + elected.stderr
    assert "elected" in elected.stdout, elected.stdout
    wait_until(lambda: leadership(alive, topic) == (3, [2, 3], [3]), timeout=20,
               message="broker 3 leads alone")
    third = [(b"k", f"third-{i}".encode()) for i in range(100)]
    assert len(produce_and_confirm(alive, topic, third, {"acks": "all"}).ok) == 100
    assert [r.value for r in consume(alive, topic, 1)] == [v for _, v in first + third]

    # Broker 2 returns as a follower: it drops what only it had and takes the new leader's log.
    cluster.node(2).restart()
    everyone = ",".join(n.bootstrap for n in cluster.nodes)
    wait_until(lambda: leadership(everyone, topic)[2] == [2, 3], timeout=60,
               message="broker 2 back in the ISR")
    wanted = log_bytes(cluster.node(3).data_dir, topic)
    wait_until(lambda: log_bytes(cluster.node(2).data_dir, topic) == wanted, timeout=20,
               message="broker 2's replica equal to the new leader's")


def elr_column(bootstrap: str, topic: str) -> str:
    """The ELR cell of partition 0 in `caudal topic describe`."""
    described = subprocess.run([str(caudal_bin()), "topic", "--bootstrap", bootstrap,
                                "describe", topic], capture_output=True, text=True, timeout=30)
    assert described.returncode == 0, described.stderr
    (row,) = [r for r in tables(described.stdout)["PARTITION"] if r["PARTITION"] == "0"]
    return row["ELR"]


def test_an_eligible_leader_replica_brings_back_a_partition_whose_isr_crashed(cluster_factory):
    """KIP-966 on three brokers and a separate controller: with min.insync.replicas=2, the
    replica that leaves the ISR below that minimum holds everything acknowledged, and leads when
    the whole ISR has crashed; the replica that left earlier, missing acknowledged writes, never
    does. Nothing acknowledged is lost."""
    cluster = cluster_factory(4, settings={**FAST, "auto.leader.rebalance.enable": "false"},
                              roles=["controller", "broker", "broker", "broker"])
    brokers = lambda *ids: ",".join(cluster.node(i).bootstrap for i in ids)  # noqa: E731
    topic = unique_topic("elr")
    a = admin(cluster.bootstrap)
    a.create_topics([NewTopic(topic, num_partitions=1, replica_assignment=[[2, 3, 4]],
                              config={"min.insync.replicas": "2"})],
                    request_timeout=15)[topic].result(timeout=20)
    wait_until(lambda: leadership(cluster.bootstrap, topic) == (2, [2, 3, 4], [2, 3, 4]),
               timeout=20, message="the topic on brokers 2, 3 and 4, led by 2")
    first = [(b"k", f"first-{i}".encode()) for i in range(100)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, first, {"acks": "all"}).ok) == 100

    # Broker 4 crashes: the ISR is down to the minimum and takes writes 4 never sees.
    cluster.node(4).kill9()
    wait_until(lambda: leadership(brokers(2, 3), topic)[2] == [2, 3], timeout=30,
               message="broker 4 out of the ISR")
    second = [(b"k", f"second-{i}".encode()) for i in range(100)]
    assert len(produce_and_confirm(brokers(2, 3), topic, second, {"acks": "all"}).ok) == 100

    # Broker 3 crashes: below the minimum, nothing more is acknowledged, so 3 holds all that
    # was; it becomes an eligible leader replica.
    cluster.node(3).kill9()
    wait_until(lambda: leadership(brokers(2), topic)[2] == [2], timeout=30,
               message="broker 3 out of the ISR")
    # DescribeTopicPartitions (what `caudal topic describe` and Kafka's describeTopics ask)
    # shows it; Metadata has no field for it.
    described = elr_column(brokers(2), topic)
    assert described == "3", described
    refused: list = []
    p = Producer({"bootstrap.servers": brokers(2), "acks": "all", "message.timeout.ms": 3000})
    p.produce(topic, value=b"never", on_delivery=lambda err, msg: refused.append(err))
    p.flush(15)
    assert refused and refused[0] is not None, "a write was acknowledged below min.insync"

    # The last ISR member crashes too, and broker 4 comes back: when 2's session ends, the
    # controller finds no live ISR member or eligible replica, and 4, which lacks acknowledged
    # writes, is not elected.
    cluster.node(2).kill9()
    cluster.node(4).restart()
    wait_until(lambda: 4 in admin(brokers(4)).list_topics(timeout=10).brokers, timeout=30,
               message="broker 4 registered and unfenced")
    wait_until(lambda: leadership(brokers(4), topic)[0] != 2, timeout=30,
               message="broker 2 fenced")
    assert leadership(brokers(4), topic)[0] == -1, "a replica missing acknowledged writes leads"

    # Broker 3 comes back: eligible, it leads, with every acknowledged record.
    cluster.node(3).restart()
    wait_until(lambda: leadership(brokers(3, 4), topic)[0] == 3, timeout=30,
               message="broker 3, the eligible leader replica, leading")
    assert [r.value for r in consume(brokers(3, 4), topic, 1)] == [v for _, v in first + second]
    assert "an eligible leader replica, which holds everything committed, leads" in \
        cluster.node(1).log_text()

    # Broker 4 catches up from it and the ISR is back at the minimum: writes are taken again.
    wait_until(lambda: leadership(brokers(3, 4), topic)[2] == [3, 4], timeout=60,
               message="broker 4 back in the ISR")
    third = [(b"k", f"third-{i}".encode()) for i in range(100)]
    assert len(produce_and_confirm(brokers(3, 4), topic, third, {"acks": "all"}).ok) == 100
    cluster.node(2).restart()
    wait_until(lambda: leadership(cluster.bootstrap, topic)[2] == [2, 3, 4], timeout=60,
               message="broker 2 back in the ISR")
    assert elr_column(cluster.bootstrap, topic) == "", "the ELR empties at min.insync.replicas"
    assert [r.value for r in consume(cluster.bootstrap, topic, 1)] == \
        [v for _, v in first + second + third]


def test_describe_log_dirs_lists_each_brokers_replicas_and_space(cluster_factory):
    cluster = cluster_factory(3)
    topic = unique_topic("logdirs")
    create_replicated(cluster.bootstrap, topic, partitions=2)
    messages = [(b"k", b"x" * 1000) for _ in range(200)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, messages, {"acks": "all"}).ok) \
        == 200
    k = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=30000)
    try:
        def sizes() -> dict[int, list[int]]:
            out = {}
            for broker in k.describe_log_dirs(topic_partitions=[topic]):
                (log_dir,) = broker["log_dirs"]
                assert log_dir["error_code"] == 0, log_dir
                assert log_dir["total_bytes"] >= log_dir["usable_bytes"] > 0, log_dir
                (t,) = [t for t in log_dir["topics"] if t["name"] == topic]
                out[broker["broker"]] = sorted(p["partition_size"] for p in t["partitions"])
            return out
        # Every broker holds both partitions; together they hold the 200 KB sent, three times.
        wait_until(lambda: len(sizes()) == 3 and all(len(s) == 2 for s in sizes().values())
                   and len({sum(s) for s in sizes().values()}) == 1, timeout=20,
                   message="equal replicas on every broker")
        assert all(sum(s) > 200 * 1000 for s in sizes().values()), sizes()
    finally:
        k.close()
