"""`flapguard backtest --alerts-out` against the alerts topic of a real worker on Kafka
(docs/design.md §4, §5): the same records per `dedup_key`, `emitted_at` aside."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.backtest.replay import replay_async
from streams.cli import main
from tests.builders import OTHER_RESOURCE, archived, at, evolve, finding
from tests.kafka_io import WorkerRun, read_until, values
from tests.timeline import history, write_jsonl


@pytest.fixture
def run(kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> Iterator[WorkerRun]:
    worker = WorkerRun(kafka_bootstrap, unique_name, tmp_path)
    worker.create_source(partitions=1)
    yield worker
    worker.stop()


def lifecycle() -> list[dict[str, Any]]:
    """Stories of the alert lifecycle (docs/design.md §3), in event time after the
    generated history: an escalated reactivation and its resolve, a bootstrap that
    passes (no resolve), a re-creation stamped a minute before its predecessor's
    archive, and a resolve of the incident it carries on; then incidents that close
    (§3, closing): a re-creation more severe than its predecessor (`superseded`), and a
    finding archived for good, once event time is past its window (`archived`)."""
    low = finding("escalates", created=at(hours=-2), severity="LOW")
    mild = finding("mild", created=at(hours=-1), control="RDS.13", severity="LOW")
    severe = finding("severe", created=at(hours=8), control="RDS.13", severity="CRITICAL")
    deleted = finding("deleted", created=at(hours=-1), control="EC2.8", resource=OTHER_RESOURCE)
    later = finding("later", created=at(hours=60), control="S3.1", resource=OTHER_RESOURCE,
                    status="PASSED")
    # One skewed clock (§2, the watermark rule): another product's finding stamped 55 min
    # ahead arrives between a re-creation and the archive stamped a minute after it.
    flapping = finding("flapping", created=at(hours=-2), control="RDS.14")
    flapped = finding("flapped", created=at(hours=9, minutes=-1), control="RDS.14")
    skewed = finding("skewed", created=at(hours=9, minutes=55), control="Custom.1",
                     product="imported", resource=OTHER_RESOURCE)
    boot = finding("boot", created=at(days=-60), updated=at(), resource=OTHER_RESOURCE)
    old = finding("old", created=at(hours=-1), control="RDS.27")
    new = finding("new", created=at(hours=3, minutes=-1), control="RDS.27")
    return [
        low, old, boot,
        archived(low, at(hours=1)),
        evolve(boot, updated=at(hours=2), status="PASSED"),
        evolve(low, updated=at(hours=2), record_state="ACTIVE", status="FAILED",
               severity="CRITICAL", reason_codes=[]),
        new, archived(old, at(hours=3)),
        evolve(low, updated=at(hours=4), record_state="ACTIVE", status="PASSED",
               severity="CRITICAL", reason_codes=[]),
        evolve(new, updated=at(hours=5), status="PASSED"),
        mild, deleted,
        archived(mild, at(hours=6)),
        archived(deleted, at(hours=6), status="FAILED"),
        severe,
        flapping, flapped, skewed, archived(flapping, at(hours=9)),
        later,
    ]


def by_key(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        out.setdefault(record["dedup_key"], []).append(
            {k: v for k, v in record.items() if k != "emitted_at"})
    return out


def test_the_alerts_topic_of_a_worker_holds_what_alerts_out_writes(
    run: WorkerRun, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=3, days=45) + lifecycle())
    alerts_out = tmp_path / "alerts.jsonl"
    decisions_out = tmp_path / "decisions.jsonl"
    assert main(["backtest", "--input", str(path), "--alerts-out", str(alerts_out),
                 "--decisions-out", str(decisions_out), "--no-labels",
                 "--partitions", str(run.partitions)]) == 0
    expected = by_key([orjson.loads(line) for line in alerts_out.read_bytes().splitlines()])
    kinds = {r["kind"] for records in expected.values() for r in records}
    assert {"new", "reactivated", "resolved"} <= kinds
    reasons = {r.get("reason") for records in expected.values() for r in records}
    assert {"passed", "superseded", "archived"} <= reasons
    alerted = {r["finding_id"].rsplit("/", 1)[-1] for records in expected.values() for r in records
               if r["kind"] == "new"}
    assert "skewed" in alerted and "flapped" not in alerted  # the hold still paired it
    decided = len(decisions_out.read_bytes().splitlines())

    asyncio.run(replay_async([path], bootstrap=run.bootstrap, topic=run.topics["findings"],
                             partitions=1))
    run.start()
    t = run.topics

    def done(got: dict[str, list[Any]]) -> bool:
        return len({(r["line"], r["index"]) for r in values(got[t["decisions"]])}) >= decided

    got = read_until(run.bootstrap, [t["alerts"], t["decisions"]], done, timeout=240,
                     alive=run.assert_alive)
    assert by_key(values(got[t["alerts"]])) == expected
