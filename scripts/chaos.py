"""The chaos run: three workers on eight partitions decide findings from a plain
producer, a transactional producer (some transactions aborted) and occasional poison
records, while workers are SIGKILLed and restarted at random points and the broker is
restarted once (tests/chaos.py says what is checked).

Prints: kills survived, records, alerts expected and found, repeats (same key), lost,
unexpected, inputs decided twice differently, aborted records decided, poison records
not dead-lettered. Exits 1 unless every check holds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.demo.brokers import KafkaBroker, default_kafka_libs  # noqa: E402
from tests.chaos import Plan, run_chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of a worker (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--accounts", type=int, default=5, help="accounts of the generated history")
    parser.add_argument("--days", type=int, default=60, help="days of the generated history")
    parser.add_argument("--no-broker-restart", action="store_true")
    args = parser.parse_args()
    if args.kills < 1 or args.accounts < 1 or args.days < 1:
        parser.error("--kills, --accounts and --days must be at least 1")
    plan = Plan(kills=args.kills, seed=args.seed, accounts=args.accounts, days=args.days,
                broker_restart=not args.no_broker_restart)
    # The producers' clients complain of every refused connection while the broker restarts.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    with KafkaBroker(default_kafka_libs()) as broker, tempfile.TemporaryDirectory() as tmp:
        report = run_chaos(broker, Path(tmp), plan)
    print(report.figures())
    for name in ("lost", "unexpected", "inconsistent", "aborted_decided", "poison_missing"):
        found = getattr(report, name)
        if found:
            print(f"{name}: {found[:10]}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
