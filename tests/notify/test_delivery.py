"""Delivery against real servers on loopback: Slack and PagerDuty stand-ins that record
and fail on demand, moto (SNS -> SQS), and a Security Hub stand-in for
BatchUpdateFindings. The Kafka loop itself is in tests/notify/test_service_kafka.py."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from streams.notify.routing import parse_routes
from streams.notify.service import (
    RETRY_AFTER_CAP_S,
    DeliveryError,
    Failure,
    Interrupted,
    Notifier,
    NotifySettings,
    RateLimiter,
    RetryPolicy,
    Sender,
    SnsSender,
    aws_client,
    deadletter_headers,
    finish_or_stop,
    open_senders,
    parse_rate,
    retry_after_seconds,
    with_retries,
)
from tests.aws import moto_server_fixture  # noqa: F401  (the session's moto server)
from tests.notify.test_sinks import FINDING_ID, record
from tests.notify_servers import Recorder, Reply, http_recorder

ALERTS = "alerts"
SUPPRESSED = "suppressed"
FAST = RetryPolicy(attempts=4, base_s=0.01, max_s=0.05)
SECRET_PATH = "/services/T000SECRET/B000SECRET/XXXXSECRETXXXX"


def consumer_record(
    value: dict[str, Any], offset: int = 0, topic: str = ALERTS,
) -> ConsumerRecord[bytes, bytes]:
    data = orjson.dumps(value)
    return ConsumerRecord(topic, 0, offset, 0, 0, value.get("dedup_key", "").encode(), data, None,
                          0, len(data), [])


def settings(**overrides: Any) -> NotifySettings:
    base: dict[str, Any] = {"bootstrap_servers": "unused", "alerts_topic": ALERTS,
                            "suppressed_topic": SUPPRESSED, "retry": FAST, "http_timeout_s": 2.0,
                            "slack_rate": 1000.0}
    base.update(overrides)
    return NotifySettings(**base)


def deliver(config: NotifySettings, records: list[ConsumerRecord[bytes, bytes]],
            senders: dict[str, Sender] | None = None, securityhub: Any = None) -> list[Failure]:
    async def run() -> list[Failure]:
        if senders is not None:
            return await Notifier(config, senders, securityhub, random.Random(1)).deliver_batch(records)
        async with open_senders(config) as opened:
            return await Notifier(config, opened, securityhub, random.Random(1)).deliver_batch(records)

    return asyncio.run(run())


@pytest.fixture
def slack() -> Iterator[Recorder]:
    with http_recorder(SECRET_PATH) as recorder:
        yield recorder


@pytest.fixture
def pagerduty() -> Iterator[Recorder]:
    with http_recorder("/v2/enqueue") as recorder:
        recorder.default = Reply(202, b'{"status":"success","message":"Event processed"}')
        yield recorder


# --------------------------------------------------------------------- retries

def test_slack_5xx_is_retried_until_delivered(slack: Recorder) -> None:
    slack.plan = [Reply(500), Reply(503)]
    failures = deliver(settings(slack_webhook_url=slack.url), [consumer_record(record())])
    assert failures == []
    assert slack.wait_answered(3) == [500, 503, 200]
    bodies = slack.bodies()
    assert bodies[0] == bodies[1] == bodies[2]
    assert "RDS.45" in bodies[2]["text"]


def test_a_timed_out_attempt_is_retried(slack: Recorder) -> None:
    slack.plan = [Reply(delay_s=1.5)]
    failures = deliver(settings(slack_webhook_url=slack.url, http_timeout_s=0.3),
                       [consumer_record(record())])
    assert failures == []
    assert len(slack.requests) == 2
    assert 200 in slack.wait_answered(1)  # the retry was answered


def test_429_waits_at_least_retry_after(slack: Recorder) -> None:
    slack.plan = [Reply(429, retry_after="1")]
    failures = deliver(settings(slack_webhook_url=slack.url), [consumer_record(record())])
    assert failures == []
    first, second = slack.requests
    # A lower bound only: the retry must not come sooner than the server asked.
    assert second.at - first.at >= 1.0


def test_retry_policy_backs_off_exponentially_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=6, base_s=1.0, max_s=8.0)
    rng = random.Random(7)
    delays = [[policy.delay(a, None, rng) for a in range(1, 6)] for _ in range(50)]
    for run in delays:
        for attempt, pause in enumerate(run, start=1):
            ceiling = min(8.0, 2 ** (attempt - 1))
            assert ceiling / 2 <= pause <= ceiling
    assert len({round(run[2], 6) for run in delays}) > 10  # jitter: not all equal
    assert policy.delay(1, 30.0, rng) == 30.0
    assert policy.delay(1, 10 ** 9, rng) == RETRY_AFTER_CAP_S
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_seconds("soon") is None


def test_a_4xx_is_not_retried_and_is_reported(slack: Recorder) -> None:
    slack.default = Reply(400, b"invalid_payload")
    failures = deliver(settings(slack_webhook_url=slack.url), [consumer_record(record())])
    assert len(slack.requests) == 1
    [failure] = failures
    assert (failure.sink, failure.error, failure.attempts) == ("slack", "HTTP 400", 1)


def test_after_the_configured_attempts_the_alert_fails_and_others_still_go(slack: Recorder) -> None:
    slack.plan = [Reply(500)] * 4  # the first alert's four attempts
    records = [consumer_record(record(dedup_key="first")), consumer_record(record(dedup_key="second"), 1)]
    config = settings(slack_webhook_url=slack.url)
    failures = deliver(config, records)
    assert [(f.record.offset, f.sink, f.error, f.attempts) for f in failures] == [(0, "slack", "HTTP 500", 4)]
    assert slack.wait_answered(5) == [500, 500, 500, 500, 200]


def test_unparseable_alert_records_fail_without_any_delivery(slack: Recorder) -> None:
    bad = ConsumerRecord(ALERTS, 0, 5, 0, 0, None, b"{not json", None, 0, 9, [])
    failures = deliver(settings(slack_webhook_url=slack.url), [bad])
    assert [(f.sink, f.attempts) for f in failures] == [("parse", 0)]
    assert slack.requests == []


# -------------------------------------------------------------------- secrets

def test_errors_logs_and_headers_never_contain_the_webhook_url_or_routing_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streams.demo.brokers import free_port

    caplog.set_level("INFO", logger="flapguard.notify")
    port = free_port()  # nothing listens there
    config = settings(slack_webhook_url=f"http://127.0.0.1:{port}{SECRET_PATH}",
                      pagerduty_routing_key="R0UT1NGKEYSECRET",
                      pagerduty_url=f"http://127.0.0.1:{port}/v2/enqueue?token=R0UT1NGKEYSECRET",
                      retry=RetryPolicy(attempts=2, base_s=0.01, max_s=0.01))
    failures = deliver(config, [consumer_record(record())])
    assert sorted(f.sink for f in failures) == ["pagerduty", "slack"]
    for failure in failures:
        assert "SECRET" not in failure.error
        assert all(b"SECRET" not in value for _, value in deadletter_headers(failure))
    assert "Cannot connect" in caplog.text and "SECRET" not in caplog.text


def test_help_and_bad_values_never_show_secrets(tmp_path: Path) -> None:
    env = {"PATH": "", "FLAPGUARD_SLACK_WEBHOOK_URL": "https://hooks.slack.test" + SECRET_PATH,
           "FLAPGUARD_PAGERDUTY_ROUTING_KEY": "R0UT1NGKEYSECRET"}
    shown = subprocess.run([sys.executable, "-m", "streams", "notify", "--help"], env=env,
                           capture_output=True, text=True, check=True)
    assert "notify" in shown.stdout and "SECRET" not in shown.stdout
    bad = subprocess.run([sys.executable, "-m", "streams", "notify",
                          "--slack-webhook-url", "hooks.slack.test/T000SECRET"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "not an http(s) URL" in bad.stderr and "SECRET" not in bad.stderr


# ------------------------------------------------------------------ rate limit

def test_slack_queue_keeps_order_drops_nothing_and_respects_the_rate(slack: Recorder) -> None:
    records = [consumer_record(record(dedup_key=f"k{i}", title=f"alert {i}"), i) for i in range(8)]
    failures = deliver(settings(slack_webhook_url=slack.url, slack_rate=parse_rate("10/s")), records)
    assert failures == []
    titles = [b["blocks"][1]["text"]["text"] for b in slack.bodies()]
    assert [t.split("`")[1] for t in titles] == [f"alert {i}" for i in range(8)]
    # 10/s: seven more slots of 100 ms after the first (a lower bound, never an upper one;
    # loose enough for the first request's connection set-up).
    assert slack.requests[-1].at - slack.requests[0].at >= 0.6


def test_rate_limiter_spaces_waiters_first_come_first_served() -> None:
    async def run() -> list[tuple[int, float]]:
        limiter = RateLimiter(rate=40.0)
        passed: list[tuple[int, float]] = []

        async def waiter(i: int) -> None:
            await limiter.wait()
            passed.append((i, time.monotonic()))

        await asyncio.gather(*(waiter(i) for i in range(6)))
        limiter.defer(0.2)
        await waiter(6)
        return passed

    passed = asyncio.run(run())
    assert [i for i, _ in passed] == list(range(7))
    gaps = [b - a for (_, a), (_, b) in pairwise(passed)]
    assert all(gap >= 0.025 - 0.005 for gap in gaps[:5])  # event-loop clock resolution
    assert gaps[5] >= 0.2 - 0.005  # a 429's Retry-After holds back the next send


def test_parse_rate() -> None:
    assert parse_rate("1/s") == 1.0 and parse_rate("30/m") == 0.5 and parse_rate(" 20 / s ") == 20.0
    for bad in ("fast", "0/s", "1/d", "-1/s"):
        with pytest.raises(ValueError):
            parse_rate(bad)


# ------------------------------------------------------------------- PagerDuty

def test_pagerduty_gets_trigger_then_resolve_with_the_same_dedup_key(pagerduty: Recorder) -> None:
    records = [consumer_record(record(severity="CRITICAL")),
               consumer_record(record(kind="resolved", compliance_status="PASSED"), 1)]
    failures = deliver(settings(pagerduty_routing_key="rk-1", pagerduty_url=pagerduty.url), records)
    assert failures == []
    trigger, resolve = pagerduty.bodies()
    assert trigger["event_action"] == "trigger" and trigger["payload"]["severity"] == "critical"
    assert resolve == {"routing_key": "rk-1", "event_action": "resolve", "dedup_key": "dk-0123456789abcdef"}
    assert pagerduty.requests[0].headers["Content-Type"] == "application/json"


def test_routes_pick_the_sinks(slack: Recorder, pagerduty: Recorder) -> None:
    routes = parse_routes({"route": [
        {"match": {"min_severity": "HIGH"}, "sinks": ["pagerduty"], "continue": True},
        {"match": {}, "sinks": ["slack"], "notify_resolved": False},
    ]})
    config = settings(slack_webhook_url=slack.url, pagerduty_routing_key="rk",
                      pagerduty_url=pagerduty.url, routes=routes)
    records = [consumer_record(record(dedup_key="high", severity="HIGH")),
               consumer_record(record(dedup_key="low", severity="LOW"), 1),
               consumer_record(record(dedup_key="low", severity="LOW", kind="resolved"), 2)]
    assert deliver(config, records) == []
    assert [b["dedup_key"] for b in pagerduty.bodies()] == ["high"]
    assert len(slack.requests) == 2  # high (continue) and low; not the resolved one


# ------------------------------------------------------------------------ SNS

@pytest.fixture
def moto(moto_server: str) -> str:
    """The test session's moto server (tests/aws.py)."""
    return moto_server


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def sns_client(url: str) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_SNS", url)
        return aws_client("sns", settings())


def test_sns_delivers_subject_text_and_filterable_attributes(moto: str, aws_env: None) -> None:
    import boto3

    sns = sns_client(moto)
    sqs = boto3.client("sqs", endpoint_url=moto)
    topic = sns.create_topic(Name="flapguard-alerts")["TopicArn"]
    queue = sqs.create_queue(QueueName="alerts-mailbox")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    queue_arn = attributes["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    records = [consumer_record(record(severity="HIGH", title="Hostile <!channel> *x*")),
               consumer_record(record(dedup_key="big", title="t", description="D" * 300_000,
                                      resource_id="r" * 300_000), 1)]
    failures = deliver(settings(), records, senders={"sns": SnsSender(topic, sns)})
    assert failures == []

    got: list[dict[str, Any]] = []
    while len(got) < 2:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=5)
        got.extend(orjson.loads(m["Body"]) for m in messages.get("Messages", []))
    by_key = {("big" if "dedup_key\": \"big" in m["Message"] else "first"): m for m in got}
    first = by_key["first"]
    assert first["Subject"] == "[HIGH] RDS.45 new: Hostile <!channel> *x*"
    assert {k: v["Value"] for k, v in first["MessageAttributes"].items()} == {
        "severity": "HIGH", "account": "123456789012", "control": "RDS.45", "kind": "new"}
    assert "Title:         Hostile <!channel> *x*" in first["Message"]
    big = by_key["big"]
    assert len(big["Message"].encode()) <= 256 * 1024
    assert "truncated" in big["Message"]


def test_sns_rejection_becomes_a_failure_not_a_crash(moto: str, aws_env: None) -> None:
    sns = sns_client(moto)
    missing = "arn:aws:sns:us-east-1:123456789012:no-such-topic"
    failures = deliver(settings(), [consumer_record(record())], senders={"sns": SnsSender(missing, sns)})
    [failure] = failures
    assert failure.sink == "sns" and "NotFound" in failure.error and failure.attempts == 1


# ----------------------------------------------------------------- write-back

def securityhub_client(url: str) -> Any:
    """The notifier's own client (no botocore retries), pointed at the stand-in the way an
    operator would: AWS_ENDPOINT_URL_SECURITYHUB."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL_SECURITYHUB", url.rstrip("/"))
        return aws_client("securityhub", settings())


def test_write_back_sends_the_exact_batch_update_findings_body(aws_env: None) -> None:
    with http_recorder("/") as hub:
        hub.default = Reply(200, b'{"ProcessedFindings": [], "UnprocessedFindings": []}')
        client = securityhub_client(hub.url)
        alerted = [consumer_record(record(finding_id=f"{FINDING_ID}-{i}", dedup_key=f"k{i}"), i)
                   for i in range(150)]
        resolved = consumer_record(record(kind="resolved"), 150)
        suppressed = consumer_record({
            "finding_id": FINDING_ID, "paired_finding_id": FINDING_ID + "-old", "key": "k",
            "archived_at": "2025-09-30T16:14:03.000Z", "recreated_at": "2025-10-01T04:44:21.000Z",
            "gap_seconds": 45018.0, "reason": "recreated_after_archive"}, 0, topic=SUPPRESSED)
        late = consumer_record({"finding_id": FINDING_ID, "reason": "late_pair"}, 1, topic=SUPPRESSED)
        failures = deliver(settings(write_back=True), [*alerted, resolved, suppressed, late],
                           senders={}, securityhub=client)
        assert failures == []
        # One GetFindings for the predecessor's Workflow status (the recorder answers
        # without findings: NOTIFIED is copied), then the updates.
        assert [(r.method, r.path) for r in hub.requests] == [
            ("POST", "/findings"), *[("PATCH", "/findings/batchupdate")] * 3]
        lookup, first, second, third = hub.bodies()
        assert lookup["Filters"] == {"Id": [{"Value": FINDING_ID + "-old", "Comparison": "EQUALS"}]}
        product = "arn:aws:securityhub:ap-northeast-1::product/aws/securityhub"
        assert first == {
            "FindingIdentifiers": [{"Id": f"{FINDING_ID}-{i}", "ProductArn": product} for i in range(100)],
            "Workflow": {"Status": "NOTIFIED"},
        }
        assert len(second["FindingIdentifiers"]) == 50
        assert third == {
            "FindingIdentifiers": [{"Id": FINDING_ID, "ProductArn": product}],
            "Workflow": {"Status": "NOTIFIED"},
            "Note": {"Text": "flapguard: not notified again (recreated_after_archive): re-created "
                             f"12h30m18s after {FINDING_ID}-old was archived; predecessor archived "
                             "at 2025-09-30T16:14:03.000Z.", "UpdatedBy": "flapguard"},
        }


def test_write_back_retries_unprocessed_findings_then_reports_them(aws_env: None) -> None:
    unprocessed = orjson.dumps({"ProcessedFindings": [], "UnprocessedFindings": [{
        "FindingIdentifier": {"Id": FINDING_ID, "ProductArn": "p"}, "ErrorCode": "FindingNotFound",
        "ErrorMessage": "no such finding"}]})
    with http_recorder("/") as hub:
        hub.default = Reply(200, unprocessed)
        hub.plan = [Reply(500, b"{}")]
        client = securityhub_client(hub.url)
        failures = deliver(settings(write_back=True), [consumer_record(record())], senders={},
                           securityhub=client)
        assert len(hub.requests) == FAST.attempts
        [failure] = failures
        assert failure.sink == "securityhub" and "FindingNotFound" in failure.error


def test_write_back_dead_letters_each_bad_record_once(aws_env: None) -> None:
    broken = ConsumerRecord(ALERTS, 0, 0, 0, 0, None, b"{broken", None, 0, 7, [])
    foreign = consumer_record({"finding_id": "not-an-arn", "reason": "recreated_after_archive"}, 0,
                              topic=SUPPRESSED)
    with http_recorder("/") as hub:
        hub.default = Reply(200, b'{"ProcessedFindings": [], "UnprocessedFindings": []}')
        failures = deliver(settings(write_back=True), [broken, foreign], senders={},
                           securityhub=securityhub_client(hub.url))
        assert hub.requests == []
    assert [(f.record.topic, f.sink) for f in failures] == [(ALERTS, "parse"), (SUPPRESSED, "securityhub")]


# ------------------------------------------------------------------- stopping

def run_until_stopped(work: Any, stop_after: Any) -> BaseException | None:
    """Run `work(stop)`, set `stop` once `stop_after()` holds; what it raised (a generous
    bound guards against a hang: the assertion is about what it raised)."""
    async def run() -> BaseException | None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(work(stop))
        while not stop_after():
            await asyncio.sleep(0.01)
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=30)
        except Exception as exc:
            return exc
        return None

    return asyncio.run(run())


def test_a_retry_pause_ends_when_asked_to_stop_and_nothing_more_is_sent() -> None:
    attempts: list[int] = []

    async def refused() -> None:
        attempts.append(1)
        raise DeliveryError("ClientConnectorError: refused", retryable=True)

    policy = RetryPolicy(attempts=10, base_s=600.0, max_s=600.0)  # ten-minute pauses
    raised = run_until_stopped(lambda stop: with_retries(refused, policy, random.Random(1), "t", stop),
                               lambda: bool(attempts))
    assert isinstance(raised, Interrupted)
    assert len(attempts) == 1


def test_a_rate_limit_wait_ends_when_asked_to_stop_without_taking_the_slot() -> None:
    limiter = RateLimiter(rate=1 / 600)  # one send per ten minutes
    limiter.next_at = time.monotonic() + 600
    before = limiter.next_at
    raised = run_until_stopped(limiter.wait, lambda: limiter.lock.locked())
    assert isinstance(raised, Interrupted)
    assert limiter.next_at == before


def test_a_request_in_flight_gets_the_grace_then_is_abandoned() -> None:
    started: list[bool] = []

    async def never_answered() -> None:
        started.append(True)
        await asyncio.Event().wait()

    raised = run_until_stopped(lambda stop: finish_or_stop(never_answered(), stop, grace_s=0.05),
                               lambda: bool(started))
    assert isinstance(raised, Interrupted)


def test_a_request_in_flight_that_is_answered_within_the_grace_counts() -> None:
    answered = asyncio.Event()

    async def answered_soon() -> str:
        await answered.wait()
        return "delivered"

    async def run() -> str:
        stop = asyncio.Event()
        stop.set()  # asked to stop while the request is out
        asyncio.get_running_loop().call_soon(answered.set)
        return await finish_or_stop(answered_soon(), stop, grace_s=30)

    assert asyncio.run(run()) == "delivered"


# ------------------------------------------------------------------------ grouping

GROUPING = """
[[route]]
name = "burst"
sinks = ["slack", "sns", "pagerduty"]
group_by = ["account"]
group_wait = "1m"
"""


def test_a_grouping_route_sends_one_sns_message_for_the_group_with_filterable_attributes(
    moto: str, aws_env: None,
) -> None:
    import boto3

    sns = sns_client(moto)
    sqs = boto3.client("sqs", endpoint_url=moto)
    topic = sns.create_topic(Name="flapguard-grouped")["TopicArn"]
    queue = sqs.create_queue(QueueName="grouped-mailbox")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=attributes["QueueArn"])
    records = [consumer_record(record(dedup_key=f"dk-{i}", title=f"grouped {i}",
                                      severity="HIGH" if i == 2 else "LOW"), i) for i in range(4)]
    config = settings(routes=parse_routes(tomllib.loads(GROUPING)))
    assert deliver(config, records, senders={"sns": SnsSender(topic, sns)}) == []
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=5)["Messages"]
    assert len(messages) == 1
    body = orjson.loads(messages[0]["Body"])
    assert body["Subject"] == "[HIGH] 4 findings (4 new): account 123456789012"
    assert {k: v["Value"] for k, v in body["MessageAttributes"].items()} == {
        "severity": "HIGH", "account": "123456789012", "control": "RDS.45", "kind": "new"}
    assert all(f"grouped {i}" in body["Message"] for i in range(4))


def test_a_grouped_message_that_fails_for_good_dead_letters_each_of_its_alerts(
    slack: Recorder, pagerduty: Recorder,
) -> None:
    slack.default = Reply(503)
    records = [consumer_record(record(dedup_key=f"dk-{i}", title=f"grouped {i}"), i) for i in range(3)]
    config = settings(slack_webhook_url=slack.url, pagerduty_routing_key="rk",
                      pagerduty_url=pagerduty.url,
                      routes=parse_routes(tomllib.loads(GROUPING.replace('"sns", ', ""))))
    failures = deliver(config, records)
    # One message per attempt listed all three; PagerDuty, never grouped, had one event each.
    assert len(slack.requests) == FAST.attempts
    assert [b["dedup_key"] for b in pagerduty.bodies()] == ["dk-0", "dk-1", "dk-2"]
    assert sorted((f.sink, f.record.offset, f.error, f.attempts) for f in failures) == [
        ("slack", i, "HTTP 503", FAST.attempts) for i in range(3)]
