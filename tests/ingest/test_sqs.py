"""`flapguard forward sqs`: EventBridge events from SQS (moto) to the real Kafka broker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from streams.core.keys import partition_for
from streams.core.records import HEADER_INPUT, HEADER_REASON
from streams.kafka.topics import create_topics
from tests.aws import client, forward, moto_fixture, moto_server_fixture, start_forward  # noqa: F401
from tests.builders import at, envelope, finding, load_public, parse_one
from tests.kafka_io import read_all, read_until

PARTITIONS = 4
ACCOUNTS = ("111111111111", "222222222222", "333333333333")


def events(count: int) -> list[dict[str, Any]]:
    """`count` EventBridge events of one to three findings, several accounts and Regions."""
    out = []
    for i in range(count):
        region = ("us-east-1", "eu-west-1")[i % 2]
        findings = [finding(f"q{i}-{j}", account=ACCOUNTS[(i + j) % 3], region=region,
                            resource=f"arn:aws:rds:{region}:{ACCOUNTS[(i + j) % 3]}:cluster:db-{j}",
                            created=at(minutes=i), updated=at(minutes=i, seconds=j))
                    for j in range(1 + i % 3)]
        out.append(envelope(findings))
    return out


def test_queue_is_drained_into_keyed_findings_and_poison_messages_are_dead_lettered(
        moto: str, kafka_bootstrap: str, unique_name: str) -> None:
    sqs = client("sqs", moto)
    queue = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    good = events(34)
    broken = finding("broken", drop=["Resources"])
    good.append(envelope([finding("fine"), broken]))
    poison = {
        "not json {": "unparseable",
        orjson.dumps(load_public("awsdocs-2023-eventbridge-insight-results-template.json")).decode():
            "not_a_finding",
        orjson.dumps({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
                      "detail": {"state": "stopped"}}).decode(): "not_a_finding",
        orjson.dumps(envelope([])).decode(): "empty_envelope",
    }
    bodies = [orjson.dumps(e).decode() for e in good]
    bodies[10:10] = list(poison)
    for body in bodies:
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    out, dead = f"{unique_name}-findings", f"{unique_name}-deadletter"
    asyncio.run(create_topics(kafka_bootstrap, {out: PARTITIONS, dead: 1}))

    done = forward("sqs", "--endpoint-url", moto, "--region", "us-east-1", "--queue-url", queue,
                   "--bootstrap-servers", kafka_bootstrap, "--topic", out,
                   "--deadletter-topic", dead, "--once", "--wait-time", "1s")

    assert done.returncode == 0, done.stderr
    records = read_all(kafka_bootstrap, out)
    expected = [f for e in good for f in e["detail"]["findings"]]
    assert Counter(orjson.loads(r.value)["Id"] for r in records) == Counter(f["Id"] for f in expected)
    for record in records:
        value = orjson.loads(record.value)
        if value["Id"] == broken["Id"]:
            assert record.key is None  # the worker dead-letters it, with its reason
            continue
        assert record.key == parse_one(value).partition_key.encode()
        assert record.partition == partition_for(record.key, PARTITIONS)
    letters = read_all(kafka_bootstrap, dead)
    assert sorted((r.value.decode(), dict(r.headers)[HEADER_REASON].decode()) for r in letters) == \
        sorted(poison.items())
    assert all(dict(r.headers)[HEADER_INPUT] == f"sqs:{queue}".encode() for r in letters)
    left = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert left["ApproximateNumberOfMessages"] == "0"
    assert left["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_messages_stay_on_the_queue_when_kafka_never_acknowledges(
        moto: str, kafka_bootstrap: str, unique_name: str) -> None:
    sqs = client("sqs", moto)
    queue = sqs.create_queue(QueueName=unique_name, Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    for event in events(5):
        sqs.send_message(QueueUrl=queue, MessageBody=orjson.dumps(event).decode())
    out, dead = f"{unique_name}-findings", f"{unique_name}-deadletter"
    # The broker refuses every finding (3 KB each) on this topic: received, never acknowledged.
    asyncio.run(create_topics(kafka_bootstrap, {out: PARTITIONS}, {"max.message.bytes": "1024"}))
    asyncio.run(create_topics(kafka_bootstrap, {dead: 1}))

    done = forward("sqs", "--endpoint-url", moto, "--region", "us-east-1", "--queue-url", queue,
                   "--bootstrap-servers", kafka_bootstrap, "--topic", out,
                   "--deadletter-topic", dead, "--once", "--wait-time", "1s")

    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "Kafka" in done.stderr, done.stderr
    left = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert int(left["ApproximateNumberOfMessages"]) + int(left["ApproximateNumberOfMessagesNotVisible"]) == 5


def test_a_killed_sqs_forwarder_restarts_and_loses_nothing(
        moto: str, kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    sqs = client("sqs", moto)
    # Received but undeleted messages come back after a second.
    queue = sqs.create_queue(QueueName=unique_name, Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sent = events(150)
    for start in range(0, len(sent), 10):
        sqs.send_message_batch(QueueUrl=queue, Entries=[
            {"Id": str(i), "MessageBody": orjson.dumps(e).decode()}
            for i, e in enumerate(sent[start:start + 10])])
    out, dead = f"{unique_name}-findings", f"{unique_name}-deadletter"
    asyncio.run(create_topics(kafka_bootstrap, {out: PARTITIONS, dead: 1}))
    args = ["sqs", "--endpoint-url", moto, "--region", "us-east-1", "--queue-url", queue,
            "--bootstrap-servers", kafka_bootstrap, "--topic", out, "--deadletter-topic", dead]
    # moto's SQS takes a few hundred ms per batch of 10 here: killed well before the end.
    first = start_forward(*args, log=tmp_path / "first.log")
    read_until(kafka_bootstrap, [out], lambda got: len(got[out]) >= 40, timeout=60)
    assert first.poll() is None, (tmp_path / "first.log").read_text()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    expected = Counter(f["Id"] for e in sent for f in e["detail"]["findings"])
    before = Counter(orjson.loads(r.value)["Id"] for r in read_all(kafka_bootstrap, out))
    assert set(before) < set(expected)  # killed mid-run

    second = forward(*args, "--once", "--wait-time", "3s")

    assert second.returncode == 0, second.stderr
    after = Counter(orjson.loads(r.value)["Id"] for r in read_all(kafka_bootstrap, out))
    assert set(after) == set(expected)
    # Repeats only for the messages in flight at the kill (at most one batch of 10).
    assert sum(after.values()) - sum(expected.values()) <= 10 * 3
    left = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert left["ApproximateNumberOfMessages"] == "0"
