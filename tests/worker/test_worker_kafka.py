"""The Faust worker against real Apache Kafka (docs/design.md §6), as a child process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.backtest.replay import replay_async
from streams.backtest.run import read_occurrences, run_backtest
from streams.core.decide import Outcome
from streams.core.policy import Policy
from streams.core.records import HEADER_REASON, decision_record
from streams.worker.app import TICK_KEY
from tests.builders import OTHER_RESOURCE, archived, at, envelope, finding
from tests.kafka_io import (
    AlertKey,
    WorkerRun,
    alert_keys,
    expected_alert_keys,
    progress_report,
    read_all,
    read_until,
    values,
)
from tests.timeline import history, write_jsonl

FIXTURES = Path(__file__).parents[1] / "fixtures"
INCIDENT = FIXTURES / "incident-rds45.jsonl"
NEIGHBOUR = OTHER_RESOURCE.replace("cluster:", "cluster:neighbour-")


@pytest.fixture
def run(request: pytest.FixtureRequest, kafka_bootstrap: str, unique_name: str,
        tmp_path: Path) -> Iterator[WorkerRun]:
    """A worker over a one-partition findings topic: every finding goes through the
    keyed topic. Parametrised `"direct"`, the findings topic has the worker's partition
    count and `replay` places records by their key, as the forwarders do: findings are
    decided on the partition they arrive on."""
    worker = WorkerRun(kafka_bootstrap, unique_name, tmp_path)
    worker.create_source(partitions=worker.partitions if getattr(request, "param", None) == "direct" else 1)
    yield worker
    worker.stop()


both_paths = pytest.mark.parametrize("run", ["keyed", "direct"], indirect=True)


def replay(run: WorkerRun, path: Path) -> None:
    asyncio.run(replay_async([path], bootstrap=run.bootstrap, topic=run.topics["findings"],
                             partitions=1))


def backtest(path: Path, partitions: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    policy = Policy()
    run_backtest(read_occurrences([path], policy=policy, now_ms=int(time.time() * 1000)),
                 policy=policy, partitions=partitions, on_decision=outcomes.append)
    return outcomes


def by_position(records: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """Decisions keyed by (line, index): the last one wins after a redelivery."""
    return {(r["line"], r["index"]): r for r in records}


def all_decided(run: WorkerRun, expected: int):  # type: ignore[no-untyped-def]
    topic = run.topics["decisions"]

    def done(got: dict[str, list[Any]]) -> bool:
        positions = {(r["line"], r["index"]) for r in values(got[topic])}
        return len(positions) >= expected

    return done


COMPARED = ("finding_id", "decision", "kind", "reason", "key", "paired_finding_id", "dedup_key")


def mismatches_through_kafka(run: WorkerRun, path: Path, expected: list[dict[str, Any]]
                             ) -> list[tuple[Any, ...]]:
    """Replay `path`, run the worker until every input is decided, and list the decisions
    that differ from `expected` (the backtest's) as (line, wanted, got)."""
    replay(run, path)
    run.start()
    got = read_until(run.bootstrap, [run.topics["decisions"]], all_decided(run, len(expected)),
                     timeout=240, alive=run.assert_alive)
    decided = by_position(values(got[run.topics["decisions"]]))
    return [
        (want["line"], {k: want.get(k) for k in COMPARED},
         {k: decided[(want["line"], want["index"])].get(k) for k in COMPARED})
        for want in expected
        if any(want.get(k) != decided[(want["line"], want["index"])].get(k) for k in COMPARED)
    ]


def alerts_through_a_kill(run: WorkerRun, path: Path) -> tuple[set[AlertKey], set[AlertKey]]:
    """Replay `path`, SIGKILL the worker once a third of it is decided, start it again
    (same data folder) and read until every input is decided: the alerts the backtest
    expects and those on the alerts topic (a repeat with the same dedup_key is one)."""
    expected = [decision_record(o) for o in backtest(path, partitions=run.partitions)]
    expected_alerts = expected_alert_keys(expected)
    assert len(expected_alerts) > 50
    replay(run, path)
    run.start()
    t = run.topics
    read_until(run.bootstrap, [t["decisions"]],
               lambda got: len(got[t["decisions"]]) >= len(expected) // 3,
               timeout=120, alive=run.assert_alive)
    run.kill()
    decided_at_kill = {(r["line"], r["index"]) for r in values(read_all(run.bootstrap, t["decisions"]))}
    assert len(decided_at_kill) < len(expected), "the worker finished before it was killed"
    run.start()
    try:
        got = read_until(run.bootstrap, [t["alerts"], t["decisions"]], all_decided(run, len(expected)),
                         timeout=240, alive=run.assert_alive)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {progress_report(run)}") from None
    return expected_alerts, alert_keys(got[t["alerts"]])


def test_demo_incident_gives_exactly_the_expected_records(run: WorkerRun) -> None:
    expected = orjson.loads((FIXTURES / "incident-rds45.expected.json").read_bytes())
    replay(run, INCIDENT)
    run.start()
    t = run.topics
    got = read_until(run.bootstrap, [t["alerts"], t["suppressed"], t["deadletter"], t["decisions"]],
                     all_decided(run, len(expected)), timeout=180, alive=run.assert_alive)

    decisions = by_position(values(got[t["decisions"]]))
    for row in expected:
        decided = decisions[(row["line"], 0)]
        assert decided["decision"] == row["decision"], row
        if row["kind_or_reason"] is not None:
            assert decided.get("kind", decided.get("reason")) == row["kind_or_reason"], row

    alerts = values(got[t["alerts"]])
    wanted_alerts = [(r["finding_id"], "new") for r in expected if r["decision"] == "alert"]
    assert sorted((a["finding_id"], a["kind"]) for a in alerts) == sorted(wanted_alerts)
    assert all(a["dedup_key"] and a["severity"] == "MEDIUM" for a in alerts)

    suppressed = values(got[t["suppressed"]])
    assert len(suppressed) == 1
    (s,) = suppressed
    assert s["reason"] == "recreated_after_archive"
    assert s["finding_id"] == expected[3]["finding_id"]
    assert s["paired_finding_id"] == expected[0]["finding_id"]
    assert s["gap_seconds"] == pytest.approx(12 * 3600 + 30 * 60 + 18)

    (dead,) = got[t["deadletter"]]
    assert dict(dead.headers)[HEADER_REASON] == b"unparseable"
    assert dead.value == INCIDENT.read_bytes().splitlines()[7]


@both_paths
def test_months_old_history_through_kafka_decides_as_the_backtest(
    run: WorkerRun, tmp_path: Path
) -> None:
    # Months-old event times: Faust's wall-clock window expiry must not matter.
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=11, days=120), garbage_every=700)
    expected = [decision_record(o) for o in backtest(path, partitions=run.partitions)]
    assert Counter(r["decision"] for r in expected)["suppressed"] > 20
    mismatches = mismatches_through_kafka(run, path, expected)
    assert not mismatches, mismatches[:5]
    # The path the findings took: through the keyed topic, or none of them (it holds
    # only the idle ticks) when they arrived on their own partitions.
    hopped = [r for r in read_all(run.bootstrap, f"{run.app_id}-keyed-findings") if r.key != TICK_KEY]
    findings = sum(1 for r in expected if r["decision"] != "dead_letter")
    assert len(hopped) == (0 if run.source_partitions == run.partitions else findings)


@both_paths
def test_worker_killed_mid_stream_loses_no_alert_and_never_rekeys_one(
    run: WorkerRun, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=5, accounts=4, days=60))
    expected_alerts, seen = alerts_through_a_kill(run, path)
    assert seen == expected_alerts  # nothing lost, nothing re-keyed
    assert run.starts == 2


def test_forged_and_hostile_findings_change_nothing_in_the_worker(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """docs/design.md §2-3 through Kafka: a finding dated in the future is
    dead-lettered and does not move the watermark (a pair reordered within the hold
    still pairs); an archived finding of another product never silences a real control
    finding; findings over the depth or string limits are dead letters with their
    bytes, and one of them never takes its neighbour in the same envelope with it."""
    future = (datetime.now(UTC) + timedelta(days=30)).isoformat(timespec="milliseconds")
    forged = finding("forged", created=at(hours=-2), product="imported")
    too_deep = finding("deep", created=at(hours=2), resource=NEIGHBOUR)
    too_deep["ProductFields"] = {"Deep": reduce(lambda inner, _: [inner], range(40), "leaf")}
    too_long = finding("long", created=at(hours=2), resource=NEIGHBOUR, title="x" * 40_000)
    old = finding("old", created=at(hours=1), resource=OTHER_RESOURCE)
    arrivals = [
        forged,
        archived(forged, at(hours=-1)),
        finding("from-the-future", created=at(hours=1, minutes=30), updated=future.replace("+00:00", "Z"),
                resource=OTHER_RESOURCE),
        finding("real", created=at()),  # same account, Region, control, resource as `forged`
        old,
        finding("recreated", created=at(hours=2, minutes=1), resource=OTHER_RESOURCE),
        archived(old, at(hours=2)),  # arrives after its re-creation, within the hold
        too_deep,
        envelope([too_long, finding("neighbour", created=at(hours=2, minutes=2), resource=NEIGHBOUR)]),
    ]
    path = tmp_path / "forged.jsonl"
    lines = [orjson.dumps(f) for f in arrivals]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    run = WorkerRun(kafka_bootstrap, unique_name, tmp_path, partitions=1)
    run.create_source(partitions=1)
    try:
        replay(run, path)
        run.start()
        t = run.topics
        got = read_until(run.bootstrap, [t["decisions"], t["deadletter"]],
                         all_decided(run, len(arrivals) + 1), timeout=180, alive=run.assert_alive)
    finally:
        run.stop()
    decided = by_position(values(got[t["decisions"]]))
    summary = [(decided[(n, 0)]["decision"], decided[(n, 0)].get("kind", decided[(n, 0)].get("reason")))
               for n in range(1, len(arrivals) + 1)]
    assert summary == [
        ("alert", "new"),  # another product's finding alerts as itself
        ("silent", "archived"),  # ... and its archive is no predecessor
        ("dead_letter", "future_timestamp"),
        ("alert", "new"),  # the real control finding is not silenced by the forged archive
        ("alert", "new"),
        ("suppressed", "recreated_after_archive"),  # the watermark did not jump
        ("silent", "archived"),
        ("dead_letter", "too_deep"),
        ("dead_letter", "string_too_long"),
    ]
    last = len(arrivals)
    assert (decided[(last, 1)]["decision"], decided[(last, 1)]["kind"]) == ("alert", "new")
    dead = {dict(r.headers)[HEADER_REASON]: r.value for r in got[t["deadletter"]]}
    assert set(dead) == {b"future_timestamp", b"too_deep", b"string_too_long"}
    assert dead[b"too_deep"] == lines[-2]  # the original bytes
    assert orjson.loads(dead[b"string_too_long"]) == too_long
