"""What both forwarders share: findings -> keyed Kafka records (pure), and the producer
that writes them and waits for the broker's acknowledgement (thin).

A finding the core can parse is keyed by its partition key and placed with the core's
murmur2 (`keys.partition_for`), so the worker's keyed placement matches and it need not
repartition. A finding the core rejects is still forwarded, unkeyed: the worker
dead-letters it with its reason and origin, like any other input. Only what is not
Security Hub input at all (a poison queue message) goes to the dead-letter topic here.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TextIO

import orjson

from streams.core.findings import Finding, Parsed, Rejected, parse_document
from streams.core.keys import partition_for
from streams.core.policy import Policy
from streams.core.records import deadletter_headers, iso
from streams.core.state import Origin
from streams.kafka.availability import quiet_bootstrap
from streams.kafka.producer import ProducerSettings
from streams.kafka.security import BrokerSecurity

# Where a forwarded record came from (`securityhub:<region>`, `sqs:<queue url>`).
HEADER_FORWARDED_FROM = "flapguard-forwarded-from"
HEADER_MESSAGE_ID = "flapguard-message-id"  # SQS message id, Lambda request id

Headers = tuple[tuple[str, bytes], ...]


class ForwardError(Exception):
    """A forwarder failure for the user (AWS unreachable, no credentials...): one line."""


class Route(Enum):
    FINDINGS = "findings"
    DEADLETTER = "deadletter"


@dataclass(frozen=True, slots=True)
class OutRecord:
    route: Route
    key: bytes | None
    value: bytes
    headers: Headers = ()
    updated_at: int | None = None  # epoch ms of a parsed finding: drives the cursor


def finding_records(items: Sequence[Any], parsed: Sequence[Parsed], *, source: str) -> list[OutRecord]:
    """One record per finding: `items` are the decoded findings, `parsed` the core's
    reading of each (same order)."""
    headers: Headers = ((HEADER_FORWARDED_FROM, source.encode()),)
    out: list[OutRecord] = []
    for item, result in zip(items, parsed, strict=True):
        if isinstance(result, Finding):
            out.append(OutRecord(Route.FINDINGS, result.partition_key.encode(), orjson.dumps(item),
                                 headers, result.updated_at))
        else:
            out.append(OutRecord(Route.FINDINGS, None, result.raw, headers))
    return out


def page_records(findings: Sequence[Any], *, source: str, policy: Policy, now_ms: int) -> list[OutRecord]:
    """A GetFindings page (bare findings) -> records."""
    parsed = [parse_document(item, b"", policy=policy, now_ms=now_ms)[0] for item in findings]
    fixed = [p if isinstance(p, Finding) else Rejected(p.reason, orjson.dumps(item), p.finding_id)
             for p, item in zip(parsed, findings, strict=True)]
    return finding_records(findings, fixed, source=source)


def deadletter_record(raw: bytes, reason: str, *, source: str, line: int = 0,
                      extra: Headers = ()) -> OutRecord:
    """The original bytes with the worker's dead-letter headers."""
    headers = (*deadletter_headers(reason, Origin(source, line, 0)), *extra)
    return OutRecord(Route.DEADLETTER, None, raw, headers)


# `--pages`: findings per record, and bytes, under the broker's default 1 MiB per message.
PAGE_FINDINGS = 100
PAGE_BYTES = 900 * 1024


def pages(values: Sequence[bytes], *, most: int = PAGE_FINDINGS, size: int = PAGE_BYTES
          ) -> Iterator[bytes]:
    """Findings (JSON each) as GetFindings pages, `{"Findings": [...]}`, in order: at most
    `most` findings and about `size` bytes each (a bigger finding goes alone)."""
    chunk: list[bytes] = []
    used = 0
    for value in values:
        if chunk and (len(chunk) == most or used + len(value) > size):
            yield b'{"Findings":[' + b",".join(chunk) + b"]}"
            chunk, used = [], 0
        chunk.append(value)
        used += len(value) + 1
    if chunk:
        yield b'{"Findings":[' + b",".join(chunk) + b"]}"


@dataclass
class KafkaSink:
    """An acks=all producer; `send_all` returns once the broker acknowledged every record.

    `pages`: the findings of one call that share a target partition (murmur2 of their
    partition keys) go as pages of up to `PAGE_FINDINGS`, unkeyed, on that partition,
    instead of one keyed record each: the worker reads a hundred findings per record,
    still on their own partition (no repartition)."""

    bootstrap: str
    topics: dict[Route, str]
    partitions: int = 8
    producer: Any = None
    partition_counts: dict[str, int] = field(default_factory=dict)
    security: BrokerSecurity = field(default_factory=BrokerSecurity)
    pages: bool = False
    writes: ProducerSettings = field(default_factory=ProducerSettings)

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        from streams.kafka.topics import create_topics

        with quiet_bootstrap():
            await create_topics(self.bootstrap, {name: self.partitions for name in self.topics.values()},
                                replication=self.writes.replication, security=self.security)
            self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                             max_batch_size=256 * 1024, **self.writes.aiokafka_kwargs(),
                                             **self.security.aiokafka_kwargs())
            await self.producer.start()
        for name in self.topics.values():
            self.partition_counts[name] = len(await self.producer.partitions_for(name))

    async def send_all(self, records: Iterable[OutRecord]) -> int:
        """Send `records` and wait for the broker; the number of records given."""
        futures = []
        count = 0
        paged: dict[tuple[str, int, Headers], list[bytes]] = {}
        for record in records:
            count += 1
            topic = self.topics[record.route]
            partition = (partition_for(record.key, self.partition_counts[topic])
                         if record.key is not None else None)
            if self.pages and partition is not None and record.route is Route.FINDINGS:
                paged.setdefault((topic, partition, record.headers), []).append(record.value)
                continue
            futures.append(await self.producer.send(topic, record.value, key=record.key,
                                                    partition=partition,
                                                    headers=list(record.headers)))
        for (topic, partition, headers), values in paged.items():
            for page in pages(values, size=min(PAGE_BYTES, self.writes.record_limit)):
                futures.append(await self.producer.send(topic, page, partition=partition,
                                                        headers=list(headers)))
        await asyncio.gather(*futures)
        return count

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None


@dataclass
class Progress:
    """Findings/s and cursor time on one terminal line, for long backfills; silent
    unless the stream is a terminal."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    every_s: float = 0.5
    count: int = 0
    started: float = field(default_factory=time.monotonic)
    shown: float = 0.0
    enabled: bool | None = None

    def __post_init__(self) -> None:
        if self.enabled is None:
            self.enabled = self.stream.isatty()

    def add(self, count: int, cursor_ms: int | None) -> None:
        self.count += count
        now = time.monotonic()
        if not self.enabled or now - self.shown < self.every_s:
            return
        self.shown = now
        rate = self.count / max(now - self.started, 1e-6)
        cursor = iso(cursor_ms) if cursor_ms is not None else "-"
        self.stream.write(f"\rforwarded {self.count} findings, {rate:,.0f}/s, cursor {cursor}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
