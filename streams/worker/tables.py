"""The core's `Store` over Faust tables: a changelogged mapping and a RocksDB partition.
Writes reach the changelog only once the outputs are acknowledged, and a RocksDB
database only once the changelog has them: local state is never ahead of the changelog
(docs/operations.md, "Stores")."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import orjson
from faust.types import TP

from streams.kafka.workarounds import is_rocksdb, rocks_db, rocks_key, table_key
from streams.worker.outbox import Delivered, Outbox


class ChangelogMapping(MutableMapping[str, bytes]):
    """A Faust table seen as a mapping of bytes whose writes go to the changelog
    partition of the key's owner, sent by the agent, which waits for the broker.

    Faust's own `table[k] = v` queues the changelog write in a buffer that an offset
    commit may overtake under back-pressure, and that does not drain while a
    rebalance waits for the agent: a batch awaiting it would never finish. These
    writes go straight to the producer instead.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._writes: list[tuple[str, bytes | None]] = []
        # RocksDB writes waiting for their changelog writes, by partition.
        self._local: dict[int, list[tuple[str, bytes | None]]] = {}

    def partition(self, partition: int) -> MutableMapping[str, bytes]:
        """The view the engine of `partition` reads and writes through."""
        store = self.table.data
        if is_rocksdb(store):
            return RocksPartition(self, partition)
        return self

    def persisted(self, sent: Iterable[Delivered]) -> None:
        """The changelog has the writes `sent`: write them to the RocksDB databases, then
        tell the store the changelog offsets its databases now reflect, so that a restart
        replays the changelog from there (a crash before this replays the writes from the
        changelog; a memory store keeps nothing across a restart: a no-op)."""
        store = self.table.data
        if not is_rocksdb(store):
            return
        name = self.table.changelog_topic.get_topic_name()
        last: dict[int, int] = {}
        for batch in sent:
            if batch.topic == name:
                last[batch.partition] = max(batch.last_offset, last.get(batch.partition, -1))
        for partition, offset in last.items():
            # Only the partitions whose changelog writes these were: another partition's
            # may still be on their way.
            db = rocks_db(store, partition)
            for key, value in self._local.pop(partition, ()):
                if value is None:
                    db.delete(rocks_key(store, key))
                else:
                    db.put(rocks_key(store, key), value)
            store.set_persisted_offset(TP(name, partition), offset)

    def __getitem__(self, key: str) -> bytes:
        value: bytes = self.table.data[key]
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self.table.data.get(key, default)

    def __contains__(self, key: object) -> bool:
        # Mapping's own would look the key up and raise KeyError when it is missing.
        return key in self.table.data

    def __setitem__(self, key: str, value: bytes) -> None:
        self.table.data[key] = value
        self._writes.append((key, value))

    def __delitem__(self, key: str) -> None:
        del self.table.data[key]
        self._writes.append((key, None))

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.table.data.keys()))

    def __len__(self) -> int:
        return len(self.table.data)

    def flush(self, partition: int, out: Outbox) -> None:
        """Hand the writes made since the last call to `out`, for changelog `partition`
        (keys serialised as Faust's str keys are: JSON, which Faust writes with orjson)."""
        writes, self._writes = self._writes, []
        name = self.table.changelog_topic.get_topic_name()
        for key, value in writes:
            out.add(name, partition, orjson.dumps(key), value)


class RocksPartition(MutableMapping[str, bytes]):
    """One partition of a table in Faust's RocksDB store, read and written in that
    partition's database. The store itself picks the database from `current_event()`,
    which a `take_events` batch body does not have (its writes assert on it) or which
    names another record's partition; keys and values are stored as the changelog
    carries them, as the store's recovery writes them. A write reaches the database only
    once its changelog write is acknowledged (`ChangelogMapping.persisted`): reads in
    between come from the core's staged writes, never from here."""

    def __init__(self, parent: ChangelogMapping, partition: int) -> None:
        self.parent = parent
        self.store = parent.table.data
        self.partition = partition

    @property
    def db(self) -> Any:
        return rocks_db(self.store, self.partition)

    def __getitem__(self, key: str) -> bytes:
        value = self.db.get(rocks_key(self.store, key))
        if value is None:
            raise KeyError(key)
        return bytes(value)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.db.get(rocks_key(self.store, key))
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.db.get(rocks_key(self.store, key)) is not None

    def __setitem__(self, key: str, value: bytes) -> None:
        self.parent._writes.append((key, value))
        self.parent._local.setdefault(self.partition, []).append((key, value))

    def __delitem__(self, key: str) -> None:
        self.parent._writes.append((key, None))
        self.parent._local.setdefault(self.partition, []).append((key, None))

    def __iter__(self) -> Iterator[str]:
        offset_key = self.store.offset_key
        keys = [k for k in self.db.keys() if k != offset_key]  # noqa: SIM118 - not iterable
        return iter([table_key(self.store, k) for k in keys])

    def __len__(self) -> int:
        return sum(1 for _ in self)
