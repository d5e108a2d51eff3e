"""Several workers in one group, on real Apache Kafka: one dies, the others carry on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.core.keys import partition_for
from streams.core.records import decision_record
from tests.kafka_io import WorkerRun, alert_keys, expected_alert_keys, read_all, read_until, values
from tests.timeline import history, write_jsonl
from tests.worker.test_worker_kafka import all_decided, backtest, replay

PARTITIONS = 8


def undecided(run: WorkerRun, expected: list[dict[str, Any]]) -> str:
    """Which input lines have no decision yet, by keyed partition (for a failure)."""
    decided = {(r["line"], r["index"]) for r in values(read_all(run.bootstrap, run.topics["decisions"]))}
    missing = [r for r in expected if (r["line"], r["index"]) not in decided]
    by_partition = Counter(partition_for(r["key"], PARTITIONS) if r["key"] else None for r in missing)
    lines = [r["line"] for r in missing]
    return f"{len(missing)} undecided, by keyed partition {dict(by_partition)}, lines {lines[:20]}"


@pytest.fixture(params=["keyed", "direct"])
def group(request: pytest.FixtureRequest, kafka_bootstrap: str, unique_name: str,
          tmp_path: Path) -> Iterator[list[WorkerRun]]:
    """Three workers; their findings topic has one partition (every finding goes
    through the keyed topic) or, `direct`, as many as the keyed topic, with records
    placed by key (decided where they arrive; their state moves with the partition)."""
    workers = [WorkerRun(kafka_bootstrap, unique_name, tmp_path / f"w{n}", partitions=PARTITIONS)
               for n in range(3)]
    for worker in workers:
        worker.workdir.mkdir()
    workers[0].create_source(partitions=PARTITIONS if request.param == "direct" else 1)
    yield workers
    for worker in workers:
        worker.stop()


def test_three_workers_one_killed_lose_no_alert_and_never_rekey_one(
    group: list[WorkerRun], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=23, accounts=5, days=60))
    expected = [decision_record(o) for o in backtest(path, partitions=PARTITIONS)]
    expected_alerts = expected_alert_keys(expected)
    assert len(expected_alerts) > 50
    first, victim, third = group
    replay(first, path)
    for worker in group:
        worker.start()
    t = first.topics

    def alive() -> None:
        for worker in group:
            worker.assert_alive()

    read_until(first.bootstrap, [t["decisions"]],
               lambda got: len(got[t["decisions"]]) >= len(expected) // 3,
               timeout=180, alive=alive)
    victim.kill()
    decided_at_kill = {(r["line"], r["index"]) for r in values(read_all(first.bootstrap, t["decisions"]))}
    assert len(decided_at_kill) < len(expected), "the group finished before a worker was killed"

    survivors = [first, third]

    def survivors_alive() -> None:
        for worker in survivors:
            worker.assert_alive()

    try:
        got = read_until(first.bootstrap, [t["alerts"], t["decisions"]],
                         all_decided(first, len(expected)), timeout=240, alive=survivors_alive)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {undecided(first, expected)}") from None
    seen = alert_keys(got[t["alerts"]])
    # Nothing lost, nothing under a new dedup_key.
    assert seen == expected_alerts, (sorted(seen - expected_alerts), sorted(expected_alerts - seen))
