"""Consumer groups: partitions are shared out, and rebalanced when a member dies.

Starts --members consumers of one group, each as its own process (as separate
instances of a service would run), on a topic with --partitions partitions.
The group coordinator (the broker) gives every member a share of the
partitions; each partition belongs to exactly one member at a time. The demo
prints the assignment once the group is stable, then kills one member.

With --kill-signal KILL (the default) the member crashes without saying
goodbye: the broker only notices when no heartbeat arrived for
session.timeout.ms (--session-timeout-ms, 6 s here, 45 s by default in the
client). With TERM the member closes cleanly and leaves the group at once.
Either way the group rebalances and the survivors take over the dead
member's partitions; the demo prints the new assignment and how long it took.

Run:

    python group_demo.py                          # 3 members, 6 partitions
    python group_demo.py --members 4 --partitions 8 --kill-signal TERM
    python group_demo.py --strategy roundrobin

(--worker runs one member; the demo starts those itself.) Exits 0 when the
group rebalanced to cover every partition with the surviving members.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

from config import BOOTSTRAP, ensure_topic


# --- one group member (run with --worker) ------------------------------------

def run_worker(args) -> int:
    from confluent_kafka import Consumer

    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def emit(event: str, **fields) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    conf = {"bootstrap.servers": BOOTSTRAP, "group.id": args.group, "client.id": args.name,
            "auto.offset.reset": "earliest"}
    if args.protocol == "consumer":
        conf["group.protocol"] = "consumer"  # KIP-848: the broker computes assignments
    else:
        conf.update({"session.timeout.ms": args.session_timeout_ms,
                     "heartbeat.interval.ms": max(100, args.session_timeout_ms // 6),
                     "partition.assignment.strategy": args.strategy})
    consumer = Consumer(conf)
    consumer.subscribe([args.topic])
    emit("started", pid=os.getpid())
    current = None
    while not stopping:
        consumer.poll(0.2)  # also runs the group protocol: joins, heartbeats, rebalances
        now = sorted(tp.partition for tp in consumer.assignment())
        if now != current:
            current = now
            emit("assignment", partitions=now)
    consumer.close()  # leaves the group: the others rebalance immediately
    emit("closed")
    return 0


# --- the demo ------------------------------------------------------------------

class Member:
    def __init__(self, name: str, args, events: queue.Queue):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--name", name,
               "--topic", args.topic, "--group", args.group, "--protocol", args.protocol,
               "--strategy", args.strategy, "--session-timeout-ms", str(args.session_timeout_ms)]
        self.name = name
        self.partitions: list[int] | None = None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, args=(events,), daemon=True).start()

    def _read(self, events: queue.Queue) -> None:
        for line in self.proc.stdout:
            try:
                events.put((self.name, json.loads(line)))
            except ValueError:
                print(f"[{self.name}] {line.rstrip()}")


def stable(members: dict[str, Member], partitions: int) -> bool:
    """Every partition owned by exactly one live member, and the shares
    balanced (sizes differ by at most one), as the assignors aim for."""
    if any(m.partitions is None for m in members.values()):
        return False
    owned = [p for m in members.values() for p in m.partitions]
    if sorted(owned) != list(range(partitions)):
        return False
    sizes = [len(m.partitions) for m in members.values()]
    return max(sizes) - min(sizes) <= 1


def wait_stable(members, partitions, events, deadline) -> bool:
    while not stable(members, partitions):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            name, ev = events.get(timeout=remaining)
        except queue.Empty:
            return False
        if name not in members:
            continue  # late output of the killed member
        if ev["event"] == "assignment":
            members[name].partitions = ev["partitions"]
            print(f"  [{name}] now owns partitions {ev['partitions']}", flush=True)
    return True


def show(members) -> None:
    for name, m in members.items():
        print(f"  {name} -> {m.partitions}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="group-demo")
    ap.add_argument("--group", default=None, help="group id (default: a new one per run)")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--kill-signal", choices=["KILL", "TERM"], default="KILL")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--strategy", default="range", help="classic assignor: range, roundrobin")
    ap.add_argument("--protocol", choices=["classic", "consumer"], default="classic",
                    help="consumer = KIP-848 (the broker's session timeout then applies)")
    ap.add_argument("--duration", type=float, default=60,
                    help="give up if a stable group is not reached within this many seconds")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", default="member", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(args)

    args.group = args.group or f"group-demo-{uuid.uuid4().hex[:6]}"
    count = ensure_topic(args.topic, partitions=args.partitions)
    print(f"topic {args.topic}: {count} partitions; group {args.group}; "
          f"{args.members} members", flush=True)
    events: queue.Queue = queue.Queue()
    members = {f"c{i + 1}": None for i in range(args.members)}
    for name in members:
        members[name] = Member(name, args, events)
        print(f"started member {name} (pid {members[name].proc.pid})", flush=True)
    try:
        deadline = time.monotonic() + args.duration
        if not wait_stable(members, count, events, deadline):
            print("the group did not settle in time", file=sys.stderr)
            return 1
        print("group is stable:")
        show(members)

        victim_name = list(members)[-1]
        victim = members.pop(victim_name)
        orphaned = victim.partitions
        print(f"\nkilling {victim_name} (pid {victim.proc.pid}) with SIG{args.kill_signal}; "
              f"it owned partitions {orphaned}", flush=True)
        killed_at = time.monotonic()
        victim.proc.send_signal(signal.SIGKILL if args.kill_signal == "KILL" else signal.SIGTERM)
        victim.proc.wait()
        if not wait_stable(members, count, events, time.monotonic() + args.duration):
            print("the group did not rebalance in time", file=sys.stderr)
            return 1
        print(f"rebalance complete {time.monotonic() - killed_at:.1f} s after the kill:")
        show(members)
        owner = {p: n for n, m in members.items() for p in m.partitions}
        print("partitions of " + victim_name + " moved: "
              + ", ".join(f"{p} -> {owner[p]}" for p in orphaned))
        return 0
    finally:
        for m in members.values():
            if m.proc.poll() is None:
                m.proc.terminate()
        for m in members.values():
            try:
                m.proc.wait(15)
            except subprocess.TimeoutExpired:
                m.proc.kill()


if __name__ == "__main__":
    sys.exit(main())
