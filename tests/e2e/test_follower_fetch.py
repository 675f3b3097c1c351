"""Consumers fetching from the closest replica (KIP-392) on three real `caudal` processes, each in
its own rack: with `replica.selector.class` rack-aware, a leader sends a consumer whose
`client.rack` is another broker's to that in-sync follower, which serves it up to its high
watermark. librdkafka's statistics say which broker each partition is fetched from."""

from __future__ import annotations

import json

from confluent_kafka import Consumer

from support import RDKAFKA_LOG, produce_and_confirm, unique_topic, wait_until
from test_leadership import leadership
from test_replication import create_replicated

RACK_AWARE = {
    "broker.rack": lambda node_id: f"rack-{node_id}",
    "replica.selector.class": "org.apache.kafka.common.replica.RackAwareReplicaSelector",
}


def consume_noting_broker(bootstrap: str, topic: str, count: int, rack: str | None):
    """Reads `count` records of partition 0 from the beginning; returns their values and the
    broker librdkafka fetched them from at the end, from its statistics."""
    fetched_from: list[int] = []

    def stats(text: str) -> None:
        for t in json.loads(text).get("topics", {}).values():
            p = t.get("partitions", {}).get("0")
            if p is not None and p.get("broker", -1) >= 0:
                fetched_from.append(p["broker"])

    conf = {"bootstrap.servers": bootstrap, "group.id": unique_topic("g"),
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "statistics.interval.ms": 200, "stats_cb": stats, "logger": RDKAFKA_LOG}
    if rack is not None:
        conf["client.rack"] = rack
    c = Consumer(conf)
    values = []
    try:
        c.subscribe([topic])
        def read() -> bool:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                values.append(m.value())
            return len(values) >= count
        wait_until(read, timeout=30, interval=0, message=f"{count} records read")
        # One more statistics report after the last record.
        seen = len(fetched_from)
        wait_until(lambda: c.poll(0.2) is None and len(fetched_from) > seen, timeout=10,
                   message="librdkafka statistics")
    finally:
        c.close()
    return values, fetched_from[-1]


def test_a_consumer_reads_from_the_in_sync_replica_in_its_rack(cluster_factory):
    cluster = cluster_factory(3, settings=RACK_AWARE)
    topic = unique_topic("closest")
    create_replicated(cluster.bootstrap, topic)
    messages = [(b"k", f"v{i}".encode()) for i in range(200)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, messages, {"acks": "all"}).ok) \
        == 200
    leader, replicas, _ = leadership(cluster.bootstrap, topic)
    wait_until(lambda: leadership(cluster.bootstrap, topic)[2] == [1, 2, 3], timeout=20,
               message="every replica in sync")
    follower = next(r for r in replicas if r != leader)
    wanted = [v for _, v in messages]

    values, broker = consume_noting_broker(cluster.bootstrap, topic, 200, f"rack-{follower}")
    assert values == wanted
    assert broker == follower, f"read from {broker}, not the follower {follower} in rack-{follower}"

    # A consumer in the leader's rack, or in none, reads from the leader.
    for rack in (f"rack-{leader}", None):
        values, broker = consume_noting_broker(cluster.bootstrap, topic, 200, rack)
        assert values == wanted and broker == leader, (rack, broker)


def test_without_a_replica_selector_every_consumer_reads_from_the_leader(cluster_factory):
    cluster = cluster_factory(3, settings={"broker.rack": RACK_AWARE["broker.rack"]})
    topic = unique_topic("leader-only")
    create_replicated(cluster.bootstrap, topic)
    messages = [(b"k", f"v{i}".encode()) for i in range(50)]
    assert len(produce_and_confirm(cluster.bootstrap, topic, messages, {"acks": "all"}).ok) == 50
    leader, replicas, _ = leadership(cluster.bootstrap, topic)
    follower = next(r for r in replicas if r != leader)
    values, broker = consume_noting_broker(cluster.bootstrap, topic, 50, f"rack-{follower}")
    assert values == [v for _, v in messages] and broker == leader, broker
