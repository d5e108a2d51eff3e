"""The core's state in RocksDB (streams/worker/rocks_kv.py) decides exactly as in dicts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from streams.backtest.run import read_occurrences
from streams.core.engine import PartitionEngine
from streams.core.findings import Finding
from streams.core.policy import Policy
from streams.core.records import decision_record
from streams.core.state import Store
from streams.worker.rocks_kv import RocksMapping, rocks_options, rocks_store
from tests.timeline import history, write_jsonl

pytest.importorskip("rocksdict", reason="rocksdict is a test dependency (pyproject.toml)")


def decide_all(path: Path, store: Store) -> list[dict[str, Any]]:
    policy = Policy()
    engine = PartitionEngine(store, policy, 0)
    out: list[dict[str, Any]] = []
    for occurrence in read_occurrences([path], policy=policy, now_ms=int(time.time() * 1000)):
        if isinstance(occurrence.parsed, Finding):
            out.extend(decision_record(o) for o in engine.accept(occurrence.parsed, occurrence.origin,
                                                                 occurrence.seq))
    out.extend(decision_record(o) for o in engine.flush())
    return out


def test_a_rocksdb_store_decides_as_the_in_memory_one(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=3, days=60))
    expected = decide_all(path, Store.in_memory())
    store, maps = rocks_store(tmp_path / "state")
    try:
        assert decide_all(path, store) == expected
        assert len(maps["findings"]) > 20
        assert {d["decision"] for d in expected} >= {"alert", "suppressed", "silent"}
    finally:
        for mapping in maps.values():
            mapping.close()


def test_rocks_mapping_is_a_mapping_of_str_to_bytes(tmp_path: Path) -> None:
    mapping = RocksMapping(tmp_path / "db", rocks_options())
    mapping["é"] = b"1"
    mapping["b"] = b"2"
    assert sorted(mapping) == ["b", "é"] and len(mapping) == 2
    assert mapping["é"] == b"1" and mapping.get("x", b"-") == b"-" and "b" in mapping
    del mapping["b"]
    with pytest.raises(KeyError):
        mapping["b"]
    mapping.close()
