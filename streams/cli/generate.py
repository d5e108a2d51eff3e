"""`flapguard generate`: write a labelled synthetic Security Hub feed."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from streams.cli.options import Subparsers, date_ms, option, positive_float, positive_int, share


def add(sub: Subparsers) -> None:
    generate = sub.add_parser("generate", help="write a labelled synthetic Security Hub feed",
                              description="Write a deterministic multi-account Security Hub feed "
                              "(JSON Lines of EventBridge events; .gz compresses) and, beside it, "
                              "its ground-truth labels (FILE.labels.jsonl).")
    option(generate, "--seed", default="1", convert=int, help="random seed")
    option(generate, "--accounts", default="40", convert=positive_int, help="AWS accounts")
    option(generate, "--days", default="21", convert=positive_float, help="days of history")
    option(generate, "--out", default=None, convert=Path, required=True,
           help="output file, FILE.jsonl or FILE.jsonl.gz")
    option(generate, "--start", default="2025-09-01", convert=date_ms,
           help="first day of the feed (UTC), YYYY-MM-DD")
    option(generate, "--resources-per-region", default="12", convert=positive_int,
           help="resources per account and Region (3 Regions)")
    option(generate, "--per-standard-share", default="0.15", convert=share,
           help="share of accounts on per-standard findings (half of them switch to consolidated)")
    option(generate, "--same-arn-recreate-rate", default="0", convert=share,
           help="share of deleted resources re-created under the same ARN, still failing "
           "where they failed (a real new risk a long window hides)")
    option(generate, "--lambda-recreate-rate", default="0", convert=share,
           help="share of deleted Lambda functions re-created under the same ARN 45-90 min "
           "later, still failing (a real new risk; see --pairing in flapguard backtest)")
    option(generate, "--format", default="eventbridge", choices=["eventbridge", "bare"],
           help="one EventBridge event per line, or bare ASFF findings")


def run(args: argparse.Namespace) -> int:
    from streams.backtest.generate import Profile, labels_path, write_feed

    profile = Profile(seed=args.seed, accounts=args.accounts, days=args.days, start_ms=args.start,
                      resources_per_region=args.resources_per_region,
                      per_standard_share=args.per_standard_share,
                      same_arn_recreate_rate=args.same_arn_recreate_rate,
                      lambda_recreate_rate=args.lambda_recreate_rate,
                      envelope=args.format == "eventbridge")
    started = time.perf_counter()
    stats = write_feed(profile, args.out)
    seconds = time.perf_counter() - started
    print(f"wrote {stats.findings} findings to {args.out} and labels to {labels_path(args.out)} "
          f"({stats.true_alerts} true alerts, {stats.expected_suppressions} expected suppressions; "
          f"{seconds:.1f} s)")
    return 0
