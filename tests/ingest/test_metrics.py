"""Forwarder metrics: `forward securityhub` scraped over HTTP while it polls moto; the
GetFindings, throttling and SQS counters of in-process runs against moto and the real
broker."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import orjson

from streams.demo.brokers import free_port
from streams.ingest import metrics as forward_metrics
from streams.ingest.cursor import NoCursor
from streams.ingest.securityhub import PollSettings, Source, run_poller
from streams.ingest.sqs import SqsSettings, run_sqs
from streams.kafka.topics import create_topics
from tests.aws import (  # noqa: F401
    ThrottlingProxy,
    client,
    import_findings,
    moto_fixture,
    moto_server_fixture,
    start_forward,
)
from tests.builders import envelope, epoch_ms, finding
from tests.ingest.test_securityhub import spread
from tests.scrape import scrape_until, value


def sample(name: str, **labels: str) -> float:
    return forward_metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_securityhub_poller_serves_findings_pages_cursor_and_last_poll_on_metrics(
        moto: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    findings = import_findings(moto, "us-east-1", spread(25, prefix="m", region="us-east-1"))
    out = f"{unique_name}-findings"
    asyncio.run(create_topics(kafka_bootstrap, {out: 2}))
    port = free_port()
    poller = start_forward("securityhub", "--endpoint-url", moto, "--region", "us-east-1",
                           "--bootstrap-servers", kafka_bootstrap, "--topic", out,
                           "--page-size", "10", "--poll-interval", "0.3s",
                           "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "poller.log")
    try:
        text, got = scrape_until(
            f"http://127.0.0.1:{port}/metrics",
            lambda s: value(s, "flapguard_forward_findings_total", source="securityhub") >= 25
            and value(s, "flapguard_forward_last_poll_success_timestamp_seconds",
                      source="securityhub") > 0, poller)
    finally:
        os.killpg(poller.pid, signal.SIGTERM)
        code = poller.wait(timeout=30)
    assert code == 0, (tmp_path / "poller.log").read_text()
    # Each finding once, however many sweeps ran; 25 findings are 3 pages of 10.
    assert value(got, "flapguard_forward_findings_total", source="securityhub") == 25
    pages = value(got, "flapguard_forward_getfindings_pages_total")
    assert pages >= 3
    assert value(got, "flapguard_forward_getfindings_requests_total") >= pages
    newest = max(epoch_ms(f["UpdatedAt"]) for f in findings)
    assert value(got, "flapguard_forward_cursor_timestamp_seconds") == newest / 1000
    # Bounded labels: no Region, endpoint or finding id in any series.
    assert "us-east-1" not in text and "127.0.0.1" not in text and findings[0]["Id"] not in text


def test_throttled_getfindings_requests_and_restarted_sweeps_are_counted(
        moto: str, kafka_bootstrap: str, unique_name: str) -> None:
    import_findings(moto, "us-east-1", spread(30, prefix="t", region="us-east-1"))
    out = f"{unique_name}-findings"
    before = {name: sample(name) for name in (
        "flapguard_forward_getfindings_requests_total", "flapguard_forward_getfindings_throttled_total",
        "flapguard_forward_sweep_retries_total", "flapguard_forward_getfindings_pages_total")}
    forwarded = sample("flapguard_forward_findings_total", source="securityhub")
    # Four throttled answers in a row: more than botocore's 3 attempts, so one sweep restarts.
    with ThrottlingProxy(moto, throttled=range(1, 5)) as proxy:
        settings = PollSettings(bootstrap=kafka_bootstrap, topic=out, sources=(Source("us-east-1"),),
                                endpoint_url=proxy.url, once=True, max_attempts=3, page_size=10,
                                trust_order=False)
        asyncio.run(run_poller(settings, NoCursor()))

    delta = {name: sample(name) - b for name, b in before.items()}
    # Every finding once: the restarted sweep skips the page it had already sent.
    assert sample("flapguard_forward_findings_total", source="securityhub") - forwarded == 30
    assert delta["flapguard_forward_getfindings_requests_total"] == proxy.requests
    assert delta["flapguard_forward_getfindings_throttled_total"] == proxy.throttled_count == 4
    assert delta["flapguard_forward_sweep_retries_total"] == 1
    # The restarted sweep read its first page again: 3 pages, then 4 (+ 1 before the throttling).
    assert delta["flapguard_forward_getfindings_pages_total"] >= 4


def test_sqs_messages_received_deleted_and_dead_letters_by_reason_are_counted(
        moto: str, kafka_bootstrap: str, unique_name: str) -> None:
    sqs = client("sqs", moto)
    queue = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    bodies = [orjson.dumps(envelope([finding(f"s{i}-{j}") for j in range(2)])).decode()
              for i in range(6)]
    bodies += ["not json {", orjson.dumps(envelope([])).decode()]
    for body in bodies:
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    names = ("flapguard_forward_sqs_messages_received_total",
             "flapguard_forward_sqs_messages_deleted_total")
    before = [sample(n) for n in names]
    findings = sample("flapguard_forward_findings_total", source="sqs")
    letters = [sample("flapguard_forward_dead_letters_total", source="sqs", reason=r)
               for r in ("unparseable", "empty_envelope")]

    count = asyncio.run(run_sqs(SqsSettings(
        bootstrap=kafka_bootstrap, topic=f"{unique_name}-findings",
        deadletter_topic=f"{unique_name}-deadletter", queue_url=queue, region="us-east-1",
        endpoint_url=moto, once=True, wait_time_s=1)))

    assert count == 12
    assert [sample(n) - b for n, b in zip(names, before, strict=True)] == [8, 8]
    assert sample("flapguard_forward_findings_total", source="sqs") - findings == 12
    assert [sample("flapguard_forward_dead_letters_total", source="sqs", reason=r) - b
            for r, b in zip(("unparseable", "empty_envelope"), letters, strict=True)] == [1, 1]
    assert sample("flapguard_forward_last_poll_success_timestamp_seconds", source="sqs") > 0
