"""`flapguard diff`: the alerts a candidate setting adds and removes against production."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streams.cli.options import CliError, Subparsers, add_broker, option, security_from


def add(sub: Subparsers) -> None:
    diff = sub.add_parser(
        "diff", help="the alerts a candidate setting adds and removes against production",
        description="Compare two sets of decisions of the same findings (production's and a "
        "candidate's: decisions files or decisions topics) and list, alert by alert, what the "
        "candidate would have sent that production did not, and the reverse, with the finding, "
        "the control, the resource and why.")
    for side in ("production", "candidate"):
        option(diff, f"--{side}", default=None, convert=Path,
               help=f"{side}'s decisions file (backtest --decisions-out)")
        option(diff, f"--{side}-topic", default=None,
               help=f"{side}'s decisions topic (a worker's --decisions-topic), read whole")
    add_broker(diff)
    diff.add_argument("--json", action="store_true", help="print the comparison as one JSON object")


def run(args: argparse.Namespace) -> int:
    import orjson

    from streams.backtest.diff import compare, render

    # Files first: both checked before any topic is read.
    for side in ("production", "candidate"):
        path = getattr(args, side)
        if path is not None and not path.is_file():
            raise CliError(f"decisions file not found: {path}")
        if path is None and getattr(args, f"{side}_topic") is None:
            raise CliError(f"give --{side} FILE or --{side}-topic TOPIC")
    production, candidate = _read(args, "production"), _read(args, "candidate")
    result = compare(production, candidate)
    if not result.compared:
        raise CliError("the two sides share no finding occurrence (decisions are matched by Kafka "
                       "record where both name one, else by file and line): are they decisions of "
                       "the same findings?")
    if args.json:
        print(orjson.dumps(result.to_json()).decode())
    else:
        print(render(result))
    return 0


def _read(args: argparse.Namespace, side: str) -> Any:
    from streams.backtest.diff import read_file, read_topic
    from streams.backtest.from_topic import TopicError

    path = getattr(args, side)
    if path is not None:
        return read_file(path)
    try:
        return read_topic(getattr(args, f"{side}_topic"), bootstrap=args.bootstrap_servers,
                          security=security_from(args))
    except TopicError as exc:
        raise CliError(str(exc)) from None
