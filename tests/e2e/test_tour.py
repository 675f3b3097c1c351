"""docs/tour.md: every `sh` block runs as written, in order, against a real broker.

The tour talks to localhost:9092 and reads ./caudal-data, as a reader's broker would be; the test
points both at its own broker (the address is substituted, caudal-data is a link to the test
broker's data directory) and runs from a scratch directory that links to the examples."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tour_commands() -> list[str]:
    text = (ROOT / "docs" / "tour.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_every_tour_command_runs(broker_factory, tmp_path):
    broker = broker_factory({"group.initial.rebalance.delay.ms": 0})
    work = tmp_path / "reader"
    work.mkdir()
    (work / "caudal-data").symlink_to(broker.data_dir)
    (work / "examples").symlink_to(ROOT / "examples")
    env = {
        **os.environ,
        "PATH": f"{ROOT / 'target' / 'release'}:{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "KAFKA_BOOTSTRAP": broker.bootstrap,
        "CAUDAL_BOOTSTRAP": broker.bootstrap,
    }
    commands = tour_commands()
    assert len(commands) >= 15, "the tour lost its commands"
    for command in commands:
        runnable = command.replace("localhost:9092", broker.bootstrap)
        r = subprocess.run(["bash", "-o", "pipefail", "-c", runnable], cwd=work, env=env,
                           capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, f"tour command failed: {command}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-2000:]}"
