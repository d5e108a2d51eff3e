"""`flapguard demo`: replay the bundled RDS.45 incident through a worker."""

from __future__ import annotations

import argparse
from pathlib import Path

from streams.cli.options import CliError, Subparsers, add_broker, option, security_from
from streams.config import parse_duration_ms


def add(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="replay the bundled RDS.45 incident through a worker",
                          description="Start a local broker unless one is configured, run the "
                          "worker, replay the bundled incident, print what was alerted, suppressed "
                          "and dead-lettered, stop everything and exit.")
    add_broker(demo, default=None)
    demo.add_argument("--input", type=Path, default=None,
                      help="findings file to replay instead of the bundled incident")
    option(demo, "--timeout", default="120s", convert=parse_duration_ms,
           help="give up if the worker has not decided everything by then")


def run(args: argparse.Namespace) -> int:
    from streams import logs
    from streams.demo.run import DemoError, run_demo

    logs.setup("WARNING")  # the demo's output is its report; warnings only besides it
    try:
        return run_demo(bootstrap=args.bootstrap_servers, input_path=args.input,
                        timeout_s=args.timeout / 1000, security=security_from(args))
    except DemoError as exc:
        raise CliError(str(exc)) from None
