"""What real clusters and careless writers put on the findings topic, on real Apache
Kafka: records in every codec Kafka producers use, a topic the broker stores
zstd-compressed, and a near-1 MiB unparseable record. The worker decides the RDS.45
incident behind each, exactly, and keeps going."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.core.records import (
    HEADER_INPUT,
    HEADER_LINE,
    HEADER_ORIGINAL_SHA256,
    HEADER_ORIGINAL_SIZE,
    HEADER_REASON,
)
from streams.kafka.producer import DEFAULT_PRODUCER
from streams.kafka.topics import create_topics
from tests.builders import dumps, finding
from tests.kafka_io import WorkerRun, read_until, values
from tests.worker.test_worker_kafka import FIXTURES, INCIDENT, all_decided, by_position

CODECS = ("gzip", "snappy", "lz4", "zstd", None)
# Fits the broker's and the producer's default 1 MiB limits, as the writer's record did.
POISON_SIZE = 1_040_000


@pytest.fixture
def run(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Iterator[WorkerRun]:
    worker = WorkerRun(kafka_bootstrap, unique_name, tmp_path)
    yield worker
    worker.stop()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, str | None]]) -> None:
    """Each (value, codec) as its own batch from a producer of that codec, in order, on
    partition 0, with the line number the decisions report."""

    async def go() -> None:
        from aiokafka import AIOKafkaProducer

        for line, (value, codec) in enumerate(records, start=1):
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec,
                                        max_request_size=1024 * 1024, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(topic, value, partition=0, headers=[
                    (HEADER_INPUT, b"incident"), (HEADER_LINE, str(line).encode())])
            finally:
                await producer.stop()

    asyncio.run(go())


def incident_decided(run: WorkerRun, first_line: int, dead_letters: int
                     ) -> tuple[dict[tuple[int, int], Any], list[Any]]:
    """Wait until the whole input is decided and its dead letters are read, and check the
    incident's decisions (from `first_line` on); the decisions by (line, index) and the
    dead letters."""
    expected = orjson.loads((FIXTURES / "incident-rds45.expected.json").read_bytes())
    t = run.topics
    decided = all_decided(run, len(expected) + first_line - 1)
    got = read_until(run.bootstrap, [t["decisions"], t["deadletter"]],
                     lambda got: decided(got) and len(got[t["deadletter"]]) >= dead_letters,
                     timeout=180, alive=run.assert_alive)
    decisions = by_position(values(got[t["decisions"]]))
    for row in expected:
        decided = decisions[(row["line"] + first_line - 1, 0)]
        assert decided["decision"] == row["decision"], row
        if row["kind_or_reason"] is not None:
            assert decided.get("kind", decided.get("reason")) == row["kind_or_reason"], row
    return decisions, got[t["deadletter"]]


def test_every_codec_and_a_near_1_mib_poison_record_leave_the_incident_decided(run: WorkerRun) -> None:
    """The writer's crash loop: a 1,040,000-byte unparseable record ahead of the incident,
    then the incident with each record in another codec (gzip, snappy, lz4, zstd, none)."""
    asyncio.run(create_topics(run.bootstrap, {run.topics["findings"]: 1}))
    poison = b'{"SchemaVersion": "2018-10-08", "Id": "' + b"x" * POISON_SIZE
    poison = poison[:POISON_SIZE]
    lines = INCIDENT.read_bytes().splitlines()
    records = [(poison, "zstd")] + [(line, CODECS[n % len(CODECS)]) for n, line in enumerate(lines)]
    produce(run.bootstrap, run.topics["findings"], records)
    run.start()
    decisions, dead = incident_decided(run, first_line=2, dead_letters=2)
    assert decisions[(1, 0)]["decision"] == "dead_letter"
    assert decisions[(1, 0)]["reason"] == "unparseable"

    # The poison's dead letter fits the request limit: its first bytes, its size and digest.
    # (The dead-letter topic has several partitions: the two come back in no set order.)
    first, *rest = sorted(dead, key=lambda record: int(dict(record.headers)[HEADER_LINE]))
    headers = dict(first.headers)
    assert headers[HEADER_REASON] == b"unparseable"
    assert headers[HEADER_INPUT] == b"incident" and headers[HEADER_LINE] == b"1"
    assert headers[HEADER_ORIGINAL_SIZE] == str(POISON_SIZE).encode()
    assert headers[HEADER_ORIGINAL_SHA256] == hashlib.sha256(poison).hexdigest().encode()
    assert 0 < len(first.value) <= DEFAULT_PRODUCER.record_limit
    assert poison.startswith(first.value)
    # The incident's own dead letter (line 8) is small: written whole, not described.
    (second,) = rest
    assert second.value == lines[7]
    assert HEADER_ORIGINAL_SIZE not in dict(second.headers)
    run.assert_alive()


def test_a_topic_the_broker_stores_zstd_compressed_is_decided(run: WorkerRun) -> None:
    asyncio.run(create_topics(run.bootstrap, {run.topics["findings"]: 1}, {"compression.type": "zstd"}))
    lines = INCIDENT.read_bytes().splitlines()
    produce(run.bootstrap, run.topics["findings"], [(line, None) for line in lines])
    run.start()
    _, dead = incident_decided(run, first_line=1, dead_letters=1)
    assert len(dead) == 1
    run.assert_alive()


def test_a_dead_letter_topic_that_refuses_the_record_costs_that_record_only(run: WorkerRun) -> None:
    """A dead-letter topic whose max.message.bytes is below what the worker writes: the
    refused dead letter is logged with its origin and skipped; everything behind it is
    decided and the incident's own small dead letter is written."""
    t = run.topics
    asyncio.run(create_topics(run.bootstrap, {t["findings"]: 1}))
    asyncio.run(create_topics(run.bootstrap, {t["deadletter"]: run.partitions},
                              {"max.message.bytes": "300000"}))
    poison = os.urandom(POISON_SIZE)  # no codec shrinks it under the topic's limit
    lines = INCIDENT.read_bytes().splitlines()
    produce(run.bootstrap, t["findings"], [(poison, "lz4")] + [(line, "lz4") for line in lines])
    run.start()
    decisions, dead = incident_decided(run, first_line=2, dead_letters=1)
    assert decisions[(1, 0)]["decision"] == "dead_letter"
    assert [d.value for d in dead] == [lines[7]]
    log = (run.workdir / "worker-1.log").read_text(errors="replace")
    assert f"{t['deadletter']} refused a record as too large" in log
    assert "'flapguard-line': '1'" in log
    run.assert_alive()


def test_transactional_input_is_decided_once_committed_and_never_when_aborted(
        run: WorkerRun, unique_name: str) -> None:
    """The incident written as Kafka Connect or Flink write with exactly-once: one
    transaction per record (each leaves a commit marker, an offset with no record), and
    an aborted transaction in the middle holding a failing finding that would alert."""
    t = run.topics
    asyncio.run(create_topics(run.bootstrap, {t["findings"]: 1}))
    lines = INCIDENT.read_bytes().splitlines()
    aborted = dumps(finding("aborted", resource="arn:aws:rds:ap-northeast-1:123456789012:cluster:x",
                            created="2025-09-30T10:00:00.000Z", updated="2025-09-30T10:00:00.000Z"))

    async def go() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, transactional_id=unique_name,
                                    enable_idempotence=True, compression_type="zstd")
        await producer.start()
        try:
            for line, value in enumerate(lines, start=1):
                async with producer.transaction():
                    await producer.send(t["findings"], value, partition=0, headers=[
                        (HEADER_INPUT, b"incident"), (HEADER_LINE, str(line).encode())])
                if line == 4:
                    await producer.begin_transaction()
                    await producer.send(t["findings"], aborted, partition=0, headers=[
                        (HEADER_INPUT, b"incident"), (HEADER_LINE, b"99")])
                    await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(go())
    run.start()
    decisions, _ = incident_decided(run, first_line=1, dead_letters=1)
    assert (99, 0) not in decisions
    alerts = values(read_until(run.bootstrap, [t["alerts"]], lambda got: len(got[t["alerts"]]) >= 2,
                               timeout=60, alive=run.assert_alive)[t["alerts"]])
    assert "aborted" not in {a["finding_id"].rsplit("/", 1)[-1] for a in alerts}
    log = (run.workdir / "worker-1.log").read_text(errors="replace")
    assert "skipped" not in log and "never reached the agent" not in log, log[-2000:]
    run.assert_alive()
