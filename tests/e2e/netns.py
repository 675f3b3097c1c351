"""Hosts of their own on this machine, for tests that cut nodes apart: one network namespace
per node, each with a veth into a bridge in the test's namespace. The test process reaches
every node at its address (10.X.Y.N) through the bridge; `cut(n)` drops, inside node n's
namespace, everything to and from the other nodes, so clients still reach it while its peers
do not; `heal(n)` undoes it.

Needs root, `ip` (iproute2) and `iptables`. Everything made is removed by `close()`, which the
fixture calls also when a test fails; names carry the test process's id, so a leftover from a
killed run never collides with a new one and `sweep()` removes it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess

PREFIX = "cdl"


def available() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: iproute2, iptables)"
    return None


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=20)


def sweep() -> None:
    """Removes namespaces and bridges of runs whose process is gone."""
    out = run("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX) and not _alive(name):
            run("ip", "netns", "del", name, check=False)
    out = run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout
    for line in out.splitlines():
        parts = line.split(":")
        name = parts[1].strip() if len(parts) > 1 else ""
        if name.startswith(PREFIX) and not _alive(name):
            run("ip", "link", "del", name, check=False)
            _forward_rule("-D", name)


def _alive(name: str) -> bool:
    pid = name[len(PREFIX):].split("n")[0].split("b")[0]
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def _forward_rule(action: str, bridge: str) -> None:
    # Docker's FORWARD policy drops bridged traffic when br_netfilter is loaded; traffic
    # between the nodes on this bridge is let through.
    run("iptables", action, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT", check=False)


class Network:
    """`size` namespaces on one bridge."""

    def __init__(self, size: int):
        sweep()
        tag = f"{os.getpid()}"
        self.bridge = f"{PREFIX}{tag}b"
        self.subnet = f"10.{random.randint(100, 250)}.{random.randint(1, 250)}"
        self.namespaces: list[str] = []
        self.cuts: set[int] = set()
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            _forward_rule("-I", self.bridge)
            for n in range(1, size + 1):
                ns = f"{PREFIX}{tag}n{n}"
                veth = f"{PREFIX}{tag}v{n}"
                run("ip", "netns", "add", ns)
                self.namespaces.append(ns)
                run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
                run("ip", "link", "set", veth, "master", self.bridge, "up")
                run("ip", "-n", ns, "addr", "add", f"{self.address(n)}/24", "dev", "eth0")
                run("ip", "-n", ns, "link", "set", "eth0", "up")
                run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def address(self, n: int) -> str:
        return f"{self.subnet}.{n}"

    def namespace(self, n: int) -> str:
        return self.namespaces[n - 1]

    def cut(self, n: int) -> None:
        """Node n no longer reaches the other nodes, nor they it; clients still reach it."""
        ns = self.namespace(n)
        for peer in range(1, len(self.namespaces) + 1):
            if peer != n:
                run("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s",
                    self.address(peer), "-j", "DROP")
                run("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d",
                    self.address(peer), "-j", "DROP")
        self.cuts.add(n)

    def heal(self, n: int) -> None:
        ns = self.namespace(n)
        run("ip", "netns", "exec", ns, "iptables", "-F", "INPUT")
        run("ip", "netns", "exec", ns, "iptables", "-F", "OUTPUT")
        self.cuts.discard(n)

    def close(self) -> None:
        for ns in self.namespaces:
            run("ip", "netns", "del", ns, check=False)
        self.namespaces = []
        run("ip", "link", "del", self.bridge, check=False)
        _forward_rule("-D", self.bridge)
