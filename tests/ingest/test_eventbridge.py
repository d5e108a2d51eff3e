"""The shipped EventBridge rule pattern, against the public sample events
(moto's EventBridge cannot match on `detail.findings[]`, so this matcher does)."""

from __future__ import annotations

from typing import Any

import pytest

from streams.ingest.eventbridge import matches, rule_pattern
from tests.builders import PUBLIC, envelope, finding, load_public

IMPORTED = sorted(p.name for p in PUBLIC.glob("asr-eventbridge-imported-*.json"))
CUSTOM_ACTION = sorted(p.name for p in PUBLIC.glob("asr-eventbridge-custom-action-*.json"))
NOT_EVENTS = sorted(p.name for p in PUBLIC.glob("awsdocs-2023-sample-*.json"))


def test_there_are_samples_of_each_kind() -> None:
    assert IMPORTED and CUSTOM_ACTION and NOT_EVENTS


@pytest.mark.parametrize("name", IMPORTED)
def test_the_rule_takes_imported_findings_events(name: str) -> None:
    assert matches(rule_pattern(), load_public(name))


@pytest.mark.parametrize("name", [*CUSTOM_ACTION, "awsdocs-2023-eventbridge-insight-results-template.json",
                                  *NOT_EVENTS])
def test_the_rule_leaves_custom_actions_insights_and_bare_findings(name: str) -> None:
    assert not matches(rule_pattern(), load_public(name))


def test_the_rule_never_also_takes_the_v2_events_that_would_duplicate_every_finding() -> None:
    event = envelope([finding()])
    event["detail-type"] = "Findings Imported V2"
    assert not matches(rule_pattern(), event)
    other_source = envelope([finding()])
    other_source["source"] = "aws.guardduty"
    assert not matches(rule_pattern(), other_source)


def failed_only() -> dict[str, Any]:
    """An operator's narrower variant: only FAILED control findings of one account."""
    pattern = rule_pattern()
    pattern["detail"] = {"findings": {"Compliance": {"Status": ["FAILED"]},
                                      "AwsAccountId": [{"prefix": "1111"}],
                                      "Workflow": {"Status": [{"anything-but": ["SUPPRESSED"]}]}}}
    return pattern


def test_nested_patterns_match_any_element_of_the_findings_array() -> None:
    passed = finding("p", status="PASSED", account="111111111111")
    failed = finding("f", status="FAILED", account="111111111111")
    assert matches(failed_only(), envelope([passed, failed]))
    assert not matches(failed_only(), envelope([passed]))
    assert not matches(failed_only(), envelope([finding("o", account="222222222222")]))
    assert not matches(failed_only(), envelope([finding("s", account="111111111111", workflow="SUPPRESSED")]))


def test_exists_matches_presence_and_absence() -> None:
    event = envelope([finding()])
    assert matches({"detail": {"findings": {"Compliance": {"SecurityControlId": [{"exists": True}]}}}}, event)
    assert not matches({"detail": {"findings": {"Compliance": {"Nope": [{"exists": True}]}}}}, event)
    assert matches({"detail": {"findings": {"Nope": [{"exists": False}]}}}, event)


def test_an_unsupported_operator_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError):
        matches({"source": [{"numeric": [">", 1]}]}, {"source": "aws.securityhub"})
