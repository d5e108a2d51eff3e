"""`flapguard worker`: the Faust stream worker, and its settings from the options."""

from __future__ import annotations

import argparse

from streams.cli.options import (
    Subparsers,
    add_broker,
    add_logging,
    add_metrics_address,
    add_policy,
    add_producer,
    env_flag,
    option,
    policy_from,
    positive_int,
    producer_from,
    security_from,
    switch,
)
from streams.config import ConfigError, format_duration, parse_duration_ms
from streams.kafka.topics import Topics
from streams.worker.settings import BATCH_QUIET_S, WorkerSettings


def add(sub: Subparsers) -> None:
    worker = sub.add_parser("worker", help="run the Faust stream worker",
                            description="Consume findings, decide, write alerts, suppressions, "
                            "dead letters (and optionally every decision) to Kafka.")
    add_broker(worker)
    add_producer(worker)
    _add_worker_options(worker)
    add_policy(worker)


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    d = WorkerSettings()
    t = Topics()
    option(parser, "--app-id", default=d.app_id, help="Faust app id (consumer group, table names)")
    option(parser, "--findings-topic", default=t.findings, help="topic of raw findings")
    option(parser, "--alerts-topic", default=t.alerts, help="topic of alerts and resolutions")
    option(parser, "--suppressed-topic", default=t.suppressed, help="topic of suppressions")
    option(parser, "--deadletter-topic", default=t.deadletter, help="topic of rejected input")
    option(parser, "--decisions-topic", default=None,
           help="optional topic receiving every decision (for audits and the Kafka backtest)")
    option(parser, "--output-prefix", default=None,
           help="put this before the name of every topic it writes (alerts, suppressed, dead "
           "letters, decisions): a candidate beside production, e.g. candidate-12h.")
    switch(parser, "--allow-shared-outputs",
           "write to output topics whose last records another app id wrote (by default the "
           "worker refuses to start)")
    option(parser, "--partitions", default=str(d.partitions), convert=positive_int,
           help="partitions of the keyed topic, the tables and the outputs it creates")
    option(parser, "--store", default=d.store, help="Faust table store: memory:// or rocksdb://")
    option(parser, "--data-dir", default=d.data_dir, help="worker data directory")
    option(parser, "--idle-flush", default=format_duration(d.idle_flush_ms),
           convert=parse_duration_ms,
           help="a partition with no new event for this long (wall clock) releases its holds")
    option(parser, "--batch-size", default=str(d.batch_size), convert=positive_int,
           help="records taken per agent batch (the broker's acknowledgements are awaited once "
           "per batch)")
    option(parser, "--batch-wait", default=format_duration(d.batch_wait_ms), convert=parse_duration_ms,
           help=f"longest wait to fill a batch (a batch also closes once {BATCH_QUIET_S * 1000:g} ms "
           "pass with no new record: the consumer has handed over what it fetched)")
    option(parser, "--session-timeout", default=format_duration(int(d.session_timeout_s * 1000)),
           convert=parse_duration_ms, help="Kafka consumer group session timeout")
    add_logging(parser, d.log_level)
    add_metrics_address(parser, d.metrics_address)
    parser.add_argument("--metrics-account-label", action="store_true",
                        default=env_flag("--metrics-account-label"),
                        help="also count decisions per AWS account and show when each account "
                        "last sent a finding (series per account); env FLAPGUARD_METRICS_ACCOUNT_LABEL=1")


def worker_settings_from(args: argparse.Namespace) -> WorkerSettings:
    session_s = args.session_timeout / 1000
    return WorkerSettings(
        bootstrap_servers=args.bootstrap_servers,
        security=security_from(args),
        app_id=args.app_id,
        topics=output_topics(args),
        policy=policy_from(args),
        producer=producer_from(args),
        partitions=args.partitions,
        store=args.store,
        data_dir=args.data_dir,
        idle_flush_ms=args.idle_flush,
        batch_size=args.batch_size,
        batch_wait_ms=args.batch_wait,
        session_timeout_s=session_s,
        heartbeat_interval_s=max(0.1, session_s / 10),
        log_level=args.log_level.upper(),
        log_format=args.log_format,
        metrics_address=args.metrics_address,
        metrics_account_label=args.metrics_account_label,
        allow_shared_outputs=args.allow_shared_outputs,
    )


def output_topics(args: argparse.Namespace) -> Topics:
    """The topics of the options, the outputs under `--output-prefix` where given."""
    prefix = args.output_prefix or ""
    if prefix and not all(c.isalnum() or c in "._-" for c in prefix):
        raise ConfigError(f"--output-prefix {prefix!r}: a topic name holds only letters, digits, "
                          "'.', '_' and '-'")
    return Topics(
        findings=args.findings_topic,
        alerts=prefix + args.alerts_topic,
        suppressed=prefix + args.suppressed_topic,
        deadletter=prefix + args.deadletter_topic,
        decisions=None if args.decisions_topic is None else prefix + args.decisions_topic,
    )


def run(args: argparse.Namespace) -> int:
    from streams.worker.app import run_worker

    run_worker(worker_settings_from(args))
    return 0
