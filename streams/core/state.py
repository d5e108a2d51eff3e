"""The state the decision core keeps, and the key-value interface it keeps it in.

Pure. The backtest keeps state in dicts (`MemoryKV`); the Faust worker keeps it in
changelogged tables through the same `KV` interface (see `streams.worker.tables`). Values are
always written back with `put` after a change: a Faust table only sends a value to
its changelog when it is re-assigned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import orjson

from streams.core.findings import Finding

V = TypeVar("V")


class FindingState(msgspec.Struct, gc=False, array_like=True):
    """What is known of one finding `Id`."""

    # A msgspec Struct, not a dataclass: its __init__ is C (a new finding's state is
    # built per first sight), and without garbage-collector tracking (it holds only
    # strings and numbers) the collector never walks the many states a partition keeps.
    # `array_like`: stored as a JSON array, fields in this order (see `encode`).

    p: int  # partition that owns it
    partition_key: str
    standard: str | None
    control: bool  # a Security Hub control finding
    created_at: int
    updated_at: int
    record_state: str
    last_status: str | None  # last Compliance.Status other than NOT_AVAILABLE
    na_since: bool  # a NOT_AVAILABLE came after last_status
    severity: int  # while ACTIVE and failing
    notified: bool  # alerted, suppressed or bootstrapped in this failing period
    dedup_key: str | None  # of the failing period (incident) it is in
    archived_at: int | None  # UpdatedAt of its first ARCHIVED event since it was ACTIVE
    superseded: bool = False  # replaced by a consolidated finding; never a predecessor
    live: bool = False  # listed in the live per-standard index
    # An incident is open under `dedup_key`: an alert opened it, or a suppressed
    # continuation inherited it (docs/design.md §3). Not `notified`: a bootstrap, a
    # muted or a below-minimum finding is notified and opened nothing. None: written
    # before this field existed, when every notified finding was resolved: read as
    # `notified` (see `opened`).
    opened: bool | None = None


def opened(state: FindingState) -> bool:
    """Whether the finding's failing period has an open incident to resolve."""
    return state.notified if state.opened is None else state.opened


@dataclass(slots=True)
class Archive:
    """An archived failing control finding: a predecessor a re-creation may pair with."""

    finding_id: str
    standard: str | None
    archived_at: int
    severity: int
    dedup_key: str
    used: bool = False
    # Whether an incident is open under `dedup_key`; a re-creation that continues this
    # one inherits it. Archives written before this field counted as opened.
    opened: bool = True
    # The ARCHIVED event that made it: what the `resolved` alert of its incident shows
    # when the incident closes (docs/design.md §3, closing). None: written before.
    finding: Finding | None = None
    # False: an archived finding no re-creation may pair with (another product's, or a
    # control finding replaced by a consolidated one) kept only for its open incident.
    predecessor: bool = True
    # A consolidated archive replaced by per-standard findings (consolidation turned
    # off): the standards that took its place so far; one of each more may still.
    standards: list[str] = field(default_factory=list)
    # False: its control's pairing policy lets no re-creation of its own standard
    # continue it (not Config's NOT_APPLICABLE archive); a consolidation switch still may.
    recreatable: bool = True


@dataclass(slots=True)
class Recreation:
    """A control finding that alerted as new with no predecessor: a late archive may pair."""

    finding_id: str
    standard: str | None
    created_at: int
    severity: int
    paired: bool = False


@dataclass(slots=True)
class Bucket:
    """One tumbling window of one partition key: archives and alerted re-creations in it."""

    p: int
    start: int
    archives: list[Archive] = field(default_factory=list)
    recreations: list[Recreation] = field(default_factory=list)


@dataclass(slots=True)
class LiveMember:
    severity: int
    dedup_key: str
    opened: bool = True  # as `Archive.opened`


@dataclass(slots=True)
class LiveSet:
    """ACTIVE, failing, notified per-standard control findings of one partition key."""

    p: int
    members: dict[str, LiveMember] = field(default_factory=dict)


class Origin(msgspec.Struct, frozen=True, gc=False, array_like=True):  # as `Finding`
    """Where a finding occurrence came from: a file line, a Kafka record, or both (a
    replayed file carries its file and line in record headers)."""

    source: str  # input file name; the topic for records with no file of origin
    line: int  # 1-based file line; the offset for records with no file of origin
    index: int  # position inside the envelope, page or array
    topic: str | None = None
    partition: int = -1
    offset: int = -1


class Arrival(msgspec.Struct, frozen=True, gc=False, array_like=True):  # as `Finding`
    """A finding waiting in the reorder buffer."""

    p: int
    seq: int  # arrival order (the keyed topic's offset in the worker)
    finding: Finding
    origin: Origin

    @property
    def order(self) -> tuple[int, str, int]:
        return (self.finding.updated_at, self.finding.id, self.seq)


@dataclass(slots=True)
class PartitionMeta:
    watermark: int | None = None
    swept_at: int | None = None
    # The arrival after the last one applied: the worker skips a redelivered record
    # below it and re-reads from it when its consumer skipped records.
    next_seq: int | None = None
    # The same for the findings-topic records of this partition whose findings it
    # accepted directly (they were already on the partition their key hashes to).
    next_source: int | None = None


class KV(Protocol[V]):
    def get(self, key: str) -> V | None: ...
    def put(self, key: str, value: V) -> None: ...
    def delete(self, key: str) -> None: ...
    def items(self) -> Iterator[tuple[str, V]]: ...


class MemoryKV(Generic[V]):
    def __init__(self) -> None:
        self.data: dict[str, V] = {}
        # The dict's own methods, not Python ones calling them: the backtest does
        # about ten of these per finding.
        self.get: Callable[[str], V | None] = self.data.get
        self.put: Callable[[str, V], None] = self.data.__setitem__

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(list(self.data.items()))

    def __len__(self) -> int:
        return len(self.data)


class CodecKV(Generic[V]):
    """A KV over any mapping of bytes (a Faust table, or a dict in tests): every get
    decodes a fresh copy, so a change that is not `put` back is lost, as in a table."""

    def __init__(self, data: MutableMapping[str, bytes], decode: Callable[[bytes], V]) -> None:
        self.data = data
        self.decode = decode

    def get(self, key: str) -> V | None:
        raw = self.data.get(key)
        return None if raw is None else self.decode(raw)

    def put(self, key: str, value: V) -> None:
        # A copy of its own size: an encoder's output keeps the spare room of its
        # buffer (msgspec 0.22: 515 bytes of RSS per 309-byte value, 397 copied; orjson
        # 3.13: 4.1 KB), and a table holds millions of values.
        self.data[key] = bytes(memoryview(encode(value)))

    def delete(self, key: str) -> None:
        if key in self.data:
            del self.data[key]

    def items(self) -> Iterator[tuple[str, V]]:
        # A copy of the keys only (a sweep may delete while it iterates): values are
        # read one at a time, so a scan of a million states on disk never holds them all.
        for key in list(self.data):
            raw = self.data.get(key)
            if raw is not None:
                yield key, self.decode(raw)


_DELETED = object()


class StagedKV(Generic[V]):
    """Writes held back until `apply()`: the worker sends a decision's outputs, waits
    for the broker's acknowledgement, and only then lets the state change reach the
    changelog. A crash in between re-decides the event the same way."""

    def __init__(self, base: KV[V]) -> None:
        self.base = base
        self.pending: dict[str, Any] = {}

    def get(self, key: str) -> V | None:
        value = self.pending.get(key)
        if value is None:
            return self.base.get(key)
        return None if value is _DELETED else value

    def put(self, key: str, value: V) -> None:
        self.pending[key] = value

    def delete(self, key: str) -> None:
        self.pending[key] = _DELETED

    def items(self) -> Iterator[tuple[str, V]]:
        for key, value in self.base.items():
            if key not in self.pending:
                yield key, value
        for key, staged in list(self.pending.items()):
            if staged is not _DELETED:
                yield key, staged

    def apply(self) -> None:
        for key, value in self.pending.items():
            if value is _DELETED:
                self.base.delete(key)
            else:
                self.base.put(key, value)
        self.pending.clear()


@dataclass(slots=True)
class Store:
    findings: KV[FindingState]
    buckets: KV[Bucket]
    live: KV[LiveSet]
    buffer: KV[Arrival]
    meta: KV[PartitionMeta]

    @classmethod
    def in_memory(cls) -> Store:
        return cls(MemoryKV(), MemoryKV(), MemoryKV(), MemoryKV(), MemoryKV())

    @classmethod
    def over(cls, maps: Mapping[str, MutableMapping[str, bytes]]) -> Store:
        """A store over mappings of bytes named findings, buckets, live, buffer, meta."""
        return cls(
            findings=CodecKV(maps["findings"], decode_finding_state),
            buckets=CodecKV(maps["buckets"], decode_bucket),
            live=CodecKV(maps["live"], decode_live),
            buffer=CodecKV(maps["buffer"], decode_arrival),
            meta=CodecKV(maps["meta"], decode_meta),
        )

    def staged(self) -> tuple[Store, Callable[[], None]]:
        """The same store with writes held back, and the function that applies them."""
        kvs = [StagedKV(kv) for kv in (self.findings, self.buckets, self.live, self.buffer, self.meta)]

        def apply() -> None:
            for kv in kvs:
                kv.apply()

        return Store(*kvs), apply

    NAMES = ("findings", "buckets", "live", "buffer", "meta")


# Codecs: the worker stores these values as JSON bytes in its tables.
#
# The Structs (`FindingState`, `Arrival` with its `Finding` and `Origin`) are written as
# JSON arrays, fields in declaration order: the field names were 35-45% of their bytes,
# and a worker writes about two such values to its changelogs per finding (the
# dataclasses, written far less often, stay objects). New fields go last, with a default.
# Values written as objects (before arrays) are still read.

# 2-4 times faster per value than orjson with `asdict`.
encode: Callable[[Any], bytes] = msgspec.json.Encoder().encode

# msgspec decodes the JSON straight into the state types, checking every field's type:
# three times faster than orjson plus the constructor, on the worker's hot path.
decode_meta: Callable[[bytes], PartitionMeta] = msgspec.json.Decoder(PartitionMeta).decode
decode_bucket: Callable[[bytes], Bucket] = msgspec.json.Decoder(Bucket).decode
decode_live: Callable[[bytes], LiveSet] = msgspec.json.Decoder(LiveSet).decode
_decode_state = msgspec.json.Decoder(FindingState).decode
_decode_arrival = msgspec.json.Decoder(Arrival).decode


def decode_finding_state(data: bytes) -> FindingState:
    if data[:1] == b"{":  # written as an object
        return FindingState(**orjson.loads(data))
    return _decode_state(data)


def decode_arrival(data: bytes) -> Arrival:
    if data[:1] == b"{":  # written as an object
        raw = orjson.loads(data)
        return Arrival(p=raw["p"], seq=raw["seq"], finding=Finding.from_json(raw["finding"]),
                       origin=Origin(**raw["origin"]))
    return _decode_arrival(data)
