"""The poller's cursor: how far Security Hub has been read, per source.

`Sweep` and `SeenSet` are pure. A stored cursor only ever names an `UpdatedAt` up to
which every finding was acknowledged by the broker; the next sweep starts `overlap`
before it (findings become visible in GetFindings some time after their `UpdatedAt`),
and the core treats the overlap's repeats as duplicates.

Stores: a JSON file (fine for `--once` from cron) or a compacted Kafka topic, key =
source, value = the cursor (the natural home for a continuous forwarder).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from streams.core.records import iso
from streams.kafka.availability import quiet_bootstrap
from streams.kafka.producer import ProducerSettings
from streams.kafka.security import BrokerSecurity


@dataclass(slots=True)
class Sweep:
    """One pass over GetFindings from `stored - overlap` up to now.

    Mid-sweep the cursor may advance to the last acknowledged page's newest
    `UpdatedAt` only when the endpoint sorts ascending by `UpdatedAt` (AWS does; moto
    ignores `SortCriteria`) and every finding so far came in that order: a later page
    could otherwise still hold older findings. Otherwise it advances at the end.
    """

    stored: int | None
    overlap_ms: int
    trust_order: bool
    floor_ms: int = 0  # `--since`: never read before this
    newest: int | None = None
    in_order: bool = True
    last: int | None = None  # newest of the current pass (a throttled pass starts over)

    @property
    def since(self) -> int:
        if self.stored is None:
            return self.floor_ms
        return max(self.floor_ms, self.stored - self.overlap_ms)

    def wanted(self, updated_at: int | None) -> bool:
        """Client-side `UpdatedAt` filter (moto's server ignores `Filters`). A finding
        whose time cannot be read is forwarded: the worker dead-letters it."""
        return updated_at is None or updated_at >= self.since

    def page_acked(self, updated: list[int]) -> int | None:
        """Record an acknowledged page; the cursor to store now, if any."""
        for moment in updated:
            if self.last is not None and moment < self.last:
                self.in_order = False
            self.last = moment if self.last is None else max(self.last, moment)
            self.newest = moment if self.newest is None else max(self.newest, moment)
        if self.trust_order and self.in_order:
            return self._advanced()
        return None

    def restart(self) -> None:
        """A new pass from `since`: its first pages may be older than the last one's."""
        self.last = None

    def finished(self) -> int | None:
        """The whole sweep is acknowledged: the cursor to store, if it moved."""
        return self._advanced()

    def _advanced(self) -> int | None:
        if self.newest is None or (self.stored is not None and self.newest <= self.stored):
            return None
        self.stored = self.newest
        return self.newest


@dataclass(slots=True)
class SeenSet:
    """(finding id, UpdatedAt) already forwarded by this process: a continuous poller
    re-reads the overlap every sweep and should not re-send it each time."""

    seen: dict[tuple[str, int], None] = field(default_factory=dict)

    def first_time(self, finding_id: str, updated_at: int) -> bool:
        key = (finding_id, updated_at)
        if key in self.seen:
            return False
        self.seen[key] = None
        return True

    def forget_before(self, floor_ms: int) -> None:
        self.seen = {k: None for k in self.seen if k[1] >= floor_ms}


def cursor_value(updated_at: int) -> bytes:
    return orjson.dumps({"updated_at": iso(updated_at), "updated_at_ms": updated_at,
                         "written_at": iso(int(time.time() * 1000))})


def read_cursor_value(data: bytes) -> int | None:
    try:
        value = orjson.loads(data)["updated_at_ms"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


class CursorStore(Protocol):
    async def load(self) -> dict[str, int]: ...

    async def save(self, source: str, updated_at: int) -> None: ...

    async def close(self) -> None: ...


class NoCursor:
    """Every run reads from `--since` (a one-off backfill)."""

    async def load(self) -> dict[str, int]:
        return {}

    async def save(self, source: str, updated_at: int) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class FileCursor:
    """A JSON object {source: cursor}, replaced atomically (write, fsync, rename)."""

    path: Path
    values: dict[str, Any] = field(default_factory=dict)

    async def load(self) -> dict[str, int]:
        if not self.path.exists():
            return {}
        try:
            values = orjson.loads(self.path.read_bytes())
        except orjson.JSONDecodeError:
            values = None
        if not isinstance(values, dict):
            raise OSError(f"cursor file {self.path} is not a JSON object of cursors")
        self.values = values
        loaded = {k: read_cursor_value(orjson.dumps(v)) for k, v in self.values.items()}
        return {k: v for k, v in loaded.items() if v is not None}

    async def save(self, source: str, updated_at: int) -> None:
        self.values[source] = orjson.loads(cursor_value(updated_at))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as handle:
            handle.write(orjson.dumps(self.values, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)

    async def close(self) -> None:
        return None


@dataclass
class TopicCursor:
    """A compacted one-partition topic; the last record of a key is its cursor."""

    bootstrap: str
    topic: str
    producer: Any = None
    security: BrokerSecurity = field(default_factory=BrokerSecurity)
    writes: ProducerSettings = field(default_factory=ProducerSettings)

    async def load(self) -> dict[str, int]:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        from streams.kafka.topics import create_topics

        auth = self.security.aiokafka_kwargs()
        with quiet_bootstrap():
            await create_topics(self.bootstrap, {self.topic: 1},
                                {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
                                replication=self.writes.replication, security=self.security)
            self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                             **self.writes.aiokafka_kwargs(), **auth)
            await self.producer.start()
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, **auth)
        await consumer.start()
        values: dict[str, int] = {}
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        value = read_cursor_value(record.value or b"")
                        if record.key is not None and value is not None:
                            values[record.key.decode()] = value
        finally:
            await consumer.stop()
        return values

    async def save(self, source: str, updated_at: int) -> None:
        await self.producer.send_and_wait(self.topic, cursor_value(updated_at), key=source.encode())

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
