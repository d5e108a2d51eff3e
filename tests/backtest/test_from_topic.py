"""`flapguard backtest --from-topic` (docs/backtest.md, "From a topic"): the records a
findings topic holds, read directly from the real broker and decided as the worker
decides them; the same history as a file and as a topic gives the same decisions and
report; `--since`/`--until` select by record timestamp, with a warm-up before `--since`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import subprocess
import sys
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest

from streams.backtest import from_topic
from streams.backtest.from_topic import (
    Plan,
    Span,
    TopicBacktest,
    TopicProgress,
    WarmUp,
    _Ask,
    _chunks,
    _merge,
    backtest_topic,
    split,
)
from streams.backtest.run import BATCH_GC_THRESHOLD, Report
from streams.cli import main
from streams.cli.options import moment_ms
from streams.core.findings import Finding, parse_message
from streams.core.keys import partition_for
from streams.core.policy import Policy
from streams.core.records import HEADER_INPUT, HEADER_LINE
from streams.kafka.security import PLAINTEXT
from streams.kafka.topics import create_topics
from tests.builders import INCIDENT, NOW_MS


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


class Rec(NamedTuple):
    """One record to put on a topic."""

    value: bytes
    partition: int
    timestamp: int
    line: int
    source: str


def file_records(path: Path, *, partitions: int, keyed: bool = True,
                 timestamp: Any = None) -> list[Rec]:
    """One record per line of `path`, file and line in headers (as `flapguard replay`
    writes them); on the partition its partition key hashes to (`keyed`), else round
    robin; timestamped by `timestamp(line, value)` (default: the line number, in ms)."""
    out = []
    for line, raw in enumerate(path.read_bytes().splitlines(), start=1):
        parsed = [f for f in parse_message(raw, policy=Policy(), now_ms=NOW_MS) if isinstance(f, Finding)]
        if keyed and parsed:
            partition = partition_for(parsed[0].partition_key, partitions)
        else:
            partition = line % partitions
        stamp = timestamp(line, parsed) if timestamp else 1_700_000_000_000 + line
        out.append(Rec(raw, partition, stamp, line, str(path)))
    return out


def put(bootstrap: str, topic: str, partitions: int, records: list[Rec]) -> None:
    async def go() -> None:
        from aiokafka import AIOKafkaProducer

        await create_topics(bootstrap, {topic: partitions})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for r in records:
                headers = [(HEADER_INPUT, r.source.encode()), (HEADER_LINE, str(r.line).encode())]
                await producer.send_and_wait(topic, r.value, partition=r.partition,
                                             timestamp_ms=r.timestamp, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(go())


def backtest(*args: str | Path) -> int:
    return main(["backtest", *map(str, args)])


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("feed") / "feed.jsonl"
    assert main(["generate", "--seed", "5", "--accounts", "2", "--days", "5", "--out", str(path)]) == 0
    return path


def strip(row: dict[str, Any]) -> dict[str, Any]:
    """A decisions-topic line in the file form: without topic, partition and offset."""
    return {k: v for k, v in row.items() if k not in ("topic", "partition", "offset")}


def by_position(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {(r["input"], r["line"], r["index"]): r for r in rows}


REPORT_KEYS = ("findings", "decisions", "by_reason", "naive_alerts", "alerts", "suppressed",
               "resolved", "dead_letters", "late_pairs", "by_control", "by_account",
               "gaps_hours_by_control", "labels", "sweep")


def test_a_one_partition_topic_gives_the_file_backtests_decisions_and_report(
    kafka_bootstrap: str, unique_name: str, feed: Path, tmp_path: Path
) -> None:
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 1, file_records(feed, partitions=1))
    labels = feed.with_name("feed.labels.jsonl")
    sweep = ("--sweep", "12h,30h,2d")
    assert backtest("--input", feed, "--decisions-out", tmp_path / "file.jsonl",
                    "--alerts-out", tmp_path / "file-alerts.jsonl",
                    "--report-out", tmp_path / "file.json", *sweep) == 0
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap, "--labels", labels,
                    "--decisions-out", tmp_path / "topic.jsonl", "--report-out", tmp_path / "topic.json",
                    "--alerts-out", tmp_path / "topic-alerts.jsonl", *sweep) == 0
    # The alerts topic's records too, in the same order (all but the wall clock's emitted_at).
    alerts = [[{k: v for k, v in r.items() if k != "emitted_at"} for r in read_jsonl(tmp_path / name)]
              for name in ("file-alerts.jsonl", "topic-alerts.jsonl")]
    assert alerts[0] == alerts[1] and len(alerts[0]) > 10

    # Decision for decision, in the same order: the headers name the file and line; the
    # topic's lines also name the record (the decisions topic's form).
    topic_rows = read_jsonl(tmp_path / "topic.jsonl")
    assert [strip(r) for r in topic_rows] == read_jsonl(tmp_path / "file.jsonl")
    named = [(r["topic"], r["partition"], r["offset"]) for r in topic_rows[:2]]
    assert named == [(topic, 0, 0), (topic, 0, 1)]
    a = orjson.loads((tmp_path / "file.json").read_bytes())
    b = orjson.loads((tmp_path / "topic.json").read_bytes())
    for key in REPORT_KEYS:
        assert a[key] == b[key], key
    assert a["suppressed"] > 10 and a["labels"]["missed_true_alerts"] == 0
    assert b["source"]["topic"] == topic and b["source"]["warm_up"]["findings"] == 0


def test_a_topic_backtest_runs_with_the_collector_seldom_and_restores_it_after(
    kafka_bootstrap: str, unique_name: str
) -> None:
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 1, file_records(INCIDENT, partitions=1))
    before = gc.get_threshold()
    during: list[int] = []
    result = backtest_topic(topic, bootstrap=kafka_bootstrap, policy=Policy(), now_ms=NOW_MS,
                            on_decision=lambda _: during.append(gc.get_threshold()[0]), progress=False)
    assert result.report.findings == len(during) == 8
    assert set(during) == {max(BATCH_GC_THRESHOLD, before[0])}
    assert gc.get_threshold() == before


def test_a_co_partitioned_topic_gives_the_file_backtests_decisions(
    kafka_bootstrap: str, unique_name: str, feed: Path, tmp_path: Path
) -> None:
    """Four partitions, each finding on the one its key hashes to (the forwarders'
    layout), decided with four keyed partitions: decided in place, as the worker does."""
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 4, file_records(feed, partitions=4))
    assert backtest("--input", feed, "--partitions", "4", "--no-labels",
                    "--decisions-out", tmp_path / "file.jsonl") == 0
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap,
                    "--decisions-out", tmp_path / "topic.jsonl", "--report-out", tmp_path / "r.json") == 0
    file_rows, topic_rows = read_jsonl(tmp_path / "file.jsonl"), read_jsonl(tmp_path / "topic.jsonl")
    assert len(topic_rows) == len(file_rows)
    assert by_position([strip(r) for r in topic_rows]) == by_position(file_rows)
    assert orjson.loads((tmp_path / "r.json").read_bytes())["partitions"] == 4  # the topic's count


def test_partitions_read_through_the_keyed_hop_are_merged_by_record_timestamp(
    kafka_bootstrap: str, unique_name: str, feed: Path, tmp_path: Path
) -> None:
    """Records spread round robin over three partitions, timestamped in file order, and
    decided with one keyed partition (every finding takes the keyed hop): the merge by
    timestamp puts them back in file order, so the decisions are the file's."""
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 3, file_records(feed, partitions=3, keyed=False))
    assert backtest("--input", feed, "--no-labels", "--decisions-out", tmp_path / "file.jsonl") == 0
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap, "--partitions", "1",
                    "--decisions-out", tmp_path / "topic.jsonl") == 0
    topic_rows = [strip(r) for r in read_jsonl(tmp_path / "topic.jsonl")]
    assert topic_rows == read_jsonl(tmp_path / "file.jsonl")


def incident_at_event_time(partitions: int = 1) -> list[Rec]:
    """The incident, each record timestamped with its finding's UpdatedAt (the
    unparseable last line: an hour after the one before it)."""
    def stamp(line: int, parsed: list[Finding]) -> int:
        return parsed[0].updated_at if parsed else ms("2025-10-01T17:16:21+00:00")

    return file_records(INCIDENT, partitions=partitions, timestamp=stamp)


def test_since_and_until_select_records_by_timestamp_after_a_warm_up(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since 2025-10-01: the archive of 2025-09-30 16:14 is read as warm-up (not
    counted), so the re-creation of 04:44 the next day is paired with it; --until
    12:00 stops at the first record at or after it (line 6, 16:16), as Kafka's time
    index finds it."""
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 1, incident_at_event_time())
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap,
                    "--since", "2025-10-01T00:00:00Z", "--until", "2025-10-01T12:00:00Z",
                    "--decisions-out", tmp_path / "d.jsonl", "--report-out", tmp_path / "r.json") == 0
    rows = read_jsonl(tmp_path / "d.jsonl")
    assert [r["line"] for r in rows] == [4, 5]
    assert (rows[0]["decision"], rows[0]["reason"]) == ("suppressed", "recreated_after_archive")
    assert rows[0]["paired_finding_id"].endswith("0d8f4e2b7c11")
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert report["findings"] == 2
    # Warm-up from since - 30h - 24h (2025-09-28T18:00): lines 2 and 3; line 1 (August) is older.
    warm = report["source"]["warm_up"]
    assert (warm["findings"], warm["from"], warm["complete"]) == (2, "2025-09-30T04:12:09.000Z", True)
    assert warm["wanted_seconds"] == 54 * 3600
    out = capsys.readouterr().out
    assert "warm-up 2 findings over 19.8 h (wanted 54.0 h" in out


def test_a_topic_whose_head_was_deleted_warms_up_from_its_earliest_record(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 1, incident_at_event_time())

    async def delete_head() -> None:
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(2)})  # lines 1 and 2
        finally:
            await admin.close()

    asyncio.run(delete_head())
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap,
                    "--since", "2025-09-30T20:00:00Z", "--decisions-out", tmp_path / "d.jsonl",
                    "--report-out", tmp_path / "r.json") == 0
    rows = read_jsonl(tmp_path / "d.jsonl")
    assert [r["line"] for r in rows] == [4, 5, 6, 7, 8]
    assert rows[0]["decision"] == "suppressed"  # the archive (line 3) was kept
    warm = orjson.loads((tmp_path / "r.json").read_bytes())["source"]["warm_up"]
    assert (warm["findings"], warm["complete"]) == (1, False)
    assert "from the earliest record kept" in capsys.readouterr().out


AFTER = "--until must come after --since"


def test_a_transactional_topic_gives_the_committed_records_and_skips_the_aborted_ones(
    kafka_bootstrap: str, unique_name: str, feed: Path, tmp_path: Path
) -> None:
    """Each line in a transaction of its own (a commit marker after each: offsets with no
    record), and a copy of some lines in transactions that are aborted: read_committed
    decides exactly the committed lines, as the file backtest does."""
    topic = f"{unique_name}.findings"
    records = file_records(feed, partitions=1)

    async def go() -> None:
        from aiokafka import AIOKafkaProducer

        await create_topics(kafka_bootstrap, {topic: 1})
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True,
                                    transactional_id=f"{unique_name}-tx")
        await producer.start()
        try:
            for n, r in enumerate(records):
                headers = [(HEADER_INPUT, r.source.encode()), (HEADER_LINE, str(r.line).encode())]
                if n % 50 == 0:  # an aborted copy: never read
                    await producer.begin_transaction()
                    await producer.send(topic, r.value, partition=0, headers=headers)
                    await producer.abort_transaction()
                async with producer.transaction():
                    await producer.send(topic, r.value, partition=0, headers=headers)
        finally:
            await producer.stop()

    asyncio.run(go())
    assert backtest("--input", feed, "--no-labels", "--decisions-out", tmp_path / "file.jsonl") == 0
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap,
                    "--decisions-out", tmp_path / "topic.jsonl") == 0
    rows = read_jsonl(tmp_path / "topic.jsonl")
    assert [strip(r) for r in rows] == read_jsonl(tmp_path / "file.jsonl")
    assert rows[-1]["offset"] > 2 * len(rows)  # markers and aborted records took offsets


def test_a_compacted_topic_is_read_with_the_holes_compaction_left(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    """The incident keyed by partition key on a compacted topic whose segments roll with
    every record (their timestamps are months apart): once the cleaner has run, only the
    last record of each key is left in the rolled segments, so the re-created finding is
    first seen at its periodic update (line 6) and alerts, and the RDS.27 finding
    (line 7) alerts as in the file."""
    topic = f"{unique_name}.findings"
    records = [r for r in incident_at_event_time() if r.line < 8]  # a compacted topic needs keys
    keys = {r.line: parse_message(r.value, policy=Policy(), now_ms=NOW_MS)[0] for r in records}
    config = {"cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01",
              "min.compaction.lag.ms": "0", "delete.retention.ms": "0"}

    async def go() -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        await create_topics(kafka_bootstrap, {topic: 1}, config)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for r in records:
                headers = [(HEADER_INPUT, r.source.encode()), (HEADER_LINE, str(r.line).encode())]
                key = keys[r.line].partition_key.encode()  # type: ignore[union-attr]  # a Finding
                await producer.send_and_wait(topic, r.value, key=key, partition=0, timestamp_ms=r.timestamp,
                                             headers=headers)
            # A last record, later still, rolls the segment of line 7.
            await producer.send_and_wait(topic, b"{}", key=b"filler", partition=0,
                                         timestamp_ms=records[-1].timestamp + 86_400_000)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        deadline = asyncio.get_running_loop().time() + 120
        try:
            while True:  # until the cleaner has run
                await consumer.seek_to_beginning(tp)
                got = []
                while await consumer.position(tp) < 8:
                    got += (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
                if len(got) <= 3:
                    return
                assert asyncio.get_running_loop().time() < deadline, f"not compacted: {len(got)} records"
                await asyncio.sleep(0.5)
        finally:
            await consumer.stop()

    asyncio.run(go())
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap,
                    "--decisions-out", tmp_path / "d.jsonl") == 0
    rows = read_jsonl(tmp_path / "d.jsonl")
    assert [(r["input"], r["line"], r["decision"], r.get("kind", r.get("reason"))) for r in rows] == [
        (str(INCIDENT), 6, "alert", "new"), (str(INCIDENT), 7, "alert", "new"),
        (topic, 7, "dead_letter", "not_a_finding")]  # the filler, at offset 7, names no file


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "2025-10-02T00:00:00Z", "--until", "2025-10-01T00:00:00Z"], AFTER),
    (["--since", "2025-10-02T00:00:00Z", "--until", "2025-10-02T00:00:00Z"], AFTER),
    (["--since", "2999-01-01T00:00:00Z"], "--since is in the future"),
])
def test_a_bad_range_is_a_one_line_error_before_any_read(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No broker listens there: the range is refused before any connection.
    assert backtest("--from-topic", "t", "--bootstrap-servers", "127.0.0.1:1", *args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_missing_topic_or_an_empty_range_is_a_one_line_error(
    kafka_bootstrap: str, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"{unique_name}.findings"
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap) == 1
    err = capsys.readouterr().err
    assert err == f"flapguard backtest: error: topic not found: {topic}\n"

    put(kafka_bootstrap, topic, 1, incident_at_event_time())
    assert backtest("--from-topic", topic, "--bootstrap-servers", kafka_bootstrap,
                    "--since", "2025-11-01T00:00:00Z") == 1
    err = capsys.readouterr().err
    assert err == f"flapguard backtest: error: {topic} holds no record in the range asked for\n"


def test_since_and_until_need_a_topic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert backtest("--input", INCIDENT, "--since", "1d") == 1
    assert capsys.readouterr().err == "flapguard backtest: error: --since needs --from-topic\n"
    assert backtest("--input", INCIDENT, "--jobs", "2") == 1
    assert capsys.readouterr().err == "flapguard backtest: error: --jobs needs --from-topic\n"
    with pytest.raises(SystemExit) as exit_:
        backtest("--input", INCIDENT, "--from-topic", "t")
    assert exit_.value.code == 2


def test_a_moment_is_a_timestamp_or_a_duration_before_now() -> None:
    assert moment_ms("2025-10-01T00:00:00Z") == ms("2025-10-01T00:00:00+00:00")
    assert moment_ms("2025-10-01T02:00:00+02:00") == ms("2025-10-01T00:00:00+00:00")
    assert moment_ms("2025-10-01T00:00:00") == ms("2025-10-01T00:00:00+00:00")  # no offset: UTC
    before = datetime.now().timestamp() * 1000
    assert abs(moment_ms("14d") - (before - 14 * 86_400_000)) < 60_000
    with pytest.raises(ValueError, match="not a timestamp or a duration"):
        moment_ms("yesterday")


class Fake(NamedTuple):
    timestamp: int
    offset: int


def flat(segments: list[tuple[int, list[Fake]]]) -> list[tuple[int, int, int]]:
    return [(p, r.timestamp, r.offset) for p, records in segments for r in records]


def test_the_merge_takes_the_earliest_timestamp_only_while_every_partition_has_a_record() -> None:
    waiting = {0: deque([Fake(10, 0), Fake(30, 1)]), 1: deque([Fake(20, 0)]), 2: deque([Fake(10, 0)])}
    # Partition 2, still being read, runs dry: the merge waits for it.
    assert flat(_merge(waiting, {0, 1, 2})) == [(0, 10, 0), (2, 10, 0)]
    assert not waiting[2]
    assert _merge(waiting, {0, 1, 2}) == []
    # Partition 2 done: the earliest of the others, until partition 1 runs dry.
    assert _merge(waiting, {0, 1}) == [(1, [Fake(20, 0)])]
    # Partition 1 done too: what is left goes.
    assert _merge(waiting, {0}) == [(0, [Fake(30, 1)])]


def test_the_merge_keeps_each_partitions_offset_order_whatever_its_timestamps() -> None:
    waiting = {0: deque([Fake(50, 0), Fake(5, 1)]), 1: deque([Fake(20, 0), Fake(60, 1)])}
    assert flat(_merge(waiting, set())) == [(1, 20, 0), (0, 50, 0), (0, 5, 1), (1, 60, 1)]


def one_at_a_time(waiting: dict[int, deque[Fake]], reading: set[int]) -> list[tuple[int, int, int]]:
    """The merge's order by its definition: the earliest (timestamp, partition) of the
    heads, one record at a time, while every partition still being read has one."""
    out = []
    while all(waiting[p] for p in reading):
        heads = [p for p, q in waiting.items() if q]
        if not heads:
            break
        p = min(heads, key=lambda n: (waiting[n][0].timestamp, n))
        r = waiting[p].popleft()
        out.append((p, r.timestamp, r.offset))
    return out


def test_the_merge_in_runs_is_the_merge_one_record_at_a_time() -> None:
    rng = random.Random(7)
    for _ in range(300):
        partitions = rng.randint(1, 5)
        queues = {p: [Fake(rng.randint(0, 30), n) for n in range(rng.randint(0, 12))]
                  for p in range(partitions)}
        reading = {p for p in queues if rng.random() < 0.5}
        expected = one_at_a_time({p: deque(q) for p, q in queues.items()}, reading)
        got = _merge({p: deque(q) for p, q in queues.items()}, reading)
        assert flat(got) == expected
        assert all(records for _, records in got)


def test_chunks_split_the_segments_into_groups_of_at_most_so_many_records() -> None:
    segments = [(0, [Fake(1, n) for n in range(5)]), (1, [Fake(2, 0)]), (0, [Fake(3, n) for n in range(7)])]
    groups = list(_chunks(segments, 4))
    assert [count for _, count in groups] == [4, 4, 4, 1]
    assert [sum(len(r) for _, r in group) for group, _ in groups] == [4, 4, 4, 1]
    assert [x for group, _ in groups for x in flat(group)] == flat(segments)


def test_a_topic_backtests_repr_is_short_however_large_its_report() -> None:
    """`asyncio.run` formats the repr of its result (restoring the SIGINT handler): a
    report's own repr runs to megabytes on a real topic."""
    report = Report(partitions=1, policy=Policy())
    report.naive_seen.update(f"finding-{n}" for n in range(100_000))
    plan = Plan("securityhub.findings", {}, None, None, None)
    result = TopicBacktest(report, [], None, WarmUp(0, None), plan)
    assert repr(result) == "TopicBacktest(topic='securityhub.findings', findings=0, sweep=0)"


def test_progress_is_quiet_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    bar = TopicProgress(100)  # under pytest, stderr is captured: not a terminal
    bar.at(50, 70)
    bar.close()
    assert capsys.readouterr().err == ""


def test_progress_on_a_terminal_shows_records_rate_and_time_left(capsys: pytest.CaptureFixture[str]) -> None:
    bar = TopicProgress(1000, enabled=True)
    bar.at(250, 400)
    bar.close()
    line = capsys.readouterr().err.strip()
    assert "250 / 1,000 records" in line and "findings/s" in line and "left" in line


def test_an_unreachable_broker_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert backtest("--from-topic", "t", "--bootstrap-servers", "127.0.0.1:1") == 1
    err = capsys.readouterr().err
    assert err.startswith("flapguard backtest: error: Kafka at 127.0.0.1:1: cannot connect (PLAINTEXT)")
    assert err.count("\n") == 1


# -- several processes (a co-partitioned topic, the report only) -----------------------


def report_of(result: TopicBacktest) -> dict[str, Any]:
    """The report, the sweep's rows and the warm-up: all but timings and processes."""
    summary = result.report.to_json()
    for key in ("seconds", "findings_per_second"):
        summary.pop(key)
    source = result.source_json()
    source.pop("processes")
    return {"report": summary, "rows": [row.to_json() for row in result.rows], "source": source}


@pytest.fixture(scope="module")
def co_partitioned(kafka_bootstrap: str, feed: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[str, list[Rec]]:
    """The feed on four partitions keyed as the forwarders key them."""
    topic = f"{tmp_path_factory.getbasetemp().name}-co-partitioned.findings"
    records = file_records(feed, partitions=4)
    put(kafka_bootstrap, topic, 4, records)
    return topic, records


def test_a_co_partitioned_topic_is_read_by_processes_with_the_one_process_report(
    kafka_bootstrap: str, co_partitioned: tuple[str, list[Rec]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Read by two processes (two partitions each) from a moment with a warm-up before
    it, a sweep beside: the same report, sweep and warm-up as one process gives."""
    topic, records = co_partitioned
    since = records[len(records) // 2].timestamp
    runs = {jobs: backtest_topic(topic, bootstrap=kafka_bootstrap, policy=Policy(), now_ms=NOW_MS,
                                 since_ms=since, sweep=[12 * 3_600_000, 48 * 3_600_000],
                                 progress=False, jobs=jobs)
            for jobs in (1, 2)}
    assert (runs[1].processes, runs[2].processes) == (1, 2)
    assert report_of(runs[2]) == report_of(runs[1])
    assert runs[1].report.findings > 100 and runs[1].warm.findings > 100
    assert runs[1].report.to_json()["suppressed"] > 0 and len(runs[1].rows) == 2

    # A name to resolve: the event loop's resolver threads are gone when the processes fork.
    by_name = kafka_bootstrap.replace("127.0.0.1", "localhost")
    assert backtest("--from-topic", topic, "--bootstrap-servers", by_name, "--jobs", "2") == 0
    assert "records (read by 2 processes)" in capsys.readouterr().out


ORPHANED = """
import sys, time
from streams.backtest import from_topic
from streams.core.policy import Policy

at = from_topic._Counted.at

def forever(self, done, lines):  # each process stays at its first chunk, showing progress
    while True:
        at(self, done, lines)
        time.sleep(0.05)

from_topic._Counted.at = forever
from_topic.backtest_topic(sys.argv[1], bootstrap=sys.argv[2], policy=Policy(), now_ms=int(time.time() * 1000),
                          progress=False, jobs=2)
"""


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_the_processes_stop_when_the_backtest_that_forked_them_is_killed(
    kafka_bootstrap: str, co_partitioned: tuple[str, list[Rec]]
) -> None:
    topic, _ = co_partitioned
    parent = subprocess.Popen([sys.executable, "-c", ORPHANED, topic, kafka_bootstrap],
                              cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 60
        while len(forked := children_of(parent.pid)) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "no processes forked"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 60  # without the parent, they would never end
    while any(alive(pid) for pid in forked):
        assert time.monotonic() < deadline, "a forked process outlived its parent"
        time.sleep(0.05)


def test_a_topic_not_keyed_by_partition_key_is_read_in_one_process_after_all(
    kafka_bootstrap: str, unique_name: str, feed: Path
) -> None:
    """Round robin over four partitions: a process meets a finding whose key hashes to
    another partition, so the run is made again in one process (the keyed hop)."""
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 4, file_records(feed, partitions=4, keyed=False))
    runs = {jobs: backtest_topic(topic, bootstrap=kafka_bootstrap, policy=Policy(), now_ms=NOW_MS,
                                 progress=False, jobs=jobs)
            for jobs in (1, 2)}
    assert (runs[1].processes, runs[2].processes) == (1, 1)
    assert report_of(runs[2]) == report_of(runs[1])


def test_one_finding_id_in_two_processes_shares_is_read_in_one_process_after_all(
    kafka_bootstrap: str, unique_name: str
) -> None:
    """The same finding id for two resources, each record on its key's partition of
    two: the naive notifier pages for that id once, which two processes cannot tell."""
    event = orjson.loads(INCIDENT.read_bytes().splitlines()[0])
    keys = {suffix: with_resource(event, suffix) for suffix in ("", *(f"-{n}" for n in range(20)))}
    other = next(s for s, (_, key) in keys.items() if partition_for(key, 2) != partition_for(keys[""][1], 2))
    records = [Rec(keys[s][0], partition_for(keys[s][1], 2), 1_700_000_000_000 + line, line, "same-id.jsonl")
               for line, s in enumerate(("", other), start=1)]
    topic = f"{unique_name}.findings"
    put(kafka_bootstrap, topic, 2, records)
    runs = {jobs: backtest_topic(topic, bootstrap=kafka_bootstrap, policy=Policy(), now_ms=NOW_MS,
                                 progress=False, jobs=jobs)
            for jobs in (1, 2)}
    assert (runs[1].processes, runs[2].processes) == (1, 1)
    assert report_of(runs[2]) == report_of(runs[1])
    assert runs[2].report.naive_alerts == 1 and runs[2].report.findings == 2


def with_resource(event: dict[str, Any], suffix: str) -> tuple[bytes, str]:
    """The event with its finding's resource id suffixed, and that finding's partition key."""
    changed = orjson.loads(orjson.dumps(event))
    changed["Resources"][0]["Id"] += suffix
    raw = orjson.dumps(changed)
    parsed = parse_message(raw, policy=Policy(), now_ms=NOW_MS)[0]
    assert isinstance(parsed, Finding)
    return raw, parsed.partition_key


@pytest.fixture(scope="module")
def two_partitions(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    topic = f"{tmp_path_factory.getbasetemp().name}-two.findings"
    put(kafka_bootstrap, topic, 2, file_records(INCIDENT, partitions=2))
    return topic


def fail(*_: Any) -> Any:
    raise ValueError("the broker said no")


def vanish(*_: Any) -> Any:
    os._exit(3)


def test_a_process_that_fails_raises_its_error_in_the_run(
    kafka_bootstrap: str, two_partitions: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(from_topic, "_share", fail)  # forked: the processes have it too
    with pytest.raises(ValueError, match="the broker said no"):
        backtest_topic(two_partitions, bootstrap=kafka_bootstrap, policy=Policy(), now_ms=NOW_MS,
                       progress=False, jobs=2)


def test_a_process_that_dies_is_a_one_line_error(
    kafka_bootstrap: str, two_partitions: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(from_topic, "_share", vanish)
    assert backtest("--from-topic", two_partitions, "--bootstrap-servers", kafka_bootstrap,
                    "--jobs", "2") == 1
    err = capsys.readouterr().err
    assert err == ("flapguard backtest: error: a backtest process ended without its report "
                   "(exit code 3)\n")


def plan_of(sizes: dict[int, int]) -> Plan:
    return Plan("t", {p: Span(0, 0, n) for p, n in sizes.items()}, None, None, None)


def ask(**changes: Any) -> Any:
    base = dict(topic="t", bootstrap="b", security=PLAINTEXT, policy=Policy(), partitions=None,
                now_ms=NOW_MS, on_decision=None, labels=None, sweep=[], progress=False,
                on_decided=None)
    return _Ask(**{**base, **changes})  # type: ignore[arg-type]


def test_processes_share_the_partitions_by_records_most_first_to_the_least_loaded() -> None:
    plan = plan_of({0: 100, 1: 10, 2: 60, 3: 50, 4: 0})
    assert split(plan, ask(), 2) == [[0, 1], [2, 3]]  # 110 records each
    assert split(plan, ask(), 3) == [[0], [2], [1, 3]]
    assert split(plan, ask(), 8) == [[0], [2], [3], [1]]  # no process for an empty span


@pytest.mark.parametrize("why", [
    {"jobs": 1}, {"partitions": 2}, {"on_decision": print}, {"on_decided": print},
    {"labels": list},
])
def test_one_process_reads_unless_the_topic_is_co_partitioned_and_only_the_report_is_asked(
    why: dict[str, Any]
) -> None:
    jobs = why.pop("jobs", 2)
    assert split(plan_of({0: 5, 1: 5, 2: 5}), ask(**why), jobs) == [[0, 1, 2]]
