"""The Lambda handler (EventBridge rule -> Lambda -> Kafka), called as Lambda would,
against the real Kafka broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from streams.core.keys import partition_for
from streams.core.records import HEADER_REASON
from streams.ingest.lambda_handler import handler
from streams.kafka.topics import create_topics
from tests.builders import IMPORTED_ENVELOPE_TEMPLATE, load_public, parse_one
from tests.kafka_io import read_all


def test_handler_forwards_each_finding_keyed_and_dead_letters_other_events(
        kafka_bootstrap: str, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out, dead = f"{unique_name}-findings", f"{unique_name}-deadletter"
    asyncio.run(create_topics(kafka_bootstrap, {out: 3, dead: 1}))
    monkeypatch.setenv("FLAPGUARD_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("FLAPGUARD_TOPIC", out)
    monkeypatch.setenv("FLAPGUARD_DEADLETTER_TOPIC", dead)
    event = load_public(IMPORTED_ENVELOPE_TEMPLATE)
    context = SimpleNamespace(aws_request_id="req-1")

    assert handler(event, context) == {"findings": 1, "dead_letters": 0}
    insight = load_public("awsdocs-2023-eventbridge-insight-results-template.json")
    assert handler(insight, context) == {"findings": 0, "dead_letters": 1}

    (record,) = read_all(kafka_bootstrap, out)
    (expected,) = event["detail"]["findings"]
    assert orjson.loads(record.value) == expected
    assert record.key == parse_one(expected).partition_key.encode()
    assert record.partition == partition_for(record.key, 3)
    (letter,) = read_all(kafka_bootstrap, dead)
    assert orjson.loads(letter.value) == insight
    assert dict(letter.headers)[HEADER_REASON] == b"not_a_finding"
