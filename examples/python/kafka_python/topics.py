"""Shared helpers for the kafka-python examples.

Makes ../config.py importable, wraps its serializer functions in the
Serializer/Deserializer classes kafka-python expects, and creates topics with
kafka-python's admin client.

    from topics import BOOTSTRAP, StrSerializer, ensure_topic
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka.serializer import Deserializer, Serializer  # noqa: E402

from config import (BOOTSTRAP, deserialize_json, deserialize_str,  # noqa: E402,F401
                    serialize_json, serialize_str)


class StrSerializer(Serializer):
    def serialize(self, topic, value):
        return serialize_str(value)


class StrDeserializer(Deserializer):
    def deserialize(self, topic, data):
        return deserialize_str(data)


class JsonSerializer(Serializer):
    def serialize(self, topic, value):
        return serialize_json(value)


class JsonDeserializer(Deserializer):
    def deserialize(self, topic, data):
        return deserialize_json(data)


def ensure_topic(name: str, partitions: int = 1, timeout: float = 20.0) -> int:
    """Create topic `name` unless it exists; return its partition count."""
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        if name not in admin.list_topics():
            try:
                admin.create_topics([NewTopic(name, num_partitions=partitions,
                                              replication_factor=1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    probe = KafkaConsumer(bootstrap_servers=BOOTSTRAP)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = probe.partitions_for_topic(name)
            if found:
                return len(found)
            time.sleep(0.1)
    finally:
        probe.close()
    raise RuntimeError(f"topic {name!r} did not appear in metadata within {timeout:.0f}s")
