"""`flapguard` command line: worker, demo, backtest, replay.

Every option `--some-name` can also be set as `FLAPGUARD_SOME_NAME`; the broker falls
back to `KAFKA_BOOTSTRAP_SERVERS`. Errors are one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from streams import __version__
from streams.config import (
    ConfigError,
    Policy,
    Severity,
    Topics,
    WorkerSettings,
    format_duration,
    parse_duration_ms,
)

ENV_PREFIX = "FLAPGUARD_"
EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(Exception):
    """An error for the user: printed as one line, exit non-zero."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    default: str | None,
    help: str,
    convert: Callable[[str], Any] = str,
    env_fallbacks: Sequence[str] = (),
    **kwargs: Any,
) -> None:
    """An option whose default comes from its environment variable, then `default`."""
    names = [env_name(flag), *env_fallbacks]
    raw = next((os.environ[n] for n in names if os.environ.get(n)), default)
    where = " or ".join(names)
    shown = f" (default {default})" if default is not None else ""
    try:
        value = None if raw is None else _typed(convert, where)(raw)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    parser.add_argument(
        flag,
        type=_typed(convert, flag),
        default=value,
        help=f"{help}{shown}; env {where}",
        **kwargs,
    )


def _typed(convert: Callable[[str], Any], label: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except (ConfigError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{label}: {exc}") from None

    parse.__name__ = label
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _add_policy(parser: argparse.ArgumentParser) -> None:
    d = Policy()
    _option(parser, "--window", default=format_duration(d.window_ms), convert=parse_duration_ms,
            help="pair an archive and a re-creation this close in event time")
    _option(parser, "--hold", default=format_duration(d.hold_ms), convert=parse_duration_ms,
            help="reorder buffer: decide an event once the watermark is this far past it")
    _option(parser, "--min-severity", default=d.min_severity.name, convert=Severity.parse,
            help="lowest severity that alerts")
    _option(parser, "--first-sight-age", default=format_duration(d.first_sight_age_ms),
            convert=parse_duration_ms,
            help="a finding first seen this long after its creation is a bootstrap, not new")
    _option(parser, "--state-ttl", default=format_duration(d.state_ttl_ms),
            convert=parse_duration_ms, help="forget a finding this long after its last update")


def policy_from(args: argparse.Namespace) -> Policy:
    return Policy(
        window_ms=args.window,
        hold_ms=args.hold,
        min_severity=args.min_severity,
        first_sight_age_ms=args.first_sight_age,
        state_ttl_ms=args.state_ttl,
    )


def _add_broker(parser: argparse.ArgumentParser, default: str | None = "127.0.0.1:9092") -> None:
    _option(parser, "--bootstrap-servers", default=default, env_fallbacks=["KAFKA_BOOTSTRAP_SERVERS"],
            help="Kafka bootstrap servers, host:port[,host:port]")


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    d = WorkerSettings()
    t = Topics()
    _option(parser, "--app-id", default=d.app_id, help="Faust app id (consumer group, table names)")
    _option(parser, "--findings-topic", default=t.findings, help="topic of raw findings")
    _option(parser, "--alerts-topic", default=t.alerts, help="topic of alerts and resolutions")
    _option(parser, "--suppressed-topic", default=t.suppressed, help="topic of suppressions")
    _option(parser, "--deadletter-topic", default=t.deadletter, help="topic of rejected input")
    _option(parser, "--decisions-topic", default=None,
            help="optional topic receiving every decision (for audits and the Kafka backtest)")
    _option(parser, "--partitions", default=str(d.partitions), convert=_positive_int,
            help="partitions of the keyed topic, the tables and the outputs it creates")
    _option(parser, "--store", default=d.store, help="Faust table store: memory:// or rocksdb://")
    _option(parser, "--data-dir", default=d.data_dir, help="worker data directory")
    _option(parser, "--idle-flush", default=format_duration(d.idle_flush_ms),
            convert=parse_duration_ms,
            help="a partition with no new event for this long (wall clock) releases its holds")
    _option(parser, "--session-timeout", default=format_duration(int(d.session_timeout_s * 1000)),
            convert=parse_duration_ms, help="Kafka consumer group session timeout")
    _option(parser, "--log-level", default=d.log_level, help="log level")


def worker_settings_from(args: argparse.Namespace) -> WorkerSettings:
    session_s = args.session_timeout / 1000
    return WorkerSettings(
        bootstrap_servers=args.bootstrap_servers,
        app_id=args.app_id,
        topics=Topics(
            findings=args.findings_topic,
            alerts=args.alerts_topic,
            suppressed=args.suppressed_topic,
            deadletter=args.deadletter_topic,
            decisions=args.decisions_topic,
        ),
        policy=policy_from(args),
        partitions=args.partitions,
        store=args.store,
        data_dir=args.data_dir,
        idle_flush_ms=args.idle_flush,
        session_timeout_s=session_s,
        heartbeat_interval_s=max(0.1, session_s / 10),
        log_level=args.log_level.upper(),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flapguard",
        description="De-duplicates AWS Security Hub CSPM finding notifications: pairs the archive "
        "of a failing finding with its re-creation in event time and alerts only on new risk.",
    )
    parser.add_argument("--version", action="version", version=f"flapguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    worker = sub.add_parser("worker", help="run the Faust stream worker",
                            description="Consume findings, decide, write alerts, suppressions, "
                            "dead letters (and optionally every decision) to Kafka.")
    _add_broker(worker)
    _add_worker_options(worker)
    _add_policy(worker)

    backtest = sub.add_parser("backtest", help="decide findings files in-process, in event time",
                              description="Run the worker's decision code over files of findings "
                              "(JSON Lines, or one JSON document) and report.")
    backtest.add_argument("--input", nargs="+", required=True, type=Path, metavar="PATH",
                          help="findings files: JSON Lines or one JSON document each")
    _add_policy(backtest)
    _option(backtest, "--partitions", default="1", convert=_positive_int,
            help="reproduce a worker with this many keyed partitions")
    _option(backtest, "--decisions-out", default=None, convert=Path,
            help="write one JSON object per finding occurrence, in input order")
    _option(backtest, "--report-out", default=None, convert=Path, help="write the report as JSON")

    replay = sub.add_parser("replay", help="put findings files onto a topic",
                            description="Produce every line (or the document) of findings files "
                            "to a topic, with the file and line in record headers.")
    replay.add_argument("--input", nargs="+", required=True, type=Path, metavar="PATH",
                        help="findings files")
    _add_broker(replay)
    _option(replay, "--topic", default=Topics().findings, help="topic to write to")
    _option(replay, "--partitions", default="8", convert=_positive_int,
            help="partitions if the topic must be created")

    demo = sub.add_parser("demo", help="replay the bundled RDS.45 incident through a worker",
                          description="Start a local broker unless one is configured, run the "
                          "worker, replay the bundled incident, print what was alerted, suppressed "
                          "and dead-lettered, stop everything and exit.")
    _add_broker(demo, default=None)
    demo.add_argument("--input", type=Path, default=None,
                      help="findings file to replay instead of the bundled incident")
    _option(demo, "--timeout", default="120s", convert=parse_duration_ms,
            help="give up if the worker has not decided everything by then")
    return parser


def _backtest(args: argparse.Namespace) -> int:
    from streams.backtest import read_occurrences, run_backtest
    from streams.records import decision_record

    for path in args.input:
        if not path.is_file():
            raise CliError(f"input not found: {path}")
    policy = policy_from(args)
    now_ms = int(time.time() * 1000)
    out = args.decisions_out.open("wb") if args.decisions_out else None
    try:
        def write(outcome: Any) -> None:
            if out is not None:
                out.write(orjson.dumps(decision_record(outcome)) + b"\n")

        report = run_backtest(read_occurrences(args.input, policy=policy, now_ms=now_ms),
                              policy=policy, partitions=args.partitions, on_decision=write)
    finally:
        if out is not None:
            out.close()
    summary = report.to_json()
    if args.report_out:
        args.report_out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    print(render_report(summary))
    return 0


def render_report(summary: dict[str, Any]) -> str:
    lines = [
        f"findings {summary['findings']}  alerts {summary['alerts']}  suppressed "
        f"{summary['suppressed']}  resolved {summary['resolved']}  dead letters "
        f"{summary['dead_letters']}  (naive notifier: {summary['naive_alerts']} alerts)",
    ]
    for label, count in summary["by_reason"].items():
        lines.append(f"  {label:<42} {count}")
    rate = summary["findings_per_second"]
    if rate:
        lines.append(f"{rate:,.0f} findings/s")
    return "\n".join(lines)


def _worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    run_worker(worker_settings_from(args))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from streams.replay import replay_files

    for path in args.input:
        if not path.is_file():
            raise CliError(f"input not found: {path}")
    count = replay_files(args.input, bootstrap=args.bootstrap_servers, topic=args.topic,
                         partitions=args.partitions)
    print(f"replayed {count} records to {args.topic}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.demo import DemoError, run_demo

    try:
        return run_demo(bootstrap=args.bootstrap_servers, input_path=args.input,
                        timeout_s=args.timeout / 1000)
    except DemoError as exc:
        raise CliError(str(exc)) from None


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "worker": _worker,
    "backtest": _backtest,
    "replay": _replay,
    "demo": _demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
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

    from streams.brokers import BrokerError

    return isinstance(exc, KafkaError | BrokerError)


if __name__ == "__main__":
    sys.exit(main())
