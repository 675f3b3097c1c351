"""Shared settings and helpers for the Caudal Python examples.

Every example imports this module, so the broker address is configured in one
place:

    KAFKA_BOOTSTRAP=127.0.0.1:9092 python producer_text.py

What it provides:

* BOOTSTRAP: the bootstrap servers (env KAFKA_BOOTSTRAP, default localhost:9092).
  A Kafka client only needs one reachable broker here; it learns the rest of
  the cluster (with Caudal: the single broker) from the Metadata response.
* Serializers and deserializers. Kafka stores keys and values as plain bytes;
  turning objects into bytes and back is the client's job.
* ensure_topic(): create a topic with a given partition count if it does not
  exist yet, and wait until the broker reports it in its metadata.

Only ensure_topic() needs confluent-kafka; the kafka-python examples use the
rest of this module without it.
"""

from __future__ import annotations

import json
import os
import time

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "localhost:9092")


# --- serializers -----------------------------------------------------------

def serialize_str(text: str | None) -> bytes | None:
    """str -> UTF-8 bytes (None stays None: a record may have no key)."""
    return None if text is None else text.encode("utf-8")


def deserialize_str(data: bytes | None) -> str | None:
    """UTF-8 bytes -> str. Raises UnicodeDecodeError on bytes that are not UTF-8."""
    return None if data is None else data.decode("utf-8")


def serialize_json(obj) -> bytes:
    """Any JSON-compatible object -> compact UTF-8 JSON bytes."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def deserialize_json(data: bytes | None):
    """UTF-8 JSON bytes -> object. Raises ValueError on anything that is not JSON."""
    if data is None:
        return None
    return json.loads(data.decode("utf-8"))


# --- topics ----------------------------------------------------------------

def ensure_topic(name: str, partitions: int = 1, bootstrap: str | None = None,
                 timeout: float = 20.0) -> int:
    """Create topic `name` with `partitions` partitions unless it exists.

    Returns the topic's partition count as the broker reports it (an existing
    topic keeps the count it was created with). Raises RuntimeError if the
    broker cannot be reached or refuses the topic within `timeout` seconds.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap or BOOTSTRAP})
    deadline = time.monotonic() + timeout

    def current_count() -> int | None:
        md = admin.list_topics(timeout=max(0.5, deadline - time.monotonic()))
        t = md.topics.get(name)
        if t is None or t.error is not None:
            return None
        return len(t.partitions)

    try:
        count = current_count()
        if count is not None:
            return count
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            request_timeout=timeout)
        try:
            futures[name].result(timeout=timeout)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        # Creation is acknowledged before every client sees it in metadata;
        # wait until it does so producers and consumers find the partitions.
        while time.monotonic() < deadline:
            count = current_count()
            if count is not None:
                return count
            time.sleep(0.1)
    except KafkaException as e:
        raise RuntimeError(f"could not create topic {name!r} on {bootstrap or BOOTSTRAP}: "
                           f"{e.args[0].str()}") from e
    raise RuntimeError(f"topic {name!r} did not appear in metadata within {timeout:.0f}s")
