"""`flapguard notify --check [--test-message]` as a child process, against real HTTP servers
standing in for Slack and PagerDuty and moto for SNS: nothing is sent unless a test
message is asked for, and a sink that cannot be used is named in one line, never its
secret. No broker is involved."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import boto3
import orjson

from streams.demo.brokers import free_port
from tests.aws import AWS_ENV, moto_server_fixture  # noqa: F401  (the session's moto server)
from tests.notify.processes import clean_env
from tests.notify_servers import Reply, http_recorder

SECRET_PATH = "/services/T0/B0/CHECKSECRET"
SECRET_KEY = "R0UT1NGKEYSECRET"


def check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams", "notify", "--check", *args],
                          capture_output=True, text=True, timeout=60, env=clean_env(**env))


def test_check_sends_nothing_to_usable_sinks_and_exits_0() -> None:
    with http_recorder(SECRET_PATH) as slack, http_recorder("/v2/enqueue") as pagerduty:
        # What the real services answer to an empty object: not a message.
        slack.default = Reply(400, b"no_text")
        pagerduty.default = Reply(400, b'{"status":"invalid event"}')
        done = check("--slack-webhook-url", slack.url, "--pagerduty-routing-key", SECRET_KEY,
                     "--pagerduty-url", pagerduty.url, "--stdout")
        assert done.returncode == 0, done.stderr
        assert [r.json() for r in slack.requests] == [{}]
        assert [r.json() for r in pagerduty.requests] == [{}]
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "slack" in done.stderr and "pagerduty" in done.stderr


def test_check_names_each_refused_or_unreachable_sink_in_one_line_without_its_secret() -> None:
    with http_recorder(SECRET_PATH) as slack:
        slack.default = Reply(404, b"no_service")  # a revoked webhook
        nobody = f"http://127.0.0.1:{free_port()}/v2/enqueue?token={SECRET_KEY}"
        done = check("--slack-webhook-url", slack.url, "--pagerduty-routing-key", SECRET_KEY,
                     "--pagerduty-url", nobody, "--stdout")
    assert done.returncode == 1
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("flapguard notify: error: ")
    assert "sink slack: refused: HTTP 404" in line
    assert "sink pagerduty: unreachable" in line
    assert "stdout" not in line
    assert "SECRET" not in done.stderr


def test_check_with_a_test_message_sends_one_to_each_sink_and_pagerduty_resolves_its_own(
    moto_server: str,
) -> None:
    env = {**AWS_ENV, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_SNS": moto_server}
    sns = boto3.client("sns", endpoint_url=moto_server, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    sqs = boto3.client("sqs", endpoint_url=moto_server, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    topic = sns.create_topic(Name="check-test-message")["TopicArn"]
    queue = sqs.create_queue(QueueName="check-test-message")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    queue_arn = attributes["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    with http_recorder(SECRET_PATH) as slack, http_recorder("/v2/enqueue") as pagerduty:
        pagerduty.default = Reply(202, b'{"status":"success"}')
        done = check("--test-message", "--slack-webhook-url", slack.url, "--pagerduty-routing-key",
                     SECRET_KEY, "--pagerduty-url", pagerduty.url, "--stdout", "--sns-topic-arn", topic,
                     **env)
        assert done.returncode == 0, done.stderr
        [slack_body] = slack.bodies()
        trigger, resolve = pagerduty.bodies()
    assert "test message" in slack_body["text"]
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] and trigger["routing_key"] == SECRET_KEY
    assert trigger["payload"]["severity"] == "info"
    assert [orjson.loads(line) for line in done.stdout.splitlines()] == [
        {"flapguard": slack_body["text"]}]
    messages: list[Any] = []
    while not messages:
        messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5).get("Messages", [])
    assert orjson.loads(messages[0]["Body"])["Subject"] == "flapguard test message"


def test_check_names_a_missing_sns_topic(moto_server: str) -> None:
    env = {**AWS_ENV, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL_SNS": moto_server}
    done = check("--sns-topic-arn", "arn:aws:sns:us-east-1:123456789012:no-such-topic", **env)
    assert done.returncode == 1
    assert done.stderr.startswith("flapguard notify: error: sink sns: NotFound")
    assert done.stderr.strip().count("\n") == 0


def test_test_message_without_check_is_a_one_line_error() -> None:
    done = subprocess.run([sys.executable, "-m", "streams", "notify", "--stdout", "--test-message"],
                          capture_output=True, text=True, timeout=60, env=clean_env())
    assert done.returncode == 1
    assert done.stderr.strip() == "flapguard notify: error: --test-message goes with --check"
