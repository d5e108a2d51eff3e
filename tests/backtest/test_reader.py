"""`backtest --from-topic` with its reader process (`streams.backtest.reader`): the
same decisions, report and warm-up as a run in one process, on the real broker; a
reader that fails ends the run with one line."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from streams.backtest.from_topic import Plan, Span, TopicError, backtest_topic
from streams.backtest.reader import PROCESS_FROM, ProcessReader, ReadJob, use_process
from streams.core.decide import Outcome
from streams.core.policy import Policy
from streams.core.records import alert_records, kafka_decision_record
from streams.kafka.security import PLAINTEXT
from tests.backtest.test_from_topic import file_records, incident_at_event_time, ms, put
from tests.builders import NOW_MS


def run(topic: str, bootstrap: str, reader: str, **options: Any) -> tuple[list[dict[str, Any]],
                                                                         list[dict[str, Any]],
                                                                         dict[str, Any]]:
    """Decision records, alert records (in the order taken) and the report's JSON."""
    decisions: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []

    def taken(outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            alerts.extend(alert_records(outcome, 0))

    result = backtest_topic(topic, bootstrap=bootstrap, policy=Policy(), now_ms=NOW_MS,
                            on_decision=lambda o: decisions.append(kafka_decision_record(o)),
                            on_decided=taken, progress=False, reader=reader, **options)
    report = result.report.to_json()
    for timing in ("seconds", "findings_per_second"):  # the clock
        report.pop(timing)
    report["source"] = result.source_json()
    report["sweep"] = [row.to_json() for row in result.rows]
    return decisions, alerts, report


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streams.cli import main

    path = tmp_path_factory.mktemp("feed") / "feed.jsonl"
    assert main(["generate", "--seed", "7", "--accounts", "3", "--days", "5", "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize("layout", ["one partition", "three partitions, keyed hop", "co-partitioned"])
def test_the_reader_process_gives_the_decisions_alerts_and_report_of_one_process(
    kafka_bootstrap: str, unique_name: str, feed: Path, layout: str
) -> None:
    topic = f"{unique_name}.findings"
    partitions, keyed, options = {
        "one partition": (1, True, {"sweep": [12 * 3_600_000, 2 * 86_400_000]}),
        "three partitions, keyed hop": (3, False, {"partitions": 2}),
        "co-partitioned": (4, True, {}),
    }[layout]
    put(kafka_bootstrap, topic, partitions, file_records(feed, partitions=partitions, keyed=keyed))
    inline = run(topic, kafka_bootstrap, "inline", **options)
    process = run(topic, kafka_bootstrap, "process", **options)
    assert process[0] == inline[0] and len(inline[0]) > 1000
    assert process[1] == inline[1] and any(r["kind"] == "resolved" for r in inline[1])
    assert process[2] == inline[2]


def test_the_reader_process_warms_up_before_since_as_one_process_does(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 1, incident_at_event_time())
    since = ms("2025-10-01T00:00:00+00:00")
    inline = run(topic, kafka_bootstrap, "inline", since_ms=since)
    process = run(topic, kafka_bootstrap, "process", since_ms=since)
    assert process == inline
    warm = process[2]["source"]["warm_up"]
    assert (warm["findings"], warm["from"]) == (2, "2025-09-30T04:12:09.000Z")
    assert [(d["line"], d["decision"]) for d in process[0]][:1] == [(4, "suppressed")]


def test_a_reader_that_cannot_read_ends_the_run_with_one_line() -> None:
    plan = Plan("t", {0: Span(0, 0, 10)}, None, None, None)
    reader = ProcessReader(ReadJob("t", "127.0.0.1:1", PLAINTEXT, plan, Policy(), 1, int(time.time() * 1000)))
    try:
        with pytest.raises(TopicError) as raised:
            list(reader.chunks())
    finally:
        reader.close()
    text = str(raised.value)
    assert text.startswith("reading t: cannot connect (PLAINTEXT): 127.0.0.1:1") and "\n" not in text


def test_a_long_run_on_several_cores_takes_the_reader_process() -> None:
    short = Plan("t", {0: Span(0, 0, PROCESS_FROM - 1)}, None, None, None)
    long = Plan("t", {0: Span(0, 0, 40_000), 1: Span(5, 5, 10_005)}, None, None, None)
    assert not use_process(short, "auto")
    assert use_process(long, "auto") == (len(os.sched_getaffinity(0)) > 1)
    assert use_process(short, "process") and not use_process(long, "inline")
