"""Grouping bursts (pure): which alerts form a group, when a group is due, the routes'
group settings, and the ledger that keeps held alerts uncommitted (and says in the
commit which later ones were finished)."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from streams.notify.grouping import Grouping, GroupKey, Groups, group_key
from streams.notify.ledger import METADATA_LIMIT, CommitPoint, Ledger, parse_metadata
from streams.notify.routing import DEFAULT_ROUTE, Routes, RoutingError, parse_routes
from streams.notify.sinks import alert_from_record
from tests.notify.test_sinks import record

ALL = ["stdout", "slack", "pagerduty", "sns"]
QUICK = Grouping(wait_s=30, interval_s=300)


def key(name: str) -> GroupKey:
    return GroupKey("r", (("account", name),))


# -------------------------------------------------------------------------- groups

def test_the_first_alert_of_a_group_waits_group_wait_then_one_message_lists_all() -> None:
    groups: Groups[int] = Groups()
    groups.add(key("a"), QUICK, 1, now=0)
    groups.add(key("a"), QUICK, 2, now=10)
    groups.add(key("b"), QUICK, 3, now=20)
    assert groups.take_due(29.9) == []
    assert groups.next_due() == 30
    assert groups.take_due(30) == [(key("a"), [1, 2])]
    assert groups.take_due(50) == [(key("b"), [3])]
    assert groups.held() == 0 and groups.next_due() is None


def test_later_alerts_of_a_group_go_out_at_most_every_group_interval() -> None:
    groups: Groups[int] = Groups()
    groups.add(key("a"), QUICK, 1, now=0)
    assert groups.take_due(30) == [(key("a"), [1])]
    groups.add(key("a"), QUICK, 2, now=31)   # not group_wait again: the interval
    groups.add(key("a"), QUICK, 3, now=200)
    assert groups.take_due(329) == []
    assert groups.take_due(330) == [(key("a"), [2, 3])]
    # Nothing new for a whole interval: forgotten; the next alert waits group_wait again.
    assert groups.take_due(630) == []
    groups.add(key("a"), QUICK, 4, now=700)
    assert groups.next_due() == 730


def test_an_alert_just_after_a_quiet_interval_starts_a_new_group() -> None:
    groups: Groups[int] = Groups()
    groups.add(key("a"), QUICK, 1, now=0)
    groups.take_due(30)
    groups.add(key("a"), QUICK, 2, now=400)  # the interval after the message has passed
    assert groups.next_due() == 430


def test_take_all_sends_every_group_now_and_drop_forgets_revoked_alerts() -> None:
    groups: Groups[tuple[int, int]] = Groups()
    groups.add(key("a"), QUICK, (0, 1), now=0)
    groups.add(key("a"), QUICK, (1, 1), now=0)
    groups.add(key("b"), QUICK, (1, 2), now=0)
    groups.drop(lambda item: item[0] == 1)
    assert groups.take_all(1) == [(key("a"), [(0, 1)])]


def test_take_holding_sends_the_group_of_one_alert_early() -> None:
    groups: Groups[int] = Groups()
    groups.add(key("a"), QUICK, 1, now=0)
    groups.add(key("b"), QUICK, 2, now=0)
    assert groups.take_holding(lambda item: item == 2, now=1) == [(key("b"), [2])]
    assert groups.held() == 1


def test_group_keys_are_the_route_and_its_group_by_values() -> None:
    a = alert_from_record(record(account="111111111111", control_id="RDS.45", severity="HIGH"))
    assert group_key("prod", Grouping(), a) == GroupKey(
        "prod", (("account", "111111111111"), ("control", "RDS.45")))
    assert group_key("prod", Grouping(by=("severity",)), a).describe() == "severity HIGH"
    assert group_key("prod", Grouping(by=()), a).describe() == "all alerts"


# -------------------------------------------------------------------------- routes

def routes(text: str) -> Routes:
    return parse_routes(tomllib.loads(text))


def deliveries(r: Routes, configured: list[str] = ALL, **overrides: Any) -> dict[str, Any]:
    return {d.sink: d for d in r.deliveries_for(alert_from_record(record(**overrides)), configured)}


def test_a_route_that_groups_groups_slack_and_sns_never_pagerduty_or_stdout() -> None:
    r = routes("""
[[route]]
name = "burst"
sinks = ["pagerduty", "slack", "sns", "stdout"]
group_wait = "10s"
""")
    got = deliveries(r)
    assert got["slack"].grouping == got["sns"].grouping == Grouping(("account", "control"), 10, 300)
    assert got["pagerduty"].grouping is None and got["stdout"].grouping is None
    assert got["slack"].route == "burst"


def test_grouping_is_off_unless_asked_and_the_top_level_is_every_routes_default() -> None:
    assert deliveries(routes('[[route]]\nsinks = ["slack"]\n'))["slack"].grouping is None
    r = routes("""
group_by = ["account"]
group_interval = "1h"

[[route]]
name = "own"
match = { min_severity = "HIGH" }
sinks = ["slack"]
group_wait = "5s"

[[route]]
name = "inherits"
match = { min_severity = "MEDIUM" }
sinks = ["slack"]

[[route]]
name = "off"
match = { min_severity = "LOW" }
sinks = ["slack"]
group_by = ["..."]
""")
    assert deliveries(r, severity="HIGH")["slack"].grouping == Grouping(("account",), 5, 3600)
    assert deliveries(r, severity="MEDIUM")["slack"].grouping == Grouping(("account",), 30, 3600)
    assert deliveries(r, severity="LOW")["slack"].grouping is None
    unmatched = deliveries(r, severity="INFORMATIONAL")["slack"]
    assert unmatched.route == DEFAULT_ROUTE and unmatched.grouping == Grouping(("account",), 30, 3600)


def test_the_first_route_sending_an_alert_to_a_sink_decides_its_grouping() -> None:
    r = routes("""
[[route]]
name = "first"
sinks = ["slack"]
continue = true

[[route]]
name = "second"
sinks = ["slack", "sns"]
group_wait = "1m"
""")
    got = deliveries(r)
    assert (got["slack"].route, got["slack"].grouping) == ("first", None)
    assert got["sns"].route == "second" and got["sns"].grouping is not None


@pytest.mark.parametrize(("text", "error"), [
    ('[[route]]\nsinks = ["slack"]\ngroup_wait = "soon"\n', "route #1: group_wait: not a duration"),
    ('[[route]]\nsinks = ["slack"]\ngroup_wait = 30\n', "group_wait: write a duration as a string"),
    ('[[route]]\nsinks = ["slack"]\ngroup_by = ["acount"]\n', "group_by: unknown label 'acount'"),
    ('group_by = ["...", "account"]\n', 'group_by ["..."] turns grouping off'),
    ('group_interval = "-5m"\n', "group_interval: a duration cannot be negative"),
    ('[[route]]\nsinks = ["slack"]\nmatch = { reasons = ["vanished"] }\n', "'vanished' is not a valid"),
])
def test_bad_group_settings_are_one_line_errors(text: str, error: str) -> None:
    with pytest.raises(RoutingError, match=None) as caught:
        routes(text)
    assert error in str(caught.value) and "\n" not in str(caught.value)


def test_a_route_can_match_the_reason_an_incident_closed() -> None:
    r = routes("""
[[route]]
name = "gone"
match = { reasons = ["archived", "superseded"] }
sinks = ["sns"]

[[route]]
name = "rest"
sinks = ["slack"]
""")
    assert list(deliveries(r, kind="resolved", reason="archived")) == ["sns"]
    assert list(deliveries(r, kind="resolved", reason="superseded")) == ["sns"]
    assert list(deliveries(r, kind="resolved")) == ["slack"]  # no reason: it passed
    assert list(deliveries(r, kind="new")) == ["slack"]


# -------------------------------------------------------------------------- ledger

def test_a_partition_without_held_alerts_commits_after_its_last_record() -> None:
    ledger: Ledger[str] = Ledger()
    ledger.assigned("p", 10)
    for offset in (10, 11, 13):  # offsets may have gaps (transaction markers)
        ledger.handled("p", offset)
    assert ledger.point("p") == CommitPoint(14)


def test_held_alerts_stay_uncommitted_and_the_commit_says_what_was_finished_beyond() -> None:
    ledger: Ledger[str] = Ledger()
    ledger.assigned("p", 0)
    ledger.hold("p", 0)
    ledger.handled("p", 1)
    ledger.hold("p", 2)
    ledger.hold("p", 3)
    ledger.handled("p", 4)
    point = ledger.point("p")
    assert point is not None and point.offset == 0
    assert parse_metadata(0, point.metadata) == (5, frozenset({0, 2, 3}))
    ledger.release("p", 0)
    point = ledger.point("p")
    assert point is not None and point.offset == 2
    assert parse_metadata(2, point.metadata) == (5, frozenset({2, 3}))
    ledger.release("p", 2)
    ledger.release("p", 3)
    assert ledger.point("p") == CommitPoint(5)


def test_a_restart_skips_what_the_commit_says_was_finished_and_delivers_the_rest() -> None:
    before: Ledger[str] = Ledger()
    before.assigned("p", 0)
    for offset, held in [(0, True), (1, False), (2, True), (3, False)]:
        (before.hold if held else before.handled)("p", offset)
    point = before.point("p")
    assert point is not None
    after: Ledger[str] = Ledger()
    after.assigned("p", point.offset, point.metadata)
    assert [o for o in range(5) if not after.finished_before("p", o)] == [0, 2, 4]
    # Until the restart has read that far, it commits what the last commit said.
    assert after.point("p") == point
    after.handled("p", 0)
    after.handled("p", 1)
    again = after.point("p")
    assert again is not None and again.offset == 2
    assert parse_metadata(2, again.metadata) == (4, frozenset({2}))


@pytest.mark.parametrize("metadata", ["", "something else", "flapguard-held:1;upto=x;held=0",
                                      "flapguard-held:1;upto=3;held=0-9", "flapguard-held:1;held=0"])
def test_metadata_it_cannot_read_is_ignored_and_everything_is_delivered_again(metadata: str) -> None:
    ledger: Ledger[str] = Ledger()
    ledger.assigned("p", 0, metadata)
    assert not any(ledger.finished_before("p", o) for o in range(12))


def test_a_fragmented_hold_grows_the_metadata_beyond_what_a_commit_may_carry() -> None:
    ledger: Ledger[str] = Ledger()
    ledger.assigned("p", 0)
    for offset in range(2000):
        (ledger.hold if offset % 2 else ledger.handled)("p", offset)
    point = ledger.point("p")
    assert point is not None and len(point.metadata) > METADATA_LIMIT
    assert ledger.oldest_held("p") == 1
