"""The local brokers of streams/demo/brokers.py: real Kafka for the tests, Tansu for the demo."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.demo.brokers import KafkaBroker, TansuBroker, free_port, metadata_brokers
from streams.kafka.availability import BrokerError
from streams.kafka.topics import create_topics, create_topics_sync

DEADLINE_S = 30.0


async def _describe(bootstrap: str, topic: str) -> dict[str, object]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return dict(described)
    finally:
        await admin.close()


def _host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host, int(port)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_kafka_broker_without_jars_says_how_to_fetch_them(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "nothing-here")
    with pytest.raises(BrokerError, match="scripts/fetch-kafka"):
        broker.start()
    assert not broker.running
    assert broker.workdir is None  # its temporary folder is gone


def test_kafka_answers_metadata(kafka_bootstrap: str) -> None:
    host, port = _host_port(kafka_bootstrap)
    brokers = metadata_brokers(host, port)
    assert brokers, "the broker lists no broker in its Metadata answer"


def test_create_topics_is_idempotent(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"{unique_name}-compacted"
    config = {"cleanup.policy": "compact"}
    create_topics_sync(kafka_bootstrap, {topic: 3}, config)
    create_topics_sync(kafka_bootstrap, {topic: 3}, config)  # already exists: fine
    described = asyncio.run(_describe(kafka_bootstrap, topic))
    assert described["error_code"] == 0
    assert isinstance(described["partitions"], list)
    assert len(described["partitions"]) == 3


def test_keyed_roundtrip_on_three_partitions(kafka_bootstrap: str, unique_name: str) -> None:
    topic = f"{unique_name}-keyed"
    sent = [(f"key-{i % 10}".encode(), f"value-{i}".encode()) for i in range(60)]

    async def scenario() -> dict[bytes, list[tuple[int, bytes]]]:
        await create_topics(kafka_bootstrap, {topic: 3})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in sent:
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"{unique_name}-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        received: dict[bytes, list[tuple[int, bytes]]] = defaultdict(list)
        count = 0
        deadline = time.monotonic() + DEADLINE_S
        try:
            while count < len(sent):
                assert time.monotonic() < deadline, f"only {count}/{len(sent)} records came back"
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        assert record.key is not None and record.value is not None
                        received[record.key].append((record.partition, record.value))
                        count += 1
        finally:
            await consumer.stop()
        return received

    received = asyncio.run(scenario())

    expected: dict[bytes, list[bytes]] = defaultdict(list)
    for key, value in sent:
        expected[key].append(value)
    assert {k: [v for _, v in got] for k, got in received.items()} == expected  # order per key
    partitions_by_key = {k: {p for p, _ in got} for k, got in received.items()}
    assert all(len(ps) == 1 for ps in partitions_by_key.values()), partitions_by_key
    assert set().union(*partitions_by_key.values()) == {0, 1, 2}


def test_tansu_starts_and_answers() -> None:
    topic = "tansu-smoke"

    async def roundtrip(bootstrap: str) -> bytes | None:
        await create_topics(bootstrap, {topic: 1})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            record = await asyncio.wait_for(consumer.getone(), DEADLINE_S)
            return record.value
        finally:
            await consumer.stop()

    with TansuBroker() as tansu:
        host, port = _host_port(tansu.bootstrap_servers)
        assert port in {p for _, _, p in metadata_brokers(host, port)}
        assert asyncio.run(roundtrip(tansu.bootstrap_servers)) == b"hello"
    assert not tansu.running
