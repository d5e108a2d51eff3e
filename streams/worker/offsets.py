"""The offset guard: every record of a findings or keyed partition processed once, in
offset order, whatever faust-streaming drops after a recovery."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from faust.types import TP

from streams.kafka.availability import retry_while_unavailable
from streams.kafka.security import PLAINTEXT, BrokerSecurity
from streams.kafka.workarounds import committed_offset, count_as_done

log = logging.getLogger("flapguard.worker")

T = TypeVar("T")


class OffsetGuard:
    """Makes sure every record of a partition is processed once, in offset order.

    faust-streaming 0.15 can lose fetched records when it seeks to the committed
    offsets right after a recovery (a restart, a rebalance): the agent then sees the
    offsets jump. The guard reads the skipped records itself, with a plain consumer,
    so that the agent processes them before the record that revealed the jump, and
    then tells Faust they are done (Faust would otherwise hold its commits at the
    hole, or, where it noticed the jump itself, commit past records never processed).
    """

    def __init__(self, bootstrap_servers: str, app: Any,
                 security: BrokerSecurity = PLAINTEXT) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.app = app
        self.security = security
        self.next: dict[tuple[str, int], int] = {}
        self.starts: dict[tuple[str, int], int] = {}

    def expected(self, message: Any) -> int | None:
        """The offset due next: after the last one processed, else the committed one."""
        return self.expected_at(message.tp)

    def expected_at(self, tp: TP) -> int | None:
        """`expected` by topic partition."""
        if (tp.topic, tp.partition) in self.next:
            return self.next[(tp.topic, tp.partition)]
        return committed_offset(self.app, tp)

    def done(self, message: Any) -> None:
        self.next[(message.topic, message.partition)] = message.offset + 1

    def passed(self, tp: TP, end: int) -> None:
        """Everything before `end` is done, records or not: a transaction's commit
        marker and an offset compaction removed hold no record."""
        key = (tp.topic, tp.partition)
        self.next[key] = max(self.next.get(key, 0), end)

    async def take(self, tp: TP, start: int, end: int) -> list[Any]:
        """The records from `start` to `end` (excluded), read directly, and counted as
        done by Faust (which may deliver them later: below `expected`, then skipped)."""
        records = await self._read(tp.topic, tp.partition, start, end)
        count_as_done(self.app, tp, start, end)
        return records

    async def missing(self, message: Any, expected: int | None) -> list[Any] | None:
        """The records to process before this one (usually none); None to skip this
        one, processed before (a redelivery after a restart). With no offset expected
        (nothing committed, no state), the partition's first offset is: the consumer
        starts there, and the same defect can drop its first records."""
        if expected is None:
            expected = await self.first_offset_at(message.tp)
        if message.offset == expected:
            return []
        if message.offset < expected:
            return None
        # A transactional or compacted topic has offsets with no record (commit markers,
        # compacted keys): not a loss, and no reason to warn.
        records = await self.take(message.tp, expected, message.offset)
        if records:
            log.warning("%s[%s]: the consumer skipped %s records between offsets %s and %s; "
                        "read them directly", message.topic, message.partition, len(records),
                        expected, message.offset - 1)
        return records

    async def first_offset_at(self, tp: TP) -> int:
        """The first offset of a partition, asked of the broker once for every assigned
        partition of its topic."""
        key = (tp.topic, tp.partition)
        if key not in self.starts:
            tps = {t for t in self.app.consumer.assignment() if t.topic == tp.topic}
            earliest = await self._earliest(tps | {tp})
            for t, offset in earliest.items():
                self.starts.setdefault((t.topic, t.partition), offset)
            self.starts.setdefault(key, 0)
        return self.starts[key]

    async def _earliest(self, tps: set[TP]) -> dict[TP, int]:
        # Its own client, not Faust's consumer: that one answers from its thread, which
        # took up to 1.5 s while it read a backlog (measured with 4-8 MiB fetches), and
        # the agent waits for the answer.
        from aiokafka import TopicPartition

        async def ask() -> dict[TP, int]:
            async with self._consumer() as consumer:
                found = await consumer.beginning_offsets([TopicPartition(t.topic, t.partition) for t in tps])
            return {TP(t.topic, t.partition): int(offset) for t, offset in found.items()}

        return await self._while_unavailable(ask, "asking for a partition's first offset")

    async def _read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        from aiokafka import TopicPartition

        tp = TopicPartition(topic, partition)

        async def read() -> list[Any]:
            async with self._consumer() as consumer:
                consumer.assign([tp])
                consumer.seek(tp, start)
                records: list[Any] = []
                while await consumer.position(tp) < end:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    records.extend(r for r in batch.get(tp, ()) if r.offset < end)
                return records

        return await self._while_unavailable(read, "reading skipped records directly")

    async def _while_unavailable(self, action: Callable[[], Awaitable[T]], what: str) -> T:
        """A broker that is down is waited for, as the agent's own outputs wait for it,
        rather than stopping the worker."""
        return await retry_while_unavailable(action, servers=self.bootstrap_servers, what=what)

    @contextlib.asynccontextmanager
    async def _consumer(self) -> AsyncIterator[Any]:
        """A plain consumer of the guard's own, in no group."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers,
                                    enable_auto_commit=False, isolation_level="read_committed",
                                    **self.security.aiokafka_kwargs())
        await consumer.start()
        try:
            yield consumer
        finally:
            await consumer.stop()

    def reset(self) -> None:
        """After a rebalance, partitions start again from their committed offsets."""
        self.next.clear()
        self.starts.clear()
