"""`flapguard replay`: put findings files onto a topic.

One record per JSON Lines line (or per whole-document file), value = the original
bytes, key = the partition key when every finding of the record shares one, and the
file and line in headers, so the worker's decisions name the input line they came from.
"""

from __future__ import annotations

import asyncio
import itertools
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

# How much of the input is looked at before anything is written, and the share of it
# holding no finding at which the input is refused (not findings, or broken by the way it
# was exported) unless told otherwise.
SAMPLE = 1_000
REFUSED_SHARE = 0.5


class MostlyUnparseable(ValueError):
    """The input's first records mostly hold no finding that parses."""


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    findings: int = 0  # findings that parse in it


@dataclass(slots=True)
class Replayed:
    records: int = 0
    without_finding: int = 0  # records holding no finding that parses (dead-lettered)


def replay_records(paths: Iterable[Path], *, now_ms: int | None = None) -> Iterator[ReplayRecord]:
    policy = Policy()
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    for path in paths:
        with open_input(path) as handle:
            for unit in split_lines(handle):
                findings = [item for item in parse_message(unit.data, policy=policy, now_ms=now)
                            if isinstance(item, Finding)]
                keys = {finding.partition_key for finding in findings}
                key = keys.pop().encode() if len(keys) == 1 else None
                headers = [(HEADER_INPUT, str(path).encode()), (HEADER_LINE, str(unit.line).encode())]
                yield ReplayRecord(key, unit.data, headers, len(findings))


def checked(records: Iterator[ReplayRecord], *, allow_unparseable: bool) -> Iterator[ReplayRecord]:
    """`records`, once their first `SAMPLE` show that they are mostly findings: raises
    `MostlyUnparseable` before the first is yielded otherwise (unless allowed)."""
    head = list(itertools.islice(records, SAMPLE))
    without = sum(1 for record in head if not record.findings)
    if head and without / len(head) >= REFUSED_SHARE and not allow_unparseable:
        raise MostlyUnparseable(
            f"{without} of the first {len(head)} records hold no finding that parses; not "
            "findings, or broken in export? (--allow-unparseable replays them anyway, to be "
            "dead-lettered)")
    return itertools.chain(head, records)


async def replay_async(paths: Iterable[Path], *, bootstrap: str, topic: str, partitions: int,
                       security: BrokerSecurity = PLAINTEXT,
                       writes: ProducerSettings = DEFAULT_PRODUCER,
                       allow_unparseable: bool = True) -> Replayed:
    """Write the records of `paths` to `topic`; nothing is written when the input is
    refused (see `checked`)."""
    from aiokafka import AIOKafkaProducer

    records = checked(replay_records(paths), allow_unparseable=allow_unparseable)
    await create_topics(bootstrap, {topic: partitions}, replication=writes.replication, security=security)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024, **writes.aiokafka_kwargs(),
                                **security.aiokafka_kwargs())
    await producer.start()
    done = Replayed()
    try:
        pending = []
        for record in records:
            pending.append(await producer.send(topic, record.value, key=record.key,
                                               headers=record.headers))
            done.records += 1
            done.without_finding += not record.findings
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return done


def replay_files(paths: Iterable[Path], *, bootstrap: str, topic: str, partitions: int,
                 security: BrokerSecurity = PLAINTEXT,
                 writes: ProducerSettings = DEFAULT_PRODUCER,
                 allow_unparseable: bool = True) -> Replayed:
    return asyncio.run(replay_async(paths, bootstrap=bootstrap, topic=topic, partitions=partitions,
                                    security=security, writes=writes,
                                    allow_unparseable=allow_unparseable))
