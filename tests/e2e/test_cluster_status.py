"""What a cluster says about itself, against three real `caudal` processes: DescribeQuorum on
client and CONTROLLER listeners (raw wire), `caudal cluster status`, and the `caudal topic` and
`caudal group` tools reaching the broker a request must go to (a partition's leader, a group's
coordinator) through a bootstrap that is neither. One cluster serves the whole file: CI time is
short."""

from __future__ import annotations

import subprocess

from confluent_kafka import Consumer

import wire
from harness import caudal_bin
from support import create_topic, group_coordinator, produce_and_confirm, unique_topic, wait_until

# A killed node is fenced after a session; a short one keeps the test quick.
FAST = {"broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 500}
NOT_LEADER_OR_FOLLOWER = 6


def caudal(bootstrap: str, *args: str) -> str:
    r = subprocess.run([str(caudal_bin()), *args, "--bootstrap", bootstrap],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"caudal {' '.join(args)} failed: {r.stderr}"
    return r.stdout


def tables(output: str) -> dict[str, list[dict[str, str]]]:
    """Every aligned table in `output` (a header line, a line of dashes, rows up to a blank
    line), by the header's first column."""
    lines = output.splitlines()
    found = {}
    for i in range(len(lines) - 1):
        if lines[i + 1].startswith("---") and lines[i].strip():
            header = lines[i].split()
            # Cells are left-aligned under their heading; one may be empty.
            starts, at = [], 0
            for h in header:
                at = lines[i].index(h, at)
                starts.append(at)
                at += len(h)
            starts.append(None)
            rows = []
            for line in lines[i + 2:]:
                if not line.strip():
                    break
                rows.append({h: line[starts[k]:starts[k + 1]].strip()
                             for k, h in enumerate(header)})
            found[header[0]] = rows
    return found


def quorum(port: int, version: int = 2, topics=None) -> dict:
    with wire.Connection("127.0.0.1", port) as conn:
        return wire.describe_quorum(conn, version, topics)


def metadata_partition(answer: dict) -> dict:
    assert answer["error_code"] == 0, answer
    [topic] = answer["topics"]
    assert topic["name"] == "__cluster_metadata", answer
    [partition] = topic["partitions"]
    return partition


def test_the_cluster_describes_itself_and_the_tools_follow_it(cluster_factory):
    cluster = cluster_factory(3, FAST)
    first = cluster.nodes[0]

    # --- DescribeQuorum, as kafka-metadata-quorum sends it -----------------------------------
    # Every client listener answers (a broker forwards to the active controller), the same
    # leader and epoch, three voters; the voters catch up until no one lags.
    def caught_up() -> dict | None:
        p = metadata_partition(quorum(first.port))
        ends = {v["id"]: v["log_end_offset"] for v in p["voters"]}
        leader_end = ends.get(p["leader_id"])
        if sorted(ends) == [1, 2, 3] and set(ends.values()) == {leader_end} \
                and p["high_watermark"] == leader_end:
            return p
        return None

    p = wait_until(caught_up, timeout=20, message="every voter caught up with the leader")
    leader, epoch = p["leader_id"], p["leader_epoch"]
    assert leader in (1, 2, 3) and epoch > 0, p
    for v in p["voters"]:
        assert v["last_fetch_timestamp"] > 0 and v["last_caught_up_timestamp"] > 0, p
    assert p["observers"] == [], p
    for node in cluster.nodes:
        for version in (0, 1, 2):
            answer = quorum(node.port, version)
            q = metadata_partition(answer)
            assert (q["leader_id"], q["leader_epoch"]) == (leader, epoch), (node.node_id, q)
            assert sorted(v["id"] for v in q["voters"]) == [1, 2, 3], q
        # v2 names each voter's CONTROLLER endpoint (KIP-853).
        assert sorted((n["id"], n["listeners"]) for n in answer["nodes"]) == [
            (n.node_id, [("CONTROLLER", "127.0.0.1", n.controller_port)]) for n in cluster.nodes]
    # On CONTROLLER listeners only the leader describes; the others say they do not lead.
    for node in cluster.nodes:
        q = quorum(node.controller_port)["topics"][0]["partitions"][0]
        expected = 0 if node.node_id == leader else NOT_LEADER_OR_FOLLOWER
        assert q["error_code"] == expected, (node.node_id, q)
    # Anything but __cluster_metadata-0 is unknown, on every partition asked for.
    for port in (first.port, cluster.node(leader).controller_port):
        answer = quorum(port, 2, [("__cluster_metadata", [1]), ("orders", [0])])
        codes = [(t["name"], p["index"], p["error_code"])
                 for t in answer["topics"] for p in t["partitions"]]
        assert codes == [("__cluster_metadata", 1, 3), ("orders", 0, 3)], answer

    # --- Tools through a bootstrap that is not the broker a request must reach ---------------
    topic = unique_topic("status")
    create_topic(cluster.bootstrap, topic, partitions=6)
    for partition in range(6):
        produce_and_confirm(cluster.bootstrap, topic,
                            [(None, f"m{partition}-{i}".encode()) for i in range(5)],
                            partition=partition)
    # Partitions are led by every node, so ListOffsets must go to each leader.
    described = tables(caudal(first.bootstrap, "topic", "describe", topic))["PARTITION"]
    assert {r["LEADER"] for r in described} == {"1", "2", "3"}, described
    assert [r["END-OFFSET"] for r in described] == ["5"] * 6, described

    # A group coordinated by another node than the bootstrap.
    wait_until(lambda: group_coordinator(first.bootstrap, f"g-{topic}-probe") is not None,
               timeout=30, message="group coordinators available")
    group = next((g for g in (f"g-{topic}-{i}" for i in range(200))
                  if group_coordinator(first.bootstrap, g) not in (None, first.node_id)), None)
    assert group is not None, "no group hashed to another coordinator"
    consumer = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = 0

    def consumed_all() -> bool:
        nonlocal seen
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            seen += 1
        return seen >= 30

    wait_until(consumed_all, timeout=60, interval=0, message="30 records consumed")
    consumer.commit(asynchronous=False)
    consumer.close()
    rows = tables(caudal(first.bootstrap, "group", "describe", group))["TOPIC"]
    assert [(r["PARTITION"], r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"])
            for r in rows] == [(str(p), "5", "5", "0") for p in range(6)], rows
    listed = tables(caudal(first.bootstrap, "group", "list"))["GROUP"]
    assert group in {r["GROUP"] for r in listed}, listed

    # --- caudal cluster status ----------------------------------------------------------------
    out = caudal(first.bootstrap, "cluster", "status")
    print(out)
    assert "Cluster id: " in out, out
    assert f"Active controller: {leader} " in out, out
    found = tables(out)
    voters = {r["VOTER"]: r for r in found["VOTER"]}
    assert sorted(voters) == ["1", "2", "3"], out
    assert [v for v, r in voters.items() if r["ROLE"] == "leader"] == [str(leader)], out
    brokers = {r["BROKER"]: r for r in found["BROKER"]}
    assert {b: (r["ADDRESS"], r["STATE"]) for b, r in brokers.items()} == {
        str(n.node_id): (f"127.0.0.1:{n.port}", "registered") for n in cluster.nodes}, out
    # Six partitions of the topic, and those of __consumer_offsets, each led by someone.
    assert sum(int(r["PARTITIONS-LED"]) for r in brokers.values()) >= 6, out

    # --- A node killed: fenced once its session runs out --------------------------------------
    victim = next(n for n in cluster.nodes if n.node_id not in (leader, first.node_id))
    victim.kill9()

    def victim_state() -> str | None:
        rows = tables(caudal(first.bootstrap, "cluster", "status"))["BROKER"]
        return next(r["STATE"] for r in rows if r["BROKER"] == str(victim.node_id))

    wait_until(lambda: victim_state() == "fenced", timeout=30,
               message=f"node {victim.node_id} shown fenced")
    out = caudal(first.bootstrap, "cluster", "status")
    print(out)
    voters = {r["VOTER"]: r for r in tables(out)["VOTER"]}
    assert sorted(voters) == ["1", "2", "3"], out
