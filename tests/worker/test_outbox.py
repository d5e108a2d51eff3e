"""The agent's `Outbox` against the session's real Kafka broker."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from streams.kafka.topics import create_topics
from streams.worker.outbox import Outbox


def test_the_producer_keeps_every_topic_the_outbox_writes_in_its_metadata(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """A topic the producer learnt of from an all-topics refresh (as Faust's changelog
    topics) must not drop out of its metadata at the next refresh once it tracks other
    topics: a state batch for it would then wait 20 minutes for a leader."""
    state, other = f"{unique_name}-state-changelog", f"{unique_name}-other"

    async def run() -> None:
        await create_topics(kafka_bootstrap, {state: 2})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.client.force_metadata_update()  # tracks none: all topics
            out = Outbox(producer)
            out.add(state, 1, b"key", b"value")
            [delivered] = await out.sent()  # `send_batch` finds it known, adds nothing
            assert (delivered.topic, delivered.partition) == (state, 1)
            await create_topics(kafka_bootstrap, {other: 1})
            await producer.send_and_wait(other, b"x")  # new to it: now it tracks `other`
            await producer.client.force_metadata_update()  # the tracked topics only
            assert producer.client.cluster.partitions_for_topic(state) == {0, 1}
        finally:
            await producer.stop()

    asyncio.run(run())
