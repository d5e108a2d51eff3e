"""The per-control pairing policy (docs/design.md §3, pairing policy): a window per
control pattern, and which archives may be a predecessor; the file that sets it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from streams.cli import main
from streams.config import ConfigError
from streams.core.policy import Archives, PairingRule, Policy, pairing_rules, pairing_toml
from tests.builders import FSBP, archived, at, backtest, finding, jsonl, policy

EXAMPLE = Path(__file__).parents[2] / "streams" / "data" / "pairing.example.toml"


def deleted_and_recreated(control: str) -> list[dict[str, Any]]:
    """A function deleted while its finding still FAILED (archived as FAILED: it was not
    updated for days), then a new function of the same ARN 65 minutes later."""
    old = finding("old", created=at(days=-10), control=control)
    new = finding("new", created=at(minutes=65), control=control)
    return [old, archived(old, at(), status="FAILED", reason_codes=[]), new]


def decision_of_new(messages: list[dict[str, Any]], p: Policy) -> tuple[str, str | None]:
    outcome = backtest(messages, policy=p)[-1]
    return outcome.decision.value, outcome.kind_or_reason


LAMBDA = PairingRule("lambda", ("Lambda.*",), None, Archives.NOT_APPLICABLE)


def test_without_a_policy_any_archive_of_a_failing_finding_is_a_predecessor() -> None:
    assert decision_of_new(deleted_and_recreated("Lambda.2"), Policy()) == (
        "suppressed", "recreated_after_archive")


def test_a_control_whose_archives_must_be_not_applicable_alerts_on_a_recreated_resource() -> None:
    p = Policy(pairing=(LAMBDA,))
    assert decision_of_new(deleted_and_recreated("Lambda.2"), p) == ("alert", "new")
    # Other controls keep the default.
    assert decision_of_new(deleted_and_recreated("RDS.45"), p) == (
        "suppressed", "recreated_after_archive")


def test_a_consolidation_switch_still_continues_a_failed_archive_under_not_applicable() -> None:
    # Security Hub archives the per-standard findings it replaces while they still fail.
    old = finding("old", created=at(days=-10), control="Lambda.2", standard=FSBP)
    consolidated = finding("new", created=at(hours=2), control="Lambda.2")
    messages = [old, archived(old, at(), status="FAILED", reason_codes=[]), consolidated]
    assert decision_of_new(messages, Policy(pairing=(LAMBDA,))) == (
        "suppressed", "consolidation_switch")


def test_the_seed_incidents_archive_still_pairs_under_not_applicable() -> None:
    old = finding("old", created=at(days=-10), control="Lambda.2")
    messages = [old, archived(old, at()), finding("new", created=at(minutes=65), control="Lambda.2")]
    assert decision_of_new(messages, Policy(pairing=(LAMBDA,))) == (
        "suppressed", "recreated_after_archive")


def test_a_window_per_control_pattern_first_match_wins() -> None:
    p = Policy(pairing=(
        PairingRule("s3-narrow", ("S3.1",), 30 * 60_000),
        PairingRule("s3", ("S3.*",), 48 * 3_600_000),
    ))
    assert p.window_for("S3.1") == 30 * 60_000
    assert p.window_for("S3.8") == 48 * 3_600_000
    assert p.window_for("RDS.45") == Policy().window_ms
    assert p.widest_window_ms == 48 * 3_600_000
    old = finding("old", created=at(days=-10), control="S3.1")
    late = [old, archived(old, at()), finding("new", created=at(minutes=65), control="S3.1")]
    assert decision_of_new(late, p) == ("alert", "new")  # 65 min > 30 min


def test_a_control_with_a_shorter_window_closes_its_archived_incident_sooner() -> None:
    p = policy(first_sight_age="1h")
    narrow = Policy(first_sight_age_ms=p.first_sight_age_ms,
                    pairing=(PairingRule("ec2", ("EC2.*",), 60 * 60_000),))
    gone = finding("gone", created=at(hours=-1), control="EC2.8")
    clock = finding("clock", created=at(hours=2, minutes=1), control="S3.1", status="PASSED")
    decided = backtest([gone, archived(gone, at(), status="FAILED"), clock], policy=narrow)
    assert [c.reason.value for c in decided[-1].closes] == ["archived"]  # 1 h + 1 h passed


def test_the_policy_file_reads_back_what_it_writes() -> None:
    rules = (LAMBDA, PairingRule("rds", ("RDS.*", "Aurora.*"), 12 * 3_600_000))
    assert pairing_rules(tomllib.loads(pairing_toml(rules)), "f") == rules


def test_the_example_file_is_a_valid_policy() -> None:
    rules = pairing_rules(tomllib.loads(EXAMPLE.read_text()), str(EXAMPLE))
    assert rules and all(rule.controls for rule in rules)


@pytest.mark.parametrize(("text", "message"), [
    ('[[pairing]]\ncontrols = []', "controls must be a non-empty list"),
    ('[[pairing]]\ncontrols = ["A.1"]\nwindow = "2x"', "not a duration"),
    ('[[pairing]]\ncontrols = ["A.1"]\nwindow = 2', "window must be a duration"),
    ('[[pairing]]\ncontrols = ["A.1"]\narchives = "some"', "archives must be one of any, not_applicable"),
    ('[[pairing]]\ncontrols = ["A.1"]\nwindows = "2h"', "unknown key 'windows'"),
    ('[[route]]\nname = "x"', "unknown key 'route'"),
])
def test_a_bad_policy_file_is_one_line_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pairing_rules(tomllib.loads(text), "pairing.toml")


def test_a_bad_policy_file_stops_the_backtest_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "pairing.toml"
    bad.write_text('[[pairing]]\ncontrols = ["Lambda.*"]\narchives = "never"\n')
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(jsonl(deleted_and_recreated("Lambda.2")))
    with pytest.raises(SystemExit) as exited:
        main(["backtest", "--input", str(feed), "--pairing", str(bad)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "archives must be one of any, not_applicable" in err


def test_the_backtest_applies_the_policy_file(tmp_path: Path) -> None:
    good = tmp_path / "pairing.toml"
    good.write_text(pairing_toml((LAMBDA,)))
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(jsonl(deleted_and_recreated("Lambda.2")))
    out = tmp_path / "decisions.jsonl"
    assert main(["backtest", "--input", str(feed), "--pairing", str(good),
                 "--decisions-out", str(out), "--no-labels"]) == 0
    assert b'"decision":"alert","kind":"new"' in out.read_bytes().splitlines()[-1]
