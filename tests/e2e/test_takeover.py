"""A data directory written by the previous release (tests/fixtures/previous-release-data.tar.gz,
made by scripts/make-takeover-fixture) is served with every topic, id, config, offset, record
and committed group offset it holds, with or without its meta.properties (older releases wrote
none)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicCollection
from confluent_kafka.admin import ConfigResource, ResourceType

from support import admin, by_partition, consume, watermarks

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "previous-release-data.tar.gz"


@pytest.mark.parametrize("with_meta_properties", [True, False])
def test_a_previous_release_directory_is_served_whole(broker_factory, tmp_path,
                                                       with_meta_properties):
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    data = tmp_path / "data"
    expected = json.loads((data / "expected.json").read_text())
    (data / "expected.json").unlink()
    if not with_meta_properties:
        (data / "meta.properties").unlink()

    b = broker_factory(data_dir=data)
    a = admin(b.bootstrap)
    assert a.describe_cluster(request_timeout=10).result(timeout=15).cluster_id \
        == expected["cluster_id"]
    described = a.describe_topics(TopicCollection(list(expected["topics"])))
    for name, want in expected["topics"].items():
        info = described[name].result(timeout=15)
        assert str(info.topic_id) == want["topic_id"], name
        assert len(info.partitions) == want["partitions"], name
        for p, offsets in want["offsets"].items():
            assert watermarks(b.bootstrap, name, int(p)) \
                == (offsets["log_start"], offsets["log_end"]), f"{name}-{p}"
        resource = ConfigResource(ResourceType.TOPIC, name)
        configs = a.describe_configs([resource])[resource].result(timeout=15)
        for key, value in want["configs"].items():
            assert configs[key].value == value, f"{name} {key}"

    orders = by_partition(consume(b.bootstrap, "orders", range(3)))
    for p in range(3):
        values = [r.value for r in orders[p]]
        want = [f"order-{i}".encode() for i in range(30) if i % 3 == p]
        if p == 0:
            want += [f"retry-safe-{i}".encode() for i in range(5)]
        assert values == want, f"orders-{p}"
    assert len(consume(b.bootstrap, "events", [0])) == 200

    for group, topics in expected["groups"].items():
        request = ConsumerGroupTopicPartitions(group)
        result = a.list_consumer_group_offsets([request])[group].result(timeout=15)
        got = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
        for topic, partitions in topics.items():
            for p, offset in partitions.items():
                assert got.get((topic, int(p))) == offset, f"{group} {topic}-{p}: {got}"

    # The directory now has its identity written, with the cluster id it always had.
    props = (data / "meta.properties").read_text()
    assert f"cluster.id={expected['cluster_id']}" in props
    assert b.stop() == 0
