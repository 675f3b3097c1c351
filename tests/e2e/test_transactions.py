"""Transactions with real clients: a transactional producer's commits are read by
read_committed consumers and its aborts are not, an open transaction holds back what
read_committed consumers see, a second producer with the same transactional id fences the
first, and offsets sent to a transaction count only once it commits."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from confluent_kafka.admin import NewTopic

import wire
from harness import REPO_ROOT, caudal_bin
from support import (RDKAFKA_LOG, admin, consume, create_topic, unique_topic, wait_until,
                     watermarks)

EXAMPLES = REPO_ROOT / "examples" / "python"
INVALID_PRODUCER_ID_MAPPING = 49


def txn_producer(bootstrap: str, txn_id: str, **conf) -> Producer:
    base = {"bootstrap.servers": bootstrap, "transactional.id": txn_id, "logger": RDKAFKA_LOG}
    base.update(conf)
    p = Producer(base)
    p.init_transactions(30)
    return p


def values(bootstrap, topic, partitions=1, **conf):
    return [r.value for r in consume(bootstrap, topic, range(partitions), **conf)]


def test_committed_records_are_read_and_aborted_ones_only_read_uncommitted(broker):
    topic = unique_topic("txn")
    create_topic(broker.bootstrap, topic, partitions=2)
    p = txn_producer(broker.bootstrap, unique_topic("app"))
    p.begin_transaction()
    for i in range(4):
        p.produce(topic, f"committed {i}".encode(), partition=i % 2)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(4):
        p.produce(topic, f"aborted {i}".encode(), partition=i % 2)
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, b"committed after the abort", partition=0)
    p.commit_transaction(30)

    committed = values(broker.bootstrap, topic, 2, **{"isolation.level": "read_committed"})
    assert sorted(committed) == sorted(
        [f"committed {i}".encode() for i in range(4)] + [b"committed after the abort"])
    everything = values(broker.bootstrap, topic, 2, **{"isolation.level": "read_uncommitted"})
    assert sorted(everything) == sorted(
        committed + [f"aborted {i}".encode() for i in range(4)])


def test_an_open_transaction_holds_back_read_committed_consumers(broker):
    topic = unique_topic("txn-open")
    create_topic(broker.bootstrap, topic)
    p = txn_producer(broker.bootstrap, unique_topic("app"))
    p.begin_transaction()
    p.produce(topic, b"undecided")
    p.flush(30)
    # The records are there (read_uncommitted sees them) but not stable. (librdkafka's own
    # default is read_committed.)
    assert values(broker.bootstrap, topic, **{"isolation.level": "read_uncommitted"}) == [
        b"undecided"]
    assert values(broker.bootstrap, topic, **{"isolation.level": "read_committed"}) == []
    p.commit_transaction(30)
    assert values(broker.bootstrap, topic, **{"isolation.level": "read_committed"}) == [
        b"undecided"]


def test_a_second_producer_with_the_same_id_fences_the_first_and_aborts_its_transaction(broker):
    topic = unique_topic("txn-zombie")
    create_topic(broker.bootstrap, topic)
    txn_id = unique_topic("app")
    zombie = txn_producer(broker.bootstrap, txn_id)
    zombie.begin_transaction()
    zombie.produce(topic, b"from the zombie")
    zombie.flush(30)
    successor = txn_producer(broker.bootstrap, txn_id)
    with pytest.raises(KafkaException) as fenced:
        zombie.commit_transaction(30)
    assert fenced.value.args[0].fatal(), fenced.value
    successor.begin_transaction()
    successor.produce(topic, b"from the successor")
    successor.commit_transaction(30)
    assert values(broker.bootstrap, topic, **{"isolation.level": "read_committed"}) == [
        b"from the successor"]


def test_offsets_sent_to_a_transaction_count_only_when_it_commits(broker):
    src, dst = unique_topic("txn-in"), unique_topic("txn-out")
    create_topic(broker.bootstrap, src)
    create_topic(broker.bootstrap, dst)
    plain = Producer({"bootstrap.servers": broker.bootstrap, "logger": RDKAFKA_LOG})
    for i in range(10):
        plain.produce(src, f"in {i}".encode())
    plain.flush(30)
    group = unique_topic("pipeline")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed", "logger": RDKAFKA_LOG})
    p = txn_producer(broker.bootstrap, unique_topic("pipeline-app"))
    try:
        c.subscribe([src])
        inputs = []
        deadline = time.monotonic() + 30
        while len(inputs) < 10 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                inputs.append(m.value())
        assert len(inputs) == 10

        def transform_and_send(commit: bool) -> None:
            p.begin_transaction()
            for v in inputs:
                p.produce(dst, v.upper())
            p.send_offsets_to_transaction(c.position(c.assignment()),
                                          c.consumer_group_metadata(), 30)
            if commit:
                p.commit_transaction(30)
            else:
                p.abort_transaction(30)

        def committed() -> int:
            return c.committed([TopicPartition(src, 0)], timeout=10)[0].offset

        transform_and_send(commit=False)
        assert committed() < 0, "an aborted transaction's offsets do not count"
        transform_and_send(commit=True)
        assert committed() == 10
    finally:
        c.close()
    assert values(broker.bootstrap, dst, **{"isolation.level": "read_committed"}) == [
        v.upper() for v in inputs]


def test_kafka_python_commits_and_aborts(broker):
    from kafka import KafkaConsumer, KafkaProducer

    topic = unique_topic("txn-kp")
    create_topic(broker.bootstrap, topic)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=unique_topic("kp"))
    try:
        p.init_transactions()
        p.begin_transaction()
        p.send(topic, b"kept")
        p.commit_transaction()
        p.begin_transaction()
        p.send(topic, b"dropped")
        p.flush()
        p.abort_transaction()
    finally:
        p.close()
    seen = {}
    for level in ("read_committed", "read_uncommitted"):
        c = KafkaConsumer(bootstrap_servers=broker.bootstrap, isolation_level=level,
                          auto_offset_reset="earliest", enable_auto_commit=False,
                          consumer_timeout_ms=3000)
        try:
            c.assign([kafka_tp(topic)])
            seen[level] = [m.value for m in c]
        finally:
            c.close()
    assert seen["read_committed"] == [b"kept"]
    assert seen["read_uncommitted"] == [b"kept", b"dropped"]


def kafka_tp(topic: str):
    from kafka import TopicPartition as KafkaTopicPartition
    return KafkaTopicPartition(topic, 0)


def test_a_transaction_across_brokers_commits_and_aborts_everywhere(cluster_factory):
    cluster = cluster_factory(3)
    topic = unique_topic("txn-cluster")
    # Partitions led by every broker, and a coordinator on one of them: the others get their
    # markers as WriteTxnMarkers.
    a = admin(cluster.bootstrap)
    a.create_topics([NewTopic(topic, 6, 3)])[topic].result(timeout=30)
    p = txn_producer(cluster.bootstrap, unique_topic("spread"))
    p.begin_transaction()
    for i in range(6):
        p.produce(topic, f"committed {i}".encode(), partition=i)
    p.commit_transaction(60)
    p.begin_transaction()
    for i in range(6):
        p.produce(topic, f"aborted {i}".encode(), partition=i)
    p.flush(60)
    p.abort_transaction(60)
    committed = values(cluster.bootstrap, topic, 6, timeout=60,
                       **{"isolation.level": "read_committed"})
    assert sorted(committed) == [f"committed {i}".encode() for i in range(6)]
    everything = values(cluster.bootstrap, topic, 6, timeout=60,
                        **{"isolation.level": "read_uncommitted"})
    assert len(everything) == 12


def caudal_transactions(broker, *args, check=True):
    r = subprocess.run([str(caudal_bin()), "transactions", "--bootstrap", broker.bootstrap,
                        *args], capture_output=True, text=True, timeout=30)
    if check:
        assert r.returncode == 0, f"caudal transactions {args} failed: {r.stderr}"
    return r


def rows(output: str) -> list[dict[str, str]]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("TRANSACTIONAL-ID"))
    header = lines[start].split()
    return [dict(zip(header, line.split())) for line in lines[start + 2:] if line.strip()]


def test_caudal_transactions_lists_and_describes_open_and_finished_transactions(broker):
    topic = unique_topic("txn-cli")
    create_topic(broker.bootstrap, topic, partitions=2)
    txn_id = unique_topic("cli-app")
    p = txn_producer(broker.bootstrap, txn_id)
    p.begin_transaction()
    p.produce(topic, b"open", partition=1)
    p.flush(30)
    listed = rows(caudal_transactions(broker, "list").stdout)
    assert [(r["TRANSACTIONAL-ID"], r["STATE"]) for r in listed] == [(txn_id, "Ongoing")]
    out = caudal_transactions(broker, "list", "--state", "CompleteCommit").stdout
    assert "no transactions" in out
    described = rows(caudal_transactions(broker, "describe", txn_id).stdout)[0]
    assert described["STATE"] == "Ongoing"
    assert described["PARTITIONS"] == f"{topic}-1"
    assert described["TIMEOUT-MS"] == "60000"
    p.commit_transaction(30)
    described = rows(caudal_transactions(broker, "describe", txn_id).stdout)[0]
    assert (described["STATE"], described["PARTITIONS"]) == ("CompleteCommit", "-")
    bad = caudal_transactions(broker, "list", "--state", "Bogus", check=False)
    assert bad.returncode != 0 and "Bogus" in bad.stderr
    missing = caudal_transactions(broker, "describe", "never-used", check=False)
    assert missing.returncode != 0 and "TransactionalIdNotFound" in missing.stderr
    # ListTransactions v2: ids the pattern matches whole.
    txn_producer(broker.bootstrap, f"{txn_id}-other")

    def ids(*args):
        return sorted(r["TRANSACTIONAL-ID"] for r in
                      rows(caudal_transactions(broker, "list", *args).stdout))
    assert ids() == [txn_id, f"{txn_id}-other"]
    assert ids("--id-pattern", f"{txn_id}-.*") == [f"{txn_id}-other"]
    assert ids("--id-pattern", "cli-app-[0-9a-f]+") == [txn_id]
    assert "no transactions" in caudal_transactions(broker, "list", "--id-pattern",
                                                    txn_id[:-1]).stdout
    bad = caudal_transactions(broker, "list", "--id-pattern", "(", check=False)
    assert bad.returncode != 0 and "is not a regular expression" in bad.stderr


def test_a_transaction_open_past_its_timeout_is_aborted_by_the_coordinator(broker_factory):
    broker = broker_factory({"transaction.abort.timed.out.transaction.cleanup.interval.ms": 100})
    topic = unique_topic("txn-timeout")
    create_topic(broker.bootstrap, topic)
    p = txn_producer(broker.bootstrap, unique_topic("slow"), **{"transaction.timeout.ms": 1000})
    p.begin_transaction()
    p.produce(topic, b"never committed")
    p.flush(30)
    # The coordinator aborts it: its marker lets read_committed consumers past it, and they
    # never see its record.
    deadline = time.monotonic() + 30
    while True:
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("w"),
                      "isolation.level": "read_committed", "logger": RDKAFKA_LOG})
        try:
            low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10,
                                                cached=False)
        finally:
            c.close()
        if high == 2:  # the record and the abort marker: stable up to the end
            break
        assert time.monotonic() < deadline, f"the open transaction was never aborted ({high})"
        time.sleep(0.1)
    assert values(broker.bootstrap, topic, **{"isolation.level": "read_committed"}) == []
    with pytest.raises(KafkaException):
        p.commit_transaction(30)


# --------------------------------------------------------------------------
# Faults: the course's pipeline through killed brokers
# --------------------------------------------------------------------------

# A killed broker is fenced after a short session, so leadership moves within seconds.
FAST = {"broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 500}


def test_a_pipeline_stays_exactly_once_while_its_brokers_are_killed(cluster_factory):
    """examples/python/exactly_once_pipeline.py runs on three brokers while the test kill -9s
    the broker of its transaction coordinator, then the leader of an output partition, each
    mid-run (the example kills its own worker too): every order is still invoiced once."""
    cluster = cluster_factory(3, settings=FAST)
    topic = unique_topic("eo-pipeline")
    target = f"{topic}-invoices"
    a = admin(cluster.bootstrap)
    for name in (topic, target):
        a.create_topics([NewTopic(name, 3, 3)])[name].result(timeout=30)
    env = dict(os.environ, KAFKA_BOOTSTRAP=cluster.bootstrap, PYTHONUNBUFFERED="1")
    log = open(cluster.nodes[0].log_path.parent / "pipeline.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "exactly_once_pipeline.py"), "--topic", topic,
         "--count", "30000", "--kills", "3", "--seed", "11", "--duration", "200"],
        cwd=EXAMPLES, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    txn_id = f"{topic}-pipeline-worker"

    def output() -> str:
        log.seek(0)
        return log.read()

    def invoices_written() -> int:
        return sum(watermarks(cluster.bootstrap, target, p)[1] for p in range(3))

    def kill_and_restart(victim: int, what: str) -> None:
        assert proc.poll() is None, f"the pipeline ended before {what} was killed:\n{output()}"
        before = invoices_written()
        cluster.node(victim).kill9()
        cluster.node(victim).start()
        # The pipeline goes on through the failover.
        wait_until(lambda: invoices_written() > before + 1000, timeout=60,
                   message=f"the pipeline writing on after {what} (node {victim}) was killed")

    def txn_coordinator() -> int | None:
        with wire.Connection("127.0.0.1", cluster.nodes[0].port) as conn:
            error, node = wire.find_coordinator(conn, txn_id, key_type=1)
        return node if error == 0 else None

    try:
        coordinator = wait_until(txn_coordinator, timeout=60,
                                 message="the pipeline's transaction coordinator")
        wait_until(lambda: invoices_written() > 0, timeout=60, message="first invoices")
        kill_and_restart(coordinator, "the transaction coordinator's broker")
        leader = a.list_topics(target, timeout=10).topics[target].partitions[0].leader
        kill_and_restart(leader, "the leader of an output partition")
        proc.wait(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output()
    log.close()
    assert proc.returncode == 0, text
    assert "missing: 0; twice: 0" in text, text
    assert "exactly once: every order invoiced once" in text, text


def connect(address: str) -> wire.Connection:
    host, port = address.rsplit(":", 1)
    return wire.Connection(host, int(port))


def txn_coordinator(bootstrap: str, txn_id: str) -> int:
    """The node id of `txn_id`'s coordinator, once there is one (the first lookup creates
    __transaction_state)."""
    def ask():
        with connect(bootstrap.split(",")[0]) as c:
            error, node = wire.find_coordinator(c, txn_id, key_type=1)
        return node if error == 0 else None
    return wait_until(ask, 60, 0.2, f"a coordinator for {txn_id}")


def init_producer(address: str, txn_id: str) -> tuple[int, int]:
    """InitProducerId at the coordinator, retried while it loads: (producer id, epoch)."""
    def ask():
        with connect(address) as c:
            error, pid, epoch = wire.init_producer_id(c, txn_id)
        return (pid, epoch) if error == 0 else None
    return wait_until(ask, 60, 0.2, f"a producer id for {txn_id}")


def check_batches_are_verified(bootstrap: str, coordinator: str, leaders: dict[int, str],
                               topic: str, txn_id: str) -> None:
    """A leader appends a transactional batch only to a transaction its coordinator (at
    `coordinator`) holds the partition in (KIP-890): `leaders` maps two partitions of `topic`
    to the addresses of their leaders."""
    added, other = sorted(leaders)[:2]
    pid, epoch = init_producer(coordinator, txn_id)

    def produce(partition, values, sequence, producer_epoch=epoch):
        with connect(leaders[partition]) as c:
            return wire.produce(c, topic, partition,
                                wire.transactional_batch(values, pid, producer_epoch, sequence),
                                version=8, transactional_id=txn_id)

    r = produce(added, [b"before add"], 0)
    assert r.error_code == wire.INVALID_TXN_STATE, r
    assert "was not added to the transaction" in (r.error_message or ""), r
    with connect(coordinator) as c:
        assert wire.add_partitions_to_txn(c, txn_id, pid, epoch, topic, [added]) == {added: 0}
    assert produce(added, [b"first"], 0).error_code == 0
    # The transaction is open there now: the next batch belongs to it.
    assert produce(added, [b"second"], 1).error_code == 0
    r = produce(other, [b"never added"], 0)
    assert r.error_code == wire.INVALID_TXN_STATE, r
    with connect(coordinator) as c:
        assert wire.end_txn(c, txn_id, pid, epoch, commit=True) == 0
    wait_until(lambda: len(consume(bootstrap, topic, [added], timeout=30,
                                   **{"isolation.level": "read_committed"})) == 2,
               60, 0.5, "the commit marker")
    # The transaction is over: a late batch of it would open one nobody ends.
    r = produce(added, [b"after commit"], 2)
    assert r.error_code == wire.INVALID_TXN_STATE, r
    # A newer producer of the same transactional id fences this one.
    assert init_producer(coordinator, txn_id)[1] > epoch
    r = produce(other, [b"fenced"], 0)
    assert r.error_code == wire.INVALID_PRODUCER_EPOCH, r
    committed = consume(bootstrap, topic, [added, other], timeout=30,
                        **{"isolation.level": "read_uncommitted"})
    assert [(m.partition, m.value) for m in committed] == [(added, b"first"),
                                                           (added, b"second")]


def test_a_transactional_batch_for_a_partition_not_in_the_transaction_is_refused(broker):
    topic = unique_topic("txn-verify")
    create_topic(broker.bootstrap, topic, partitions=2)
    txn_id = unique_topic("verify")
    txn_coordinator(broker.bootstrap, txn_id)
    check_batches_are_verified(broker.bootstrap, broker.bootstrap,
                               {0: broker.bootstrap, 1: broker.bootstrap}, topic, txn_id)


def test_a_leader_verifies_transactional_batches_with_a_coordinator_on_another_broker(
        cluster_factory):
    cluster = cluster_factory(3)
    topic = unique_topic("txn-verify")
    a = admin(cluster.bootstrap)
    a.create_topics([NewTopic(topic, 6, 3)])[topic].result(timeout=30)
    txn_id = unique_topic("verify")
    coordinator = txn_coordinator(cluster.bootstrap, txn_id)

    def leaders_elsewhere():
        partitions = a.list_topics(topic, timeout=10).topics[topic].partitions
        elsewhere = {p: cluster.node(m.leader).bootstrap for p, m in partitions.items()
                     if m.leader >= 0 and m.leader != coordinator}
        return elsewhere if len(partitions) == 6 and len(elsewhere) >= 2 else None
    leaders = wait_until(leaders_elsewhere, 30, 0.2,
                         "two partitions led away from the transaction coordinator")
    check_batches_are_verified(cluster.bootstrap, cluster.node(coordinator).bootstrap, leaders,
                               topic, txn_id)


def test_transactional_batches_of_two_producers_in_one_request_are_refused(broker):
    """One request carries one transactional id, so one producer: Kafka refuses batches of
    several producer ids with INVALID_PRODUCER_ID_MAPPING, and so nothing is appended."""
    topic = unique_topic("txn-two")
    create_topic(broker.bootstrap, topic, partitions=2)
    txn_id = unique_topic("two")
    txn_coordinator(broker.bootstrap, txn_id)
    pid, epoch = init_producer(broker.bootstrap, txn_id)
    with connect(broker.bootstrap) as c:
        assert wire.add_partitions_to_txn(c, txn_id, pid, epoch, topic, [0, 1]) == {0: 0, 1: 0}
        batches = [wire.transactional_batch([b"mine"], pid, epoch, 0),
                   wire.transactional_batch([b"someone else's"], pid + 1, 0, 0)]
        body = (wire.string(txn_id) + wire.i16(-1) + wire.i32(10000) + wire.i32(1)
                + wire.string(topic) + wire.i32(2)
                + b"".join(wire.i32(p) + wire.bytes_field(b) for p, b in enumerate(batches)))
        r = c.request(wire.PRODUCE, 3, body, 41)
        errors = {}
        for _ in range(r.i32()):
            r.string()
            for _ in range(r.i32()):
                partition, error = r.i32(), r.i16()
                r.i64(), r.i64()
                errors[partition] = error
    assert errors == {0: INVALID_PRODUCER_ID_MAPPING, 1: INVALID_PRODUCER_ID_MAPPING}
    assert watermarks(broker.bootstrap, topic, 0)[1] == 0
    assert watermarks(broker.bootstrap, topic, 1)[1] == 0
