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
    BATCH_QUIET_S,
    ConfigError,
    Policy,
    Severity,
    Topics,
    WorkerSettings,
    env_name,
    format_duration,
    format_size,
    parse_duration_ms,
    parse_size,
)
from streams.kafka_auth import BrokerSecurity

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(Exception):
    """An error for the user: printed as one line, exit non-zero."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


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


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be positive, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {text}")
    return value


def _durations(text: str) -> list[int]:
    values = [parse_duration_ms(part) for part in text.split(",") if part.strip()]
    if not values or min(values) <= 0:
        raise ValueError(f"need positive durations separated by commas, got {text!r}")
    return sorted(set(values))


def _date_ms(text: str) -> int:
    from datetime import UTC, datetime

    try:
        day = datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (write it like 2025-09-01)") from None
    return int(day.timestamp() * 1000)


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
    _option(parser, "--max-message-bytes", default=format_size(d.max_message_bytes), convert=parse_size,
            help="a larger message is a dead letter (oversized)")
    _option(parser, "--max-findings-per-message", default=str(d.max_findings_per_message),
            convert=_positive_int, help="a message with more findings is a dead letter (too_many_findings)")
    _option(parser, "--max-depth", default=str(d.max_depth), convert=_positive_int,
            help="a finding nested deeper is a dead letter (too_deep)")
    _option(parser, "--max-string-length", default=str(d.max_string_length), convert=_positive_int,
            help="a finding with a longer string (key or value, in characters) is a dead letter "
            "(string_too_long)")


def policy_from(args: argparse.Namespace) -> Policy:
    return Policy(
        window_ms=args.window,
        hold_ms=args.hold,
        min_severity=args.min_severity,
        first_sight_age_ms=args.first_sight_age,
        state_ttl_ms=args.state_ttl,
        max_message_bytes=args.max_message_bytes,
        max_findings_per_message=args.max_findings_per_message,
        max_depth=args.max_depth,
        max_string_length=args.max_string_length,
    )


def _add_broker(parser: argparse.ArgumentParser, default: str | None = "127.0.0.1:9092") -> None:
    _option(parser, "--bootstrap-servers", default=default, env_fallbacks=["KAFKA_BOOTSTRAP_SERVERS"],
            help="Kafka bootstrap servers, host:port[,host:port]")
    _add_security(parser)


def _add_security(parser: argparse.ArgumentParser) -> None:
    """Broker TLS, SASL and MSK IAM (streams/kafka_auth.py checks the combination).
    Secrets: never a default shown, never echoed; their environment variables are the
    way to give them."""
    secret = " (a secret; prefer the environment variable)"
    _option(parser, "--security-protocol", default="PLAINTEXT",
            help="how to talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    _option(parser, "--ssl-ca-file", default=None,
            help="PEM file of the CA certificates that signed the brokers' (default: the "
            "system's)")
    _option(parser, "--ssl-cert-file", default=None,
            help="PEM client certificate (chain), for brokers that require one (mutual TLS)")
    _option(parser, "--ssl-key-file", default=None,
            help="PEM private key of --ssl-cert-file (unless that file holds it)")
    _option(parser, "--ssl-key-password", default=None, help="password of an encrypted key" + secret)
    _option(parser, "--sasl-mechanism", default=None,
            help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, or OAUTHBEARER (MSK IAM; implied by "
            "--msk-iam-region)")
    _option(parser, "--sasl-username", default=None, help="SASL PLAIN/SCRAM user name")
    _option(parser, "--sasl-password", default=None, help="SASL PLAIN/SCRAM password" + secret)
    _option(parser, "--msk-iam-region", default=None,
            help="Amazon MSK IAM: sign SASL OAUTHBEARER tokens for this Region with the AWS "
            "credential chain (needs --security-protocol SASL_SSL)")


def security_from(args: argparse.Namespace) -> BrokerSecurity:
    """The broker security of a command's options (a ConfigError if they do not fit)."""
    return BrokerSecurity(
        protocol=args.security_protocol, ca_file=args.ssl_ca_file, cert_file=args.ssl_cert_file,
        key_file=args.ssl_key_file, key_password=args.ssl_key_password,
        sasl_mechanism=args.sasl_mechanism, sasl_username=args.sasl_username,
        sasl_password=args.sasl_password, msk_iam_region=args.msk_iam_region)


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
    _option(parser, "--batch-size", default=str(d.batch_size), convert=_positive_int,
            help="records taken per agent batch (the broker's acknowledgements are awaited once "
            "per batch)")
    _option(parser, "--batch-wait", default=format_duration(d.batch_wait_ms), convert=parse_duration_ms,
            help=f"longest wait to fill a batch (a batch also closes once {BATCH_QUIET_S * 1000:g} ms "
            "pass with no new record: the consumer has handed over what it fetched)")
    _option(parser, "--session-timeout", default=format_duration(int(d.session_timeout_s * 1000)),
            convert=parse_duration_ms, help="Kafka consumer group session timeout")
    _option(parser, "--log-level", default=d.log_level, help="log level")
    _option(parser, "--metrics-address", default=d.metrics_address, convert=_metrics_address,
            help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free "
            "port; 'off': none); keep it on loopback unless a scraper needs it")
    parser.add_argument("--metrics-account-label", action="store_true",
                        default=_env_flag("--metrics-account-label"),
                        help="also count decisions per AWS account (one series per account); "
                        "env FLAPGUARD_METRICS_ACCOUNT_LABEL=1")


def _add_metrics_address(parser: argparse.ArgumentParser, default: str) -> None:
    _option(parser, "--metrics-address", default=default, convert=_metrics_address,
            help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0: any free "
            "port; 'off': none); keep it on loopback unless a scraper needs it")


def _serve_metrics(address: str | None, registry: Any) -> None:
    """Serve a forwarder's or the notifier's registry (a daemon thread; it ends with
    the process). A port in use is a one-line error, before any work starts."""
    if address is None:
        return
    import logging

    from streams.metrics import serve

    server = serve(address, registry)
    host, port = server.server_address[:2]
    logging.getLogger("flapguard.metrics").info("metrics on http://%s:%s/metrics", host, port)


def _metrics_address(text: str) -> str | None:
    from streams.metrics import parse_address

    if text.strip().lower() in ("off", "none", "no"):
        return None
    parse_address(text)
    return text.strip()


def _env_flag(flag: str) -> bool:
    return os.environ.get(env_name(flag), "").strip().lower() in ("1", "true", "yes", "on")


def worker_settings_from(args: argparse.Namespace) -> WorkerSettings:
    session_s = args.session_timeout / 1000
    return WorkerSettings(
        bootstrap_servers=args.bootstrap_servers,
        security=security_from(args),
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
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait,
        session_timeout_s=session_s,
        heartbeat_interval_s=max(0.1, session_s / 10),
        log_level=args.log_level.upper(),
        metrics_address=args.metrics_address,
        metrics_account_label=args.metrics_account_label,
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
    _option(backtest, "--sweep", default=None, convert=_durations,
            help="also backtest each of these windows, e.g. 1h,6h,12h,24h,30h,48h: one report "
            "row per window (alerts, suppressed, missed, false)")
    _option(backtest, "--plot", default=None, convert=Path,
            help="draw the sweep and the archive -> re-create gap histogram to this PNG")
    _option(backtest, "--labels", default=None, convert=Path,
            help="ground-truth labels (default: FILE.labels.jsonl beside a single input, if there)")
    backtest.add_argument("--no-labels", action="store_true", help="ignore ground-truth labels")
    backtest.add_argument("--via-kafka", action="store_true",
                          help="replay the input onto a fresh topic, run the real worker on it "
                          "under its own app id and report its decisions")
    _add_broker(backtest)
    _option(backtest, "--kafka-timeout", default="30m", convert=parse_duration_ms,
            help="--via-kafka: give up if the worker has not decided everything by then")

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

    generate = sub.add_parser("generate", help="write a labelled synthetic Security Hub feed",
                              description="Write a deterministic multi-account Security Hub feed "
                              "(JSON Lines of EventBridge events; .gz compresses) and, beside it, "
                              "its ground-truth labels (FILE.labels.jsonl).")
    _option(generate, "--seed", default="1", convert=int, help="random seed")
    _option(generate, "--accounts", default="40", convert=_positive_int, help="AWS accounts")
    _option(generate, "--days", default="21", convert=_positive_float, help="days of history")
    _option(generate, "--out", default=None, convert=Path, required=True,
            help="output file, FILE.jsonl or FILE.jsonl.gz")
    _option(generate, "--start", default="2025-09-01", convert=_date_ms,
            help="first day of the feed (UTC), YYYY-MM-DD")
    _option(generate, "--resources-per-region", default="12", convert=_positive_int,
            help="resources per account and Region (3 Regions)")
    _option(generate, "--per-standard-share", default="0.15", convert=_share,
            help="share of accounts on per-standard findings (half of them switch to consolidated)")
    _option(generate, "--same-arn-recreate-rate", default="0", convert=_share,
            help="share of deleted resources re-created under the same ARN, still failing "
            "where they failed (a real new risk a long window hides)")
    _option(generate, "--format", default="eventbridge", choices=["eventbridge", "bare"],
            help="one EventBridge event per line, or bare ASFF findings")
    _add_forward(sub)
    _add_notify(sub)
    return parser


def _backtest(args: argparse.Namespace) -> int:
    from streams.backtest import LabelChoice, LabelError, backtest_files, sweep
    from streams.records import decision_record

    for path in args.input:
        if not path.is_file():
            raise CliError(f"input not found: {path}")
    if args.labels is not None and not args.labels.is_file():
        raise CliError(f"labels not found: {args.labels}")
    if args.labels is not None and len(args.input) != 1:
        raise CliError("--labels needs exactly one --input")
    policy = policy_from(args)
    now_ms = int(time.time() * 1000)
    labels: LabelChoice = None if args.no_labels else ([args.labels] if args.labels else "beside")
    out = args.decisions_out.open("wb") if args.decisions_out else None
    try:
        def write(outcome: Any) -> None:
            if out is not None:
                out.write(orjson.dumps(decision_record(outcome)) + b"\n")

        if args.via_kafka:
            from streams.kafka_backtest import KafkaBacktestError, kafka_backtest

            try:
                report = kafka_backtest(args.input, bootstrap=args.bootstrap_servers, policy=policy,
                                        partitions=args.partitions, now_ms=now_ms, labels=labels,
                                        decisions_out=out, timeout_s=args.kafka_timeout / 1000,
                                        security=security_from(args))
            except KafkaBacktestError as exc:
                raise CliError(str(exc)) from None
        else:
            report = backtest_files(args.input, policy=policy, partitions=args.partitions,
                                    now_ms=now_ms, on_decision=write if out else None, labels=labels)
        summary = report.to_json()
        if args.sweep:
            rows, widest = sweep(args.input, args.sweep, policy=policy, partitions=args.partitions,
                                 now_ms=now_ms, labels=labels)
            summary["sweep"] = [row.to_json() for row in rows]
        else:
            rows, widest = [], None
        # Gaps as paired under the widest window run: it sees the longest ones.
        if widest is None or widest.policy.window_ms <= policy.window_ms:
            widest = report
        summary["gaps_hours_by_control"] = widest.gap_summary()
        summary["gaps_window_seconds"] = widest.policy.window_ms / 1000
    except LabelError as exc:
        raise CliError(str(exc)) from None
    finally:
        if out is not None:
            out.close()
    if args.report_out:
        args.report_out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    if args.plot:
        from streams.plot import plot_backtest

        plot_backtest(args.plot, rows, widest.gap_histogram(),
                      window_ms=policy.window_ms, title=", ".join(p.name for p in args.input))
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
    labels = summary.get("labels")
    if labels:
        lines.append(
            f"labels: missed true alerts {labels['missed_true_alerts']} of {labels['true_alerts']}, "
            f"false alerts {labels['false_alerts']}, suppression precision "
            f"{_share_text(labels['suppression_precision'])}, recall "
            f"{_share_text(labels['suppression_recall'])}, flap re-creations suppressed "
            f"{labels['flap_recreations_suppressed']} of {labels['flap_recreations']}")
    if summary.get("sweep"):
        lines.append(f"  {'window':>8} {'alerts':>8} {'suppressed':>11} {'missed':>7} {'false':>7}")
        for row in summary["sweep"]:
            window = format_duration(int(row["window_seconds"] * 1000))
            lines.append(f"  {window:>8} {row['alerts']:>8} {row['suppressed']:>11} "
                         f"{_blank(row['missed']):>7} {_blank(row['false']):>7}")
    rate = summary["findings_per_second"]
    if rate:
        lines.append(f"{rate:,.0f} findings/s")
    return "\n".join(lines)


def _share_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _blank(value: int | None) -> str:
    return "-" if value is None else str(value)


def _worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    run_worker(worker_settings_from(args))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from streams.replay import replay_files

    security = security_from(args)
    for path in args.input:
        if not path.is_file():
            raise CliError(f"input not found: {path}")
    count = replay_files(args.input, bootstrap=args.bootstrap_servers, topic=args.topic,
                         partitions=args.partitions, security=security)
    print(f"replayed {count} records to {args.topic}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.demo import DemoError, run_demo

    try:
        return run_demo(bootstrap=args.bootstrap_servers, input_path=args.input,
                        timeout_s=args.timeout / 1000, security=security_from(args))
    except DemoError as exc:
        raise CliError(str(exc)) from None


def _generate(args: argparse.Namespace) -> int:
    from streams.generate import Profile, labels_path, write_feed

    profile = Profile(seed=args.seed, accounts=args.accounts, days=args.days, start_ms=args.start,
                      resources_per_region=args.resources_per_region,
                      per_standard_share=args.per_standard_share,
                      same_arn_recreate_rate=args.same_arn_recreate_rate,
                      envelope=args.format == "eventbridge")
    started = time.perf_counter()
    stats = write_feed(profile, args.out)
    seconds = time.perf_counter() - started
    print(f"wrote {stats.findings} findings to {args.out} and labels to {labels_path(args.out)} "
          f"({stats.true_alerts} true alerts, {stats.expected_suppressions} expected suppressions; "
          f"{seconds:.1f} s)")
    return 0


def _flag(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A switch that `FLAPGUARD_SOME_NAME=1` also turns on."""
    on = os.environ.get(env_name(flag), "").lower() not in ("", "0", "false", "no")
    parser.add_argument(flag, action="store_true", default=on, help=f"{help}; env {env_name(flag)}")


def _since_ms(text: str) -> int:
    """An RFC 3339 time, or a duration meaning that long ago."""
    from streams.findings import parse_timestamp

    try:
        return parse_timestamp(text)
    except ValueError:
        return int(time.time() * 1000) - parse_duration_ms(text)


def _page_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise ValueError(f"must be 1 to 100, got {value}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_forward(sub: Any) -> None:
    forward = sub.add_parser("forward", help="get findings into Kafka: Security Hub poller, SQS",
                             description="Forward Security Hub findings to the findings topic, "
                             "keyed and placed as the worker keys them.")
    sources = forward.add_subparsers(dest="source", required=True, parser_class=_Parser)
    hub = sources.add_parser("securityhub", help="poll GetFindings (administrator account)",
                             description="Poll Security Hub GetFindings by UpdatedAt and produce "
                             "each finding; a durable cursor advances only after the broker's acks.")
    sqs = sources.add_parser("sqs", help="consume the EventBridge rule's SQS queue",
                             description="Consume Security Hub events from SQS (the EventBridge "
                             "rule's target), produce their findings, then delete the messages.")
    for parser in (hub, sqs):
        _add_broker(parser)
        _option(parser, "--topic", default=Topics().findings, help="findings topic to write to")
        _option(parser, "--partitions", default="8", convert=_positive_int,
                help="partitions if a topic must be created")
        _option(parser, "--endpoint-url", default=None,
                help="AWS endpoint (a VPC endpoint, or a stand-in such as moto)")
        _option(parser, "--region", default=None, env_fallbacks=["AWS_REGION", "AWS_DEFAULT_REGION"],
                help="AWS Region")
        _option(parser, "--max-attempts", default="10", convert=_positive_int,
                help="boto3 attempts per request (adaptive retry mode)")
        _flag(parser, "--once", "stop once everything available now is forwarded, exit 0")
        _add_metrics_address(parser, "127.0.0.1:9466")
    _option(hub, "--regions", default=None, convert=_names,
            help="comma-separated Regions to poll (without cross-Region aggregation); "
            "default: --region")
    _option(hub, "--role-arn", default=None, convert=_names,
            help="comma-separated roles to assume in each Region (without an administrator account)")
    _option(hub, "--sts-endpoint-url", default=None, help="STS endpoint for --role-arn")
    _option(hub, "--cursor", default="auto",
            help="where the cursor lives: topic:NAME (compacted), file:PATH or none; auto = "
            "topic:<topic>.cursor, or none with --once")
    _option(hub, "--overlap", default="15m", convert=parse_duration_ms,
            help="re-read this much before the cursor (findings show up late in GetFindings)")
    _option(hub, "--since", default=None, convert=_since_ms,
            help="never read findings updated before this (RFC 3339 time, or a duration ago)")
    _option(hub, "--poll-interval", default="60s", convert=parse_duration_ms,
            help="pause between sweeps in continuous mode")
    _option(hub, "--endpoint-sorts", default="auto", choices=["auto", "yes", "no"],
            help="whether the endpoint honours SortCriteria, letting the cursor advance page by "
            "page (auto: yes for AWS, no with --endpoint-url; moto does not sort)")
    _option(hub, "--page-size", default="100", convert=_page_size, help="GetFindings MaxResults")
    _flag(hub, "--pages", "write the findings bound for one partition as pages of up to 100 "
          "({\"Findings\": [...]}) instead of one record each: the worker's fastest input")
    _option(hub, "--rate", default="3", convert=float, help="GetFindings requests per second")
    _option(hub, "--burst", default="6", convert=_positive_int, help="GetFindings burst")
    _option(sqs, "--queue-url", default=None, help="the SQS queue the EventBridge rule targets")
    _option(sqs, "--deadletter-topic", default=Topics().deadletter,
            help="topic for messages that are not Security Hub findings events")
    _option(sqs, "--wait-time", default="20s", convert=parse_duration_ms,
            help="SQS long polling wait (at most 20s)")


def _cursor_store(args: argparse.Namespace) -> Any:
    from streams.cursor import FileCursor, NoCursor, TopicCursor

    spec: str = args.cursor
    if spec == "auto":
        spec = "none" if args.once else f"topic:{args.topic}.cursor"
    kind, _, where = spec.partition(":")
    if kind == "none":
        return NoCursor()
    if kind == "file" and where:
        return FileCursor(Path(where))
    if kind == "topic" and where:
        return TopicCursor(args.bootstrap_servers, where, security=security_from(args))
    raise CliError(f"--cursor: expected topic:NAME, file:PATH, none or auto, got {args.cursor!r}")


def _forward(args: argparse.Namespace) -> int:
    import asyncio

    from streams.forward import ForwardError

    if not args.region and not getattr(args, "regions", None):
        raise CliError("no AWS Region: give --region (or AWS_REGION)")
    security = security_from(args)
    import logging

    logging.basicConfig(level=logging.WARNING, format="flapguard forward: %(levelname)s %(message)s")
    from streams.forward_metrics import REGISTRY

    _serve_metrics(args.metrics_address, REGISTRY)
    try:
        if args.source == "securityhub":
            from streams.securityhub import PollSettings, Source, run_poller

            regions = args.regions or (args.region,)
            roles = args.role_arn or (None,)
            settings = PollSettings(
                bootstrap=args.bootstrap_servers, topic=args.topic,
                sources=tuple(Source(r, role) for r in regions for role in roles),
                endpoint_url=args.endpoint_url, partitions=args.partitions,
                overlap_ms=args.overlap, since_ms=args.since or 0, once=args.once,
                poll_interval_s=args.poll_interval / 1000, rate=args.rate, burst=args.burst,
                max_attempts=args.max_attempts, page_size=args.page_size,
                sts_endpoint_url=args.sts_endpoint_url,
                trust_order=args.endpoint_sorts == "yes"
                or (args.endpoint_sorts == "auto" and args.endpoint_url is None),
                security=security, pages=args.pages)
            count = asyncio.run(run_poller(settings, _cursor_store(args)))
        else:
            from streams.sqs import SqsSettings, run_sqs

            if not args.queue_url:
                raise CliError("no queue: give --queue-url")
            if args.wait_time > 20_000:
                raise CliError("--wait-time: SQS waits at most 20s")
            count = asyncio.run(run_sqs(SqsSettings(
                bootstrap=args.bootstrap_servers, topic=args.topic,
                deadletter_topic=args.deadletter_topic, queue_url=args.queue_url,
                region=args.region, endpoint_url=args.endpoint_url, partitions=args.partitions,
                once=args.once, wait_time_s=args.wait_time // 1000,
                max_attempts=args.max_attempts, security=security)))
    except ForwardError as exc:
        raise CliError(str(exc)) from None
    print(f"forwarded {count} findings to {args.topic}")
    return 0


def _secret_url(text: str) -> str:
    """A URL that holds a secret: checked, never echoed in an error."""
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("not an http(s) URL (value not shown: it is a secret)")
    return text.strip()


def _add_notify(sub: Any) -> None:
    from streams.notify import NotifySettings, RetryPolicy

    d = NotifySettings(bootstrap_servers="")
    r = RetryPolicy()
    notify = sub.add_parser("notify", help="deliver alerts to Slack, PagerDuty, SNS, stdout",
                            description="Consume the alerts topic and deliver each alert to the "
                            "sinks its route names (--routes), at least once: retries with backoff, "
                            "then a notification dead-letter topic; offsets are committed only "
                            "after delivery or dead-lettering.")
    _add_broker(notify)
    _option(notify, "--alerts-topic", default=d.alerts_topic, help="topic of alerts to deliver")
    _option(notify, "--group-id", default=d.group_id, help="Kafka consumer group")
    _option(notify, "--deadletter-topic", default=d.deadletter_topic,
            help="where alerts go that could not be delivered (error in headers)")
    _option(notify, "--routes", default=None, convert=Path,
            help="TOML routes file (see streams/data/routes.example.toml); default: every alert "
            "to every configured sink")
    _flag(notify, "--stdout", "print every routed alert as one JSON line (sink 'stdout')")
    _option(notify, "--slack-webhook-url", default=None, convert=_secret_url,
            help="Slack incoming webhook (a secret; prefer the environment variable)")
    _option(notify, "--slack-rate", default="1/s", convert=_rate,
            help="most messages per webhook per time unit; the rest wait their turn")
    _option(notify, "--pagerduty-routing-key", default=None,
            help="PagerDuty Events v2 integration key (a secret; prefer the environment variable)")
    _option(notify, "--pagerduty-url", default=d.pagerduty_url, convert=_secret_url,
            help="PagerDuty Events v2 endpoint")
    _option(notify, "--sns-topic-arn", default=None,
            help="SNS topic to publish to (Region and credentials from the AWS configuration)")
    _flag(notify, "--write-back", "set alerted and suppressed findings to NOTIFIED in Security Hub "
          "(BatchUpdateFindings; reads the suppressed topic too)")
    _option(notify, "--suppressed-topic", default=d.suppressed_topic,
            help="topic of suppressions (read only with --write-back)")
    _option(notify, "--max-attempts", default=str(r.attempts), convert=_positive_int,
            help="attempts per alert and sink before it is dead-lettered")
    _option(notify, "--retry-base", default=format_duration(int(r.base_s * 1000)),
            convert=parse_duration_ms, help="first retry pause (doubles each attempt, with jitter)")
    _option(notify, "--retry-max", default=format_duration(int(r.max_s * 1000)),
            convert=parse_duration_ms, help="longest retry pause (a Retry-After is honoured)")
    _option(notify, "--http-timeout", default=format_duration(int(d.http_timeout_s * 1000)),
            convert=parse_duration_ms, help="timeout of one delivery attempt")
    _option(notify, "--batch-size", default=str(d.batch_size), convert=_positive_int,
            help="alerts fetched, delivered and committed together")
    _option(notify, "--session-timeout", default=format_duration(d.session_timeout_ms),
            convert=parse_duration_ms, help="Kafka consumer group session timeout")
    _flag(notify, "--exit-when-idle", "exit 0 once every alert on the topic is delivered")
    _option(notify, "--log-level", default="WARNING", help="log level")
    _add_metrics_address(notify, "127.0.0.1:9465")


def _rate(text: str) -> float:
    from streams.notify import parse_rate

    return parse_rate(text)


def _notify(args: argparse.Namespace) -> int:
    import logging

    from streams.notify import NotifySettings, RetryPolicy, notify
    from streams.routing import Routes, check_configured, load_routes

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = NotifySettings(
        bootstrap_servers=args.bootstrap_servers, security=security_from(args),
        alerts_topic=args.alerts_topic,
        suppressed_topic=args.suppressed_topic, deadletter_topic=args.deadletter_topic,
        group_id=args.group_id, routes=load_routes(args.routes) if args.routes else Routes(),
        stdout=args.stdout, slack_webhook_url=args.slack_webhook_url, slack_rate=args.slack_rate,
        pagerduty_routing_key=args.pagerduty_routing_key, pagerduty_url=args.pagerduty_url,
        sns_topic_arn=args.sns_topic_arn, write_back=args.write_back,
        retry=RetryPolicy(attempts=args.max_attempts, base_s=args.retry_base / 1000,
                          max_s=args.retry_max / 1000),
        http_timeout_s=args.http_timeout / 1000, batch_size=args.batch_size,
        exit_when_idle=args.exit_when_idle, session_timeout_ms=args.session_timeout,
    )
    if not settings.configured_sinks() and not settings.write_back:
        raise CliError("no sink configured: give --slack-webhook-url, --pagerduty-routing-key, "
                       "--sns-topic-arn, --stdout or --write-back")
    check_configured(settings.routes, settings.configured_sinks())
    from streams.notify_metrics import REGISTRY

    _serve_metrics(args.metrics_address, REGISTRY)
    counts = notify(settings)
    print(f"delivered {counts.delivered} notifications for {counts.records} records; "
          f"dead-lettered {counts.dead_lettered}; written back {counts.written_back}",
          file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "worker": _worker,
    "backtest": _backtest,
    "replay": _replay,
    "demo": _demo,
    "generate": _generate,
    "forward": _forward,
    "notify": _notify,
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
