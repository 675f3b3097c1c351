"""A continuous stream of payment transactions at a chosen rate.

Each payment is a JSON object keyed by account, so one account's payments
stay in order in one partition. A few payments are "declined". The producer
is idempotent (enable.idempotence): if a send is retried after a lost reply,
the broker drops the duplicate, so each payment is stored exactly once and in
order.

The loop sends at --rate payments per second. Ctrl-C (SIGINT) or SIGTERM
stops it cleanly: it stops producing, flushes what is in flight and prints a
summary (counts, totals per currency, delivery results). --duration and
--count stop it the same way.

Run:

    python stream_payments.py                           # 2 payments/s until Ctrl-C
    python stream_payments.py --rate 50 --duration 10
    python stream_payments.py --count 100 --rate 0 --quiet

Exits 0 when every produced payment was delivered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
import uuid

from confluent_kafka import Producer

from config import BOOTSTRAP, ensure_topic, serialize_json, serialize_str

MERCHANTS = ["bookshop", "grocer", "airline", "cafe", "cinema", "pharmacy"]
CURRENCIES = ["EUR", "USD", "GBP"]


def make_payment(rng: random.Random, accounts: int) -> dict:
    return {
        "payment_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "account": f"acct-{rng.randrange(accounts):04d}",
        "merchant": rng.choice(MERCHANTS),
        "amount": round(rng.lognormvariate(3, 1), 2),
        "currency": rng.choice(CURRENCIES),
        "status": "declined" if rng.random() < 0.05 else "approved",
        "ts_ms": int(time.time() * 1000),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topic", default="payments")
    ap.add_argument("--partitions", type=int, default=3,
                    help="partition count used if the topic must be created")
    ap.add_argument("--rate", type=float, default=2, help="payments per second (0: no limit)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--count", type=int, default=None, help="stop after this many payments")
    ap.add_argument("--accounts", type=int, default=20, help="number of simulated accounts")
    ap.add_argument("--seed", type=int, default=None, help="random seed (repeatable values)")
    ap.add_argument("--quiet", action="store_true", help="do not print every payment")
    args = ap.parse_args()

    stop_reason = None

    def on_signal(signum, frame):
        nonlocal stop_reason
        stop_reason = signal.Signals(signum).name

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    ensure_topic(args.topic, partitions=args.partitions)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True,
                         "linger.ms": 20})
    rng = random.Random(args.seed)
    stats = {"sent": 0, "delivered": 0, "failed": 0, "declined": 0}
    totals: dict[str, float] = {}

    def on_delivery(err, msg):
        if err is not None:
            stats["failed"] += 1
            print(f"delivery failed: {err.str()}", file=sys.stderr)
        else:
            stats["delivered"] += 1

    print(f"streaming payments to {args.topic} at "
          f"{'max' if args.rate <= 0 else f'{args.rate:g}/s'}; Ctrl-C to stop", flush=True)
    start = time.monotonic()
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    next_at = start
    while stop_reason is None:
        now = time.monotonic()
        if args.count is not None and stats["sent"] >= args.count:
            stop_reason = "count reached"
            break
        if args.duration is not None and now - start >= args.duration:
            stop_reason = "duration reached"
            break
        if now < next_at:
            producer.poll(min(next_at - now, 0.1))
            continue
        next_at += interval

        payment = make_payment(rng, args.accounts)
        try:
            producer.produce(args.topic, key=serialize_str(payment["account"]),
                             value=serialize_json(payment), on_delivery=on_delivery)
        except BufferError:
            producer.poll(0.1)
            continue
        stats["sent"] += 1
        if payment["status"] == "declined":
            stats["declined"] += 1
        else:
            totals[payment["currency"]] = totals.get(payment["currency"], 0.0) + payment["amount"]
        producer.poll(0)
        if not args.quiet:
            print(f"{payment['account']} paid {payment['amount']:>8.2f} {payment['currency']} "
                  f"at {payment['merchant']:<9} {payment['status']}", flush=True)

    remaining = producer.flush(15)
    elapsed = time.monotonic() - start
    print(f"\nstopped ({stop_reason})")
    print(f"summary: sent {stats['sent']} payments in {elapsed:.1f} s "
          f"({stats['sent'] / elapsed if elapsed > 0 else 0:.1f}/s), "
          f"delivered {stats['delivered']}, failed {stats['failed'] + remaining}, "
          f"declined {stats['declined']}")
    print("approved totals: " + (", ".join(f"{c} {v:.2f}" for c, v in sorted(totals.items()))
                                 or "none"))
    return 0 if stats["failed"] == 0 and remaining == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
