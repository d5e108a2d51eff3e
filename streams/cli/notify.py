"""`flapguard notify`: deliver alerts to Slack, PagerDuty, SNS and stdout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from streams.cli.options import (
    CliError,
    Subparsers,
    add_broker,
    add_logging,
    add_metrics_address,
    add_producer,
    option,
    positive_int,
    producer_from,
    security_from,
    serve_metrics,
    switch,
)
from streams.config import format_duration, parse_duration_ms

if TYPE_CHECKING:
    from streams.notify.service import NotifySettings

# `--exit-when-idle` ran to the end, but some notifications went to the dead-letter topic.
EXIT_DEAD_LETTERED = 3


def add(sub: Subparsers) -> None:
    from streams.notify.service import NotifySettings, RetryPolicy

    d = NotifySettings(bootstrap_servers="")
    r = RetryPolicy()
    notify = sub.add_parser("notify", help="deliver alerts to Slack, PagerDuty, SNS, stdout",
                            description="Consume the alerts topic and deliver each alert to the "
                            "sinks its route names (--routes), at least once: retries with backoff, "
                            "then a notification dead-letter topic. Each sink has its own consumer "
                            "group (GROUP_ID.SINK), committed only after delivery or dead-lettering; "
                            "SIGTERM/SIGINT stop it within seconds, committing what was delivered. "
                            "`flapguard notify redeliver` re-sends the dead-letter topic once.")
    notify.add_argument("action", nargs="?", choices=["redeliver"], metavar="redeliver",
                        help="re-send the notifications on --deadletter-topic to the sink each "
                        "failed on, with their dedup_keys (never a PagerDuty trigger resolved "
                        f"since), then exit: 0, or {EXIT_DEAD_LETTERED} if any failed again; "
                        "progress in consumer group GROUP_ID.redeliver")
    add_broker(notify)
    add_producer(notify)
    option(notify, "--alerts-topic", default=d.alerts_topic, help="topic of alerts to deliver")
    option(notify, "--group-id", default=d.group_id,
           help="Kafka consumer groups: GROUP_ID.SINK for each sink (its lag is that sink's backlog)")
    option(notify, "--deadletter-topic", default=d.deadletter_topic,
           help="where alerts go that could not be delivered (error in headers)")
    option(notify, "--deliveries-topic", default=d.deliveries_topic,
           help="where each delivery is recorded (sink, outcome, time, dedup_key) for "
           "`flapguard explain`; created if missing; `off`: nowhere")
    option(notify, "--routes", default=None, convert=Path,
           help="TOML routes file (see streams/data/routes.example.toml); default: every alert "
           "to every configured sink")
    switch(notify, "--stdout", "print every routed alert as one JSON line (sink 'stdout')")
    option(notify, "--slack-webhook-url", default=None, convert=_secret_url,
           help="Slack incoming webhook (a secret; prefer the environment variable)")
    option(notify, "--slack-rate", default="1/s", convert=_rate,
           help="most messages per webhook per time unit; the rest wait their turn")
    option(notify, "--pagerduty-routing-key", default=None,
           help="PagerDuty Events v2 integration key (a secret; prefer the environment variable)")
    option(notify, "--pagerduty-url", default=d.pagerduty_url, convert=_secret_url,
           help="PagerDuty Events v2 endpoint")
    option(notify, "--sns-topic-arn", default=None,
           help="SNS topic to publish to (Region and credentials from the AWS configuration)")
    switch(notify, "--write-back", "set alerted and suppressed findings to NOTIFIED in Security Hub "
           "(BatchUpdateFindings; reads the suppressed topic too)")
    option(notify, "--suppressed-topic", default=d.suppressed_topic,
           help="topic of suppressions (read only with --write-back)")
    option(notify, "--max-attempts", default=str(r.attempts), convert=positive_int,
           help="attempts per alert and sink before it is dead-lettered")
    option(notify, "--retry-base", default=format_duration(int(r.base_s * 1000)),
           convert=parse_duration_ms, help="first retry pause (doubles each attempt, with jitter)")
    option(notify, "--retry-max", default=format_duration(int(r.max_s * 1000)),
           convert=parse_duration_ms, help="longest retry pause (a Retry-After is honoured)")
    option(notify, "--http-timeout", default=format_duration(int(d.http_timeout_s * 1000)),
           convert=parse_duration_ms, help="timeout of one delivery attempt")
    option(notify, "--batch-size", default=str(d.batch_size), convert=positive_int,
           help="alerts each sink fetches at once (its progress is committed every second)")
    option(notify, "--session-timeout", default=format_duration(d.session_timeout_ms),
           convert=parse_duration_ms, help="Kafka consumer group session timeout")
    switch(notify, "--exit-when-idle", "exit once every alert on the topic is delivered or "
           f"dead-lettered: 0, or {EXIT_DEAD_LETTERED} if anything was dead-lettered")
    switch(notify, "--check", "check each configured sink (reachable, accepted), send nothing and "
           "exit: 0 when every sink is usable, 1 naming each one that is not")
    switch(notify, "--test-message", "with --check: send one test message to each sink (a "
           "PagerDuty test event is resolved at once)")
    add_logging(notify)
    add_metrics_address(notify, "127.0.0.1:9465")


def _secret_url(text: str) -> str:
    """A URL that holds a secret: checked, never echoed in an error."""
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("not an http(s) URL (value not shown: it is a secret)")
    return text.strip()


def _rate(text: str) -> float:
    from streams.notify.service import parse_rate

    return parse_rate(text)


def run(args: argparse.Namespace) -> int:

    from streams import logs
    from streams.notify.routing import Routes, check_configured, load_routes
    from streams.notify.service import NotifySettings, RetryPolicy, notify

    logs.setup(args.log_level, args.log_format)
    settings = NotifySettings(
        bootstrap_servers=args.bootstrap_servers, security=security_from(args),
        writes=producer_from(args),
        alerts_topic=args.alerts_topic,
        suppressed_topic=args.suppressed_topic, deadletter_topic=args.deadletter_topic,
        deliveries_topic=None if args.deliveries_topic.strip() in ("", "off") else args.deliveries_topic,
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
    if args.test_message and not args.check:
        raise CliError("--test-message goes with --check")
    if args.check:
        return _check(settings, test_message=args.test_message)
    if args.action == "redeliver":
        return _redeliver(settings)
    from streams.notify.metrics import REGISTRY

    serve_metrics(args.metrics_address, REGISTRY)
    counts = notify(settings)
    summary = (f"delivered {counts.delivered} notifications for {counts.records} records; "
               f"dead-lettered {counts.dead_lettered}; written back {counts.written_back}")
    if settings.exit_when_idle and counts.dead_lettered:
        sinks = ", ".join(f"{sink} {n}" for sink, n in sorted(counts.dead_lettered_by_sink.items()))
        print(f"flapguard notify: error: {counts.dead_lettered} notification(s) dead-lettered to "
              f"{settings.deadletter_topic} ({sinks}); {summary}", file=sys.stderr)
        return EXIT_DEAD_LETTERED
    print(summary, file=sys.stderr)
    return 0


def _redeliver(settings: NotifySettings) -> int:
    from streams.notify.redeliver import Outcome, redeliver

    report = redeliver(settings)
    if report.count(Outcome.FAILED):
        print(f"flapguard notify redeliver: error: {report.summary()}; what failed is back on "
              f"{settings.deadletter_topic}", file=sys.stderr)
        return EXIT_DEAD_LETTERED
    print(report.summary(), file=sys.stderr)
    return 0


def _check(settings: NotifySettings, *, test_message: bool) -> int:
    from streams.notify.check import check

    results = check(settings, test_message=test_message)
    problems = [c.line() for c in results if c.problem is not None]
    if problems:
        raise CliError("; ".join(problems))
    sent = "one test message each" if test_message else "nothing sent"
    print(f"every sink is usable ({', '.join(c.sink for c in results)}; {sent})", file=sys.stderr)
    return 0
