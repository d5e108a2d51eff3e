"""The table adapters (`streams.worker.tables`): a RocksDB database is written only once
the changelog has acknowledged the same writes, so local state is never ahead of the
changelog, whatever moment a crash picks. Real RocksDB (rocksdict); Faust's store and
table are stood in for by what the adapters ask of them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.worker.outbox import Delivered, Outbox
from streams.worker.tables import ChangelogMapping, RocksPartition

rocksdict = pytest.importorskip("rocksdict", reason="the rocksdb extra (pyproject.toml)")
CHANGELOG = "app-findings-changelog"


class RocksStore:
    """What the adapters ask of Faust's RocksDB store: one database per partition."""

    offset_key = b"__faust\x00offset__"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dbs: dict[int, Any] = {}
        self.persisted: dict[TP, int] = {}

    def _db_for_partition(self, partition: int) -> Any:
        if partition not in self.dbs:
            self.dbs[partition] = rocksdict.Rdict(str(self.folder / f"p{partition}.db"),
                                                  rocksdict.Options(raw_mode=True))
        return self.dbs[partition]

    @staticmethod
    def _encode_key(key: str) -> bytes:
        return key.encode()

    @staticmethod
    def _decode_key(key: bytes) -> str:
        return key.decode()

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset

    def close(self) -> None:
        for db in self.dbs.values():
            db.close()


def mapping(store: RocksStore) -> ChangelogMapping:
    return ChangelogMapping(SimpleNamespace(
        data=store, changelog_topic=SimpleNamespace(get_topic_name=lambda: CHANGELOG)))


def changelog_writes(m: ChangelogMapping, partition: int) -> list[Any]:
    out = Outbox(None)
    m.flush(partition, out)
    return out.placed.get((CHANGELOG, partition), [])


def test_a_write_reaches_rocksdb_only_after_its_changelog_write_is_acknowledged(tmp_path: Path) -> None:
    store = RocksStore(tmp_path)
    m = mapping(store)
    view = m.partition(3)
    assert isinstance(view, RocksPartition)
    view["finding-1"] = b"state-1"
    assert store._db_for_partition(3).get(b"finding-1") is None  # not before the changelog
    assert [(k, v) for k, v, _ in changelog_writes(m, 3)] == [(b'"finding-1"', b"state-1")]
    assert store._db_for_partition(3).get(b"finding-1") is None  # sent, not yet acknowledged
    m.persisted([Delivered(CHANGELOG, 3, 41)])
    assert store._db_for_partition(3).get(b"finding-1") == b"state-1"
    assert view["finding-1"] == b"state-1"
    assert store.persisted == {TP(CHANGELOG, 3): 41}
    del view["finding-1"]
    changelog_writes(m, 3)
    assert "finding-1" in view
    m.persisted([Delivered(CHANGELOG, 3, 42)])
    assert "finding-1" not in view
    store.close()


def test_a_crash_before_the_acknowledgement_leaves_the_database_as_the_changelog(tmp_path: Path) -> None:
    store = RocksStore(tmp_path)
    m = mapping(store)
    m.partition(0)["meta"] = b"next offset 100"
    changelog_writes(m, 0)
    store.close()  # the process dies here: the broker never acknowledged
    restarted = RocksStore(tmp_path)
    assert restarted._db_for_partition(0).get(b"meta") is None
    assert restarted.persisted == {}
    restarted.close()


def test_one_partitions_acknowledgement_writes_none_of_another_partitions_state(tmp_path: Path) -> None:
    """Partitions persist concurrently: partition 1's writes wait for their own batch."""
    store = RocksStore(tmp_path)
    m = mapping(store)
    m.partition(0)["a"] = b"0"
    changelog_writes(m, 0)
    m.partition(1)["b"] = b"1"
    changelog_writes(m, 1)
    m.persisted([Delivered(CHANGELOG, 0, 7)])
    assert store._db_for_partition(0).get(b"a") == b"0"
    assert store._db_for_partition(1).get(b"b") is None
    m.persisted([Delivered("another-changelog", 1, 9), Delivered(CHANGELOG, 1, 8)])
    assert store._db_for_partition(1).get(b"b") == b"1"
    assert store.persisted == {TP(CHANGELOG, 0): 7, TP(CHANGELOG, 1): 8}
    store.close()
