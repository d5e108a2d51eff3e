"""Every opened incident ends (docs/design.md §3, closing): an archived finding's
incident closes `archived` once nothing can continue it, in event time; a successor
that opens its own incident closes its predecessor's, `superseded`; a finding that
passes while archived resolves its incident, `passed`."""

from __future__ import annotations

from typing import Any

from streams.core.decide import Decision, Outcome
from streams.core.engine import PartitionEngine
from streams.core.records import alert_records
from streams.core.state import Origin, Store
from tests.builders import (
    FSBP,
    archived,
    at,
    backtest,
    evolve,
    finding,
    parse_one,
    policy,
)

# Window 6 h, first-sight age 12 h: an archive's incident closes once an event stamped
# more than 18 h after it is decided.
P = policy(window="6h", first_sight_age="12h", hold="5m")


def closes(outcomes: list[Outcome]) -> list[tuple[str, str, str]]:
    """(finding name, reason, dedup_key) of every incident closed, in order."""
    return [(c.finding_id.rsplit("/", 1)[-1], c.reason.value, c.dedup_key)
            for o in outcomes for c in o.closes]


def alert_keys(outcomes: list[Outcome]) -> dict[str, str]:
    """finding name -> the dedup_key its alert opened."""
    return {o.finding.id.rsplit("/", 1)[-1]: o.dedup_key for o in outcomes
            if o.decision is Decision.ALERT and o.finding is not None and o.dedup_key}


def elsewhere(hours: float) -> dict[str, Any]:
    """An unrelated finding of the same partition stamped `hours` after 0h: event time moves."""
    other = finding("clock", created=at(hours=hours), resource="arn:aws:s3:::elsewhere",
                    control="S3.1", status="PASSED")
    return other


def gone(name: str = "gone", **kwargs: Any) -> dict[str, Any]:
    """A failing finding that alerted at -1 h (created then)."""
    return finding(name, created=at(hours=-1), **kwargs)


def test_an_alerted_finding_archived_for_good_resolves_once_its_window_has_passed() -> None:
    base = gone()
    decided = backtest([base, archived(base, at()), elsewhere(17), elsewhere(18.5)], policy=P)
    key = alert_keys(decided)["gone"]
    assert closes(decided[:3]) == []  # 17 h: a re-creation could still pair with it
    assert closes(decided) == [("gone", "archived", key)]
    assert decided[3].closes and decided[3].finding is not None  # the event past its deadline
    [record] = alert_records(decided[3], 0)
    assert record["kind"] == "resolved" and record["reason"] == "archived"
    assert record["finding_id"] == base["Id"] and record["dedup_key"] == key
    assert record["updated_at"] == "2025-10-01T00:00:00.000Z"  # its archive


def test_no_incident_closes_at_the_end_of_the_input_only() -> None:
    base = gone()
    decided = backtest([base, archived(base, at()), elsewhere(5)], policy=P)
    assert closes(decided) == []


def test_a_suppressed_recreation_carries_the_incident_on_and_nothing_closes() -> None:
    base = gone("old")
    new = finding("new", created=at(hours=3))
    decided = backtest([base, archived(base, at()), new, elsewhere(40)], policy=P)
    assert [o.decision for o in decided[:3]] == [Decision.ALERT, Decision.SILENT, Decision.SUPPRESSED]
    assert decided[2].dedup_key == alert_keys(decided)["old"]
    assert closes(decided) == []


def test_a_more_severe_recreation_supersedes_its_predecessor_and_opens_its_own() -> None:
    base = gone("old", severity="LOW")
    new = finding("new", created=at(hours=3), severity="CRITICAL")
    decided = backtest([base, archived(base, at()), new, elsewhere(40)], policy=P)
    keys = alert_keys(decided)
    assert decided[2].decision is Decision.ALERT and keys["new"] != keys["old"]
    assert closes(decided) == [("old", "superseded", keys["old"])]
    assert decided[2].closes  # with the alert that superseded it
    records = alert_records(decided[2], 0)
    assert [(r["kind"], r.get("reason"), r["dedup_key"]) for r in records] == [
        ("resolved", "superseded", keys["old"]), ("new", None, keys["new"])]


def test_a_late_archive_closes_its_incident_as_superseded_by_the_recreation() -> None:
    base = gone("old")
    new = finding("new", created=at(hours=2))
    # The archive is stamped before the re-creation but arrives long after (late pair).
    decided = backtest([base, new, elsewhere(3), archived(base, at()), elsewhere(40)], policy=P)
    keys = alert_keys(decided)
    assert decided[3].late_pairs
    assert closes(decided) == [("old", "superseded", keys["old"])]


def test_a_more_severe_reactivation_supersedes_its_own_incident() -> None:
    base = gone(severity="LOW")
    again = evolve(base, updated=at(hours=2), record_state="ACTIVE", status="FAILED",
                   severity="HIGH")
    decided = backtest([base, archived(base, at()), again, elsewhere(40)], policy=P)
    assert decided[2].kind is not None and decided[2].kind.value == "reactivated"
    old = alert_keys(decided[:1])["gone"]
    assert decided[2].dedup_key != old
    assert closes(decided) == [("gone", "superseded", old)]


def test_a_reactivation_within_the_window_keeps_its_incident_open() -> None:
    base = gone()
    again = evolve(base, updated=at(hours=2), record_state="ACTIVE", status="FAILED")
    decided = backtest([base, archived(base, at()), again, elsewhere(40)], policy=P)
    assert decided[2].decision is Decision.SUPPRESSED
    assert closes(decided) == []


def test_passing_while_archived_resolves_the_incident() -> None:
    base = gone()
    decided = backtest([base, archived(base, at(), status="PASSED", previous_status="FAILED")],
                       policy=P)
    assert closes(decided) == [("gone", "passed", alert_keys(decided)["gone"])]


def test_another_products_finding_archived_for_good_resolves_too() -> None:
    base = gone(product="imported")
    decided = backtest([base, archived(base, at(), status="FAILED"), elsewhere(18.5)], policy=P)
    assert closes(decided) == [("gone", "archived", alert_keys(decided)["gone"])]


def test_a_bootstrapped_finding_archived_closes_nothing() -> None:
    base = finding("old", created=at(days=-5), updated=at(hours=-1))
    decided = backtest([base, archived(base, at()), elsewhere(40)], policy=P)
    assert decided[0].reason == "bootstrap"
    assert closes(decided) == []


def test_a_consolidated_finding_keeps_one_per_standard_incident_and_closes_the_others() -> None:
    a = finding("fsbp", created=at(hours=-2), standard=FSBP)
    b = finding("cis", created=at(hours=-2), standard="cis-aws-foundations-benchmark/v/1.4.0/4.1")
    consolidated = finding("all", created=at())
    decided = backtest([a, b, consolidated, elsewhere(1)], policy=P)
    keys = alert_keys(decided)
    assert decided[2].decision is Decision.SUPPRESSED
    kept = decided[2].dedup_key
    assert kept in (keys["fsbp"], keys["cis"])
    other = "cis" if kept == keys["fsbp"] else "fsbp"
    assert closes(decided) == [(other, "superseded", keys[other])]


def test_a_restarted_engine_closes_what_its_store_holds() -> None:
    store = Store.in_memory()
    first = PartitionEngine(store, P, 0)
    base = gone()
    for seq, obj in enumerate([base, archived(base, at())]):
        first.accept(parse_one(obj), Origin("t", seq + 1, 0), seq)
    decided = first.flush()
    assert closes(decided) == []
    again = PartitionEngine(store, P, 0)  # a restart: nothing but the store
    decided = again.accept(parse_one(elsewhere(18.5)), Origin("t", 3, 0), 2) + again.flush()
    assert [c[:2] for c in closes(decided)] == [("gone", "archived")]
