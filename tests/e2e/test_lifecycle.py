"""Process lifecycle: start-up, shutdown and command-line errors."""

from __future__ import annotations

import socket
import subprocess

from confluent_kafka import TopicCollection

from harness import port_accepts
from support import (admin, consume, create_topic, produce_and_confirm, unique_topic,
                     wait_until)


def test_sigterm_exits_zero(broker):
    topic = unique_topic("term")
    create_topic(broker.bootstrap, topic)
    produce_and_confirm(broker.bootstrap, topic, [(None, b"x")])
    assert broker.stop() == 0
    assert not port_accepts(broker.port), "port still accepting after shutdown"


def test_sigterm_immediately_after_ready_exits_zero(broker):
    # "Ready" means the port accepts connections; from that moment on SIGTERM
    # must mean a clean shutdown, not death by the signal's default action.
    codes = []
    for _ in range(20):  # a start-up race: repeat to make it visible
        codes.append(broker.stop())
        broker.start()
    assert codes == [0] * len(codes), f"exit codes after SIGTERM right after start: {codes}"


def test_restart_on_same_port_and_data_dir(broker):
    topic = unique_topic("again")
    create_topic(broker.bootstrap, topic)
    produce_and_confirm(broker.bootstrap, topic, [(None, b"before")])
    port = broker.port
    broker.restart()
    assert broker.port == port
    produce_and_confirm(broker.bootstrap, topic, [(None, b"after")])
    assert [r.value for r in consume(broker.bootstrap, topic, [0])] == [b"before", b"after"]


def test_port_in_use_fails_fast(broker_factory):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        b = broker_factory(port=port, wait=False)
        try:
            code = b.wait_exit(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError("broker kept running although its port is taken")
        assert code != 0, "binding an occupied port must exit non-zero"
        lines = [line for line in b.log_text().splitlines()
                 if line.strip() and not line.startswith("===== start")]
        assert lines, "expected an error message on stderr"
        assert any("in use" in line.lower() or str(port) in line for line in lines), lines
    finally:
        holder.close()


def test_missing_data_dir_is_created(broker_factory, tmp_path):
    b = broker_factory()
    b.stop()
    b.data_dir = tmp_path / "nested" / "not" / "there"
    b.start()
    topic = unique_topic("fresh-dir")
    produce_and_confirm(b.bootstrap, topic, [(None, b"x")])
    wait_until(lambda: any(b.data_dir.iterdir()), message="data written under the new data dir")


def test_serve_help_mentions_settings(caudal_binary):
    out = subprocess.run([str(caudal_binary), "serve", "--help"], capture_output=True,
                         timeout=10)
    assert out.returncode == 0
    text = out.stdout.decode() + out.stderr.decode()
    for flag in ("--listen", "--advertise", "--data-dir", "--num.partitions",
                 "--auto.create.topics.enable", "--message.max.bytes",
                 "--socket.request.max.bytes", "--log.segment.bytes"):
        assert flag in text, f"{flag} missing from `caudal serve --help`"


def test_unknown_flag_is_rejected(caudal_binary, tmp_path):
    out = subprocess.run([str(caudal_binary), "serve", "--listen", "127.0.0.1:0",
                          "--data-dir", str(tmp_path), "--no.such.setting", "1"],
                         capture_output=True, timeout=10)
    assert out.returncode != 0
    assert out.stderr.strip(), "expected an explanation on stderr"


def test_settings_that_do_not_go_together_are_refused_with_the_fix(caudal_binary, tmp_path):
    """As Kafka refuses at start-up a follower fetch wait longer than the ISR lag limit."""
    out = subprocess.run([str(caudal_binary), "serve", "--listen", "127.0.0.1:0",
                          "--data-dir", str(tmp_path), "--replica.fetch.wait.max.ms", "40000"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode != 0
    assert "replica.fetch.wait.max.ms" in out.stderr and \
        "raise replica.lag.time.max.ms" in out.stderr, out.stderr
    assert not any(tmp_path.iterdir()), "refused before touching the data directory"


def test_a_data_directory_belongs_to_one_node(broker_factory):
    b = broker_factory()
    topic = unique_topic("identity")
    create_topic(b.bootstrap, topic)
    produce_and_confirm(b.bootstrap, topic, [(None, b"kept")])
    a = admin(b.bootstrap)
    cluster_id = a.describe_cluster(request_timeout=10).result(timeout=15).cluster_id
    props = dict(line.split("=", 1) for line in
                 (b.data_dir / "meta.properties").read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert (props["version"], props["node.id"], props["cluster.id"]) == ("1", "1", cluster_id)
    assert b.stop() == 0

    # Started as another node, it refuses before touching the data, and says how to fix it.
    other = broker_factory({"node-id": 2}, data_dir=b.data_dir, wait=False)
    try:
        code = other.wait_exit(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError("broker served another node's data directory")
    assert code != 0
    log = other.log_text()
    assert "belongs to node 1" in log and "--node-id 1" in log, log
    assert log.count("belongs to node 1") == 1, log

    b.start()
    assert [r.value for r in consume(b.bootstrap, topic, [0])] == [b"kept"]


def test_a_restarted_node_keeps_its_cluster_and_logs_no_error(broker_factory):
    """A single node is a cluster of one on its metadata log: a restart rejoins it (no second
    bootstrap, no refused initialisation), keeps the cluster id and the topic ids, and says
    nothing at ERROR."""
    b = broker_factory()
    topic = unique_topic("rejoin")
    create_topic(b.bootstrap, topic, partitions=2)
    produce_and_confirm(b.bootstrap, topic, [(None, b"before")], partition=1)
    a = admin(b.bootstrap)
    cluster_id = a.describe_cluster(request_timeout=10).result(timeout=15).cluster_id
    topic_id = a.describe_topics(TopicCollection([topic]))[topic].result(timeout=15).topic_id
    assert b.stop() == 0
    assert (b.data_dir / "__cluster_metadata-0").is_dir()
    for _ in range(2):
        b.start()
        a = admin(b.bootstrap)
        assert a.describe_cluster(request_timeout=10).result(timeout=15).cluster_id == cluster_id
        described = a.describe_topics(TopicCollection([topic]))[topic].result(timeout=15)
        assert str(described.topic_id) == str(topic_id)
        assert [r.value for r in consume(b.bootstrap, topic, [1])] == [b"before"]
        assert b.stop() == 0
    log = b.log_text()
    assert log.count("metadata log bootstrapped") == 1, log
    assert " ERROR " not in log, log
