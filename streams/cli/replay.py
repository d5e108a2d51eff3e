"""`flapguard replay`: put findings files onto a topic."""

from __future__ import annotations

import argparse
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


def run(args: argparse.Namespace) -> int:
    from streams.backtest.replay import replay_files

    security = security_from(args)
    check_inputs(args.input, read_once=True)
    count = replay_files(args.input, bootstrap=args.bootstrap_servers, topic=args.topic,
                         partitions=args.partitions, security=security,
                         writes=producer_from(args))
    if not count:
        raise CliError("the input holds nothing to replay (is it empty?)")
    print(f"replayed {count} records to {args.topic}")
    return 0
