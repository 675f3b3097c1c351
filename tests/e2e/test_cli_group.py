"""`caudal group`: list, describe with lag, reset offsets and delete, against a real broker."""

import subprocess

from confluent_kafka import Consumer, TopicPartition

from harness import caudal_bin
from support import create_topic, produce_and_confirm, unique_topic, wait_until


def cli(broker, *args, check=True):
    r = subprocess.run([str(caudal_bin()), "group", "--bootstrap", broker.bootstrap, *args],
                       capture_output=True, text=True, timeout=30)
    if check:
        assert r.returncode == 0, f"caudal group {args} failed: {r.stderr}"
    return r


def table(output: str) -> list[dict[str, str]]:
    """Parses the first aligned table in `output` into dicts keyed by the header."""
    lines = [l for l in output.splitlines()]
    start = next(i for i, l in enumerate(lines) if l.startswith("TOPIC") or l.startswith("GROUP"))
    header = lines[start].split()
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(dict(zip(header, line.split())))
    return rows


def consume_and_commit(broker, topic, group, count):
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    def step():
        nonlocal got
        m = c.poll(0.2)
        if m is not None and not m.error():
            got += 1
        return got >= count
    wait_until(step, timeout=30, message=f"{count} messages consumed")
    c.commit(asynchronous=False)
    return c


def test_describe_shows_committed_offsets_and_lag(broker_factory):
    broker = broker_factory({"group.initial.rebalance.delay.ms": 0})
    topic = unique_topic("lag")
    create_topic(broker.bootstrap, topic, partitions=1)
    produce_and_confirm(broker.bootstrap, topic, [(None, f"m{i}".encode()) for i in range(10)])
    c = consume_and_commit(broker, topic, "lagging", 4)
    try:
        out = cli(broker, "describe", "lagging").stdout
        assert "Stable with 1 member(s)" in out, out
        rows = table(out)
        assert len(rows) == 1, out
        row = rows[0]
        assert row["TOPIC"] == topic and row["PARTITION"] == "0"
        committed = int(row["CURRENT-OFFSET"])
        assert 4 <= committed <= 10, out
        assert row["LOG-END-OFFSET"] == "10"
        assert int(row["LAG"]) == 10 - committed
        assert row["CONSUMER-ID"] != "-", "the owning member is shown"
        listed = {r["GROUP"]: r["STATE"] for r in table(cli(broker, "list").stdout)}
        assert listed.get("lagging") == "Stable"
        # An active group can be neither deleted nor reset.
        r = cli(broker, "delete", "lagging", check=False)
        assert r.returncode != 0 and "NON_EMPTY_GROUP" in r.stderr
        r = cli(broker, "reset-offsets", "lagging", "--topic", topic, "--to-earliest", "--execute", check=False)
        assert r.returncode != 0 and "active member" in r.stderr
    finally:
        c.close()


def test_reset_offsets_dry_run_then_execute_then_delete(broker_factory):
    broker = broker_factory({"group.initial.rebalance.delay.ms": 0})
    topic = unique_topic("reset")
    create_topic(broker.bootstrap, topic, partitions=2)
    produce_and_confirm(broker.bootstrap, topic, [(None, b"x")] * 20)
    consume_and_commit(broker, topic, "resettable", 20).close()
    wait_until(lambda: {r["GROUP"]: r["STATE"] for r in table(cli(broker, "list").stdout)}.get("resettable") == "Empty",
               message="the group is empty after its consumer closed")
    before = {r["PARTITION"]: r["CURRENT-OFFSET"] for r in table(cli(broker, "describe", "resettable").stdout)}
    dry = cli(broker, "reset-offsets", "resettable", "--topic", topic, "--to-earliest").stdout
    assert "dry run" in dry and all(r["NEW-OFFSET"] == "0" for r in table(dry))
    assert {r["PARTITION"]: r["CURRENT-OFFSET"] for r in table(cli(broker, "describe", "resettable").stdout)} == before
    cli(broker, "reset-offsets", "resettable", "--topic", topic, "--to-earliest", "--execute")
    after = table(cli(broker, "describe", "resettable").stdout)
    assert all(r["CURRENT-OFFSET"] == "0" for r in after) and sum(int(r["LAG"]) for r in after) == 20
    # A consumer of the group now starts again from the beginning.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "resettable", "enable.auto.commit": False})
    committed = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    assert [tp.offset for tp in committed] == [0, 0]
    c.close()
    cli(broker, "delete", "resettable")
    r = cli(broker, "describe", "resettable", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr
