"""The backtest's speed-ups in the core change nothing but speed:
the straight-line finding parser, the timestamp cache, the incremental sweep, the
decision table's path for re-evaluations and the engine without a durable buffer each
give exactly what the general code gives."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.backtest.generate import HOUR_MS, Profile, write_feed
from streams.backtest.run import read_occurrences
from streams.core.decide import Decider, Outcome, Reason
from streams.core.engine import PartitionEngine
from streams.core.findings import (
    _TIMESTAMPS,
    Finding,
    Rejected,
    _Bad,
    _parse_timestamp,
    envelope_finding,
    finding_from_json,
    parse_message,
    parse_timestamp,
)
from streams.core.policy import Policy, Severity
from streams.core.records import decision_record
from streams.core.state import Origin, Store
from tests.builders import NOW_MS, change_path, dumps, envelope, finding, parse_one
from tests.core.test_properties import POLICY, Event, histories
from tests.hypothesis_profile import CORE


class _General(dict[str, Any]):
    """A finding that is not exactly a dict: only the general parser takes it."""


def parse_both(obj: dict[str, Any], now_ms: int = NOW_MS) -> tuple[Any, Any]:
    def run(candidate: Any) -> Finding | str:
        try:
            return finding_from_json(candidate, policy=Policy(), now_ms=now_ms)
        except _Bad as bad:
            return bad.reason

    return run(copy.deepcopy(obj)), run(_General(copy.deepcopy(obj)))


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(
        ["", "x", "FAILED", "PASSED", "NOT_AVAILABLE", "ARCHIVED", "ACTIVE", "medium", "HIGH",
         "2025-10-01T00:00:00.000Z", "2025-10-01T00:00:00Z", "2025-10-01 00:00:00+09:00",
         "2025-13-01T00:00:00.000Z", "2025-10-01T24:00:00.000Z", "2999-01-01T00:00:00.000Z"]),
    st.lists(st.just({"ReasonCode": "CONFIG_RETURNS_NOT_APPLICABLE"}), max_size=2),
    st.just({}), st.just([]), st.just({"Label": "LOW"}), st.just({"Normalized": 75}),
)
PATHS = [("Id",), ("ProductArn",), ("GeneratorId",), ("AwsAccountId",), ("CreatedAt",), ("UpdatedAt",),
         ("Region",), ("Resources",), ("Title",), ("Severity",), ("Severity", "Label"), ("Compliance",),
         ("Compliance", "Status"), ("Compliance", "SecurityControlId"), ("Compliance", "StatusReasons"),
         ("ProductFields",), ("ProductFields", "PreviousComplianceStatus"), ("RecordState",),
         ("Workflow",), ("Workflow", "Status"), ("WorkflowState",)]


@CORE
@given(st.lists(st.tuples(st.sampled_from(PATHS), st.one_of(st.just("<delete>"), JSON_VALUES)),
                max_size=4))
def test_straight_line_parser_equals_the_general_one_on_any_variant(
    changes: list[tuple[tuple[str, ...], Any]],
) -> None:
    obj = finding("a", previous_status="FAILED", reason_codes=["CONFIG_RETURNS_NOT_APPLICABLE"])
    for path, value in changes:
        change_path(obj, path, value)
    fast, general = parse_both(obj)
    assert fast == general


def test_straight_line_parser_equals_the_general_one_on_a_generated_feed(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    write_feed(Profile(seed=6, accounts=2, days=5, envelope=False), path)
    import orjson

    for line in path.read_bytes().splitlines()[:2000]:
        fast, general = parse_both(orjson.loads(line))
        assert isinstance(fast, Finding)
        assert fast == general


@pytest.mark.parametrize("text", [
    "2025-10-01T04:44:21.000Z", "2025-10-01T04:44:21Z", "2025-10-01T04:44:21.123456+09:00",
    "2025-10-01T04:44:21", "1969-12-31T23:59:59.999Z",
])
def test_timestamp_cache_returns_what_parsing_returns(text: str) -> None:
    assert parse_timestamp(text) == _parse_timestamp(text)
    assert parse_timestamp(text) == _parse_timestamp(text)  # from the cache


@CORE
@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       st.sampled_from(["", "Z", "+00:00", "+09:00", "-05:30", "+23:59"]))
def test_timestamps_parse_to_the_floor_of_their_milliseconds(moment: datetime, zone: str) -> None:
    text = moment.isoformat(timespec="microseconds") + zone
    aware = datetime.fromisoformat(text)
    aware = aware if aware.tzinfo is not None else aware.replace(tzinfo=UTC)
    expected = (aware - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert _parse_timestamp(text) == expected


def test_timestamp_cache_never_hides_an_invalid_timestamp() -> None:
    parse_timestamp("2025-10-01T04:44:21.000Z")
    for bad in ("2025-10-01T24:44:21.000Z", "2025-02-30T04:44:21.000Z", "not a time"):
        with pytest.raises(ValueError):
            parse_timestamp(bad)
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_the_fast_path_keeps_created_at_texts_and_not_updated_at_texts() -> None:
    # A CreatedAt comes back with every update of its finding; an UpdatedAt rarely does,
    # so keeping those would only fill the cache.
    created, updated = "2025-10-01T04:44:21.000Z", "2025-10-03T08:00:00.250Z"
    _TIMESTAMPS.clear()
    parsed = envelope_finding(dumps(envelope([finding(created=created, updated=updated)])), POLICY, NOW_MS)
    assert parsed is not None
    assert created in _TIMESTAMPS and updated not in _TIMESTAMPS
    assert (parsed.created_at, parsed.updated_at) == (_parse_timestamp(created), _parse_timestamp(updated))


def decide_feed(path: Path, policy: Policy, *, full_scans: bool) -> tuple[list[Outcome], Store]:
    """Every decision of one engine over the feed; with `full_scans`, each sweep scans
    the whole store as it did before the incremental sweep."""
    store = Store.in_memory()
    engine = PartitionEngine(store, policy, 0)
    if full_scans:
        original = engine.sweep

        def scan_all(watermark: int, *, buckets: bool = True) -> int:
            engine._expiry = None
            return original(watermark, buckets=buckets)

        engine.sweep = scan_all  # type: ignore[method-assign]
    out: list[Outcome] = []
    for occ in read_occurrences([path], policy=policy, now_ms=NOW_MS):
        assert isinstance(occ.parsed, Finding)
        out.extend(engine.accept(occ.parsed, occ.origin, occ.seq))
    out.extend(engine.flush())
    return out, store


def test_incremental_sweep_forgets_exactly_what_a_full_scan_forgets(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    write_feed(Profile(seed=12, accounts=2, days=20, envelope=False, deletion_rate=0.01), path)
    # A short state TTL, so that states expire all through the feed.
    policy = Policy(state_ttl_ms=30 * HOUR_MS, sweep_every_ms=HOUR_MS)
    incremental, store_a = decide_feed(path, policy, full_scans=False)
    full, store_b = decide_feed(path, policy, full_scans=True)
    assert [decision_record(o) for o in incremental] == [decision_record(o) for o in full]
    assert dict(store_a.findings.items()) == dict(store_b.findings.items())
    assert dict(store_a.live.items()) == dict(store_b.live.items())
    assert dict(store_a.buckets.items()) == dict(store_b.buckets.items())
    # States did expire along the way (the feed is far longer than the TTL).
    assert len(dict(store_a.findings.items())) < len({o.finding.id for o in full if o.finding})


class GeneralDecider(Decider):
    """The decision table without `decide`'s path for re-evaluations: every event newer
    than its state goes through the general rules."""

    def decide(self, f: Finding, origin: Origin) -> Outcome:
        state = self._current(f.id, f)
        if state is not None and f.updated_at <= state.updated_at:
            return self._silent(origin, f, Reason.DUPLICATE_EVENT, state)
        return self._decide(f, origin, state)


def decide_general_and_fast(findings: list[tuple[Finding, Origin]], policy: Policy
                            ) -> tuple[tuple[list[Any], Store], tuple[list[Any], Store]]:
    """Decision records and store of the general engine (durable, general decision
    table) and of the backtest's (not durable, re-evaluation path), same input."""
    results = []
    for general in (True, False):
        store = Store.in_memory()
        engine = PartitionEngine(store, policy, 0, durable=general)
        if general:
            engine.decider = GeneralDecider(store, policy, 0)
        out: list[Outcome] = []
        for seq, (parsed, origin) in enumerate(findings):
            out.extend(engine.accept(parsed, origin, seq))
        out.extend(engine.flush())
        results.append(([decision_record(o) for o in out], store))
    return results[0], results[1]


def assert_same(general: tuple[list[Any], Store], fast: tuple[list[Any], Store]) -> None:
    assert fast[0] == general[0]
    for name in ("findings", "live", "buckets"):
        assert dict(getattr(fast[1], name).items()) == dict(getattr(general[1], name).items())


@CORE
@given(histories())
def test_fast_decisions_equal_the_general_ones_on_any_history(events: list[Event]) -> None:
    findings = []
    for line, event in enumerate(events, 1):
        for parsed in parse_message(dumps(event.obj), policy=POLICY, now_ms=NOW_MS):
            if not isinstance(parsed, Rejected):
                findings.append((parsed, Origin("t", line, 0)))
    assert_same(*decide_general_and_fast(findings, POLICY))


@pytest.mark.parametrize("policy", [Policy(), Policy(min_severity=Severity.HIGH)])
def test_fast_decisions_equal_the_general_ones_on_a_generated_feed(
    tmp_path: Path, policy: Policy,
) -> None:
    path = tmp_path / "feed.jsonl"
    write_feed(Profile(seed=7, accounts=3, days=6, per_standard_share=0.5, muted_share=0.1), path)
    findings = [(occ.parsed, occ.origin) for occ in read_occurrences([path], policy=policy, now_ms=NOW_MS)
                if isinstance(occ.parsed, Finding)]
    general, fast = decide_general_and_fast(findings, policy)
    # The feed holds the events the fast path is for, and others.
    reasons = {r.get("reason") for r in fast[0]}
    assert {"periodic_update", "bootstrap", "archived"} <= reasons
    assert_same(general, fast)


@pytest.mark.parametrize("kind", [{}, {"standard": "aws-foundational-security-best-practices/v/1.0.0"},
                                  {"product": "imported"}])
def test_a_new_state_takes_the_key_standard_and_product_rule_of_its_finding(
    kind: dict[str, Any],
) -> None:
    """`Decider._new_state` computes what the `Finding` properties say, without them."""
    f = parse_one(finding(**kind))
    state = Decider(Store.in_memory(), POLICY, 0)._new_state(f)
    assert (state.partition_key, state.standard, state.control) == (
        f.partition_key, f.standard, f.is_control_finding)
