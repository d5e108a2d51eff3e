"""`flapguard backtest`: decide findings files in-process (or through a real worker with
`--via-kafka`), optionally sweep windows and plot, and print the report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import IO, Any

import orjson

from streams.cli.options import (
    CliError,
    Subparsers,
    add_broker,
    add_policy,
    check_inputs,
    durations,
    moment_ms,
    option,
    policy_from,
    positive_int,
    security_from,
)
from streams.config import parse_duration_ms


def add(sub: Subparsers) -> None:
    backtest = sub.add_parser("backtest", help="decide findings files or a topic's history, in event time",
                              description="Run the worker's decision code over files of findings "
                              "(JSON Lines, or one JSON document), or over the records a findings "
                              "topic holds, and report.")
    source = backtest.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", type=Path, metavar="PATH",
                        help="findings files: JSON Lines or one JSON document each (.gz "
                        "compressed; '-': standard input)")
    source.add_argument("--from-topic", metavar="TOPIC",
                        help="read the records this findings topic holds (no consumer group, no "
                        "commits, nothing written)")
    option(backtest, "--since", default=None, convert=moment_ms,
           help="--from-topic: count records from this moment (record timestamps), an ISO 8601 "
           "timestamp or a duration before now (14d); the window and first-sight age before it "
           "are read as warm-up (default: the earliest record kept)")
    option(backtest, "--until", default=None, convert=moment_ms,
           help="--from-topic: stop at this moment (default: where the topic ends when the run "
           "starts)")
    add_policy(backtest)
    option(backtest, "--partitions", default=None, convert=positive_int,
           help="reproduce a worker with this many keyed partitions (default: 1 for files, the "
           "topic's partition count for --from-topic)")
    option(backtest, "--jobs", default=None, convert=positive_int,
           help="--from-topic: processes that read and decide a co-partitioned topic's "
           "partitions side by side when only the report is asked for (no --decisions-out, "
           "--alerts-out or labels) (default: one per CPU)")
    option(backtest, "--decisions-out", default=None, convert=Path,
           help="write one JSON object per finding occurrence, in input order")
    option(backtest, "--alerts-out", default=None, convert=Path,
           help="write the records the worker puts on the alerts topic (alerts and "
           "resolutions, with their dedup_key), one JSON object a line, as they are decided")
    option(backtest, "--report-out", default=None, convert=Path, help="write the report as JSON")
    option(backtest, "--sweep", default=None, convert=durations,
           help="also backtest each of these windows, e.g. 1h,6h,12h,24h,30h,48h: one report "
           "row per window (alerts, suppressed, missed, false)")
    option(backtest, "--plot", default=None, convert=Path,
           help="draw the sweep and the archive -> re-create gap histogram to this PNG")
    option(backtest, "--labels", default=None, convert=Path,
           help="ground-truth labels (default: FILE.labels.jsonl beside a single input, if there)")
    backtest.add_argument("--no-labels", action="store_true", help="ignore ground-truth labels")
    backtest.add_argument("--via-kafka", action="store_true",
                          help="replay the input onto a fresh topic, run the real worker on it "
                          "under its own app id and report its decisions")
    add_broker(backtest)
    option(backtest, "--kafka-timeout", default="30m", convert=parse_duration_ms,
           help="--via-kafka: give up if the worker has not decided everything by then")


def write_alert_records(stream: IO[bytes], outcomes: list[Any]) -> None:
    """`--alerts-out`: what the worker puts on the alerts topic for these decisions, in
    the order it writes them, `emitted_at` as it would."""
    from streams.core.records import alert_records

    emitted = int(time.time() * 1000)
    for outcome in outcomes:
        for record in alert_records(outcome, emitted):
            stream.write(orjson.dumps(record) + b"\n")


def run(args: argparse.Namespace) -> int:
    if args.from_topic is not None:
        return run_topic(args)
    from streams.backtest.report import render_report
    from streams.backtest.run import LabelChoice, LabelError, backtest_files, sweep, sweep_by_control
    from streams.core.records import decision_record

    for flag, value in (("--since", args.since), ("--until", args.until), ("--jobs", args.jobs)):
        if value is not None:
            raise CliError(f"{flag} needs --from-topic")
    args.partitions = args.partitions or 1
    if args.alerts_out and args.via_kafka:
        raise CliError("--alerts-out decides in-process: read the worker's alerts topic with --via-kafka")
    rereads = [flag for flag, on in (("--sweep", args.sweep), ("--via-kafka", args.via_kafka)) if on]
    check_inputs(args.input, read_once=not rereads, why=" and ".join(rereads))
    if args.plot:
        from streams.backtest.plot import check_plot_path

        check_plot_path(args.plot)  # before the work, not after it
    if args.labels is not None and not args.labels.is_file():
        raise CliError(f"labels not found: {args.labels}")
    if args.labels is not None and len(args.input) != 1:
        raise CliError("--labels needs exactly one --input")
    policy = policy_from(args)
    now_ms = int(time.time() * 1000)
    labels: LabelChoice = None if args.no_labels else ([args.labels] if args.labels else "beside")
    out = args.decisions_out.open("wb") if args.decisions_out else None
    alerts_out = args.alerts_out.open("wb") if args.alerts_out else None
    try:
        def write(outcome: Any) -> None:
            if out is not None:
                out.write(orjson.dumps(decision_record(outcome)) + b"\n")

        def write_alerts(outcomes: list[Any]) -> None:
            if alerts_out is not None:
                write_alert_records(alerts_out, outcomes)

        if args.via_kafka:
            from streams.backtest.via_kafka import KafkaBacktestError, kafka_backtest

            try:
                report = kafka_backtest(args.input, bootstrap=args.bootstrap_servers, policy=policy,
                                        partitions=args.partitions, now_ms=now_ms, labels=labels,
                                        decisions_out=out, timeout_s=args.kafka_timeout / 1000,
                                        security=security_from(args))
            except KafkaBacktestError as exc:
                raise CliError(str(exc)) from None
        else:
            report = backtest_files(args.input, policy=policy, partitions=args.partitions,
                                    now_ms=now_ms, on_decision=write if out else None, labels=labels,
                                    on_decided=write_alerts if alerts_out else None)
        summary = report.to_json()
        if not summary["findings"]:
            raise CliError("the input holds nothing to decide (is it empty?)")
        if args.sweep:
            rows, widest = sweep(args.input, args.sweep, policy=policy, partitions=args.partitions,
                                 now_ms=now_ms, labels=labels)
            summary["sweep"] = [row.to_json() for row in rows]
            summary["sweep_by_control"] = sweep_by_control(rows)
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
        for handle in (out, alerts_out):
            if handle is not None:
                handle.close()
    if args.report_out:
        args.report_out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    if args.plot:
        from streams.backtest.plot import plot_backtest

        plot_backtest(args.plot, rows, widest.gap_histogram(),
                      window_ms=policy.window_ms, title=", ".join(p.name for p in args.input))
    print(render_report(summary))
    return 0


def run_topic(args: argparse.Namespace) -> int:
    """`--from-topic`: every option checked, then the topic read once (a sweep's windows
    decided in the same pass)."""
    from streams.backtest.from_topic import TopicError, backtest_topic
    from streams.backtest.report import render_report
    from streams.backtest.run import LabelError, read_labels, sweep_by_control
    from streams.core.records import kafka_decision_record

    if args.via_kafka:
        raise CliError("--via-kafka replays files: it does not go with --from-topic")
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise CliError("--until must come after --since")
    if args.since is not None and args.since > time.time() * 1000:
        raise CliError("--since is in the future")
    if args.plot:
        from streams.backtest.plot import check_plot_path

        check_plot_path(args.plot)
    if args.labels is not None and not args.labels.is_file():
        raise CliError(f"labels not found: {args.labels}")
    policy = policy_from(args)
    security = security_from(args)
    labels_file = None if args.no_labels else args.labels
    out = args.decisions_out.open("wb") if args.decisions_out else None
    alerts_out = args.alerts_out.open("wb") if args.alerts_out else None
    try:
        def write(outcome: Any) -> None:
            assert out is not None
            # The decisions topic's form: topic, partition and offset name the record.
            out.write(orjson.dumps(kafka_decision_record(outcome)) + b"\n")

        def write_alerts(outcomes: list[Any]) -> None:
            assert alerts_out is not None
            write_alert_records(alerts_out, outcomes)

        result = backtest_topic(
            args.from_topic, bootstrap=args.bootstrap_servers, security=security, policy=policy,
            partitions=args.partitions, since_ms=args.since, until_ms=args.until,
            now_ms=int(time.time() * 1000), on_decision=write if out else None,
            on_decided=write_alerts if alerts_out else None,
            labels=(lambda: read_labels([labels_file])) if labels_file else None,
            sweep=args.sweep, jobs=args.jobs)
    except (LabelError, TopicError) as exc:
        raise CliError(str(exc)) from None
    finally:
        for handle in (out, alerts_out):
            if handle is not None:
                handle.close()
    report = result.report
    summary = report.to_json()
    summary["source"] = result.source_json()
    if args.sweep:
        summary["sweep"] = [row.to_json() for row in result.rows]
        summary["sweep_by_control"] = sweep_by_control(result.rows)
    widest = result.widest
    if widest is None or widest.policy.window_ms <= policy.window_ms:
        widest = report
    summary["gaps_hours_by_control"] = widest.gap_summary()
    summary["gaps_window_seconds"] = widest.policy.window_ms / 1000
    if args.report_out:
        args.report_out.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    if args.plot:
        from streams.backtest.plot import plot_backtest

        plot_backtest(args.plot, result.rows, widest.gap_histogram(), window_ms=policy.window_ms,
                      title=args.from_topic)
    print(render_report(summary))
    return 0
