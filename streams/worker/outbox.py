"""The outbox: a processing step's records handed to the producer as whole batches, and
the broker's acknowledgements awaited once per step."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from streams.core.keys import partitions_for
from streams.core.records import Headers
from streams.kafka.workarounds import partition_count, track_topic

log = logging.getLogger("flapguard.worker")

# What the producer (before sending) or a broker answers for a record too large for the
# request or the topic. Retrying cannot help: such a record is skipped, counted and
# logged, so that one record never stops the worker.
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
Refused = Callable[[str, Headers, BaseException], None]


class Delivered(NamedTuple):
    """A record batch the broker acknowledged."""

    topic: str
    partition: int
    last_offset: int


class Outbox:
    """The records of one processing step, handed to the producer as whole record
    batches, one per topic partition (more when full): one future per batch, not per
    record. Keyed records are placed as the producer's default partitioner places
    them (murmur2 of the key, `keys.partition_for`)."""

    def __init__(self, producer: Any, on_refused: Refused | None = None) -> None:
        self.producer = producer
        self.on_refused = on_refused or refused_record
        self.placed: dict[tuple[str, int], list[tuple[bytes | None, bytes | None, Headers]]] = {}
        self.keyed: list[tuple[str, bytes, bytes, Headers]] = []
        self.unkeyed: list[tuple[str, bytes, Headers]] = []

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
            headers: Headers | None = None) -> None:
        self.placed.setdefault((topic, partition), []).append((key, value, headers or []))

    def add_keyed(self, topic: str, key: bytes, value: bytes, headers: Headers | None = None) -> None:
        self.keyed.append((topic, key, value, headers or []))

    def add_unkeyed(self, topic: str, value: bytes, headers: Headers | None = None) -> None:
        self.unkeyed.append((topic, value, headers or []))

    async def sent(self) -> list[Delivered]:
        """Send everything added and wait until the broker has it all; what was sent."""
        return await (await self.send())

    async def send(self) -> Awaitable[list[Delivered]]:
        """Hand everything added to the producer; what it returns waits until the broker
        has it all, and says what was sent."""
        by_topic: dict[str, list[tuple[bytes, bytes, Headers]]] = {}
        for name, data_key, data, headers in self.keyed:
            by_topic.setdefault(name, []).append((data_key, data, headers))
        self.keyed.clear()
        for name, keyed in by_topic.items():
            count = await partition_count(self.producer, name)
            placed = partitions_for([data_key for data_key, _, _ in keyed], count)
            for (data_key, data, headers), partition in zip(keyed, placed, strict=True):
                self.add(name, partition, data_key, data, headers)
        for name in {topic for topic, _ in self.placed} | {topic for topic, _, _ in self.unkeyed}:
            track_topic(self.producer, name)
        batches: list[tuple[str, int, Any, int]] = []
        for (topic, partition), records in self.placed.items():
            builder = self.producer.create_batch()
            for key, value, headers in records:
                if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    batches.append(await self._send(builder, topic, partition))
                    builder = self.producer.create_batch()
                    builder.append(timestamp=None, key=key, value=value, headers=headers)
            batches.append(await self._send(builder, topic, partition))
        self.placed.clear()
        # Rare (dead letters): the producer picks their partitions.
        singles = [await self._send_single(topic, value, headers) for topic, value, headers in self.unkeyed]
        self.unkeyed.clear()
        return self._delivered(batches, singles)

    async def _send_single(self, topic: str, value: bytes, headers: Headers
                           ) -> tuple[str, Headers, Any | None]:
        try:
            return topic, headers, await self.producer.send(topic, value, headers=headers)
        except TOO_LARGE as exc:
            self.on_refused(topic, headers, exc)
            return topic, headers, None

    async def _delivered(self, batches: list[tuple[str, int, Any, int]],
                         singles: list[tuple[str, Headers, Any | None]]) -> list[Delivered]:
        delivered = []
        for topic, partition, future, count in batches:
            metadata = await future
            delivered.append(Delivered(topic, partition, metadata.offset + count - 1))
        for topic, headers, single in singles:
            if single is None:
                continue
            try:
                metadata = await single
            except TOO_LARGE as exc:
                self.on_refused(topic, headers, exc)
                continue
            delivered.append(Delivered(metadata.topic, metadata.partition, metadata.offset))
        return delivered

    async def _send(self, builder: Any, topic: str, partition: int) -> tuple[str, int, Any, int]:
        count = builder.record_count()
        return topic, partition, await self.producer.send_batch(builder, topic, partition=partition), count


def refused_record(topic: str, headers: Headers, exc: BaseException) -> None:
    """Log a record the producer or the broker refused as too large, once, with where it
    came from (its origin headers)."""
    origin = {name: value.decode(errors="replace") for name, value in headers}
    log.error("%s refused a record as too large (%s); skipped it: %s", topic,
              type(exc).__name__, origin)
