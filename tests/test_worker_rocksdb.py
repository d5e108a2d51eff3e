"""The worker with `--store rocksdb://` (Faust's RocksDB store through rocksdict) on real
Apache Kafka: it decides as the backtest, and a SIGKILL then a restart on the same data
folder loses no alert and re-keys none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.records import decision_record
from tests.kafka_io import WorkerRun, alert_keys, expected_alert_keys, read_all, read_until, values
from tests.test_worker_kafka import all_decided, backtest, by_position, replay
from tests.timeline import history, write_jsonl

pytest.importorskip("rocksdict", reason="rocksdict is a dependency (pyproject.toml)")

COMPARED = ("finding_id", "decision", "kind", "reason", "key", "paired_finding_id", "dedup_key")


@pytest.fixture
def run(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Iterator[WorkerRun]:
    worker = WorkerRun(kafka_bootstrap, unique_name, tmp_path, extra=["--store", "rocksdb://"])
    worker.create_source(partitions=1)
    yield worker
    worker.stop()


def test_rocksdb_worker_decides_as_the_backtest(run: WorkerRun, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=13, days=90), garbage_every=500)
    expected = [decision_record(o) for o in backtest(path, partitions=run.partitions)]
    replay(run, path)
    run.start()
    got = read_until(run.bootstrap, [run.topics["decisions"]], all_decided(run, len(expected)),
                     timeout=240, alive=run.assert_alive)
    decided = by_position(values(got[run.topics["decisions"]]))
    mismatches = [(want["line"], {k: want.get(k) for k in COMPARED},
                   {k: decided[(want["line"], want["index"])].get(k) for k in COMPARED})
                  for want in expected
                  if any(want.get(k) != decided[(want["line"], want["index"])].get(k) for k in COMPARED)]
    assert not mismatches, mismatches[:5]
    # The state is in RocksDB, one database per table and partition.
    assert list((run.workdir / "data").rglob("*.db")) or list((run.workdir / "data").rglob("CURRENT"))


def test_rocksdb_worker_killed_and_restarted_on_its_data_loses_no_alert(
    run: WorkerRun, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=17, accounts=4, days=60))
    expected = [decision_record(o) for o in backtest(path, partitions=run.partitions)]
    wanted = expected_alert_keys(expected)
    assert len(wanted) > 50
    replay(run, path)
    run.start()
    t = run.topics
    read_until(run.bootstrap, [t["decisions"]], lambda got: len(got[t["decisions"]]) >= len(expected) // 3,
               timeout=120, alive=run.assert_alive)
    run.kill()
    decided = {(r["line"], r["index"]) for r in values(read_all(run.bootstrap, t["decisions"]))}
    assert len(decided) < len(expected), "the worker finished before it was killed"
    run.start()  # same --data-dir: RocksDB's files survive the kill
    got = read_until(run.bootstrap, [t["alerts"], t["decisions"]], all_decided(run, len(expected)),
                     timeout=240, alive=run.assert_alive)
    seen = alert_keys(got[t["alerts"]])
    assert seen == wanted, (sorted(seen - wanted)[:5], sorted(wanted - seen)[:5])
