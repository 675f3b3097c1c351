"""pytest fixtures for Caudal's end-to-end tests.

Every test gets its own broker process: the real `caudal` binary, started on a
free loopback port with a fresh data directory (see harness.py). The broker's
stderr/stdout go to a log file whose tail is attached to the report of a
failing test.
"""

from __future__ import annotations

import os
import signal

import pytest

import netns
from harness import Broker, BrokerError, Cluster, Node, free_port, require_binary


@pytest.fixture
def caudal_binary():
    try:
        return require_binary()
    except BrokerError as e:
        message = str(e)
    pytest.fail(message, pytrace=False)


@pytest.fixture
def broker_factory(request, tmp_path, caudal_binary):
    """Returns start(settings=None, port=None, wait=True, data_dir=None, open_files=None) ->
    running Broker.

    Each call gets its own data directory (or uses `data_dir`, which must exist) and log file;
    all brokers are stopped at teardown. A broker that died on its own during the test is
    reported as an error."""
    binary = caudal_binary
    brokers: list[Broker] = []
    request.node._caudal_brokers = brokers

    def start(settings: dict[str, object] | None = None, port: int | None = None,
              wait: bool = True, data_dir=None, open_files: int | None = None) -> Broker:
        idx = len(brokers)
        if data_dir is None:
            data_dir = tmp_path / f"broker{idx}-data"
            data_dir.mkdir()
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            b = Broker(binary, data_dir, tmp_path / f"broker{idx}.log",
                       port if port is not None else free_port(), settings, open_files)
            brokers.append(b)
            if not wait:
                b.spawn()
                return b
            try:
                b.start()
                return b
            except BrokerError:
                # A free port can be taken by someone else between probing and
                # binding; retry with a new one only in that case.
                if attempt + 1 < attempts and "in use" in b.log_text().lower():
                    brokers.remove(b)
                    continue
                raise
        raise AssertionError("unreachable")

    yield start

    errors = []
    for b in brokers:
        code = b.died_unexpectedly()
        if code is not None:
            errors.append(f"broker on {b.bootstrap} exited on its own with code {code} "
                          f"during the test")
        try:
            b.cleanup()
        except BrokerError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def cluster_factory(request, tmp_path, caudal_binary):
    """Returns start(n=3, settings=None, roles=None, network=None) -> a running Cluster of n nodes
    on free loopback ports, node ids from 1; with a `netns.Network`, node i runs in its
    namespace i, at its address. `roles` gives each node's `process.roles` ("broker,controller",
    "broker" or "controller"); by default each is a broker and a voter. The voters are the nodes
    with the controller role. Every node is stopped at teardown; one that died on its own during
    the test is reported as an error."""
    nodes: list[Node] = []
    request.node._caudal_brokers = nodes

    def start(n: int = 3, settings: dict[str, object] | None = None,
              roles: list[str] | None = None, network=None) -> Cluster:
        base = len(nodes)
        roles = roles or ["broker,controller"] * n
        assert len(roles) == n, "one process.roles per node"
        if network is None:
            ports = [(free_port(), free_port()) for _ in range(n)]
            hosts = ["127.0.0.1"] * n
        else:
            # Each node on its own host (netns.py): the same ports on every address.
            ports = [(9092, 9093)] * n
            hosts = [network.address(i + 1) for i in range(n)]
        voters = ",".join(f"{i + 1}@{hosts[i]}:{c}" for i, (_, c) in enumerate(ports)
                          if "controller" in roles[i])
        members = []
        for i, (port, controller_port) in enumerate(ports):
            data_dir = tmp_path / f"node{base + i + 1}-data"
            data_dir.mkdir()
            node = Node(caudal_binary, data_dir, tmp_path / f"node{base + i + 1}.log", port,
                        i + 1, controller_port, voters, settings, roles[i], address=hosts[i],
                        netns=None if network is None else network.namespace(i + 1))
            nodes.append(node)
            members.append(node)
        cluster = Cluster(members)
        cluster.start()
        return cluster

    yield start

    errors = []
    # Every broker at once: one by one, the last would have no quorum left to confirm its stop.
    # Controller-only nodes go after the brokers, as with Kafka: a broker stopping needs the
    # controller to confirm its controlled shutdown.
    died = {id(n): n.died_unexpectedly() for n in nodes}
    for wave in ([n for n in nodes if n.is_broker], [n for n in nodes if not n.is_broker]):
        for node in wave:
            if node.is_running():
                node._expected_exit = True
                node.proc.send_signal(signal.SIGTERM)
        for node in wave:
            code = died[id(node)]
            if code is not None:
                errors.append(
                    f"node {node.node_id} exited on its own with code {code} during the test")
            try:
                node.cleanup()
            except BrokerError as e:
                errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def network():
    """Three network namespaces on a bridge (netns.py), removed at teardown. Skipped where they
    cannot be made (not root), except under CI=true, where that fails the test."""
    why = netns.available()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs the network fault tests, but {why}", pytrace=False)
        pytest.skip(why)
    net = netns.Network(3)
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A running broker with default settings."""
    return broker_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for i, b in enumerate(getattr(item, "_caudal_brokers", [])):
            report.sections.append(
                (f"caudal broker {i} log ({b.log_path})", b.log_tail()))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The fault scenarios' figures (test_faults.py), one line each."""
    figures = getattr(config, "_caudal_fault_figures", [])
    if figures:
        terminalreporter.section("fault scenarios")
        for name, summary in figures:
            terminalreporter.write_line(f"{name}: {summary}")
