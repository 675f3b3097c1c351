"""The kcat command-line client against Caudal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from support import consume, create_topic, produce_and_confirm, unique_topic

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
# scripts/test sets this so a missing kcat fails instead of skipping.
REQUIRE_KCAT = os.environ.get("CAUDAL_REQUIRE_KCAT") == "1"

pytestmark = pytest.mark.skipif(KCAT is None and not REQUIRE_KCAT,
                                reason="kcat is not installed (scripts/test installs it)")


def kcat(broker, *args, stdin: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    assert KCAT, "kcat is required (CAUDAL_REQUIRE_KCAT is set)"
    cmd = [KCAT, "-b", broker.bootstrap, *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout[-2000:]!r}\n"
        f"stderr: {proc.stderr[-2000:]!r}")
    return proc


def test_kcat_produce_keyed_and_consume(broker):
    topic = unique_topic("kcat")
    create_topic(broker.bootstrap, topic)
    lines = b"k1:hello\nk2:world\nk1:again\n:empty key\nk3:value:with:colons\n"
    kcat(broker, "-P", "-t", topic, "-K:", stdin=lines)

    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e",
               "-f", "%p|%o|%k|%s\n").stdout.decode()
    assert out.splitlines() == [
        "0|0|k1|hello",
        "0|1|k2|world",
        "0|2|k1|again",
        "0|3||empty key",
        "0|4|k3|value:with:colons",
    ]

    # The key delimiter output mode, as the README shows it.
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e", "-K:").stdout.decode()
    assert out.splitlines()[:2] == ["k1:hello", "k2:world"]

    # A library client sees the same records.
    recs = consume(broker.bootstrap, topic, [0])
    assert [(r.key, r.value) for r in recs] == [
        (b"k1", b"hello"), (b"k2", b"world"), (b"k1", b"again"), (b"", b"empty key"),
        (b"k3", b"value:with:colons")]


def test_kcat_auto_creates_topic_on_produce(broker):
    topic = unique_topic("kcat-auto")
    kcat(broker, "-P", "-t", topic, stdin=b"one\ntwo\nthree\n")
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e").stdout.decode()
    assert out.splitlines() == ["one", "two", "three"]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4"])
def test_kcat_compressed_produce(broker, codec):
    topic = unique_topic(f"kcat-{codec}")
    create_topic(broker.bootstrap, topic)
    lines = [f"line {i} {'abc' * 20}" for i in range(200)]
    kcat(broker, "-P", "-t", topic, "-z", codec, stdin=("\n".join(lines) + "\n").encode())
    out = kcat(broker, "-C", "-t", topic, "-o", "beginning", "-e").stdout.decode()
    assert out.splitlines() == lines


def test_kcat_reads_headers_and_offsets(broker):
    topic = unique_topic("kcat-hdr")
    create_topic(broker.bootstrap, topic, partitions=2)
    produce_and_confirm(broker.bootstrap, topic,
                        [(b"a", b"first", [("h1", b"v1")]), (b"b", b"second", None)],
                        partition=1)
    out = kcat(broker, "-C", "-t", topic, "-p", "1", "-o", "beginning", "-e",
               "-f", "%o %k %s [%h]\n").stdout.decode()
    assert out.splitlines() == ["0 a first [h1=v1]", "1 b second []"]

    # Relative offset from the end.
    out = kcat(broker, "-C", "-t", topic, "-p", "1", "-o", "-1", "-e").stdout.decode()
    assert out.splitlines() == ["second"]


def test_kcat_metadata_listing(broker):
    topic = unique_topic("kcat-meta")
    create_topic(broker.bootstrap, topic, partitions=3)
    out = kcat(broker, "-L").stdout.decode()
    assert "1 brokers:" in out, out
    assert f"at 127.0.0.1:{broker.port}" in out, out
    assert f'topic "{topic}" with 3 partitions:' in out, out

    md = json.loads(kcat(broker, "-L", "-J", "-t", topic).stdout)
    assert [(b["name"]) for b in md["brokers"]] == [f"127.0.0.1:{broker.port}"]
    topics = {t["topic"]: t for t in md["topics"]}
    t = topics[topic]
    assert "error" not in t, t
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
    broker_id = md["brokers"][0]["id"]
    for p in t["partitions"]:
        assert p["leader"] == broker_id
        assert [r["id"] for r in p["replicas"]] == [broker_id]
        assert [r["id"] for r in p["isrs"]] == [broker_id]
