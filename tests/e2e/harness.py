"""Harness for Caudal's end-to-end tests: a broker process under test control.

Environment:
  CAUDAL_BIN            path of the broker binary (default: <repo>/target/release/caudal)
  CAUDAL_BIN_WAIT       seconds to wait for the binary to appear (default 30; useful
                        while it is being rebuilt)
  CAUDAL_START_TIMEOUT  seconds to wait for the port to accept (default 20)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("CAUDAL_START_TIMEOUT", "20"))
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 200


def caudal_bin() -> Path:
    raw = os.environ.get("CAUDAL_BIN")
    path = Path(raw) if raw else REPO_ROOT / "target" / "release" / "caudal"
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, timeout: float = 0.5, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGKILL the broker if the
    test process dies, so an aborted run never leaves brokers behind."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # noqa: BLE001 - best effort, non-Linux platforms
        pass


class BrokerError(Exception):
    pass


class Broker:
    """One broker process. Settings are Kafka config keys (e.g.
    "message.max.bytes") passed as `--<key> <value>` flags."""

    def __init__(self, binary: Path, data_dir: Path, log_path: Path, port: int,
                 settings: dict[str, object] | None = None, open_files: int | None = None):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port
        self.settings = dict(settings or {})
        # The process's open-file limit (soft and hard), if the test sets one.
        self.open_files = open_files
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._expected_exit = True

    # -- public surface -------------------------------------------------
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        addr = self.bootstrap
        cmd = [str(self.binary), "serve", "--listen", addr, "--advertise", addr,
               "--data-dir", str(self.data_dir)]
        for key, value in self.settings.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            cmd += [f"--{key}", str(value)]
        return cmd

    def spawn(self) -> subprocess.Popen:
        """Start the process without waiting for readiness."""
        if self.proc is not None and self.proc.poll() is None:
            raise BrokerError("broker already running")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"===== start #{self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            env = dict(os.environ, NO_COLOR="1")  # plain-text log files
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                cwd=str(self.log_path.parent), preexec_fn=self._prepare_child,
            )
        self._expected_exit = False
        return self.proc

    def _prepare_child(self) -> None:
        _die_with_parent()
        if self.open_files is not None:
            import resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self._expected_exit = True
                raise BrokerError(
                    f"broker exited with code {code} before accepting connections on "
                    f"{self.bootstrap}\n--- broker log ---\n{self.log_tail()}")
            # The port opens before the logs are recovered; the start-up line says all is done.
            if (port_accepts(self.port, timeout=0.2, host=self.host)
                    and self.log_text().count(" listening on ") >= self.starts):
                return
            time.sleep(0.05)
        self.kill9()
        raise BrokerError(
            f"broker did not accept connections on {self.bootstrap} within {timeout:.0f}s"
            f"\n--- broker log ---\n{self.log_tail()}")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait. Returns the exit code. Raises if the process does
        not exit in time (it is then killed)."""
        if self.proc is None:
            raise BrokerError("broker was never started")
        self._expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise BrokerError(
                    f"broker did not exit within {timeout:.0f}s of SIGTERM (killed)"
                    f"\n--- broker log ---\n{self.log_tail()}")
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        """Wait for a process that is expected to exit on its own (e.g. a
        start-up error). Raises subprocess.TimeoutExpired if it does not."""
        code = self.proc.wait(timeout)
        self._expected_exit = True
        return code

    def kill9(self) -> None:
        if self.proc is None:
            return
        self._expected_exit = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Stop (SIGTERM) if running, then start again on the same port and
        data directory."""
        if self.is_running():
            self.stop()
        self.start(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_text().splitlines()
        return "\n".join(text[-lines:])

    def died_unexpectedly(self) -> int | None:
        """Exit code if the process ended without being asked to."""
        if self.proc is None or self._expected_exit:
            return None
        return self.proc.poll()

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise BrokerError(
                    f"broker did not exit within {STOP_TIMEOUT:.0f}s of SIGTERM at teardown")
        self._expected_exit = True



class Node(Broker):
    """One node of a multi-node cluster: a client listener and a CONTROLLER listener, with
    every voter's controller address in `controller.quorum.voters`. `roles` is its
    `process.roles`: "broker,controller" (the default), "broker" (not a voter; it still has a
    CONTROLLER listener, where the leader sends it the metadata log) or "controller" (only the
    CONTROLLER listener, which `port` then names)."""

    def __init__(self, binary: Path, data_dir: Path, log_path: Path, port: int,
                 node_id: int, controller_port: int, voters: str,
                 settings: dict[str, object] | None = None, roles: str = "broker,controller",
                 address: str = "127.0.0.1", netns: str | None = None):
        if roles == "controller":
            port = controller_port
        super().__init__(binary, data_dir, log_path, port, settings)
        self.node_id = node_id
        self.controller_port = controller_port
        self.voters = voters
        self.roles = roles
        # A node in a network namespace of its own (netns.py) listens on that namespace's
        # address and is started through `ip netns exec`.
        self.address = address
        self.netns = netns

    @property
    def host(self) -> str:
        return self.address

    @property
    def is_broker(self) -> bool:
        return self.roles != "controller"

    def command(self) -> list[str]:
        addr = self.bootstrap
        controller = f"CONTROLLER://{self.host}:{self.controller_port}"
        cmd = [str(self.binary), "serve"]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        if self.is_broker:
            cmd += ["--listen", f"PLAINTEXT://{addr},{controller}",
                    "--advertise", f"PLAINTEXT://{addr}"]
        else:
            cmd += ["--listen", controller]
        cmd += ["--data-dir", str(self.data_dir),
                "--node-id", str(self.node_id),
                "--controller.quorum.voters", self.voters]
        if self.roles != "broker,controller":
            cmd += ["--process.roles", self.roles]
        for key, value in self.settings.items():
            if callable(value):
                # A setting that differs per node (broker.rack): a function of the node id.
                value = value(self.node_id)
            if isinstance(value, bool):
                value = "true" if value else "false"
            cmd += [f"--{key}", str(value)]
        return cmd


class Cluster:
    """N nodes on loopback ports, each a broker and a voter unless given other roles."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes

    @property
    def brokers(self) -> list[Node]:
        return [n for n in self.nodes if n.is_broker]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.brokers)

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Starts every node at once (voters elect a leader only together) and waits until
        each serves clients."""
        for n in self.nodes:
            n.spawn()
        for n in self.nodes:
            n.wait_ready(timeout)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.is_running()]

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> list[int]:
        """SIGTERM every broker at once, then wait for each: stopped one by one, the last would
        be left without a quorum to confirm its controlled shutdown. Controller-only nodes stop
        after the brokers, which need them to confirm. Returns the exit codes, in node order."""
        codes = {}
        for wave in (self.brokers, [n for n in self.nodes if not n.is_broker]):
            for n in wave:
                if n.is_running():
                    n._expected_exit = True
                    n.proc.send_signal(signal.SIGTERM)
            for n in wave:
                codes[n.node_id] = n.stop(timeout)
        return [codes[n.node_id] for n in self.nodes]


def require_binary() -> Path:
    """Path of the broker binary, waiting briefly for it to appear (it may be
    mid-rebuild). Raises BrokerError with instructions if it never does."""
    path = caudal_bin()
    wait = float(os.environ.get("CAUDAL_BIN_WAIT", "30"))
    deadline = time.monotonic() + wait
    while not (path.is_file() and os.access(path, os.X_OK)):
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Caudal binary not found or not executable at {path}. "
                f"Build it with `cargo build --release` or set CAUDAL_BIN.")
        time.sleep(0.5)
    return path
