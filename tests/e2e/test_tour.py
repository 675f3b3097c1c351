"""docs/tour.md: every `sh` block runs as written, in order, against real brokers.

The single-node stops talk to localhost:9092 and read ./caudal-data, as a reader's broker would;
the test points both at its own broker (the address is substituted, caudal-data is a link to the
test broker's data directory) and runs from a scratch directory that links to the examples.

The cluster stops ("A cluster of three" onwards) start, stop and restart their own three nodes on
fixed ports, with their data in ./caudal-cluster of that scratch directory. Each of their blocks
runs as one script in a session of its own; at teardown every process still in one of those
sessions (the nodes the blocks started in the background) is stopped, also when a block failed.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness import port_accepts
from test_cluster_status import tables

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_HEADING = "## A cluster of three"
CLUSTER_PORTS = [19092, 19093, 29092, 29093, 39092, 39093]


def tour_blocks() -> tuple[list[str], list[str]]:
    """The `sh` blocks before the cluster stops, and those from there on."""
    text = (ROOT / "docs" / "tour.md").read_text()
    single, cluster = text.split(CLUSTER_HEADING, 1)
    return sh_blocks(single), sh_blocks(cluster)


def sh_blocks(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", markdown, flags=re.S)


def tour_commands() -> list[str]:
    single, _ = tour_blocks()
    return [line for block in single for line in block.splitlines() if line.strip()]


@pytest.fixture
def reader(tmp_path):
    """The reader's directory: the repository's examples, nothing else."""
    work = tmp_path / "reader"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    return work


def tools_env(**extra) -> dict[str, str]:
    env = {
        **os.environ,
        "PATH": f"{ROOT / 'target' / 'release'}:{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        **extra,
    }
    if os.environ.get("CAUDAL_BIN"):
        env["PATH"] = f"{Path(os.environ['CAUDAL_BIN']).parent}:{env['PATH']}"
    return env


def test_every_tour_command_runs(broker_factory, reader):
    broker = broker_factory({"group.initial.rebalance.delay.ms": 0})
    (reader / "caudal-data").symlink_to(broker.data_dir)
    env = tools_env(KAFKA_BOOTSTRAP=broker.bootstrap, CAUDAL_BOOTSTRAP=broker.bootstrap)
    commands = tour_commands()
    assert len(commands) >= 15, "the tour lost its commands"
    for command in commands:
        runnable = command.replace("localhost:9092", broker.bootstrap)
        r = subprocess.run(["bash", "-o", "pipefail", "-c", runnable], cwd=reader, env=env,
                           capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, f"tour command failed: {command}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-2000:]}"


def session_members(sid: int, cwd: Path) -> list[int]:
    """Processes whose session is `sid` and which run in `cwd` (a pid number reused by a stranger
    after the session ended is no member)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp session ...: comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2:].split()
        try:
            here = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if int(fields[3]) == sid and (here == cwd or cwd in here.parents):
            pids.append(int(entry.name))
    return pids


def stop_sessions(sessions: list[int], cwd: Path, timeout: float = 30.0) -> list[int]:
    """SIGTERM every process left in these sessions, SIGKILL what is left after `timeout`.
    Returns the pids that needed SIGKILL."""
    def signal_all(sig) -> list[int]:
        hit = []
        for sid in sessions:
            for pid in session_members(sid, cwd):
                try:
                    os.kill(pid, sig)
                    hit.append(pid)
                except ProcessLookupError:
                    pass
        return hit

    if not signal_all(signal.SIGTERM):
        return []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(session_members(sid, cwd) for sid in sessions):
            return []
        time.sleep(0.1)
    return signal_all(signal.SIGKILL)


@pytest.fixture
def cluster_sessions(reader):
    """Sessions the cluster blocks ran in; whatever is left in them is stopped at teardown."""
    sessions: list[int] = []
    yield sessions
    killed = stop_sessions(sessions, reader)
    if killed:
        pytest.fail(f"processes {killed} started by the cluster tour did not stop within 30 s "
                    f"of SIGTERM (killed)", pytrace=False)


def test_cluster_tour_runs(reader, cluster_sessions, caudal_binary):
    taken = [p for p in CLUSTER_PORTS if port_accepts(p, timeout=0.2)]
    assert not taken, f"the cluster tour needs ports {CLUSTER_PORTS}; {taken} are taken"
    _, blocks = tour_blocks()
    assert len(blocks) >= 8, "the cluster tour lost its commands"
    env = tools_env()
    env.pop("KAFKA_BOOTSTRAP", None)
    env.pop("CAUDAL_BOOTSTRAP", None)
    outputs = []
    for block in blocks:
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block], cwd=reader, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        cluster_sessions.append(proc.pid)
        try:
            out, err = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"tour block timed out:\n{block}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
                        f"{node_logs(reader)}")
        assert proc.returncode == 0, (f"tour block failed:\n{block}\nstdout:\n{out[-2000:]}\n"
                                      f"stderr:\n{err[-2000:]}{node_logs(reader)}")
        outputs.append((block, out))

    def output_of(command: str) -> str:
        found = [out for block, out in outputs if command in block]
        assert found, f"no block runs {command}"
        return found[0]

    # What the text says the reader sees.
    metadata = output_of("kcat -b 127.0.0.1:19092 -L\n")
    assert " 3 brokers:" in metadata and "(controller)" in metadata, metadata
    status = output_of("caudal cluster status -b 127.0.0.1:19092")
    assert re.search(r"^Active controller: [123] ", status, re.M), status
    assert len(re.findall(r"^[123]\s.*\bregistered\b", status, re.M)) == 3, status
    described = output_of("caudal topic describe tour-spread -b 127.0.0.1:39092")
    assert leaders_in(described, "tour-spread") == {"1", "2", "3"}, \
        f"tour-spread is not led by all three brokers:\n{described}"
    down = output_of("kcat -b 127.0.0.1:19092 -L | grep broker")
    assert " 2 brokers:" in down and "broker 2 at" not in down, down
    survivors = output_of("caudal topic describe tour-survivors")
    assert leaders_in(survivors, "tour-survivors") == {"1", "3"}, \
        f"the new topic is not led by the two live brokers:\n{survivors}"
    assert leaders_in(survivors, "tour-spread") == {"1", "3", "none"}, \
        f"node 2's partitions are not shown offline:\n{survivors}"
    replicated = output_of("caudal topic describe tour-replicated -b 127.0.0.1:29092")
    assert {",".join(sorted(isr.split(","))) for isr in column_in(replicated, "tour-replicated", 3)} \
        == {"1,2,3"}, \
        f"tour-replicated is not in sync on all three:\n{replicated}"
    assert leaders_in(survivors, "tour-replicated") <= {"1", "3"}, \
        f"tour-replicated has no leader without node 2:\n{survivors}"
    assert "2" not in ",".join(column_in(survivors, "tour-replicated", 3)), \
        f"node 2 is still in the ISR while down:\n{survivors}"
    kept = [line for line in output_of("kcat -b 127.0.0.1:19092 -C -t tour-replicated").splitlines()
            if line in ("alpha", "beta", "gamma")]
    assert kept == ["alpha", "beta", "gamma"], f"tour-replicated lost records: {kept}"
    # Twelve records over the six partitions, all back after node 2's return.
    for command in ["kcat -b 127.0.0.1:29092 -C -t tour-spread", "kcat -b 127.0.0.1:19092 -C -t tour-spread"]:
        records = [line for line in output_of(command).splitlines() if line.startswith("partition ")]
        assert len(records) == 12 and {r.split(":")[0] for r in records} == \
            {f"partition {p}" for p in range(6)}, f"{command}:\n" + "\n".join(records)
    # After elect-leaders, every partition of tour-replicated is led by its preferred replica.
    balanced = output_of("caudal topic describe tour-replicated -b 127.0.0.1:39092")
    section = balanced.split("Topic tour-replicated:", 1)[1]
    rows = [line.split() for line in section.splitlines() if re.match(r"\d+\s", line)]
    assert len(rows) == 2 and all(row[1] == row[2].split(",")[0] for row in rows), \
        f"tour-replicated not led by its preferred replicas:\n{balanced}"
    # Below min.insync.replicas: node 2, crashed, is an eligible leader replica, and node 3
    # refuses a write. With node 3 down too, node 2 leads; with node 3 back, the ISR is whole,
    # the third write is taken, and both acknowledged records are there before it.
    refusal = output_of("kill -9 $(cat caudal-cluster/node2.pid)")
    assert "Not enough in-sync replicas" in refusal and "kcat: not written" in refusal, refusal
    (below,) = partition_rows(refusal, "tour-durable")
    assert (below["LEADER"], below["REPLICAS"], below["ISR"], below["ELR"]) == ("3", "3,2", "3", "2"), below
    (elected,) = partition_rows(output_of("kill -9 $(cat caudal-cluster/node3.pid)"), "tour-durable")
    assert (elected["LEADER"], elected["ISR"]) == ("2", "2"), elected
    durable = [line for line in output_of("caudal serve --node-id 3").splitlines()
               if line in ("first", "second", "third")]
    assert durable == ["first", "second", "third"], durable
    assert not (reader / "caudal-cluster").exists(), "the tour leaves caudal-cluster behind"


def partition_rows(output: str, topic: str) -> list[dict[str, str]]:
    """The partition table of `caudal topic describe <topic>` within `output`, a dict per row."""
    section = output.split(f"Topic {topic}:", 1)[1]
    return tables(section)["PARTITION"]


def leaders_in(output: str, topic: str) -> set[str]:
    """The LEADER column of `caudal topic describe <topic>` within `output`."""
    return column_in(output, topic, 1)


def column_in(output: str, topic: str, column: int) -> set[str]:
    """Column `column` (0: PARTITION, 1: LEADER, 2: REPLICAS, 3: ISR) of `caudal topic describe
    <topic>` within `output`."""
    section = output.split(f"Topic {topic}:", 1)[1].split("\n\n", 1)[0]
    return {line.split()[column] for line in section.splitlines() if re.match(r"\d+\s", line)}


def node_logs(reader: Path) -> str:
    logs = sorted((reader / "caudal-cluster").glob("node*.log"))
    return "".join(f"\n--- {log.name} (last 30 lines) ---\n"
                   + "\n".join(log.read_text(errors="replace").splitlines()[-30:]) for log in logs)
