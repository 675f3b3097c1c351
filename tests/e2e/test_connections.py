"""Connections under pressure: storms, max.connections, max.connections.per.ip.

These read the broker's memory and sockets from /proc (Linux), and hold thousands of sockets
open: the file limit of the test process (inherited by the broker) is raised for them.
"""

from __future__ import annotations

import os
import resource
import socket

import pytest

import wire
from support import proc_status_kib, produce_and_confirm, unique_topic, wait_until

STORM_CONNECTIONS = 5000
STORM_ROUNDS = 2
# The bound: RSS after the connections have closed, against RSS before they opened.
RSS_BOUND_BYTES = 20 * 1024 * 1024
# Freed memory goes back to the system within a couple of seconds (jemalloc purges pages
# unused for 1 s); this is the most a test waits for it.
RSS_SETTLE_TIMEOUT = 15.0
CLOSE_TIMEOUT = 10.0


def rss_bytes(pid: int) -> int:
    return proc_status_kib(pid, "VmRSS") * 1024


def open_connections(pid: int) -> int:
    """TCP connections the process holds (sockets in any state but LISTEN), found by matching
    the socket inodes of its file descriptors against /proc/<pid>/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            state, inode = fields[3], fields[9]
            if inode in inodes and state != "0A":  # 0A: LISTEN
                count += 1
    return count


def wait_for_no_connections(broker, what: str = "connections to close") -> None:
    """Waits until the broker holds only its listener (the harness's readiness probe, too,
    is a connection that must be gone before counts mean anything)."""
    pid = broker.proc.pid
    wait_until(lambda: open_connections(pid) == 0, timeout=30,
               message=f"{what} (the broker holds {open_connections(pid)})")


@pytest.fixture
def many_files():
    """Raises this process's open-file limit (the broker started after inherits it)."""
    want = STORM_CONNECTIONS + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))  # root may raise it
        except (ValueError, OSError):
            pytest.fail(f"the open-file limit is {hard} and cannot be raised to {want}; "
                        f"run with a higher `ulimit -Hn`", pytrace=False)
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def api_versions_frame(correlation_id: int) -> bytes:
    return wire.frame(wire.request_header_v1(wire.API_VERSIONS, 0, correlation_id))


def assert_answered(conn: wire.Connection, correlation_id: int) -> None:
    r = wire.Reader(conn.recv_frame())
    assert r.i32() == correlation_id
    assert r.i16() == 0, "ApiVersions answered with an error"


def served(broker, correlation_id: int = 1) -> wire.Connection:
    """A new connection, checked to be served; the caller closes it."""
    conn = wire.Connection(broker.host, broker.port)
    conn.send_raw(api_versions_frame(correlation_id))
    assert_answered(conn, correlation_id)
    return conn


# ---------------------------------------------------------------- memory of a storm


def test_connection_storm_memory_is_given_back(broker_factory, many_files):
    b = broker_factory()
    pid = b.proc.pid
    served(b).close()  # one-time allocations of the first connection, before measuring
    wait_for_no_connections(b, "the warm-up connection to close")
    before = rss_bytes(pid)
    report = [f"before: {before // 1024} kB"]
    for round_no in range(1, STORM_ROUNDS + 1):
        conns = []
        try:
            for i in range(STORM_CONNECTIONS):
                c = wire.Connection(b.host, b.port, timeout=30)
                c.send_raw(api_versions_frame(i))
                conns.append(c)
            for i, c in enumerate(conns):
                assert_answered(c, i)
            wait_until(lambda: open_connections(pid) >= STORM_CONNECTIONS,
                       timeout=CLOSE_TIMEOUT, message="the broker to hold every connection")
            peak = rss_bytes(pid)
        finally:
            for c in conns:
                c.close()
        wait_for_no_connections(b, f"all {STORM_CONNECTIONS} connections of round {round_no} "
                                   f"to close")
        try:
            after = wait_until(
                lambda: (r := rss_bytes(pid)) <= before + RSS_BOUND_BYTES and r,
                timeout=RSS_SETTLE_TIMEOUT, interval=0.25,
                message="broker RSS to come back within 20 MB of its level before the storm")
        except AssertionError as e:
            report.append(f"round {round_no}: peak {peak // 1024} kB, "
                          f"after close {rss_bytes(pid) // 1024} kB")
            raise AssertionError(f"{e}; {'; '.join(report)}") from None
        report.append(f"round {round_no}: peak {peak // 1024} kB, after close {after // 1024} kB")
    print("broker RSS:", "; ".join(report))
    served(b).close()


# ---------------------------------------------------------------- max.connections.per.ip


def test_connection_over_max_connections_per_ip_is_closed(broker_factory):
    limit = 3
    b = broker_factory({"max.connections.per.ip": limit})
    pid = b.proc.pid
    wait_for_no_connections(b)
    held = [served(b, correlation_id=10 + i) for i in range(limit)]
    try:
        # The connection over the limit is closed at once, without an answer.
        with wire.Connection(b.host, b.port) as extra:
            extra.send_raw(api_versions_frame(99))
            assert extra.wait_closed(CLOSE_TIMEOUT), \
                f"connection {limit + 1} from one address was served with " \
                f"max.connections.per.ip={limit}"
        # The first ones still work.
        for i, c in enumerate(held):
            c.send_raw(api_versions_frame(20 + i))
            assert_answered(c, 20 + i)
        assert "max.connections.per.ip" in b.log_text() and "refused connection" in b.log_text()
        # A closed connection gives its slot back: a real client uses it.
        held.pop().close()
        wait_until(lambda: open_connections(pid) == limit - 1,
                   timeout=CLOSE_TIMEOUT, message="the broker to see the connection closed")
        produce_and_confirm(b.bootstrap, unique_topic("per-ip"), [(None, b"in the freed slot")])
    finally:
        for c in held:
            c.close()


def test_max_connections_per_ip_overrides(broker_factory):
    # Every address is refused but 127.0.0.1, which may have 2.
    b = broker_factory({"max.connections.per.ip": 0,
                        "max.connections.per.ip.overrides": "127.0.0.1:2"})
    wait_for_no_connections(b)
    held = [served(b, correlation_id=i) for i in range(2)]
    try:
        with wire.Connection(b.host, b.port) as extra:
            extra.send_raw(api_versions_frame(3))
            assert extra.wait_closed(CLOSE_TIMEOUT), "a third connection was served"
    finally:
        for c in held:
            c.close()


# ---------------------------------------------------------------- max.connections


def test_connection_over_max_connections_waits_for_a_slot(broker_factory):
    limit = 3
    b = broker_factory({"max.connections": limit})
    wait_for_no_connections(b)
    held = [served(b, correlation_id=i) for i in range(limit)]
    waiting = wire.Connection(b.host, b.port)  # the kernel completes the handshake
    try:
        waiting.send_raw(api_versions_frame(77))
        # Not served while the broker is at its limit, and not closed either. (Only a fixed
        # wait can show that nothing happens.)
        waiting.sock.settimeout(2.0)
        with pytest.raises(socket.timeout):
            waiting.sock.recv(1)
        waiting.sock.settimeout(CLOSE_TIMEOUT)
        # Once a connection closes, the waiting one is served (within the socket's timeout).
        held.pop().close()
        assert_answered(waiting, 77)
        assert "max.connections reached" in b.log_text()
        # The others were served all along.
        for i, c in enumerate(held):
            c.send_raw(api_versions_frame(100 + i))
            assert_answered(c, 100 + i)
    finally:
        waiting.close()
        for c in held:
            c.close()
    # With every connection closed, a real client works.
    produce_and_confirm(b.bootstrap, unique_topic("max-conn"), [(None, b"ok")])
