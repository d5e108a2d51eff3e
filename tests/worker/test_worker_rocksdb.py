"""The worker with `--store rocksdb://` (Faust's RocksDB store through rocksdict) on real
Apache Kafka: it decides as the backtest, and a SIGKILL then a restart on the same data
folder loses no alert and re-keys none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.core.records import decision_record
from tests.kafka_io import WorkerRun
from tests.timeline import history, write_jsonl
from tests.worker.test_worker_kafka import alerts_through_a_kill, backtest, mismatches_through_kafka

pytest.importorskip("rocksdict", reason="rocksdict is a dependency (pyproject.toml)")

@pytest.fixture
def run(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Iterator[WorkerRun]:
    worker = WorkerRun(kafka_bootstrap, unique_name, tmp_path, extra=["--store", "rocksdb://"])
    worker.create_source(partitions=1)
    yield worker
    worker.stop()


def test_rocksdb_worker_decides_as_the_backtest(run: WorkerRun, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=13, days=90), garbage_every=500)
    expected = [decision_record(o) for o in backtest(path, partitions=run.partitions)]
    mismatches = mismatches_through_kafka(run, path, expected)
    assert not mismatches, mismatches[:5]
    # The state is in RocksDB, one database per table and partition.
    assert list((run.workdir / "data").rglob("*.db")) or list((run.workdir / "data").rglob("CURRENT"))


def test_rocksdb_worker_killed_and_restarted_on_its_data_loses_no_alert(
    run: WorkerRun, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=17, accounts=4, days=60))
    # The second start has the same --data-dir: RocksDB's files survive the kill.
    wanted, seen = alerts_through_a_kill(run, path)
    assert seen == wanted, (sorted(seen - wanted)[:5], sorted(wanted - seen)[:5])
