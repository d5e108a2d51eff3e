"""The `flapguard` command line, one module per command; every `--some-name` is also
`FLAPGUARD_SOME_NAME` (the broker falls back to `KAFKA_BOOTSTRAP_SERVERS`). Errors are
one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Protocol

from streams import __version__
from streams.cli import backtest, demo, diff, explain, forward, generate, notify, replay, worker
from streams.cli.options import EXIT_FAILURE, CliError, Parser, Subparsers, raise_env_errors
from streams.config import ConfigError


class Command(Protocol):
    """A command module: registers its subparser, then runs the parsed arguments."""

    def add(self, sub: Subparsers) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# In the order of `flapguard --help`.
COMMANDS: dict[str, Command] = {
    "worker": worker,
    "backtest": backtest,
    "explain": explain,
    "diff": diff,
    "replay": replay,
    "demo": demo,
    "generate": generate,
    "forward": forward,
    "notify": notify,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flapguard",
        description="De-duplicates AWS Security Hub CSPM finding notifications: pairs the archive "
        "of a failing finding with its re-creation in event time and alerts only on new risk.",
    )
    parser.add_argument("--version", action="version", version=f"flapguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS.values():
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    raise_env_errors(args)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        return 130
    except (CliError, ConfigError, OSError) as exc:
        print(f"flapguard {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        if not _is_broker_error(exc):
            raise
        servers = getattr(args, "bootstrap_servers", None)
        print(f"flapguard {args.command}: error: Kafka at {servers}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _is_broker_error(exc: BaseException) -> bool:
    from aiokafka.errors import KafkaError

    from streams.kafka.availability import BrokerError

    return isinstance(exc, KafkaError | BrokerError)
