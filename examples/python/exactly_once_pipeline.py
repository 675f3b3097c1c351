"""A transactional consume-transform-produce pipeline, killed at random points, that still
writes every input exactly once.

The pipeline (the worker) reads orders from --topic, turns each into an invoice and writes it to
--target. Each batch is one transaction: the invoices AND the consumed offsets
(send_offsets_to_transaction) commit together or not at all. The supervisor (this script without
--worker) writes --count numbered orders, starts the worker and kills it with SIGKILL at a random
moment, --kills times: between transactions, with invoices written but not committed, or in the
middle of a commit. Each restart uses the same transactional.id, which fences the dead worker and
makes the broker abort what it left open; the consumer resumes from the offsets committed in the
last committed transaction. A worker that meets an error it cannot go on from exits, and the
supervisor starts it again, as a process manager would; a worker whose supervisor is gone (killed
too) stops rather than run on unwatched.

At the end the supervisor reads --target with isolation.level=read_committed and counts each
order: none missing, none twice. It also reads with read_uncommitted, which shows the records of
the aborted transactions that committed readers never see.

Run:

    python exactly_once_pipeline.py --topic orders --count 2000 --kills 5

Exits 0 if every order was invoiced exactly once, 1 if not (or the pipeline did not finish).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)

from config import (BOOTSTRAP, deserialize_json, ensure_topic, serialize_json, serialize_str)

# Records per transaction at most: a kill lands inside a transaction most of the time.
BATCH = 50


def invoice(order: dict) -> dict:
    """The per-record logic: an order in cents becomes an invoice with VAT, in euros."""
    net = order["cents"] / 100
    return {"run": order["run"], "order": order["n"], "net": net,
            "vat": round(net * 0.2, 2), "total": round(net * 1.2, 2)}


# --- the worker --------------------------------------------------------------

def rewind(consumer: Consumer) -> None:
    """Back to the last committed offsets, after an aborted transaction: its records are read
    and processed again."""
    assigned = consumer.assignment()
    if not assigned:
        return
    for tp in consumer.committed(assigned, timeout=30):
        consumer.seek(TopicPartition(tp.topic, tp.partition,
                                     tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))


def worker(args) -> int:
    # The same transactional.id as every earlier worker: InitProducerId fences them and the
    # coordinator aborts the transaction the last one left open.
    producer = Producer({"bootstrap.servers": BOOTSTRAP,
                         "transactional.id": f"{args.group}-worker",
                         "transaction.timeout.ms": 10000})
    producer.init_transactions(60)
    # A static member (group.instance.id): the restarted worker takes the dead one's place at
    # once instead of waiting for its session to time out.
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": args.group,
                         "group.instance.id": f"{args.group}-worker",
                         "session.timeout.ms": 10000,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed", "enable.partition.eof": True})
    consumer.subscribe([args.topic])
    supervisor = os.getppid()
    print("worker started", flush=True)
    done = 0
    at_end: set[int] = set()
    caught_up = False
    try:
        while True:
            if os.getppid() != supervisor:
                print("the supervisor is gone: stopping", file=sys.stderr, flush=True)
                return 3
            messages = consumer.consume(num_messages=BATCH, timeout=0.5)
            batch = []
            for m in messages:
                if m.error() is None:
                    batch.append(m)
                    at_end.discard(m.partition())
                    caught_up = False
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                else:
                    print(f"consumer error: {m.error().str()}", file=sys.stderr, flush=True)
            if not batch:
                assigned = {tp.partition for tp in consumer.assignment()}
                if assigned and assigned <= at_end:
                    if args.until_done:
                        print(f"worker done: {done} orders in this run", flush=True)
                        return 0
                    if not caught_up:
                        print("caught up with the input", flush=True)
                    caught_up = True
                continue
            try:
                producer.begin_transaction()
                for m in batch:
                    bill = invoice(deserialize_json(m.value()))
                    producer.produce(args.target, key=m.key(), value=serialize_json(bill))
                # The consumed offsets go into the same transaction as the invoices.
                producer.send_offsets_to_transaction(
                    consumer.position(consumer.assignment()),
                    consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(30)
            except KafkaException as e:
                error = e.args[0]
                if not error.txn_requires_abort():
                    raise
                print(f"aborting the transaction: {error.str()}", flush=True)
                producer.abort_transaction(30)
                rewind(consumer)
                continue
            done += len(batch)
            print(f"committed {len(batch)} orders ({done} in this run)", flush=True)
    except KafkaException as e:
        print(f"worker stopped: {e.args[0].str()}", file=sys.stderr, flush=True)
        return 2
    finally:
        consumer.close()


# --- the supervisor ----------------------------------------------------------

class Worker:
    """The worker as a child process, followed through what it prints: the orders it committed
    and whether it has caught up with the input."""

    def __init__(self, args, until_done: bool):
        command = [sys.executable, __file__, "--worker", "--topic", args.topic,
                   "--target", args.target, "--group", args.group]
        if until_done:
            command.append("--until-done")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.changed = threading.Condition()
        self.done = 0
        self.caught_up = False
        self.exited = False
        self.last = ""
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.last = line.strip()
                if line.startswith("committed"):
                    self.done = int(line.split("(", 1)[1].split()[0])
                elif line.startswith("caught up"):
                    self.caught_up = True
                self.changed.notify_all()
        with self.changed:
            self.exited = True
            self.changed.notify_all()

    def wait(self, predicate, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), max(0.0, timeout))


def produce_orders(topic: str, run: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True})
    for n in range(count):
        order = {"run": run, "n": n, "cents": 100 + (n * 37) % 9900}
        producer.produce(topic, key=serialize_str(f"customer-{n % 17}"),
                         value=serialize_json(order))
        if n % 1000 == 999:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError(f"could not write the orders to {topic}")


def read_all(topic: str, run: str, isolation: str, timeout: float) -> Counter:
    """How often each order of `run` appears in `topic`, read whole at `isolation`."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP,
                         "group.id": f"pipeline-check-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": isolation, "enable.partition.eof": True})
    consumer.subscribe([topic])
    seen: Counter = Counter()
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in consumer.consume(num_messages=500, timeout=0.5):
                if m.error() is None:
                    bill = deserialize_json(m.value())
                    if bill["run"] == run:
                        seen[bill["order"]] += 1
                    at_end.discard(m.partition())
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
            assigned = {tp.partition for tp in consumer.assignment()}
            if assigned and assigned <= at_end:
                return seen
        raise TimeoutError(f"could not read {topic} to its end in {timeout:g}s")
    finally:
        consumer.close()


def supervise(args) -> int:
    partitions = ensure_topic(args.topic, partitions=3)
    ensure_topic(args.target, partitions=partitions)
    run = uuid.uuid4().hex[:6]
    produce_orders(args.topic, run, args.count)
    print(f"wrote {args.count} orders of run {run} to {args.topic}")
    # Kill points: how many orders are committed when each kill comes, spread over the input.
    rng = random.Random(args.seed)
    targets = sorted(rng.sample(range(1, max(args.kills + 1, args.count * 9 // 10)), args.kills))
    deadline = time.monotonic() + args.duration
    kills = restarts = committed_before = 0
    while kills < args.kills:
        w = Worker(args, until_done=False)
        target = targets[kills]
        if not w.wait(lambda w: committed_before + w.done >= target or w.caught_up or w.exited,
                      deadline - time.monotonic()):
            w.proc.kill()
            print(f"the worker made no progress in time (last said: {w.last})", file=sys.stderr)
            return 1
        if w.exited:
            w.proc.wait()
            restarts += 1
            committed_before += w.done
            print(f"  the worker exited by itself ({w.proc.returncode}); starting it again")
            continue
        if not w.caught_up:
            # A transaction takes a few tens of milliseconds: a random delay of that order puts
            # the kill anywhere in one.
            time.sleep(rng.uniform(0.0, 0.1))
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait()
        committed_before += w.done
        if w.caught_up:
            print(f"  the worker caught up with the input after {kills} kills")
            break
        kills += 1
        print(f"  kill -9 #{kills} of the worker (its last line: {w.last or 'none yet'!r})")
    while True:
        print("  the last worker runs to the end of the input")
        w = Worker(args, until_done=True)
        try:
            code = w.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            print(f"the pipeline did not finish in {args.duration:g}s", file=sys.stderr)
            return 1
        if code == 0:
            break
        restarts += 1
        print(f"  the worker exited by itself ({code}); starting it again")

    committed = read_all(args.target, run, "read_committed", 60)
    everything = read_all(args.target, run, "read_uncommitted", 60)
    missing = [n for n in range(args.count) if committed[n] == 0]
    twice = sorted(n for n, k in committed.items() if k > 1)
    aborted = sum(everything.values()) - sum(committed.values())
    print(f"{kills} kills, {restarts} restarts after errors")
    print(f"read_committed:   {sum(committed.values())} invoices for {args.count} orders; "
          f"missing: {len(missing)}; twice: {len(twice)}")
    print(f"read_uncommitted: {sum(everything.values())} records, {aborted} of them from "
          "transactions the kills aborted")
    if missing or twice:
        print(f"NOT exactly once: missing {missing[:10]}, twice {twice[:10]}", file=sys.stderr)
        return 1
    print("exactly once: every order invoiced once")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="orders", help="input topic")
    ap.add_argument("--target", default=None, help="output topic (default: <topic>-invoices)")
    ap.add_argument("--group", default=None,
                    help="consumer group and transactional.id prefix (default: <topic>-pipeline)")
    ap.add_argument("--count", type=int, default=2000, help="orders to write")
    ap.add_argument("--kills", type=int, default=5, help="how often to kill -9 the worker")
    ap.add_argument("--seed", type=int, default=None, help="seed of the kill moments")
    ap.add_argument("--duration", type=float, default=120,
                    help="give up if the pipeline has not finished after this many seconds")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--until-done", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.target = args.target or f"{args.topic}-invoices"
    args.group = args.group or f"{args.topic}-pipeline"
    return worker(args) if args.worker else supervise(args)


if __name__ == "__main__":
    sys.exit(main())
