"""`flapguard replay`: put findings files onto a topic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streams.cli.options import (
    CliError,
    Subparsers,
    add_broker,
    add_producer,
    check_inputs,
    option,
    positive_int,
    producer_from,
    security_from,
)
from streams.kafka.topics import Topics


def add(sub: Subparsers) -> None:
    replay = sub.add_parser("replay", help="put findings files onto a topic",
                            description="Produce every line (or the document) of findings files "
                            "to a topic, with the file and line in record headers.")
    replay.add_argument("--input", nargs="+", required=True, type=Path, metavar="PATH",
                        help="findings files ('-': standard input)")
    add_broker(replay)
    add_producer(replay)
    option(replay, "--topic", default=Topics().findings, help="topic to write to")
    option(replay, "--partitions", default="8", convert=positive_int,
           help="partitions if the topic must be created")
    replay.add_argument("--allow-unparseable", action="store_true",
                        help="replay an input whose first records mostly hold no finding that "
                        "parses (refused otherwise, before anything is written)")


def run(args: argparse.Namespace) -> int:
    from streams import logs
    from streams.backtest.replay import MostlyUnparseable, replay_files

    # Its output is one line (and a one-line error): the Kafka client's own complaints,
    # retried writes and refused connections alike, would only repeat it as noise.
    logs.setup("CRITICAL")
    security = security_from(args)
    check_inputs(args.input, read_once=True)
    try:
        done = replay_files(args.input, bootstrap=args.bootstrap_servers, topic=args.topic,
                            partitions=args.partitions, security=security,
                            writes=producer_from(args), allow_unparseable=args.allow_unparseable)
    except MostlyUnparseable as exc:
        raise CliError(f"{exc}; nothing was written") from None
    if not done.records:
        raise CliError("the input holds nothing to replay (is it empty?)")
    print(f"replayed {done.records} records to {args.topic}")
    if done.without_finding:
        print(f"warning: {done.without_finding} of them hold no finding that parses; the worker "
              "dead-letters them", file=sys.stderr)
    return 0
