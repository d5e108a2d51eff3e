"""`flapguard forward securityhub|sqs`: get findings into Kafka, from the Security Hub
GetFindings poller or from the EventBridge rule's SQS queue."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from streams.cli.options import (
    CliError,
    Parser,
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
from streams.config import parse_duration_ms
from streams.kafka.topics import Topics


def add(sub: Subparsers) -> None:
    forward = sub.add_parser("forward", help="get findings into Kafka: Security Hub poller, SQS",
                             description="Forward Security Hub findings to the findings topic, "
                             "keyed and placed as the worker keys them.")
    sources = forward.add_subparsers(dest="source", required=True, parser_class=Parser)
    hub = sources.add_parser("securityhub", help="poll GetFindings (administrator account)",
                             description="Poll Security Hub GetFindings by UpdatedAt and produce "
                             "each finding; a durable cursor advances only after the broker's acks.")
    sqs = sources.add_parser("sqs", help="consume the EventBridge rule's SQS queue",
                             description="Consume Security Hub events from SQS (the EventBridge "
                             "rule's target), produce their findings, then delete the messages.")
    for parser in (hub, sqs):
        add_broker(parser)
        add_producer(parser)
        add_logging(parser)
        option(parser, "--topic", default=Topics().findings, help="findings topic to write to")
        option(parser, "--partitions", default="8", convert=positive_int,
               help="partitions if a topic must be created")
        option(parser, "--endpoint-url", default=None,
               help="AWS endpoint (a VPC endpoint, or a stand-in such as moto)")
        option(parser, "--region", default=None, env_fallbacks=["AWS_REGION", "AWS_DEFAULT_REGION"],
               help="AWS Region")
        option(parser, "--max-attempts", default="10", convert=positive_int,
               help="boto3 attempts per request (adaptive retry mode)")
        switch(parser, "--once", "stop once everything available now is forwarded, exit 0")
        add_metrics_address(parser, "127.0.0.1:9466")
    option(hub, "--regions", default=None, convert=_names,
           help="comma-separated Regions to poll (without cross-Region aggregation); "
           "default: --region")
    option(hub, "--role-arn", default=None, convert=_names,
           help="comma-separated roles to assume in each Region (without an administrator account)")
    option(hub, "--sts-endpoint-url", default=None, help="STS endpoint for --role-arn")
    option(hub, "--cursor", default="auto",
           help="where the cursor lives: topic:NAME (compacted), file:PATH or none; auto = "
           "topic:<topic>.cursor, or none with --once")
    option(hub, "--overlap", default="15m", convert=parse_duration_ms,
           help="re-read this much before the cursor (findings show up late in GetFindings)")
    option(hub, "--since", default=None, convert=_since_ms,
           help="never read findings updated before this (RFC 3339 time, or a duration ago)")
    option(hub, "--poll-interval", default="60s", convert=parse_duration_ms,
           help="pause between sweeps in continuous mode")
    option(hub, "--endpoint-sorts", default="auto", choices=["auto", "yes", "no"],
           help="whether the endpoint honours SortCriteria, letting the cursor advance page by "
           "page (auto: yes for AWS, no with --endpoint-url; moto does not sort)")
    option(hub, "--page-size", default="100", convert=_page_size, help="GetFindings MaxResults")
    switch(hub, "--pages", "write the findings bound for one partition as pages of up to 100 "
           "({\"Findings\": [...]}) instead of one record each: the worker's fastest input")
    option(hub, "--rate", default="3", convert=float, help="GetFindings requests per second")
    option(hub, "--burst", default="6", convert=positive_int, help="GetFindings burst")
    option(sqs, "--queue-url", default=None, help="the SQS queue the EventBridge rule targets")
    option(sqs, "--deadletter-topic", default=Topics().deadletter,
           help="topic for messages that are not Security Hub findings events")
    option(sqs, "--wait-time", default="20s", convert=parse_duration_ms,
           help="SQS long polling wait (at most 20s)")


def _since_ms(text: str) -> int:
    """An RFC 3339 time, or a duration meaning that long ago."""
    from streams.core.findings import parse_timestamp

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


def _cursor_store(args: argparse.Namespace) -> Any:
    from streams.ingest.cursor import FileCursor, NoCursor, TopicCursor

    spec: str = args.cursor
    if spec == "auto":
        spec = "none" if args.once else f"topic:{args.topic}.cursor"
    kind, _, where = spec.partition(":")
    if kind == "none":
        return NoCursor()
    if kind == "file" and where:
        return FileCursor(Path(where))
    if kind == "topic" and where:
        return TopicCursor(args.bootstrap_servers, where, security=security_from(args),
                           writes=producer_from(args))
    raise CliError(f"--cursor: expected topic:NAME, file:PATH, none or auto, got {args.cursor!r}")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from streams.ingest.forward import ForwardError

    if not args.region and not getattr(args, "regions", None):
        raise CliError("no AWS Region: give --region (or AWS_REGION)")
    security = security_from(args)
    from streams import logs

    logs.setup(args.log_level, args.log_format)
    from streams.ingest.metrics import REGISTRY

    serve_metrics(args.metrics_address, REGISTRY)
    try:
        if args.source == "securityhub":
            from streams.ingest.securityhub import PollSettings, Source, run_poller

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
                security=security, pages=args.pages, writes=producer_from(args))
            count = asyncio.run(run_poller(settings, _cursor_store(args)))
        else:
            from streams.ingest.sqs import SqsSettings, run_sqs

            if not args.queue_url:
                raise CliError("no queue: give --queue-url")
            if args.wait_time > 20_000:
                raise CliError("--wait-time: SQS waits at most 20s")
            count = asyncio.run(run_sqs(SqsSettings(
                bootstrap=args.bootstrap_servers, topic=args.topic,
                deadletter_topic=args.deadletter_topic, queue_url=args.queue_url,
                region=args.region, endpoint_url=args.endpoint_url, partitions=args.partitions,
                once=args.once, wait_time_s=args.wait_time // 1000,
                max_attempts=args.max_attempts, security=security, writes=producer_from(args))))
    except ForwardError as exc:
        raise CliError(str(exc)) from None
    print(f"forwarded {count} findings to {args.topic}")
    return 0
