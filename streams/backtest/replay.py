"""`flapguard replay`: put findings files onto a topic.

One record per JSON Lines line (or per whole-document file), value = the original
bytes, key = the partition key when every finding of the record shares one, and the
file and line in headers, so the worker's decisions name the input line they came from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.backtest.run import open_input
from streams.core.files import split_lines
from streams.core.findings import Finding, parse_message
from streams.core.policy import Policy
from streams.core.records import HEADER_INPUT, HEADER_LINE
from streams.kafka.producer import DEFAULT_PRODUCER, ProducerSettings
from streams.kafka.security import PLAINTEXT, BrokerSecurity
from streams.kafka.topics import create_topics


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def replay_records(paths: Iterable[Path], *, now_ms: int | None = None) -> Iterator[ReplayRecord]:
    policy = Policy()
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    for path in paths:
        with open_input(path) as handle:
            for unit in split_lines(handle):
                keys = {item.partition_key for item in parse_message(unit.data, policy=policy, now_ms=now)
                        if isinstance(item, Finding)}
                key = keys.pop().encode() if len(keys) == 1 else None
                headers = [(HEADER_INPUT, str(path).encode()), (HEADER_LINE, str(unit.line).encode())]
                yield ReplayRecord(key, unit.data, headers)


async def replay_async(paths: Iterable[Path], *, bootstrap: str, topic: str, partitions: int,
                       security: BrokerSecurity = PLAINTEXT,
                       writes: ProducerSettings = DEFAULT_PRODUCER) -> int:
    from aiokafka import AIOKafkaProducer

    await create_topics(bootstrap, {topic: partitions}, replication=writes.replication, security=security)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024, **writes.aiokafka_kwargs(),
                                **security.aiokafka_kwargs())
    await producer.start()
    count = 0
    try:
        pending = []
        for record in replay_records(paths):
            pending.append(await producer.send(topic, record.value, key=record.key,
                                               headers=record.headers))
            count += 1
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count


def replay_files(paths: Iterable[Path], *, bootstrap: str, topic: str, partitions: int,
                 security: BrokerSecurity = PLAINTEXT,
                 writes: ProducerSettings = DEFAULT_PRODUCER) -> int:
    return asyncio.run(replay_async(paths, bootstrap=bootstrap, topic=topic, partitions=partitions,
                                    security=security, writes=writes))
