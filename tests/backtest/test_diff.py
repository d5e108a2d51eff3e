"""`flapguard diff` (docs/backtest.md, "Comparing with production"): the alerts a
candidate setting adds and removes against production's decisions, alert by alert."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.cli import main
from tests.backtest.test_explain import RECREATED, _put_values
from tests.backtest.test_from_topic import incident_at_event_time, put
from tests.builders import INCIDENT

CLUSTER = "arn:aws:rds:ap-northeast-1:123456789012:cluster:orders-aurora"


def decisions(tmp_path: Path, name: str, *options: str) -> Path:
    path = tmp_path / f"{name}.jsonl"
    assert main(["backtest", "--input", str(INCIDENT), "--decisions-out", str(path), *options]) == 0
    return path


def test_a_window_shorter_than_the_gap_adds_the_recreations_alert_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    production, candidate = decisions(tmp_path, "prod"), decisions(tmp_path, "cand", "--window", "12h")
    capsys.readouterr()
    assert main(["diff", "--production", str(production), "--candidate", str(candidate)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "compared 8 finding occurrences (only in production: 0, only in the candidate: 0)",
        "alerts: production 2, candidate 3: 1 added, 0 removed",
        "ADDED (1)"]
    added = lines[3].split()
    assert added[:4] == ["new", "MEDIUM", "RDS.45", CLUSTER]
    assert lines[3].endswith("at 2025-10-01T04:44:21.000Z  production: suppressed recreated_after_archive "
                             "(paired with …0d8f4e2b7c11, 12.51 h after its archive)")
    assert lines[4:] == ["REMOVED (0)"]


def test_the_reverse_comparison_lists_the_alert_as_removed_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    production, candidate = decisions(tmp_path, "prod", "--window", "12h"), decisions(tmp_path, "cand")
    capsys.readouterr()
    assert main(["diff", "--production", str(production), "--candidate", str(candidate), "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert (result["production_alerts"], result["candidate_alerts"], result["added"]) == (3, 2, [])
    (removed,) = result["removed"]
    assert removed["finding_id"] == RECREATED and removed["resource_id"] == CLUSTER
    assert (removed["change"], removed["kind"], removed["control_id"]) == ("removed", "new", "RDS.45")
    assert removed["instead"]["decision"] == "suppressed"
    assert removed["instead"]["kind_or_reason"] == "recreated_after_archive"
    assert removed["instead"]["gap_seconds"] == 45018.0


def test_sides_missing_or_without_a_common_occurrence_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    production = decisions(tmp_path, "prod")
    capsys.readouterr()
    assert main(["diff", "--production", str(production)]) == 1
    err = capsys.readouterr().err
    assert err == "flapguard diff: error: give --candidate FILE or --candidate-topic TOPIC\n"
    assert main(["diff", "--production", str(production), "--candidate", str(tmp_path / "no.jsonl")]) == 1
    assert "decisions file not found" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    other.write_bytes(production.read_bytes().replace(b'"line":', b'"line":10'))
    assert main(["diff", "--production", str(production), "--candidate", str(other)]) == 1
    assert "share no finding occurrence" in capsys.readouterr().err


def test_production_decisions_topic_against_a_candidate_backtest_of_the_findings_topic(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Production's decisions as the worker writes them (one of them twice, as after a
    restart), the candidate decided from the findings topic with another window."""
    findings, decided = f"{unique_name}.findings", f"{unique_name}.decisions"
    put(kafka_bootstrap, findings, 1, incident_at_event_time())
    prod, cand = tmp_path / "prod.jsonl", tmp_path / "cand.jsonl"
    for out, options in ((prod, []), (cand, ["--window", "12h"])):
        assert main(["backtest", "--from-topic", findings, "--bootstrap-servers", kafka_bootstrap,
                     "--decisions-out", str(out), *options]) == 0
    lines = prod.read_bytes().splitlines()
    _put_values(kafka_bootstrap, decided, [*lines, lines[0]])
    capsys.readouterr()
    assert main(["diff", "--production-topic", decided, "--candidate", str(cand),
                 "--bootstrap-servers", kafka_bootstrap, "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert (result["compared"], result["production_alerts"], result["candidate_alerts"]) == (8, 2, 3)
    assert [c["finding_id"] for c in result["added"]] == [RECREATED]
