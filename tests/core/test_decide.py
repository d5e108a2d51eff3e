"""The decision table of docs/design.md §3, rule by rule, through the `Decider` (events are
decided in the order given; the engine's reorder buffer is tested in test_engine)."""

from __future__ import annotations

from typing import Any

import pytest

from streams.core.decide import AlertKind, Decision, Reason
from streams.core.findings import Rejected
from streams.core.keys import dedup_key
from streams.core.policy import Policy, Severity
from streams.core.state import Archive
from tests.builders import (
    CIS140,
    FSBP,
    HOUR,
    NIST,
    OTHER_RESOURCE,
    Run,
    archived,
    at,
    epoch_ms,
    evolve,
    finding,
    parse_one,
    policy,
    summary,
)

ALERT_NEW = ("alert", "new")
SUPPRESSED_RECREATED = ("suppressed", "recreated_after_archive")


def archives(run: Run) -> list[Archive]:
    """The predecessors recorded (archives a re-creation may pair with)."""
    return [a for _, bucket in run.store.buckets.items() for a in bucket.archives if a.predecessor]


def failing_then_archived(run: Run, name: str = "old", *, archive_at: str = at(),
                          **kwargs: Any) -> dict[str, Any]:
    """A failing finding that alerted, then archived at `archive_at` (docs/design.md §1)."""
    base = finding(name, created=at(days=-10), updated=at(days=-10), **kwargs)
    assert summary(run(base)) == ALERT_NEW
    assert summary(run(archived(base, archive_at))) == ("silent", "archived")
    return base


# -- rule 1: dead letters --------------------------------------------------------------


def test_dead_letter_decision_carries_the_parser_reason_and_changes_no_state() -> None:
    run = Run()
    outcomes = run.all(b'{"SchemaVersion": "2018-10-08", "Id": "trunc')
    assert [summary(o) for o in outcomes] == [("dead_letter", "unparseable")]
    assert isinstance(outcomes[0].rejected, Rejected)
    assert outcomes[0].finding is None
    assert outcomes[0].key is None
    assert list(run.store.findings.items()) == []


def test_future_dated_finding_is_dead_lettered_and_never_reaches_state() -> None:
    run = Run(now_ms=epoch_ms(at()))
    [outcome] = run.all(finding(created=at(), updated=at(hours=2)))
    assert summary(outcome) == ("dead_letter", "future_timestamp")
    assert list(run.store.findings.items()) == []


# -- rule 2: duplicate events ----------------------------------------------------------


def test_redelivered_event_is_a_silent_duplicate_event() -> None:
    run = Run()
    event = finding()
    first, again = run(event), run(event)
    assert summary(first) == ALERT_NEW
    assert summary(again) == ("silent", "duplicate_event")
    assert again.dedup_key == first.dedup_key


def test_batch_update_findings_echo_with_the_same_updated_at_is_a_duplicate_event() -> None:
    run = Run()
    event = finding(created=at(), updated=at(hours=1))
    assert summary(run(event)) == ALERT_NEW
    # BatchUpdateFindings (an operator, a ticketing tool) changes Workflow but not UpdatedAt.
    echo = evolve(event, workflow="NOTIFIED", Note={"Text": "ticket 42", "UpdatedBy": "soc"})
    assert summary(run(echo)) == ("silent", "duplicate_event")


def test_stale_late_event_is_a_duplicate_event_and_does_not_resolve() -> None:
    run = Run()
    event = finding(created=at(), updated=at(hours=5))
    run(event)
    stale_pass = evolve(event, updated=at(hours=2), status="PASSED")
    assert summary(run(stale_pass)) == ("silent", "duplicate_event")
    # The state still knows the finding as failing: a later PASSED resolves it.
    assert summary(run(evolve(event, updated=at(hours=6), status="PASSED"))) == ("resolved", "resolved")


def test_updates_one_millisecond_apart_are_both_decided() -> None:
    run = Run(now_ms=epoch_ms("2038-06-02T00:00:00Z"))
    event = finding(created="2038-06-01T00:00:00.122Z")
    run(event)
    later = evolve(event, updated="2038-06-01T00:00:00.123Z", status="PASSED")
    assert summary(run(later)) == ("resolved", "resolved")


# -- rule 3: archives ------------------------------------------------------------------


def test_archive_of_a_failing_control_finding_is_silent_and_becomes_a_predecessor() -> None:
    run = Run()
    base = finding("old", created=at(days=-3))
    run(base)
    outcome = run(archived(base, at()))
    assert summary(outcome) == ("silent", "archived")
    [archive] = archives(run)
    assert archive.finding_id == base["Id"]
    assert archive.archived_at == epoch_ms(at())
    assert archive.standard is None
    assert archive.severity == Severity.MEDIUM
    assert not archive.used


def test_archive_of_a_warning_finding_becomes_a_predecessor() -> None:
    run = Run()
    base = finding("old", created=at(days=-3), status="WARNING")
    run(base)
    run(archived(base, at()))
    assert [a.finding_id for a in archives(run)] == [base["Id"]]


def test_later_archived_updates_do_not_move_archived_at() -> None:
    run = Run()
    base = finding("old", created=at(days=-3))
    run(base)
    run(archived(base, at()))
    again = archived(base, at(hours=12), previous_status="NOT_AVAILABLE")
    assert summary(run(again)) == ("silent", "archived")
    assert [a.archived_at for a in archives(run)] == [epoch_ms(at())]
    # The re-creation pairs over the gap from the first archive.
    outcome = run(finding("new", created=at(hours=12, minutes=30)))
    assert summary(outcome) == SUPPRESSED_RECREATED
    assert outcome.pairing is not None
    assert outcome.pairing.gap_seconds == 12.5 * 3600


def test_archive_of_a_passed_finding_is_no_predecessor() -> None:
    run = Run()
    base = finding("old", created=at(days=-3), status="PASSED")
    run(base)
    run(archived(base, at(), status="PASSED"))
    assert archives(run) == []
    assert summary(run(finding("new", created=at(hours=1)))) == ALERT_NEW


def test_first_sight_archive_uses_the_previous_compliance_status_of_the_event() -> None:
    run = Run()
    # Seen for the first time as the archive itself (the state began just now).
    first = archived(finding("old", created=at(days=-30)), at(), previous_status="FAILED")
    assert summary(run(first)) == ("silent", "archived")
    assert [a.finding_id for a in archives(run)] == [first["Id"]]
    assert summary(run(finding("new", created=at(hours=12)))) == SUPPRESSED_RECREATED


def test_first_sight_archive_with_no_evaluated_status_is_no_predecessor() -> None:
    run = Run()
    first = archived(finding("old", created=at(days=-30)), at())
    del first["ProductFields"]["PreviousComplianceStatus"]
    run(first)
    assert archives(run) == []
    assert summary(run(finding("new", created=at(hours=12)))) == ALERT_NEW


def test_archive_of_a_non_control_finding_is_no_predecessor() -> None:
    run = Run()
    forged = finding("forged", product="imported", created=at(days=-3))
    run(forged)
    run(archived(forged, at()))
    assert archives(run) == []
    # Kept for its open incident only: it closes in time, but nothing pairs with it.
    kept = [a for _, bucket in run.store.buckets.items() for a in bucket.archives]
    assert [(a.predecessor, a.opened) for a in kept] == [(False, True)]
    assert summary(run(finding("new", product="imported", created=at(hours=1)))) == ALERT_NEW


# -- rule 4: bootstrap -----------------------------------------------------------------


def test_first_sight_long_after_creation_is_a_silent_bootstrap_notified_with_no_incident() -> None:
    run = Run()
    event = finding(created=at(days=-60), updated=at())
    outcome = run(event)
    assert summary(outcome) == ("silent", "bootstrap")
    assert outcome.dedup_key == dedup_key(event["Id"], at())
    assert summary(run(evolve(event, updated=at(hours=18)))) == ("silent", "periodic_update")
    # Notified (no alert for it), but no incident was opened: nothing to resolve.
    passed = run(evolve(event, updated=at(hours=20), status="PASSED"))
    assert summary(passed) == ("silent", "passed")
    assert passed.dedup_key is None


def test_first_sight_age_is_exclusive_at_its_limit() -> None:
    at_limit = Run()(finding("a", created=at(hours=-24), updated=at()))
    beyond = Run()(finding("b", created=at(hours=-24, ms=-1), updated=at()))
    assert summary(at_limit) == ALERT_NEW
    assert summary(beyond) == ("silent", "bootstrap")


def test_first_sight_age_is_configurable() -> None:
    run = Run(policy(first_sight_age="1h"))
    assert summary(run(finding(created=at(hours=-2), updated=at()))) == ("silent", "bootstrap")


def test_bootstrap_of_a_passed_finding_is_not_notified_so_a_failure_is_a_regression() -> None:
    run = Run()
    event = finding(created=at(days=-60), updated=at(), status="PASSED")
    assert summary(run(event)) == ("silent", "bootstrap")
    assert summary(run(evolve(event, updated=at(hours=1), status="FAILED"))) == \
        ("alert", "regression")


# -- rule 5: reactivation of the same finding id -----------------------------------------


def test_reactivation_of_the_same_finding_within_the_window_is_suppressed() -> None:
    run = Run()
    base = failing_then_archived(run)
    opened = run.outcomes[0].dedup_key
    back = run(evolve(base, updated=at(hours=12), status="FAILED", record_state="ACTIVE"))
    assert summary(back) == ("suppressed", "reactivated_after_archive")
    assert back.pairing is not None
    assert back.pairing.finding_id == back.pairing.paired_finding_id == base["Id"]
    assert back.pairing.archived_at == epoch_ms(at())
    assert back.pairing.gap_seconds == 12 * 3600
    assert back.dedup_key == opened
    # Still the same failing period: later refreshes stay quiet.
    assert summary(run(evolve(base, updated=at(hours=30), status="FAILED",
                              record_state="ACTIVE"))) == ("silent", "periodic_update")


def test_resolution_after_a_suppressed_reactivation_carries_the_original_alerts_key() -> None:
    run = Run()
    base = failing_then_archived(run)
    opened = run.outcomes[0].dedup_key
    run(evolve(base, updated=at(hours=2), status="FAILED", record_state="ACTIVE"))
    resolved = run(evolve(base, updated=at(hours=3), status="PASSED", record_state="ACTIVE"))
    assert summary(resolved) == ("resolved", "resolved")
    assert resolved.dedup_key == opened


def test_reactivation_beyond_the_window_alerts_reactivated_with_a_new_key() -> None:
    run = Run()
    base = failing_then_archived(run)
    opened = run.outcomes[0].dedup_key
    back = run(evolve(base, updated=at(hours=31), status="FAILED", record_state="ACTIVE"))
    assert summary(back) == ("alert", "reactivated")
    assert back.dedup_key == dedup_key(base["Id"], at(hours=31))
    assert back.dedup_key != opened


@pytest.mark.parametrize(("gap_ms", "expected"), [
    (HOUR, ("suppressed", "reactivated_after_archive")),
    (HOUR + 1, ("alert", "reactivated")),
])
def test_reactivation_window_is_inclusive_at_its_limit(gap_ms: int, expected: tuple[str, str]) -> None:
    run = Run(policy(window="1h"))
    base = failing_then_archived(run)
    assert summary(run(evolve(base, updated=at(ms=gap_ms), status="FAILED",
                              record_state="ACTIVE"))) == expected


def test_reactivation_after_a_passed_archive_is_no_reactivation_but_a_regression() -> None:
    run = Run()
    base = finding("old", created=at(days=-1), status="PASSED")
    run(base)
    run(archived(base, at(), status="PASSED", previous_status="PASSED"))
    back = run(evolve(base, updated=at(hours=1), status="FAILED", record_state="ACTIVE"))
    assert summary(back) == ("alert", "regression")


def test_passed_in_an_archived_event_ends_the_failing_period() -> None:
    run = Run()
    base = finding("old", created=at(days=-1))
    assert summary(run(base)) == ALERT_NEW
    run(archived(base, at(), status="PASSED", previous_status="FAILED"))
    back = run(evolve(base, updated=at(hours=1), status="FAILED", record_state="ACTIVE"))
    # docs/design.md §3: "PASSED ends the period"; the last evaluated status is PASSED.
    assert summary(back) == ("alert", "regression")


def test_an_archived_finding_that_then_passes_is_no_longer_a_predecessor() -> None:
    # Archived while failing, then evaluated PASSED (still archived): the risk ended, so
    # a failing re-creation afterwards is new risk, not a continuation.
    run = Run()
    base = failing_then_archived(run)
    run(archived(base, at(minutes=5), status="PASSED", previous_status="NOT_AVAILABLE"))
    assert all(a.used for a in archives(run))
    assert summary(run(finding("new", created=at(hours=1)))) == ALERT_NEW


def test_a_reactivated_finding_is_no_longer_anyone_elses_predecessor() -> None:
    run = Run()
    base = failing_then_archived(run)
    run(evolve(base, updated=at(hours=1), status="FAILED", record_state="ACTIVE"))
    assert all(a.used for a in archives(run))
    assert summary(run(finding("new", created=at(hours=2)))) == ALERT_NEW


def test_reactivation_muted_in_security_hub_is_workflow_suppressed() -> None:
    run = Run()
    base = failing_then_archived(run)
    back = run(evolve(base, updated=at(hours=1), status="FAILED", record_state="ACTIVE",
                      workflow="SUPPRESSED"))
    assert summary(back) == ("silent", "workflow_suppressed")


# -- rules 5 and 6: reactivation and re-creation follow one rule ---------------------------


def archived_after(run: Run, *, severity: str, workflow: str = "NEW") -> tuple[dict[str, Any], str]:
    """A failing finding (alerting or not, as the run's policy says), then archived at
    T0 as in docs/design.md §1; returns it and its first decision."""
    base = finding("old", created=at(hours=-10), severity=severity, workflow=workflow)
    first = run(base)
    run(archived(base, at()))
    return base, summary(first)[1] or ""


def back(run: Run, base: dict[str, Any], how: str, **changes: Any) -> Any:
    """Two hours after the archive, failing again: the same `Id` ACTIVE again, or a
    re-created finding (new `Id`) for the same resource and control."""
    if how == "reactivated":
        changes.setdefault("workflow", "NEW")
        return run(evolve(base, updated=at(hours=2), status="FAILED", record_state="ACTIVE",
                          previous_status="NOT_AVAILABLE", reason_codes=[], **changes))
    return run(finding("new", created=at(hours=2), **changes))


@pytest.mark.parametrize("how", ["reactivated", "recreated"])
@pytest.mark.parametrize(("min_severity", "before", "workflow", "first", "after", "expected"), [
    # It alerted at LOW and comes back CRITICAL: an escalation, never hidden.
    ("LOW", "LOW", "NEW", "new", "CRITICAL", "alert"),
    # It never alerted (below the minimum) and comes back at HIGH: new risk.
    ("MEDIUM", "LOW", "NEW", "not_alertable", "HIGH", "alert"),
    # It alerted at HIGH and comes back at MEDIUM or HIGH: the same risk carries on.
    ("LOW", "HIGH", "NEW", "new", "MEDIUM", "suppressed"),
    ("LOW", "HIGH", "NEW", "new", "HIGH", "suppressed"),
    # An operator muted it in Security Hub: it comes back unmuted, as severe: still muted.
    ("LOW", "HIGH", "SUPPRESSED", "workflow_suppressed", "HIGH", "suppressed"),
])
def test_reactivation_and_recreation_suppress_only_notified_or_muted_risk_never_an_escalation(
    how: str, min_severity: str, before: str, workflow: str, first: str, after: str,
    expected: str,
) -> None:
    run = Run(Policy(min_severity=Severity.parse(min_severity)))
    base, decided = archived_after(run, severity=before, workflow=workflow)
    assert decided == first
    outcome = back(run, base, how, severity=after)
    assert outcome.decision.value == expected
    if expected == "alert":
        # A new incident under a key of its own: the old one would fold it into the first.
        assert outcome.dedup_key == dedup_key(outcome.finding.id, at(hours=2))
        assert outcome.kind is (AlertKind.REACTIVATED if how == "reactivated" else AlertKind.NEW)
    else:
        assert outcome.reason == f"{how}_after_archive"


def test_a_severity_taken_on_while_archived_is_not_what_a_reactivation_continues() -> None:
    # INFORMATIONAL while ACTIVE (below the minimum: never notified), LOW while archived:
    # ACTIVE again at LOW is more severe than anything notified, so it alerts.
    run = Run()
    base, first = archived_after(run, severity="INFORMATIONAL")
    assert first == "not_alertable"
    run(evolve(base, updated=at(hours=1), status="FAILED", severity="LOW", record_state="ARCHIVED"))
    assert summary(back(run, base, "reactivated", severity="LOW")) == ("alert", "reactivated")


def test_a_failing_period_that_begins_archived_is_compared_with_its_own_severity() -> None:
    run = Run()
    base = finding("old", created=at(hours=-10), severity="MEDIUM")
    assert summary(run(base)) == ALERT_NEW
    run(evolve(base, updated=at(hours=-1), status="PASSED", severity="LOW"))  # resolved
    run(archived(base, at(), status="FAILED", severity="LOW"))  # failing again, archived
    assert summary(back(run, base, "reactivated", severity="MEDIUM")) == ("alert", "reactivated")


# -- rule 8: a resolve closes only an incident that was opened -----------------------------


def test_a_failure_below_the_minimum_severity_that_passes_resolves_nothing() -> None:
    run = Run(Policy(min_severity=Severity.HIGH))
    base = finding(severity="MEDIUM")
    assert summary(run(base)) == ("silent", "not_alertable")
    passed = run(evolve(base, updated=at(hours=1), status="PASSED"))
    assert summary(passed) == ("silent", "passed")
    assert passed.dedup_key is None


def test_a_failure_muted_in_security_hub_that_passes_resolves_nothing() -> None:
    run = Run()
    base = finding(workflow="SUPPRESSED")
    assert summary(run(base)) == ("silent", "workflow_suppressed")
    assert summary(run(evolve(base, updated=at(hours=1), status="PASSED"))) == ("silent", "passed")


def test_a_muted_failure_unmuted_alerts_and_then_resolves() -> None:
    run = Run()
    base = finding(workflow="SUPPRESSED")
    run(base)
    alert = run(evolve(base, updated=at(hours=1), workflow="NEW"))
    assert summary(alert) == ALERT_NEW
    resolved = run(evolve(base, updated=at(hours=2), workflow="NEW", status="PASSED"))
    assert summary(resolved) == ("resolved", "resolved")
    assert resolved.dedup_key == alert.dedup_key


@pytest.mark.parametrize(("first", "resolves"), [
    (dict(created=at(days=-60), updated=at(hours=-1)), False),  # bootstrapped: opened nothing
    (dict(created=at(hours=-10), workflow="SUPPRESSED"), False),  # muted: opened nothing
    (dict(created=at(hours=-10)), True),  # alerted: the incident carries on
])
def test_a_suppressed_recreation_resolves_only_what_its_predecessor_opened(
    first: dict[str, Any], resolves: bool,
) -> None:
    run = Run()
    base = finding("old", **first)
    opened = run(base)
    run(archived(base, at()))
    new = finding("new", created=at(hours=2))
    assert summary(run(new)) == SUPPRESSED_RECREATED
    passed = run(evolve(new, updated=at(hours=3), status="PASSED"))
    if resolves:
        assert summary(passed) == ("resolved", "resolved")
        assert passed.dedup_key == opened.dedup_key
    else:
        assert summary(passed) == ("silent", "passed")


def test_an_escalated_reactivation_resolves_its_own_incident() -> None:
    run = Run()
    base, _ = archived_after(run, severity="LOW")
    escalated = back(run, base, "reactivated", severity="CRITICAL")
    assert summary(escalated) == ("alert", "reactivated")
    resolved = run(evolve(base, updated=at(hours=3), status="PASSED", record_state="ACTIVE"))
    assert summary(resolved) == ("resolved", "resolved")
    assert resolved.dedup_key == escalated.dedup_key


# -- rule 6: re-creation after an archive --------------------------------------------------


def test_recreation_within_window_after_archive_is_suppressed() -> None:
    run = Run()
    base = failing_then_archived(run)
    opened = run.outcomes[0].dedup_key
    new = finding("new", created=at(hours=12, minutes=30))
    outcome = run(new)
    assert summary(outcome) == SUPPRESSED_RECREATED
    pairing = outcome.pairing
    assert pairing is not None
    assert (pairing.finding_id, pairing.paired_finding_id) == (new["Id"], base["Id"])
    assert pairing.archived_at == epoch_ms(at())
    assert pairing.recreated_at == epoch_ms(at(hours=12, minutes=30))
    assert pairing.gap_seconds == 12.5 * 3600
    assert pairing.key == outcome.key
    # The re-creation takes its predecessor's place: same incident, same key.
    assert outcome.dedup_key == opened
    assert summary(run(evolve(new, updated=at(hours=30)))) == ("silent", "periodic_update")


def test_recreation_beyond_the_window_alerts_new() -> None:
    run = Run()
    failing_then_archived(run)
    assert summary(run(finding("new", created=at(hours=31)))) == ALERT_NEW


@pytest.mark.parametrize(("gap_ms", "expected"), [
    (HOUR, SUPPRESSED_RECREATED),
    (HOUR + 1, ALERT_NEW),
    (-HOUR, SUPPRESSED_RECREATED),
    (-HOUR - 1, ALERT_NEW),
])
def test_recreation_window_is_inclusive_at_its_limit_on_both_sides(
    gap_ms: int, expected: tuple[str, str]
) -> None:
    # abs(CreatedAt - archived_at) <= window: a re-creation may be created a little
    # before the archive of its predecessor is written.
    run = Run(policy(window="1h"))
    failing_then_archived(run, archive_at=at(hours=5))
    new = finding("new", created=at(hours=5, ms=gap_ms), updated=at(hours=6, ms=1))
    assert summary(run(new)) == expected


def test_pairing_crosses_tumbling_bucket_boundaries() -> None:
    run = Run(policy(window="1h"))
    failing_then_archived(run, archive_at=at(hours=23, minutes=50))
    outcome = run(finding("new", created=at(days=1, minutes=20)))
    assert summary(outcome) == SUPPRESSED_RECREATED
    assert outcome.pairing is not None
    assert outcome.pairing.gap_seconds == 30 * 60


def test_pairing_is_exact_whatever_the_bucket_width() -> None:
    run = Run(Policy(window_ms=HOUR, bucket_ms=7 * 60_000))
    failing_then_archived(run, archive_at=at(hours=23, minutes=50))
    assert summary(run(finding("new", created=at(days=1, minutes=50)))) == SUPPRESSED_RECREATED
    run2 = Run(Policy(window_ms=HOUR, bucket_ms=7 * 60_000))
    failing_then_archived(run2, archive_at=at(hours=23, minutes=50))
    assert summary(run2(finding("new", created=at(days=1, minutes=50, ms=1)))) == ALERT_NEW


def test_a_predecessor_is_used_up_by_one_recreation() -> None:
    run = Run()
    failing_then_archived(run)
    assert summary(run(finding("new1", created=at(hours=1)))) == SUPPRESSED_RECREATED
    assert summary(run(finding("new2", created=at(hours=2)))) == ALERT_NEW


def test_the_nearest_predecessor_is_used_first() -> None:
    run = Run()
    far = failing_then_archived(run, "far", archive_at=at(hours=-20))
    near = failing_then_archived(run, "near", archive_at=at(hours=-1))
    outcome = run(finding("new", created=at()))
    assert outcome.pairing is not None
    assert outcome.pairing.paired_finding_id == near["Id"]
    second = run(finding("new2", created=at(minutes=5)))
    assert second.pairing is not None
    assert second.pairing.paired_finding_id == far["Id"]


@pytest.mark.parametrize(("severity", "expected"), [
    ("LOW", SUPPRESSED_RECREATED),
    ("MEDIUM", SUPPRESSED_RECREATED),
    ("HIGH", ALERT_NEW),
    ("CRITICAL", ALERT_NEW),
])
def test_recreation_with_higher_severity_than_its_predecessor_alerts_new(
    severity: str, expected: tuple[str, str]
) -> None:
    run = Run()
    failing_then_archived(run, severity="MEDIUM")
    assert summary(run(finding("new", created=at(hours=1), severity=severity))) == expected


def test_higher_severity_recreation_uses_up_the_predecessor() -> None:
    run = Run()
    failing_then_archived(run, severity="MEDIUM")
    assert summary(run(finding("new", created=at(hours=1), severity="HIGH"))) == ALERT_NEW
    assert summary(run(finding("new2", created=at(hours=2), severity="LOW"))) == ALERT_NEW


def test_predecessor_severity_is_the_severity_while_failing_not_at_archive() -> None:
    run = Run()
    base = finding("old", created=at(days=-3), severity="HIGH")
    run(base)
    # The archive event carries a lower label; the failing severity counts.
    run(archived(base, at(), severity="INFORMATIONAL"))
    assert summary(run(finding("new", created=at(hours=1), severity="HIGH"))) == SUPPRESSED_RECREATED


def test_per_standard_findings_of_different_standards_never_pair() -> None:
    run = Run()
    failing_then_archived(run, standard=FSBP)
    assert summary(run(finding("cis", created=at(hours=1), standard=CIS140))) == ALERT_NEW
    assert summary(run(finding("fsbp", created=at(hours=1), standard=FSBP))) == SUPPRESSED_RECREATED


def test_consolidation_turned_off_suppresses_one_per_standard_finding_per_standard() -> None:
    # Issue class 4: the consolidated finding is archived and one per-standard finding
    # per enabled standard is created for the same resource and control.
    run = Run()
    failing_then_archived(run)  # consolidated, alerted at -10 days
    key = run.outcomes[0].dedup_key
    fsbp = run(finding("fsbp", created=at(hours=1), standard=FSBP))
    cis = run(finding("cis", created=at(hours=1), standard=CIS140))
    assert [summary(fsbp), summary(cis)] == [("suppressed", "consolidation_switch")] * 2
    assert fsbp.dedup_key == cis.dedup_key == key
    # The first carries the incident on: its pass resolves it, the other's is silent.
    assert summary(run(evolve(finding("cis", created=at(hours=1), standard=CIS140),
                              updated=at(hours=2), status="PASSED"))) == ("silent", "passed")
    resolved = run(evolve(finding("fsbp", created=at(hours=1), standard=FSBP),
                          updated=at(hours=2), status="PASSED"))
    assert summary(resolved) == ("resolved", "resolved") and resolved.dedup_key == key
    # A second finding of a standard that already took its place is new risk.
    assert summary(run(finding("fsbp2", created=at(hours=3), standard=FSBP))) == ALERT_NEW


@pytest.mark.parametrize("change", [
    {"resource": OTHER_RESOURCE},
    {"account": "210987654321"},
    {"region": "eu-west-1"},
    {"control": "RDS.27"},
])
def test_findings_of_another_partition_key_never_pair(change: dict[str, str]) -> None:
    run = Run()
    failing_then_archived(run)
    assert summary(run(finding("new", created=at(hours=1), **change))) == ALERT_NEW


def test_non_control_products_never_pair() -> None:
    run = Run()
    failing_then_archived(run)
    imported = finding("imported", product="imported", created=at(hours=1))
    assert summary(run(imported)) == ALERT_NEW
    # ... and do not use up the predecessor the real re-creation needs.
    assert summary(run(finding("new", created=at(hours=2)))) == SUPPRESSED_RECREATED


def test_a_forged_archived_predecessor_from_another_product_never_silences_a_control_finding() -> None:
    run = Run()
    # A member account imports a finding that claims the same account, Region, control
    # and resource, fails, and archives it: it must not become a predecessor.
    forged = finding("forged", product="imported", created=at(days=-3),
                     generator_id="security-control/RDS.45")
    run(forged)
    run(archived(forged, at()))
    assert summary(run(finding("real", created=at(hours=1)))) == ALERT_NEW


def test_a_forged_product_arn_naming_another_product_is_no_control_finding() -> None:
    run = Run()
    forged = finding("forged", product_arn="arn:aws:securityhub:us-east-2::product/aws/guardduty",
                     created=at(days=-3))
    run(forged)
    run(archived(forged, at()))
    assert summary(run(finding("real", created=at(hours=1)))) == ALERT_NEW


def test_regression_after_resolution_alerts_regression_with_a_new_key() -> None:
    run = Run()
    base = finding(created=at(), updated=at())
    first = run(base)
    resolved = run(evolve(base, updated=at(hours=1), status="PASSED"))
    again = run(evolve(base, updated=at(hours=2), status="FAILED"))
    assert [summary(first), summary(resolved), summary(again)] == [
        ALERT_NEW, ("resolved", "resolved"), ("alert", "regression")]
    assert resolved.dedup_key == first.dedup_key
    assert again.dedup_key == dedup_key(base["Id"], at(hours=2))
    assert again.dedup_key != first.dedup_key


def test_warning_counts_as_failing_for_regression_and_resolution() -> None:
    run = Run()
    base = finding(created=at(), status="WARNING")
    assert summary(run(base)) == ALERT_NEW
    assert summary(run(evolve(base, updated=at(hours=1), status="PASSED"))) == ("resolved", "resolved")
    assert summary(run(evolve(base, updated=at(hours=2), status="WARNING"))) == ("alert", "regression")


def test_first_failure_of_a_finding_first_seen_passing_is_a_regression() -> None:
    run = Run()
    base = finding(created=at(), status="PASSED")
    assert summary(run(base)) == ("silent", "not_alertable")
    assert summary(run(evolve(base, updated=at(hours=1), status="FAILED"))) == ("alert", "regression")


def test_a_finding_without_compliance_alerts_new_while_active_and_never_pairs() -> None:
    run = Run()
    failing_then_archived(run)
    guardduty = finding("gd", status=None, created=at(hours=1),
                        product_arn="arn:aws:securityhub:us-east-2::product/aws/guardduty")
    assert summary(run(guardduty)) == ALERT_NEW


def test_a_control_finding_first_seen_not_available_pairs_when_it_first_fails() -> None:
    run = Run()
    failing_then_archived(run)
    new = finding("new", created=at(hours=1), status="NOT_AVAILABLE")
    assert summary(run(new)) == ("silent", "not_alertable")
    # Never evaluated before: the first FAILED is decided like a first sight.
    assert summary(run(evolve(new, updated=at(hours=2), status="FAILED"))) == SUPPRESSED_RECREATED


# -- consolidation switch --------------------------------------------------------------


def test_consolidated_finding_after_per_standard_archive_is_a_consolidation_switch() -> None:
    run = Run()
    fsbp = failing_then_archived(run, "fsbp", standard=FSBP)
    opened = run.outcomes[0].dedup_key
    consolidated = finding("consolidated", created=at(hours=2))
    outcome = run(consolidated)
    assert summary(outcome) == ("suppressed", "consolidation_switch")
    assert outcome.pairing is not None
    assert outcome.pairing.paired_finding_id == fsbp["Id"]
    assert outcome.pairing.archived_at == epoch_ms(at())
    assert outcome.dedup_key == opened


def test_consolidation_switch_uses_up_every_per_standard_predecessor() -> None:
    run = Run()
    failing_then_archived(run, "fsbp", standard=FSBP)
    failing_then_archived(run, "nist", standard=NIST)
    assert summary(run(finding("consolidated", created=at(hours=2)))) == \
        ("suppressed", "consolidation_switch")
    assert all(a.used for a in archives(run))
    assert summary(run(finding("consolidated2", created=at(hours=3)))) == ALERT_NEW


def test_consolidated_finding_prefers_a_consolidated_predecessor() -> None:
    run = Run()
    failing_then_archived(run, "fsbp", standard=FSBP, archive_at=at(hours=1))
    old = failing_then_archived(run, "old-consolidated")
    outcome = run(finding("consolidated", created=at(hours=1)))
    assert summary(outcome) == SUPPRESSED_RECREATED
    assert outcome.pairing is not None
    assert outcome.pairing.paired_finding_id == old["Id"]


def test_consolidation_switch_with_a_higher_severity_alerts_new() -> None:
    run = Run()
    failing_then_archived(run, "fsbp", standard=FSBP, severity="LOW")
    assert summary(run(finding("consolidated", created=at(hours=2), severity="HIGH"))) == ALERT_NEW


def test_consolidated_finding_first_pairs_with_still_active_notified_per_standard_findings() -> None:
    run = Run()
    fsbp = finding("fsbp", standard=FSBP, created=at(days=-10))
    nist = finding("nist", standard=NIST, created=at(days=-10, minutes=1))
    run(fsbp)
    run(nist)
    opened = {o.dedup_key for o in run.outcomes}
    consolidated = run(finding("consolidated", created=at()))
    assert summary(consolidated) == ("suppressed", "consolidation_switch")
    assert consolidated.pairing is not None
    assert consolidated.pairing.paired_finding_id in {fsbp["Id"], nist["Id"]}
    assert consolidated.pairing.archived_at is None
    assert consolidated.dedup_key in opened
    # Security Hub then archives the per-standard findings (up to 18 h later): they
    # were replaced, so they are no predecessors and a later finding is really new.
    assert summary(run(archived(fsbp, at(hours=10)))) == ("silent", "archived")
    assert summary(run(archived(nist, at(hours=11)))) == ("silent", "archived")
    assert archives(run) == []
    assert summary(run(finding("fsbp2", standard=FSBP, created=at(hours=12)))) == ALERT_NEW


def test_bootstrapped_per_standard_finding_counts_as_notified_for_the_switch() -> None:
    run = Run()
    run(finding("fsbp", standard=FSBP, created=at(days=-200), updated=at(hours=-1)))
    assert summary(run(finding("consolidated", created=at()))) == ("suppressed", "consolidation_switch")


def test_consolidated_finding_does_not_pair_with_a_resolved_per_standard_finding() -> None:
    run = Run()
    fsbp = finding("fsbp", standard=FSBP, created=at(days=-10))
    run(fsbp)
    run(evolve(fsbp, updated=at(hours=-2), status="PASSED"))
    assert summary(run(finding("consolidated", created=at()))) == ALERT_NEW


def test_consolidated_finding_does_not_pair_with_a_muted_unnotified_per_standard_finding() -> None:
    run = Run()
    run(finding("fsbp", standard=FSBP, created=at(days=-1), workflow="SUPPRESSED"))
    assert summary(run(finding("consolidated", created=at()))) == ALERT_NEW


def test_per_standard_finding_never_pairs_with_a_live_finding_of_another_standard() -> None:
    run = Run()
    run(finding("fsbp", standard=FSBP, created=at(days=-10)))
    assert summary(run(finding("cis", standard=CIS140, created=at()))) == ALERT_NEW


def test_consolidated_finding_does_not_pair_with_a_live_per_standard_finding_of_another_resource() -> None:
    run = Run()
    run(finding("fsbp", standard=FSBP, created=at(days=-10), resource=OTHER_RESOURCE))
    assert summary(run(finding("consolidated", created=at()))) == ALERT_NEW


def test_imported_per_standard_lookalike_is_never_live_for_the_switch() -> None:
    run = Run()
    run(finding("fsbp", standard=FSBP, product="imported", created=at(days=-10)))
    assert summary(run(finding("consolidated", created=at()))) == ALERT_NEW


# -- late pairs ------------------------------------------------------------------------


def test_archive_decided_after_its_recreation_alerted_is_a_late_pair_not_a_second_alert() -> None:
    run = Run()
    old = finding("old", created=at(days=-10), updated=at(days=-10))
    run(old)
    new = finding("new", created=at(hours=1))
    assert summary(run(new)) == ALERT_NEW
    late = run(archived(old, at()))
    assert summary(late) == ("silent", "archived")
    [pair] = late.late_pairs
    assert (pair.finding_id, pair.paired_finding_id) == (new["Id"], old["Id"])
    assert pair.reason is Reason.LATE_PAIR
    assert pair.archived_at == epoch_ms(at())
    assert pair.recreated_at == epoch_ms(at(hours=1))
    assert pair.gap_seconds == 3600
    # The late predecessor is used up by that pair.
    newer = finding("newer", created=at(hours=2))
    assert summary(run(newer)) == ALERT_NEW
    alerted = [o.finding.id for o in run.outcomes if o.decision is Decision.ALERT and o.finding]
    assert alerted == [old["Id"], new["Id"], newer["Id"]]


def test_late_archive_beyond_the_window_is_no_late_pair() -> None:
    run = Run(policy(window="1h"))
    old = finding("old", created=at(days=-10))
    run(old)
    run(finding("new", created=at(hours=2)))
    assert run(archived(old, at())).late_pairs == ()


def test_late_archive_of_a_lower_severity_predecessor_is_no_late_pair() -> None:
    run = Run()
    old = finding("old", created=at(days=-10), severity="LOW")
    run(old)
    run(finding("new", created=at(hours=1), severity="HIGH"))
    assert run(archived(old, at())).late_pairs == ()


def test_late_archive_of_another_standard_is_no_late_pair() -> None:
    run = Run()
    old = finding("old", created=at(days=-10), standard=FSBP)
    run(old)
    run(finding("new", created=at(hours=1), standard=CIS140))
    assert run(archived(old, at())).late_pairs == ()


def test_late_per_standard_archive_pairs_late_with_an_alerted_consolidated_finding() -> None:
    run = Run()
    old = finding("old", created=at(days=-10), standard=FSBP, workflow="SUPPRESSED")
    run(old)  # muted, so not live: the consolidated finding alerts
    new = finding("new", created=at(hours=1))
    assert summary(run(new)) == ALERT_NEW
    late = run(archived(old, at(), workflow="SUPPRESSED"))
    assert [p.finding_id for p in late.late_pairs] == [new["Id"]]


# -- rule 7: already notified ------------------------------------------------------------


def test_refresh_of_an_alerted_finding_is_a_periodic_update() -> None:
    run = Run()
    base = finding(created=at())
    run(base)
    outcome = run(evolve(base, updated=at(hours=18), previous_status="FAILED"))
    assert summary(outcome) == ("silent", "periodic_update")
    assert outcome.dedup_key == run.outcomes[0].dedup_key


def test_failing_again_after_not_available_without_archive_is_a_flap_of_the_same_finding() -> None:
    run = Run()
    base = finding(created=at())
    run(base)
    na = run(evolve(base, updated=at(hours=1), status="NOT_AVAILABLE"))
    assert summary(na) == ("silent", "periodic_update")
    back = run(evolve(base, updated=at(hours=2), status="FAILED"))
    assert summary(back) == ("silent", "flap_same_finding")
    assert summary(run(evolve(base, updated=at(hours=3)))) == ("silent", "periodic_update")


# -- rule 8: resolved --------------------------------------------------------------------


def test_passed_after_failing_is_resolved_with_the_alerts_key() -> None:
    run = Run()
    base = finding(created=at())
    alert = run(base)
    resolved = run(evolve(base, updated=at(hours=1), status="PASSED"))
    assert summary(resolved) == ("resolved", "resolved")
    assert resolved.kind is AlertKind.RESOLVED
    assert resolved.dedup_key == alert.dedup_key
    assert summary(run(evolve(base, updated=at(hours=2), status="PASSED"))) == \
        ("silent", "periodic_update")


def test_resolution_of_a_suppressed_recreation_carries_the_original_alerts_key() -> None:
    run = Run()
    failing_then_archived(run)
    opened = run.outcomes[0].dedup_key
    new = finding("new", created=at(hours=12))
    run(new)
    resolved = run(evolve(new, updated=at(hours=20), status="PASSED"))
    assert summary(resolved) == ("resolved", "resolved")
    assert resolved.dedup_key == opened


def test_resolution_is_written_even_when_the_finding_is_muted() -> None:
    run = Run()
    base = finding(created=at())
    run(base)
    assert summary(run(evolve(base, updated=at(hours=1), status="PASSED", workflow="SUPPRESSED"))) \
        == ("resolved", "resolved")


# -- rule 9: workflow SUPPRESSED -----------------------------------------------------------


def test_failing_finding_muted_in_security_hub_is_workflow_suppressed() -> None:
    run = Run()
    assert summary(run(finding(created=at(), workflow="SUPPRESSED"))) == ("silent", "workflow_suppressed")


def test_muting_after_an_alert_is_silent_and_unmuting_does_not_alert_again() -> None:
    run = Run()
    base = finding(created=at())
    run(base)
    assert summary(run(evolve(base, updated=at(hours=1), workflow="SUPPRESSED"))) == \
        ("silent", "workflow_suppressed")
    assert summary(run(evolve(base, updated=at(hours=2), workflow="NOTIFIED"))) == \
        ("silent", "periodic_update")


def test_unmuting_a_finding_that_never_alerted_alerts_new() -> None:
    run = Run()
    base = finding(created=at(), workflow="SUPPRESSED")
    run(base)
    assert summary(run(evolve(base, updated=at(hours=1), workflow="NEW"))) == ALERT_NEW


# -- rule 10 and the minimum severity ----------------------------------------------------


@pytest.mark.parametrize(("severity", "minimum", "expected"), [
    ("INFORMATIONAL", Severity.LOW, ("silent", "not_alertable")),
    ("LOW", Severity.LOW, ALERT_NEW),
    ("LOW", Severity.MEDIUM, ("silent", "not_alertable")),
    ("MEDIUM", Severity.MEDIUM, ALERT_NEW),
    ("HIGH", Severity.CRITICAL, ("silent", "not_alertable")),
])
def test_minimum_severity(severity: str, minimum: Severity, expected: tuple[str, str]) -> None:
    run = Run(Policy(min_severity=minimum))
    assert summary(run(finding(created=at(), severity=severity))) == expected


def test_severity_raised_to_the_minimum_alerts_then() -> None:
    run = Run(Policy(min_severity=Severity.MEDIUM))
    base = finding(created=at(), severity="LOW")
    assert summary(run(base)) == ("silent", "not_alertable")
    assert summary(run(evolve(base, updated=at(hours=1)))) == ("silent", "periodic_update")
    assert summary(run(evolve(base, updated=at(hours=2), severity="HIGH"))) == ALERT_NEW


def test_passing_finding_first_seen_is_not_alertable_then_periodic_update() -> None:
    run = Run()
    base = finding(created=at(), status="PASSED")
    assert summary(run(base)) == ("silent", "not_alertable")
    assert summary(run(evolve(base, updated=at(hours=1)))) == ("silent", "periodic_update")


def test_not_available_first_sight_is_not_alertable() -> None:
    assert summary(Run()(finding(created=at(), status="NOT_AVAILABLE"))) == ("silent", "not_alertable")


# -- dedup keys and outcome fields -------------------------------------------------------


def test_alert_key_is_the_finding_and_the_updated_at_of_the_opening_event() -> None:
    run = Run()
    base = finding(created=at(), updated=at(minutes=3))
    alert = run(base)
    assert alert.dedup_key == dedup_key(base["Id"], at(minutes=3))
    assert alert.key == parse_one(base).partition_key


def test_replaying_the_same_events_gives_the_same_keys() -> None:
    events = [
        finding("a", created=at(days=-2)),
        archived(finding("a", created=at(days=-2)), at()),
        finding("b", created=at(hours=3)),
        finding("c", created=at(hours=4), resource=OTHER_RESOURCE),
    ]
    first = Run().many(*events)
    second = Run().many(*events)
    assert [o.dedup_key for o in first] == [o.dedup_key for o in second]
    assert [summary(o) for o in first] == [summary(o) for o in second]


def test_every_decided_finding_outcome_names_its_partition_key() -> None:
    run = Run()
    base = failing_then_archived(run)
    run(finding("new", created=at(hours=1)))
    assert {o.key for o in run.outcomes} == {parse_one(base).partition_key}
