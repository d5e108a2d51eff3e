"""`flapguard explain` (docs/backtest.md, "Why was this finding not alerted?"): a
finding's or a resource's decisions as a timeline, from a decisions file, from the
decisions topic, or decided again from the findings topic."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.cli import main
from tests.backtest.test_from_topic import incident_at_event_time, put
from tests.builders import INCIDENT

FINDINGS = "arn:aws:securityhub:ap-northeast-1:123456789012:security-control/RDS.45/finding/"
ARCHIVED = FINDINGS + "2f0c8a1e-5b7d-4c1e-9a63-0d8f4e2b7c11"
RECREATED = FINDINGS + "9b4e27d3-61a0-4f8e-b2c5-7e1d93a0f456"
CLUSTER = "arn:aws:rds:ap-northeast-1:123456789012:cluster:orders-aurora"
DEDUP = "flapguard-e46e538503265970a90d9bdee4a93d5604e1daea"


@pytest.fixture
def decisions(tmp_path: Path) -> Path:
    path = tmp_path / "decisions.jsonl"
    assert main(["backtest", "--input", str(INCIDENT), "--decisions-out", str(path)]) == 0
    return path


def timeline(out: str) -> list[list[str]]:
    """The timeline's decision lines, split into their words."""
    return [line.split() for line in out.splitlines() if line.startswith("  20")]


def test_a_recreated_findings_timeline_shows_its_suppression_the_pair_the_gap_and_the_dedup_key(
    decisions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["explain", RECREATED, "--decisions", str(decisions)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"finding {RECREATED}: 2 decisions"
    rows = timeline(out)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("2025-10-01T04:44:21.000Z", "suppressed", "recreated_after_archive"),
        ("2025-10-01T16:16:21.000Z", "silent", "periodic_update")]
    first = " ".join(rows[0])
    assert "paired with …0d8f4e2b7c11, 12.51 h after its archive" in first
    assert f"dedup_key {DEDUP}" in first and first.endswith(f"{INCIDENT}:4")


def test_an_archived_findings_timeline_includes_the_finding_that_paired_with_it(
    decisions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["explain", ARCHIVED, "--decisions", str(decisions)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"finding {ARCHIVED}: 4 decisions, and 1 of the findings paired with it"
    labels = [(r[1], r[2], r[4]) for r in timeline(out)]
    assert labels == [("alert", "new", "…0d8f4e2b7c11"), ("silent", "periodic_update", "…0d8f4e2b7c11"),
                      ("silent", "archived", "…0d8f4e2b7c11"),
                      ("suppressed", "recreated_after_archive", "…7e1d93a0f456"),
                      ("silent", "archived", "…0d8f4e2b7c11")]


def test_a_resource_shows_every_finding_of_it_in_event_time(
    decisions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["explain", CLUSTER, "--decisions", str(decisions), "--json"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5, 6]  # not line 7: another cluster
    assert {r["finding_id"] for r in rows} == {ARCHIVED, RECREATED}


def test_nothing_found_or_no_source_is_a_one_line_error(
    decisions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["explain", "arn:nothing", "--decisions", str(decisions)]) == 1
    err = capsys.readouterr().err
    assert err == f"flapguard explain: error: no decision about arn:nothing in {decisions}\n"
    assert main(["explain", RECREATED]) == 1
    assert "give --decisions FILE, --decisions-topic TOPIC or --from-topic TOPIC" in capsys.readouterr().err
    assert main(["explain", RECREATED, "--decisions", str(decisions.with_name("missing.jsonl"))]) == 1
    assert "decisions file not found" in capsys.readouterr().err


def test_the_decisions_topic_is_read_whole_and_a_decision_written_twice_counts_once(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decisions as the worker writes them (the decisions topic's form, which backtest
    --from-topic also writes), one of them twice as after a worker's restart."""
    findings, decided = f"{unique_name}.findings", f"{unique_name}.decisions"
    put(kafka_bootstrap, findings, 1, incident_at_event_time())
    out = tmp_path / "d.jsonl"
    assert main(["backtest", "--from-topic", findings, "--bootstrap-servers", kafka_bootstrap,
                 "--decisions-out", str(out)]) == 0
    lines = out.read_bytes().splitlines()
    _put_values(kafka_bootstrap, decided, [*lines, lines[3]])
    capsys.readouterr()
    assert main(["explain", RECREATED, "--decisions-topic", decided,
                 "--bootstrap-servers", kafka_bootstrap]) == 0
    rows = timeline(capsys.readouterr().out)
    assert [(r[1], r[2]) for r in rows] == [("suppressed", "recreated_after_archive"),
                                            ("silent", "periodic_update")]
    assert rows[0][-1] == f"{INCIDENT}:4"


def test_without_decisions_the_findings_topic_is_decided_again(
    kafka_bootstrap: str, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    findings = f"{unique_name}.findings"
    put(kafka_bootstrap, findings, 1, incident_at_event_time())
    capsys.readouterr()
    assert main(["explain", RECREATED, "--from-topic", findings, "--bootstrap-servers", kafka_bootstrap,
                 "--window", "12h"]) == 0
    rows = timeline(capsys.readouterr().out)
    # A 12 h window is shorter than the 12.51 h gap: the candidate alerts the re-creation.
    assert [(r[1], r[2]) for r in rows] == [("alert", "new"), ("silent", "periodic_update")]


def _put_values(bootstrap: str, topic: str, values: list[bytes]) -> None:
    import asyncio

    from aiokafka import AIOKafkaProducer

    from streams.kafka.topics import create_topics

    async def go() -> None:
        await create_topics(bootstrap, {topic: 1})
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for value in values:
                await producer.send_and_wait(topic, value, partition=0)
        finally:
            await producer.stop()

    asyncio.run(go())


# -- what the notifier delivered ------------------------------------------------------------


def _notify_the_incident(bootstrap: str, name: str, tmp_path: Path) -> tuple[Path, str]:
    """The incident decided, its alerts put on an alerts topic and delivered by a real
    notifier: PagerDuty accepts, Slack fails for good, stdout is routed nothing (real
    HTTP servers). The decisions file, and the deliveries topic."""
    import subprocess

    from streams.kafka.topics import create_topics_sync
    from tests.notify.processes import clean_env, notify_args
    from tests.notify.test_service_kafka import produce
    from tests.notify_servers import Reply, http_recorder

    decisions, alerts = tmp_path / "decisions.jsonl", tmp_path / "alerts.jsonl"
    assert main(["backtest", "--input", str(INCIDENT), "--decisions-out", str(decisions),
                 "--alerts-out", str(alerts)]) == 0
    values = alerts.read_bytes().splitlines()
    create_topics_sync(bootstrap, {f"{name}.alerts": 1})
    produce(bootstrap, f"{name}.alerts", values, [orjson.loads(v)["dedup_key"].encode() for v in values])
    routes = tmp_path / "routes.toml"
    routes.write_text('[[route]]\nsinks = ["pagerduty", "slack"]\n')
    deliveries = f"{name}.deliveries"
    with http_recorder("/services/T0/B0/x") as slack, http_recorder("/v2/enqueue") as pagerduty:
        slack.default = Reply(503)
        pagerduty.default = Reply(202, b'{"status":"success"}')
        done = subprocess.run(notify_args(bootstrap, name, "--routes", str(routes), "--stdout",
                                          "--slack-webhook-url", slack.url, "--pagerduty-routing-key", "rk",
                                          "--pagerduty-url", pagerduty.url, "--max-attempts", "1",
                                          "--deliveries-topic", deliveries, "--exit-when-idle"),
                              capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == 3, done.stderr[-2000:]  # Slack's failures were dead-lettered
    return decisions, deliveries


def test_explain_shows_what_the_notifier_delivered_where_from_the_deliveries_topic(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    decisions, deliveries = _notify_the_incident(kafka_bootstrap, unique_name, tmp_path)
    capsys.readouterr()
    assert main(["explain", ARCHIVED, "--decisions", str(decisions), "--deliveries-topic", deliveries,
                 "--bootstrap-servers", kafka_bootstrap]) == 0
    lines = capsys.readouterr().out.splitlines()
    alert = next(i for i, line in enumerate(lines) if line.split()[1:3] == ["alert", "new"])
    under = [line.split() for line in lines[alert + 1:alert + 4]]
    assert [(u[1], u[2]) for u in under] == [("pagerduty", "delivered"), ("slack", "dead_lettered"),
                                             ("stdout", "skipped")]
    assert "HTTP 503 after 1 attempt(s)" in lines[alert + 2]
    assert "not routed to this sink" in lines[alert + 3]
    # Nothing else in the timeline was an alert: no delivery lines elsewhere.
    assert sum(line.lstrip().startswith("->") for line in lines) == 3

    # The same from a file of the topic's records, and as JSON.
    from tests.kafka_io import read_all

    saved = tmp_path / "deliveries.jsonl"
    saved.write_bytes(b"\n".join(r.value for r in read_all(kafka_bootstrap, deliveries)) + b"\n")
    capsys.readouterr()
    assert main(["explain", ARCHIVED, "--decisions", str(decisions), "--deliveries", str(saved),
                 "--json"]) == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    delivered = [r["deliveries"] for r in rows if r["decision"] == "alert"]
    assert [[(d["sink"], d["outcome"]) for d in ds] for ds in delivered] == [
        [("pagerduty", "delivered"), ("slack", "dead_lettered"), ("stdout", "skipped")]]
    assert all(d["dedup_key"] == DEDUP and d["finding_id"] == ARCHIVED for d in delivered[0])


def test_explain_reads_no_deliveries_unless_asked_when_the_decisions_are_a_file(
    decisions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    # No broker is named or reachable: a file's timeline never waits for one.
    assert main(["explain", ARCHIVED, "--decisions", str(decisions),
                 "--bootstrap-servers", "127.0.0.1:9"]) == 0
    assert "->" not in capsys.readouterr().out
    assert main(["explain", ARCHIVED, "--decisions", str(decisions),
                 "--deliveries", str(decisions.with_name("missing.jsonl"))]) == 1
    assert "deliveries file not found" in capsys.readouterr().err


def test_an_incident_closed_by_another_decision_shows_the_resolve_deliveries_under_it() -> None:
    """A decision that closes incidents (`closes`: archived, superseded) wrote their
    `resolved` records: what the notifier did with those shows under it, not under the
    alert that opened the incident."""
    from streams.backtest.explain import Query, render

    opened = {"input": "f", "line": 1, "finding_id": ARCHIVED, "decision": "alert", "kind": "new",
              "dedup_key": DEDUP, "updated_at": "2025-08-12T03:10:44.000Z", "control_id": "RDS.45"}
    closing = {"input": "f", "line": 9, "finding_id": RECREATED, "decision": "silent", "reason": "archived",
               "closes": [{"finding_id": ARCHIVED, "dedup_key": DEDUP, "reason": "archived"}],
               "updated_at": "2025-10-03T00:00:00.000Z", "control_id": "RDS.45"}
    deliveries = [
        {"sink": "pagerduty", "outcome": "delivered", "at": "2026-01-01T00:00:00.000Z", "dedup_key": DEDUP,
         "kind": "new"},
        {"sink": "pagerduty", "outcome": "delivered", "at": "2026-01-02T00:00:00.000Z", "dedup_key": DEDUP,
         "kind": "resolved", "reason": "archived"},
    ]
    lines = render(Query(ARCHIVED), [opened, closing], deliveries).splitlines()
    assert [line.split()[1:3] for line in lines if line.lstrip().startswith("->")] == [
        ["pagerduty", "delivered"], ["pagerduty", "delivered"]]
    assert lines[1].split()[1:3] == ["alert", "new"] and "2026-01-01" in lines[2]
    assert lines[3].split()[1:3] == ["silent", "archived"] and "2026-01-02" in lines[4]


def test_a_redelivered_alert_shows_its_dead_letter_and_its_redelivery_under_it() -> None:
    from streams.backtest.explain import Query, render

    opened = {"input": "f", "line": 1, "finding_id": ARCHIVED, "decision": "alert", "kind": "new",
              "dedup_key": DEDUP, "updated_at": "2025-08-12T03:10:44.000Z", "control_id": "RDS.45"}
    deliveries = [
        {"sink": "slack", "outcome": "dead_lettered", "at": "2026-01-01T00:00:00.000Z", "dedup_key": DEDUP,
         "kind": "new", "error": "HTTP 503", "attempts": 5},
        {"sink": "slack", "outcome": "delivered", "at": "2026-01-01T02:00:00.000Z", "dedup_key": DEDUP,
         "kind": "new", "redelivered": True},
    ]
    lines = [line for line in render(Query(ARCHIVED), [opened], deliveries).splitlines() if "->" in line]
    assert "dead_lettered" in lines[0] and "HTTP 503 after 5 attempt(s)" in lines[0]
    assert "delivered" in lines[1] and lines[1].endswith("(notify redeliver)")
