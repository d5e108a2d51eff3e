"""`flapguard explain`: one finding's or one resource's decisions, as a timeline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from streams.cli.options import (
    CliError,
    Subparsers,
    add_broker,
    add_policy,
    moment_ms,
    option,
    policy_from,
    positive_int,
    security_from,
)


def add(sub: Subparsers) -> None:
    explain = sub.add_parser(
        "explain", help="why a finding was or was not alerted: its decisions as a timeline",
        description="Print the decisions of a finding (and of the findings paired with it), a "
        "resource or a partition key, in event time: decision, kind or reason, paired finding "
        "and gap, dedup_key. From a decisions file, the decisions topic, or decided again from "
        "the findings topic (the first of the three given).")
    explain.add_argument("query", metavar="FINDING_ID_OR_RESOURCE",
                         help="a finding id, a resource id (Resources[0].Id) or a partition key")
    option(explain, "--decisions", default=None, convert=Path,
           help="a decisions file, as backtest --decisions-out writes it (.gz read compressed)")
    option(explain, "--decisions-topic", default=None,
           help="the worker's decisions topic, read whole (no consumer group)")
    option(explain, "--from-topic", default=None,
           help="no decisions kept: decide the findings topic's records again, as backtest "
           "--from-topic does, with the policy options given here")
    option(explain, "--since", default=None, convert=moment_ms,
           help="--from-topic: from this moment (ISO 8601 or a duration before now), after a warm-up")
    option(explain, "--until", default=None, convert=moment_ms, help="--from-topic: to this moment")
    add_policy(explain)
    option(explain, "--partitions", default=None, convert=positive_int,
           help="--from-topic: keyed partitions of the worker reproduced (default: the topic's "
           "partition count)")
    option(explain, "--deliveries", default=None, convert=Path,
           help="what the notifier delivered, from a file of its delivery records (JSON lines)")
    option(explain, "--deliveries-topic", default=None,
           help="the notifier's deliveries topic, read whole (default: securityhub.deliveries "
           "when the decisions come from a broker and it exists; `off`: none)")
    add_broker(explain)
    explain.add_argument("--json", action="store_true",
                         help="print the decisions as JSON lines instead of the timeline")


def run(args: argparse.Namespace) -> int:
    import orjson

    from streams.backtest.explain import (
        Query,
        deliveries_of,
        from_file,
        from_topic,
        render,
        timeline,
        written_alerts,
    )

    query = Query(args.query.strip())
    if not query.text:
        raise CliError("give a finding id, a resource id or a partition key")
    if args.decisions is not None:
        if not args.decisions.is_file():
            raise CliError(f"decisions file not found: {args.decisions}")
        records, source = from_file(args.decisions, query), str(args.decisions)
    elif args.decisions_topic is not None:
        records = from_topic(args.decisions_topic, query, bootstrap=args.bootstrap_servers,
                             security=security_from(args))
        source = args.decisions_topic
    elif args.from_topic is not None:
        records, source = _decide_again(args, query), f"{args.from_topic} (decided again)"
    else:
        raise CliError("give --decisions FILE, --decisions-topic TOPIC or --from-topic TOPIC")
    if not records:
        raise CliError(f"no decision about {query.text} in {source}")
    deliveries = _deliveries(args, query, records)
    if args.json:
        for record in timeline(records):
            if deliveries is not None and written_alerts(record):
                record = {**record, "deliveries": deliveries_of(record, deliveries)}
            print(orjson.dumps(record).decode())
    else:
        print(render(query, records, deliveries))
    return 0


DEFAULT_DELIVERIES_TOPIC = "securityhub.deliveries"


def _deliveries(args: argparse.Namespace, query: object,
                records: list[dict[str, object]]) -> list[dict[str, object]] | None:
    """What the notifier delivered for the timeline's alerts; None when nothing says."""
    from streams.backtest.explain import (
        Query,
        alert_keys,
        deliveries_from_file,
        deliveries_from_topic,
        topic_exists,
    )

    assert isinstance(query, Query)
    keys = alert_keys(records)
    if args.deliveries is not None:
        if not args.deliveries.is_file():
            raise CliError(f"deliveries file not found: {args.deliveries}")
        return deliveries_from_file(args.deliveries, query, keys)
    topic = args.deliveries_topic
    if topic is not None and topic.strip() in ("", "off"):
        return None
    broker = dict(bootstrap=args.bootstrap_servers, security=security_from(args))
    if topic is None:
        # By default only where the decisions came from a broker, and only if it is there.
        if args.decisions is not None or not topic_exists(DEFAULT_DELIVERIES_TOPIC, **broker):
            return None
        topic = DEFAULT_DELIVERIES_TOPIC
    elif not topic_exists(topic, **broker):
        raise CliError(f"deliveries topic not found: {topic}")
    return deliveries_from_topic(topic, query, keys, **broker)


def _decide_again(args: argparse.Namespace, query: object) -> list[dict[str, object]]:
    from streams.backtest.explain import Query, recorded
    from streams.backtest.from_topic import TopicError, backtest_topic

    assert isinstance(query, Query)
    if args.since is not None and args.until is not None and args.until <= args.since:
        raise CliError("--until must come after --since")
    found: list[dict[str, object]] = []
    try:
        backtest_topic(args.from_topic, bootstrap=args.bootstrap_servers, security=security_from(args),
                       policy=policy_from(args), partitions=args.partitions, since_ms=args.since,
                       until_ms=args.until, now_ms=int(time.time() * 1000),
                       on_decision=lambda outcome: found.extend(recorded([outcome], query)))
    except TopicError as exc:
        raise CliError(str(exc)) from None
    return found
