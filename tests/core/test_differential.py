"""The real backtest against the reference model (`tests/core/reference.py`), and
properties of the decision lifecycle on the real code (docs/design.md §2-§4).

Hypothesis builds short histories of several findings: resources, controls, standards
(consolidated and per-standard), severities, workflow changes, archives (NOT_AVAILABLE
+ ARCHIVED as in §1, and archives of findings still FAILED or already PASSED),
re-creations under a new `Id`, reactivations under the same `Id`, refreshes,
BatchUpdateFindings echoes and redeliveries, findings of other products. A failure
prints the shrunk history as JSON lines and the `flapguard backtest` command that
decides it.

Examples per test: `FLAPGUARD_DIFFERENTIAL_EXAMPLES` (default 300);
`FLAPGUARD_HYPOTHESIS_RANDOM=1` draws fresh histories instead of the fixed ones.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given, note, settings
from hypothesis import strategies as st

from streams.core.decide import Decision, Outcome
from streams.core.engine import PartitionEngine
from streams.core.policy import Archives, PairingRule, Policy, Severity, pairing_toml
from streams.core.records import alert_records, suppressed_record
from streams.core.state import Origin, Store
from tests.builders import (
    CIS140,
    FSBP,
    MINUTE,
    OTHER_RESOURCE,
    RESOURCE,
    at,
    backtest,
    evolve,
    finding,
    jsonl,
    parse_one,
)
from tests.core.reference import Decided, Model
from tests.hypothesis_profile import CORE

EXAMPLES = int(os.environ.get("FLAPGUARD_DIFFERENTIAL_EXAMPLES") or 300)
DIFFERENTIAL = settings(CORE, max_examples=EXAMPLES)

# Durations short enough for a few days of history to cross every limit (window,
# first-sight age, state TTL, hold), and all of them `flapguard backtest` flags, so a
# failing history can be replayed from the command line as printed.
WINDOW_H, HOLD_M, FIRST_SIGHT_H, TTL_D = 6, 10, 12, 3


# A pairing policy (docs/design.md §3): EC2.8 pairs within 2 h, and only with the
# NOT_AVAILABLE archives of Config's NOT_APPLICABLE; RDS.45 takes the defaults.
PAIRING = (PairingRule("ec2", ("EC2.*",), 2 * 60 * MINUTE, Archives.NOT_APPLICABLE),)


def make_policy(min_severity: Severity) -> Policy:
    return Policy(window_ms=WINDOW_H * 60 * MINUTE, hold_ms=HOLD_M * MINUTE,
                  first_sight_age_ms=FIRST_SIGHT_H * 60 * MINUTE,
                  state_ttl_ms=TTL_D * 24 * 60 * MINUTE, min_severity=min_severity,
                  pairing=PAIRING)


def command(policy: Policy) -> str:
    return (f"flapguard backtest --window {WINDOW_H}h --hold {HOLD_M}m --first-sight-age "
            f"{FIRST_SIGHT_H}h --state-ttl {TTL_D}d --min-severity {policy.min_severity.name} "
            "--pairing PAIRING.toml --input FILE --decisions-out -")


SEVERITIES = ["INFORMATIONAL", "LOW", "MEDIUM", "MEDIUM", "HIGH", "CRITICAL"]
WORKFLOWS = ["NEW", "NEW", "NEW", "NOTIFIED", "SUPPRESSED", "RESOLVED"]
CONTROLS = ["RDS.45", "RDS.45", "EC2.8"]
STEPS_MIN = [1, 20, 3 * 60, 5 * 60, 7 * 60, 18 * 60]  # refreshes, evaluations, and across limits


# -- histories ----------------------------------------------------------------------------


class Event:
    """One event of a history; shown in short (`show` prints the findings in full)."""

    def __init__(self, obj: dict[str, Any], minute: int) -> None:
        self.obj = obj
        self.minute = minute  # UpdatedAt, minutes after T0

    @property
    def order(self) -> tuple[int, str]:
        return self.minute, self.obj["Id"]

    def __repr__(self) -> str:
        o = self.obj
        return (f"Event({o['Id'].rsplit('/', 1)[-1]} {o['GeneratorId']} @{self.minute}m "
                f"{o['RecordState']} {o['Compliance']['Status']} {o['Severity']['Label']} "
                f"{o['Workflow']['Status']})")


@dataclass(frozen=True)
class Archived:
    minute: int
    resource: str
    control: str
    standard: str | None
    product: str
    severity: str


@st.composite
def histories(draw: st.DrawFn, max_findings: int = 6) -> list[Event]:
    """Events of up to `max_findings` findings, sorted in event time."""
    events: list[Event] = []
    archives: list[Archived] = []
    for k in range(draw(st.integers(1, max_findings))):
        resource = draw(st.sampled_from([RESOURCE, RESOURCE, OTHER_RESOURCE]))
        control = draw(st.sampled_from(CONTROLS))
        standard = draw(st.sampled_from([None, None, FSBP, CIS140]))
        product = draw(st.sampled_from(["securityhub"] * 6 + ["imported"]))
        severity = draw(st.sampled_from(SEVERITIES))
        created = draw(st.integers(0, 3 * 24 * 60))
        if archives and draw(st.booleans()):
            # A re-creation: the same resource and control, created around an earlier
            # archive (before it, at it, inside and beyond the window), mostly of the
            # same standard, sometimes consolidated after per-standard or the reverse.
            before = draw(st.sampled_from(archives))
            resource, control, product = before.resource, before.control, before.product
            if draw(st.integers(0, 3)):
                standard = before.standard
            if draw(st.integers(0, 2)):
                severity = before.severity
            offset = draw(st.sampled_from([-30, -3, 0, 0, 2, 60, 5 * 60, 6 * 60, 7 * 60]))
            created = max(0, before.minute + offset)
        base = finding(f"f{k}", created=at(minutes=created), resource=resource, control=control,
                       standard=standard, product=product, severity=severity,
                       workflow=draw(st.sampled_from(WORKFLOWS)))
        t = created + draw(st.sampled_from([0, 0, 0, 5, 60, 13 * 60]))  # 13 h: a bootstrap
        obj = evolve(base, updated=at(minutes=t))
        is_archived = False
        for step in range(draw(st.integers(1, 6))):
            if step:
                t += draw(st.sampled_from(STEPS_MIN))
                obj = next_event(draw, obj, t, is_archived)
            is_archived = obj["RecordState"] == "ARCHIVED"
            if is_archived and obj["Compliance"]["Status"] != "PASSED":
                archives.append(Archived(t, resource, control, standard, product,
                                         obj["Severity"]["Label"]))
            copies = 2 if draw(st.integers(0, 6)) == 0 else 1  # an identical redelivery
            events.extend([Event(obj, t)] * copies)
    return sorted(events, key=lambda e: e.order)


def next_event(draw: st.DrawFn, obj: dict[str, Any], t: int, is_archived: bool) -> dict[str, Any]:
    """The next event of one finding: re-evaluated, muted or unmuted, more or less
    severe, archived (the NOT_AVAILABLE archive of §1, or one that is still FAILED: a
    deleted resource), archived again (the update after the re-creation), or ACTIVE
    again under the same `Id`."""
    updated = at(minutes=t)
    status = obj["Compliance"]["Status"]
    if is_archived:
        action = draw(st.sampled_from(["reactivate", "reactivate", "again", "evaluate"]))
        if action == "again":
            return evolve(obj, updated=updated, previous_status=status)
        if action == "reactivate":
            return evolve(obj, updated=updated, record_state="ACTIVE",
                          status=draw(st.sampled_from(["FAILED", "FAILED", "WARNING", "PASSED"])),
                          severity=draw(st.sampled_from(SEVERITIES)),
                          workflow=draw(st.sampled_from(WORKFLOWS)), reason_codes=[])
    else:
        action = draw(st.sampled_from(["evaluate", "evaluate", "evaluate", "workflow", "severity",
                                       "archive", "archive", "archive_failed"]))
        if action == "archive":
            return evolve(obj, updated=updated, record_state="ARCHIVED", status="NOT_AVAILABLE",
                          previous_status=status if status != "NOT_AVAILABLE" else "FAILED",
                          reason_codes=["CONFIG_RETURNS_NOT_APPLICABLE"])
        if action == "archive_failed":
            return evolve(obj, updated=updated, record_state="ARCHIVED",
                          status=draw(st.sampled_from(["FAILED", "PASSED"])))
        if action == "workflow":
            return evolve(obj, updated=updated, workflow=draw(st.sampled_from(WORKFLOWS)))
        if action == "severity":
            return evolve(obj, updated=updated, severity=draw(st.sampled_from(SEVERITIES)))
    return evolve(obj, updated=updated,
                  status=draw(st.sampled_from(["FAILED", "FAILED", "WARNING", "PASSED", "NOT_AVAILABLE"])),
                  severity=draw(st.sampled_from(SEVERITIES[1:] + [obj["Severity"]["Label"]] * 3)))


def show(events: list[Event], policy: Policy) -> None:
    """On failure: the history as a file `flapguard backtest` takes, and the command."""
    note(f"PAIRING.toml:\n{pairing_toml(policy.pairing)}")
    note(f"history ({len(events)} events), for `{command(policy)}`:\n"
         + jsonl(e.obj for e in events).decode())


# -- the two deciders ---------------------------------------------------------------------


def real_view(o: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {"decision": o.decision.value, "label": o.kind_or_reason}
    if o.decision in (Decision.ALERT, Decision.RESOLVED, Decision.SUPPRESSED):
        out["dedup_key"] = o.dedup_key
    if o.pairing is not None:
        out["paired_finding_id"] = o.pairing.paired_finding_id
        out["gap_seconds"] = o.pairing.gap_seconds
    if o.late_pairs:
        out["late_pairs"] = [p.finding_id for p in o.late_pairs]
    if o.closes:
        out["closes"] = [(c.finding_id, c.dedup_key, c.reason.value) for c in o.closes]
    return out


def real_alerts(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    records = [record for o in outcomes for record in alert_records(o, 0)]
    for record in records:
        del record["emitted_at"]
    return records


def real_suppressed(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [suppressed_record(p) for o in outcomes
            for p in ([o.pairing] if o.pairing else []) + list(o.late_pairs)]


def model_decisions(events: list[Event], policy: Policy) -> list[Decided]:
    return Model(policy).run([parse_one(e.obj, policy=policy) for e in events])


@DIFFERENTIAL
@given(histories(), st.sampled_from([Severity.LOW, Severity.LOW, Severity.MEDIUM]))
def test_the_backtest_decides_every_history_as_the_reference_model(
    events: list[Event], min_severity: Severity
) -> None:
    policy = make_policy(min_severity)
    show(events, policy)
    real = backtest([e.obj for e in events], policy=policy)
    model = model_decisions(events, policy)
    assert [real_view(o) for o in real] == [d.view() for d in model]
    assert real_alerts(real) == [record for d in model for record in d.alerts]
    assert real_suppressed(real) == [s for d in model for s in d.suppressed]


# -- properties of the real code ----------------------------------------------------------


def shuffled_within_hold(events: list[Event], hold_min: int, rng: random.Random) -> list[Event]:
    """Each event arrives somewhere in [UpdatedAt, UpdatedAt + hold): never late."""
    arrivals = [(e.minute + rng.uniform(0, hold_min - 0.001), rng.random(), i)
                for i, e in enumerate(events)]
    return [events[i] for _, _, i in sorted(arrivals)]


def by_event(outcomes: list[Outcome]) -> Counter[tuple[Any, ...]]:
    out: Counter[tuple[Any, ...]] = Counter()
    for o in outcomes:
        assert o.finding is not None
        paired = o.pairing.paired_finding_id if o.pairing else None
        out[(o.finding.id, o.finding.updated_at_text, o.decision.value, o.kind_or_reason,
             o.dedup_key, paired)] += 1
    return out


@DIFFERENTIAL
@given(histories(), st.integers(0, 2**32 - 1))
def test_any_order_of_arrival_within_the_hold_gives_the_same_decisions(
    events: list[Event], seed: int
) -> None:
    policy = make_policy(Severity.LOW)
    shuffled = shuffled_within_hold(events, HOLD_M, random.Random(seed))
    show(shuffled, policy)
    in_order = backtest([e.obj for e in events], policy=policy)
    assert by_event(backtest([e.obj for e in shuffled], policy=policy)) == by_event(in_order)


@DIFFERENTIAL
@given(histories(), st.sampled_from([Severity.LOW, Severity.MEDIUM]))
def test_no_incident_is_opened_twice(events: list[Event], min_severity: Severity) -> None:
    """Safety: an alert opens an incident under its `dedup_key`; no two alerts share one
    (the notifier and PagerDuty would fold the second into the first)."""
    policy = make_policy(min_severity)
    show(events, policy)
    opened = [o.dedup_key for o in backtest([e.obj for e in events], policy=policy)
              if o.decision is Decision.ALERT]
    assert None not in opened
    assert len(set(opened)) == len(opened)


# -- liveness: nothing real is hidden --------------------------------------------------------


def decided_in_order(events: list[Event], policy: Policy) -> list[Outcome]:
    """The backtest's decisions in the order the engine takes them (one partition)."""
    engine = PartitionEngine(Store.in_memory(), policy, 0, durable=False)
    out: list[Outcome] = []
    for seq, event in enumerate(events):
        out += engine.accept(parse_one(event.obj, policy=policy), Origin("t", seq + 1, 0), seq)
    return out + engine.flush()


@dataclass
class Period:
    """One failing period of one finding id, as the outside world saw it."""

    alertable: bool = False  # some event of it was alertable
    covered: bool = False  # an alert, a bootstrap or a rightful suppression in it
    notified: bool = False  # alerted, suppressed or bootstrapped
    muted: bool = False  # failing and SUPPRESSED in Security Hub
    seen_active: bool = False  # seen ACTIVE and failing (else its history is unknown)
    severity: int | None = None  # of its last failing event


def violations(decided: list[Outcome], policy: Policy) -> list[str]:
    """Every failing period with an alertable event must be covered: it alerted, or it
    was bootstrapped, or it was suppressed as the continuation of a predecessor that
    was notified, muted or never seen failing, and no more severe than it."""
    periods: dict[str, Period] = {}
    at_archive: dict[str, tuple[bool, int]] = {}  # finding -> (rightful predecessor, severity)
    keys: dict[str, str] = {}
    found: list[str] = []

    def close(finding_id: str) -> None:
        p = periods.pop(finding_id, None)
        if p is not None and p.alertable and not p.covered:
            found.append(f"{finding_id}: alertable failing period never alerted")

    for o in decided:
        f = o.finding
        assert f is not None
        if o.reason == "duplicate_event":
            continue
        keys[f.id] = f.partition_key
        status = f.compliance_status
        if status == "PASSED":
            close(f.id)
            at_archive.pop(f.id, None)
            continue
        p = periods.setdefault(f.id, Period())
        failing = status in ("FAILED", "WARNING")
        if f.record_state == "ARCHIVED":
            if f.id not in at_archive:
                right = p.notified or p.muted or not p.seen_active
                at_archive[f.id] = (right, p.severity if p.severity is not None else int(f.severity))
            if failing:
                p.severity = int(f.severity)
            continue
        if failing:
            p.seen_active = True
            p.severity = int(f.severity)
            p.muted |= f.workflow_status == "SUPPRESSED"
            p.alertable |= (f.workflow_status != "SUPPRESSED" and f.severity >= policy.min_severity)
        if o.decision is Decision.ALERT or o.reason == "bootstrap":
            p.covered = p.notified = True
        elif o.decision is Decision.SUPPRESSED:
            assert o.pairing is not None
            if o.reason == "consolidation_switch":  # any per-standard finding of the key
                options = [at_archive.get(i) or (periods[i].notified or periods[i].muted,
                                                 periods[i].severity or 0)
                           for i, k in keys.items()
                           if k == f.partition_key and i != f.id and i in periods]
            else:
                options = [at_archive.get(o.pairing.paired_finding_id, (False, -1))]
            if not any(right and int(f.severity) <= severity for right, severity in options):
                found.append(f"{f.id} at {f.updated_at_text}: suppressed ({o.reason}) "
                             f"as the continuation of {o.pairing.paired_finding_id}, "
                             "which was not notified, or was less severe")
            p.covered = p.notified = True
        at_archive.pop(f.id, None)  # ACTIVE again: no longer a predecessor
    for finding_id in list(periods):
        close(finding_id)
    return found


@DIFFERENTIAL
@given(histories(), st.sampled_from([Severity.LOW, Severity.MEDIUM]))
def test_every_alertable_failing_period_alerts_unless_it_continues_notified_risk(
    events: list[Event], min_severity: Severity
) -> None:
    policy = make_policy(min_severity)
    show(events, policy)
    assert violations(decided_in_order(events, policy), policy) == []


# -- every opened incident ends ---------------------------------------------------------------


def unended(decided: list[Outcome], policy: Policy) -> list[str]:
    """Safety and liveness of incidents (docs/design.md §3, closing), from the outputs
    alone: a `resolved` (of a passing finding, or a closure) ends only an incident that
    is open, and at the end of the history every incident still open belongs to a
    finding still failing, or archived too recently for its incident to have closed
    (nothing later than its archive plus the window and the first-sight age was
    decided)."""
    owner: dict[str, str] = {}  # open incident -> the finding carrying it
    found: list[str] = []
    last: dict[str, Any] = {}  # finding -> its last event
    archived_since: dict[str, int] = {}  # finding -> its first archive since ACTIVE
    latest = 0

    def end(key: str | None, why: str) -> None:
        if key not in owner:
            found.append(f"{why} ends {key}, which is not open")
        owner.pop(key or "", None)

    for o in decided:
        f = o.finding
        assert f is not None
        for closure in o.closes:
            end(closure.dedup_key, f"closing {closure.finding_id} ({closure.reason})")
        if o.reason == "duplicate_event":
            continue
        latest = max(latest, f.updated_at)
        last[f.id] = f
        if f.record_state == "ARCHIVED":
            archived_since.setdefault(f.id, f.updated_at)
        else:
            archived_since.pop(f.id, None)
        if o.decision is Decision.ALERT:
            assert o.dedup_key is not None
            owner[o.dedup_key] = f.id
        elif o.decision is Decision.RESOLVED:
            end(o.dedup_key, f"the resolve of {f.id}")
        elif o.decision is Decision.SUPPRESSED and o.dedup_key in owner:
            owner[o.dedup_key] = f.id  # it carries the incident on
    limit = policy.window_ms + policy.first_sight_age_ms
    for key, finding_id in owner.items():
        f = last[finding_id]
        failing = f.compliance_status in (None, "FAILED", "WARNING", "NOT_AVAILABLE")
        if f.record_state == "ARCHIVED":
            if archived_since[finding_id] + limit < latest:
                found.append(f"{key} of {finding_id} still open, archived long ago")
        elif not failing:
            found.append(f"{key} of {finding_id} still open, the finding passed")
    return found


@DIFFERENTIAL
@given(histories(), st.sampled_from([Severity.LOW, Severity.MEDIUM]))
def test_every_opened_incident_ends_and_only_open_ones_end(
    events: list[Event], min_severity: Severity
) -> None:
    policy = make_policy(min_severity)
    show(events, policy)
    assert unended(decided_in_order(events, policy), policy) == []
