"""Properties of the whole core (docs/design.md §2-§3), checked with Hypothesis on generated
Security Hub histories and on garbage."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.core.decide import Decision, Outcome, rejected_outcome
from streams.core.engine import PartitionEngine
from streams.core.findings import FINDINGS_DETAIL_TYPES, Finding, Rejected, parse_message
from streams.core.policy import Policy
from streams.core.state import Origin, Store
from tests.builders import (
    CIS140,
    FSBP,
    MINUTE,
    NOW_MS,
    OTHER_RESOURCE,
    RESOURCE,
    at,
    backtest,
    dumps,
    envelope,
    evolve,
    finding,
    page,
)
from tests.hypothesis_profile import CORE, CORE_SLOW

# A policy with short durations so generated histories of a few days cross every
# limit: windows, first-sight age, hold, sweeps.
POLICY = Policy(window_ms=6 * 60 * MINUTE, hold_ms=10 * MINUTE, first_sight_age_ms=12 * 60 * MINUTE,
                bucket_ms=4 * 60 * MINUTE, sweep_every_ms=30 * MINUTE)

STATUSES = ["FAILED", "FAILED", "WARNING", "PASSED", "NOT_AVAILABLE"]
SEVERITIES = ["INFORMATIONAL", "LOW", "MEDIUM", "MEDIUM", "HIGH", "CRITICAL"]
WORKFLOWS = ["NEW", "NEW", "NOTIFIED", "SUPPRESSED", "RESOLVED"]


# -- generated histories ---------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    obj: dict[str, Any]
    updated_min: int  # minutes after T0

    @property
    def ident(self) -> tuple[str, str]:
        return self.obj["Id"], self.obj["UpdatedAt"]


@st.composite
def histories(draw: st.DrawFn, max_findings: int = 5) -> list[Event]:
    """Findings of one or two resources and control RDS.45, each a few updates long:
    failures, archives (NOT_AVAILABLE, as in docs/design.md §1), re-creations near an earlier
    archive (inside and beyond the window, same or other standard, consolidated),
    resolutions, workflow changes, Security Hub and imported products.
    Every (Id, UpdatedAt) is one event, sent once or redelivered identically."""
    events: list[Event] = []
    archives: list[tuple[int, str, str | None, str]] = []  # minute, resource, standard, product
    for k in range(draw(st.integers(1, max_findings))):
        resource = draw(st.sampled_from([RESOURCE, RESOURCE, OTHER_RESOURCE]))
        standard = draw(st.sampled_from([None, None, FSBP, CIS140]))
        product = draw(st.sampled_from(["securityhub"] * 5 + ["imported"]))
        created = draw(st.integers(0, 4 * 24 * 60))
        recreation = draw(st.booleans())
        if archives and recreation:
            # A re-creation: created around an earlier archive of the same resource.
            minute, resource, predecessor_standard, product = draw(st.sampled_from(archives))
            if draw(st.integers(0, 3)):
                standard = predecessor_standard
            created = max(0, minute + draw(st.sampled_from([-30, 0, 1, 60, 5 * 60, 6 * 60, 7 * 60])))
        base = finding(f"f{k}", created=at(minutes=created), resource=resource, standard=standard,
                       product=product, severity=draw(st.sampled_from(SEVERITIES)))
        t = created + draw(st.sampled_from([0, 0, 5, 60, 13 * 60]))  # 13 h: a bootstrap
        for step in range(draw(st.integers(1, 6))):
            if step:
                t += draw(st.sampled_from([1, 30, 5 * 60, 7 * 60, 18 * 60]))
            status = draw(st.sampled_from(STATUSES))
            record_state = "ARCHIVED" if draw(st.integers(0, 3)) == 0 else "ACTIVE"
            if record_state == "ARCHIVED" and status != "PASSED":
                status = "NOT_AVAILABLE"
                archives.append((t, resource, standard, product))
            obj = evolve(base, updated=at(minutes=t), status=status, record_state=record_state,
                         workflow=draw(st.sampled_from(WORKFLOWS)),
                         severity=draw(st.sampled_from(SEVERITIES)))
            if status == "NOT_AVAILABLE":
                obj["ProductFields"]["PreviousComplianceStatus"] = "FAILED"
            copies = 2 if draw(st.integers(0, 5)) == 0 else 1  # an identical redelivery
            events.extend([Event(obj, t)] * copies)
    events.sort(key=lambda e: e.updated_min)
    return events


def shuffled_within_hold(events: list[Event], hold_min: int, rng: random.Random) -> list[Event]:
    """Each event arrives somewhere in [UpdatedAt, UpdatedAt + hold): never late."""
    arrivals = [(e.updated_min + rng.uniform(0, hold_min - 0.001), rng.random(), i)
                for i, e in enumerate(events)]
    return [events[i] for _, _, i in sorted(arrivals)]


def decisions_by_event(outcomes: list[Outcome]) -> dict[tuple[str, str], Counter[tuple[str, str | None]]]:
    out: dict[tuple[str, str], Counter[tuple[str, str | None]]] = {}
    for o in outcomes:
        assert o.finding is not None
        key = (o.finding.id, o.finding.updated_at_text)
        out.setdefault(key, Counter())[(o.decision.value, o.kind_or_reason)] += 1
    return out


def alerted(outcomes: list[Outcome]) -> Counter[tuple[str, str]]:
    return Counter((o.finding.id, o.finding.updated_at_text) for o in outcomes
                   if o.decision is Decision.ALERT and o.finding)


# -- exactly one decision per finding occurrence ---------------------------------------

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def candidate_findings(draw: st.DrawFn) -> Any:
    """A valid finding, or one with a field dropped or of the wrong type, or with a
    forged clock, or any JSON value at all."""
    obj = finding(f"c{draw(st.integers(0, 5))}", created=at(minutes=draw(st.integers(0, 600))))
    kind = draw(st.integers(0, 5))
    if kind == 1:
        del obj[draw(st.sampled_from(["Id", "ProductArn", "GeneratorId", "AwsAccountId",
                                      "CreatedAt", "UpdatedAt", "Resources"]))]
    elif kind == 2:
        obj[draw(st.sampled_from(["Id", "CreatedAt", "UpdatedAt", "Resources", "Region",
                                  "Severity", "Compliance", "Workflow"]))] = draw(json_values)
    elif kind == 3:
        obj["UpdatedAt"] = "2999-01-01T00:00:00Z"
    elif kind == 4:
        return draw(json_values)
    return obj


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    form = draw(st.integers(0, 6))
    items = st.lists(candidate_findings(), max_size=4)
    if form == 0:
        return draw(st.binary(max_size=120))
    if form == 1:
        return dumps(draw(json_values))
    if form == 2:
        return dumps(envelope(draw(items), detail_type=draw(st.sampled_from(sorted(FINDINGS_DETAIL_TYPES)))))
    if form == 3:
        return dumps(page(draw(items)))
    if form == 4:
        return dumps(draw(items))
    data = dumps(draw(candidate_findings()))
    return data[: draw(st.integers(0, len(data)))] if form == 5 else data


def expected_occurrences(data: bytes, policy: Policy) -> int:
    """docs/design.md §2/§5 stated independently: an envelope, page or array holds one
    occurrence per element, anything else is one occurrence; an empty or over-full
    container, or a message that is no JSON at all, is still one (a dead letter)."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return 1
    items: Any = None
    if isinstance(document, list):
        items = document
    elif isinstance(document, dict) and document.get("detail-type") in FINDINGS_DETAIL_TYPES:
        detail = document.get("detail")
        items = detail.get("findings") if isinstance(detail, dict) else None
    elif isinstance(document, dict) and "Findings" in document and "Id" not in document:
        items = document["Findings"]
    if not isinstance(items, list) or not items or len(items) > policy.max_findings_per_message:
        return 1
    return len(items)


@CORE
@given(st.lists(messages(), max_size=12), st.sampled_from([1, 3]))
def test_every_finding_occurrence_gets_exactly_one_decision(batch: list[bytes], partitions: int) -> None:
    policy = Policy(max_findings_per_message=3)
    outcomes = backtest(batch, policy=policy, partitions=partitions)
    expected = [(line, index) for line, data in enumerate(batch, start=1)
                for index in range(expected_occurrences(data, policy))]
    assert [(o.origin.line, o.origin.index) for o in outcomes] == expected
    assert [o.seq for o in outcomes] == list(range(len(expected)))
    for o in outcomes:
        assert (o.decision is Decision.DEAD_LETTER) == (o.finding is None)
        assert o.kind_or_reason


@CORE
@given(st.binary(max_size=300))
def test_parse_message_never_raises_and_rejects_garbage_with_the_original_bytes(data: bytes) -> None:
    out = parse_message(data, policy=Policy(), now_ms=NOW_MS)
    assert len(out) >= 1
    for parsed in out:
        assert isinstance(parsed, Finding | Rejected)
        if isinstance(parsed, Rejected) and len(out) == 1 and parsed.reason in (
                "unparseable", "not_a_finding", "empty_envelope", "oversized"):
            assert parsed.raw == data


@CORE
@given(json_values)
def test_parse_message_never_raises_on_any_json(value: Any) -> None:
    for doc in (value, envelope([value]), page([value]), [value]):
        out = parse_message(dumps(doc), policy=Policy(), now_ms=NOW_MS)
        assert len(out) == (len(value) or 1 if doc is value and isinstance(value, list) else 1)
        assert all(not p.reason.startswith("parser_error") for p in out if isinstance(p, Rejected))


# -- one alert per failing period ------------------------------------------------------


def assert_one_alert_per_failing_period(decided: list[Outcome]) -> None:
    """Walks decisions in the order they were taken: a second alert for a finding id
    needs a PASSED in between, or is a reactivation after an archive older than the
    window or more severe than before it (docs/design.md §3: PASSED ends the period;
    rule 5)."""
    period_alerted: dict[str, bool] = {}
    archived_at: dict[str, int | None] = {}
    failing_severity: dict[str, int] = {}
    for o in decided:
        f = o.finding
        if f is None or o.reason == "duplicate_event":
            continue
        if o.decision is Decision.ALERT:
            if period_alerted.get(f.id):
                assert o.kind_or_reason == "reactivated", (f.id, f.updated_at_text)
            if o.kind_or_reason == "reactivated":
                since = archived_at.get(f.id)
                assert since is not None
                assert (f.updated_at - since > POLICY.window_ms
                        or f.severity > failing_severity[f.id])
            period_alerted[f.id] = True
        if f.compliance_status == "PASSED":
            period_alerted[f.id] = False
        if f.compliance_status in ("FAILED", "WARNING") or (
                f.compliance_status is None and f.record_state == "ACTIVE"):
            failing_severity[f.id] = f.severity
        if f.record_state == "ARCHIVED":
            if archived_at.get(f.id) is None:
                archived_at[f.id] = f.updated_at
        else:
            archived_at[f.id] = None


@CORE
@given(histories())
def test_a_finding_never_alerts_twice_within_one_failing_period(events: list[Event]) -> None:
    outcomes = backtest([e.obj for e in events], policy=POLICY)
    # In order of arrival within the hold, decisions are taken in event-time order.
    assert_one_alert_per_failing_period(sorted(outcomes, key=lambda o: (
        o.finding.updated_at if o.finding else 0, o.finding.id if o.finding else "", o.seq)))


@CORE
@given(histories(), st.randoms(use_true_random=False))
def test_late_arrivals_in_any_order_never_alert_a_finding_twice_within_one_period(
    events: list[Event], rng: random.Random
) -> None:
    arrivals = list(events)
    rng.shuffle(arrivals)
    engine = PartitionEngine(Store.in_memory(), POLICY, 0)
    decided: list[Outcome] = []  # in the order the engine decides them
    for seq, event in enumerate(arrivals):
        [parsed] = parse_message(dumps(event.obj), policy=POLICY, now_ms=NOW_MS)
        assert isinstance(parsed, Finding)
        decided += engine.accept(parsed, Origin("t", seq + 1, 0), seq)
    decided += engine.flush()
    assert sorted(o.seq for o in decided) == list(range(len(arrivals)))
    assert_one_alert_per_failing_period(decided)


# -- arrival order inside the hold ---------------------------------------------------------


@CORE
@given(histories(), st.integers(0, 2**32 - 1))
def test_permuting_arrivals_within_the_hold_never_changes_the_decisions(
    events: list[Event], seed: int
) -> None:
    in_order = backtest([e.obj for e in events], policy=POLICY)
    hold_min = POLICY.hold_ms // MINUTE
    shuffled = shuffled_within_hold(events, hold_min, random.Random(seed))
    permuted = backtest([e.obj for e in shuffled], policy=POLICY)
    assert alerted(permuted) == alerted(in_order)
    assert decisions_by_event(permuted) == decisions_by_event(in_order)


@CORE_SLOW
@given(histories(), st.integers(0, 2**32 - 1), st.sampled_from([2, 3, 8]))
def test_partitioned_backtest_decides_like_one_partition(
    events: list[Event], seed: int, partitions: int
) -> None:
    shuffled = shuffled_within_hold(events, POLICY.hold_ms // MINUTE, random.Random(seed))
    objs = [e.obj for e in shuffled]

    def view(o: Outcome) -> tuple[Any, ...]:
        paired = o.pairing.paired_finding_id if o.pairing else None
        return (o.origin.line, o.decision.value, o.kind_or_reason, o.dedup_key, paired,
                [p.finding_id for p in o.late_pairs])

    one = [view(o) for o in backtest(objs, policy=POLICY)]
    assert [view(o) for o in backtest(objs, policy=POLICY, partitions=partitions)] == one


# -- the store the worker uses ---------------------------------------------------------


def run_engine(events: list[Event], store_for: Callable[[], tuple[Store, Callable[[], None]]]
               ) -> list[tuple[Any, ...]]:
    """Decides events through one engine; each event in its own staged transaction."""
    store, apply = store_for()
    out: list[Outcome] = []
    engine = PartitionEngine(store, POLICY, 0)
    for seq, event in enumerate(events):
        for parsed in parse_message(dumps(event.obj), policy=POLICY, now_ms=NOW_MS):
            origin = Origin("t", seq + 1, 0)
            if isinstance(parsed, Rejected):
                out.append(rejected_outcome(parsed, origin, seq))
            else:
                out.extend(engine.accept(parsed, origin, seq))
        apply()
    out.extend(engine.flush())
    apply()
    return [(o.seq, o.decision.value, o.kind_or_reason, o.dedup_key,
             o.pairing.paired_finding_id if o.pairing else None) for o in out]


@CORE_SLOW
@given(histories())
def test_a_store_of_bytes_decides_like_the_in_memory_store(events: list[Event]) -> None:
    # Faust tables hand out fresh copies: any change the core forgets to `put` back
    # would be lost there and show up here as a different decision.
    def memory() -> tuple[Store, Callable[[], None]]:
        return Store.in_memory(), lambda: None

    def staged_bytes() -> tuple[Store, Callable[[], None]]:
        return Store.over({name: {} for name in Store.NAMES}).staged()

    assert run_engine(events, staged_bytes) == run_engine(events, memory)
