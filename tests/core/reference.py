"""A reference model of the decision rules of docs/design.md §3, for differential tests.

Small, slow and meant to be obviously right: it is written from the design document,
not from `streams/core/decide.py`. It keeps every piece of state in plain dicts and
lists, finds predecessors, re-creations and live per-standard findings by scanning
all of them (no buckets, no indexes, no fast paths), and decides a history that is
already sorted in event time (`UpdatedAt`, then finding `Id`) one event after another.

The only things it shares with the product are the parsed `Finding` (parsing is not a
decision rule), the `Policy` values and the `dedup_key` hash (a naming convention of
the alerts topic, §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from msgspec.structs import replace

from streams.core.findings import Finding
from streams.core.keys import dedup_key
from streams.core.policy import PairingRule, Policy, Severity

FAILING = ("FAILED", "WARNING")


@dataclass
class Known:
    """§3: what the state keeps per finding `Id`."""

    key: str  # partition key
    standard: str | None
    control: bool
    updated_at: int
    record_state: str
    last_status: str | None = None  # last evaluated status (not NOT_AVAILABLE)
    na_since: bool = False  # a NOT_AVAILABLE came after it
    severity: int = 0  # while ACTIVE and failing
    notified: bool = False  # alerted, suppressed, bootstrapped: for suppression
    opened: bool = False  # an incident is open under dedup_key: for resolves
    dedup_key: str | None = None
    archived_at: int | None = None
    superseded: bool = False  # replaced by a consolidated finding
    archive_event: Finding | None = None  # its first ARCHIVED event since it was ACTIVE


@dataclass
class Predecessor:
    finding_id: str
    key: str
    standard: str | None
    archived_at: int
    severity: int
    dedup_key: str
    opened: bool
    used: bool = False
    # A consolidated predecessor replaced by per-standard findings (consolidation
    # turned off): their standards. It stays one for each other standard.
    standards: list[str] = field(default_factory=list)
    # Under its control's pairing rule, a re-creation of its own standard may continue
    # it (else only a consolidation switch may).
    recreatable: bool = True


@dataclass
class Recreation:
    """A control finding that alerted as new with no predecessor (for late pairs)."""

    finding_id: str
    key: str
    standard: str | None
    created_at: int
    severity: int
    paired: bool = False


@dataclass
class Decided:
    """What the model says of one event: the decision record's fields that are decisions
    (docs/design.md §5), and the alert record (§4) without its wall-clock `emitted_at`."""

    decision: str
    label: str
    dedup_key: str | None = None
    paired_finding_id: str | None = None
    gap_seconds: float | None = None
    late_pairs: list[str] = field(default_factory=list)
    suppressed: list[dict[str, Any]] = field(default_factory=list)
    alert: dict[str, Any] | None = None
    # Incidents closed as it was taken (§3, closing), as alert records, in order.
    closes: list[dict[str, Any]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decision": self.decision, "label": self.label}
        if self.decision in ("alert", "resolved", "suppressed"):
            out["dedup_key"] = self.dedup_key
        if self.paired_finding_id is not None:
            out["paired_finding_id"] = self.paired_finding_id
            out["gap_seconds"] = self.gap_seconds
        if self.late_pairs:
            out["late_pairs"] = self.late_pairs
        if self.closes:
            out["closes"] = [(c["finding_id"], c["dedup_key"], c["reason"]) for c in self.closes]
        return out

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Its records on the alerts topic: the closed incidents', then its own."""
        return self.closes + ([self.alert] if self.alert is not None else [])


def evaluated(status: str | None) -> str | None:
    return None if status in (None, "NOT_AVAILABLE") else status


def alert_fields(f: Finding, kind: str, key: str | None) -> dict[str, Any]:
    """`securityhub.alerts` (§4), every field but `emitted_at`."""
    return {
        "dedup_key": key, "kind": kind, "finding_id": f.id, "account": f.account,
        "region": f.region, "control_id": f.control_id, "resource_id": f.resource_id,
        "resource_type": f.resource_type, "severity": f.severity.name, "title": f.title,
        "compliance_status": f.compliance_status, "created_at": f.created_at_text,
        "updated_at": f.updated_at_text, "product_arn": f.product_arn,
        "generator_id": f.generator_id, "workflow_status": f.workflow_status,
    }


def closed_fields(shown: Finding, finding_id: str, key: str, reason: str) -> dict[str, Any]:
    """The `resolved` record of an incident closed without its finding passing: the
    finding as last seen archived (§3, closing)."""
    return {**alert_fields(shown, "resolved", key), "finding_id": finding_id, "reason": reason}


def iso_ms(ms: int | None) -> str | None:
    """ISO 8601 UTC with milliseconds, as §4 writes times."""
    if ms is None:
        return None
    text = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def suppressed_fields(finding_id: str, paired: str, key: str, archived_at: int | None,
                      recreated_at: int, reason: str) -> dict[str, Any]:
    """`securityhub.suppressed` (§4)."""
    gap = None if archived_at is None else (recreated_at - archived_at) / 1000
    return {"finding_id": finding_id, "paired_finding_id": paired, "key": key,
            "archived_at": iso_ms(archived_at), "recreated_at": iso_ms(recreated_at),
            "gap_seconds": gap, "reason": reason}


class Model:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.known: dict[str, Known] = {}
        self.predecessors: list[Predecessor] = []
        self.recreations: list[Recreation] = []

    # -- the whole history --------------------------------------------------------------

    def run(self, history: list[Finding]) -> list[Decided]:
        """Decisions of a history sorted by (`UpdatedAt`, `Id`), in that order.

        One inversion (§2, the hold): before a possible re-creation (an ACTIVE control
        finding within the first-sight age of its creation), the archives of other
        findings of its partition key stamped at most a hold after it are decided
        first, with the events of their finding before them."""
        assert history == sorted(history, key=lambda f: (f.updated_at, f.id))
        decided: list[Decided | None] = [None] * len(history)
        for i, f in enumerate(history):
            if decided[i] is not None:
                continue
            closed = self.close_archived(f.updated_at)
            order = []
            if self.policy.hold_ms and self.may_pair(f):
                order = self.archives_after(history, decided, i)
            for j in [*order, i]:
                decided[j] = self.decide(history[j])
            first = decided[order[0] if order else i]
            assert first is not None
            first.closes[:0] = closed  # they go out with the first decision after them
        return [d for d in decided if d is not None]

    def close_archived(self, now: int) -> list[dict[str, Any]]:
        """§3, closing: before an event stamped `now`, every archived finding whose open
        incident nothing can continue any more (its archive is older than `now` by more
        than the window plus the first-sight age) has it closed, `archived`."""
        def deadline(k: Known) -> int:
            assert k.archived_at is not None
            control = k.key.split("|")[2]
            return k.archived_at + self.window(control) + self.policy.first_sight_age_ms

        due = sorted(
            (deadline(k), k.key, finding_id) for finding_id, k in self.known.items()
            if k.record_state == "ARCHIVED" and k.archived_at is not None and k.opened
            and deadline(k) < now)
        closed = []
        for _, _key, finding_id in due:
            k = self.known[finding_id]
            assert k.archive_event is not None and k.dedup_key is not None
            k.opened = False
            for p in self.predecessors:
                if p.finding_id == finding_id and p.archived_at == k.archived_at:
                    p.used = True
            closed.append(closed_fields(k.archive_event, finding_id, k.dedup_key, "archived"))
        return closed

    def successor_took(self, p: Predecessor) -> None:
        """A successor took `p`'s place: its finding's incident is no longer its own."""
        p.used = True
        p.opened = False  # carried on by the successor, or closed
        k = self.known.get(p.finding_id)
        if k is not None and k.archived_at == p.archived_at:
            k.opened = False

    # -- the pairing policy (§3): per control, the first rule whose patterns match ----------

    def rule(self, control: str) -> PairingRule | None:
        for rule in self.policy.pairing:
            if any(fnmatchcase(control, pattern) for pattern in rule.controls):
                return rule
        return None

    def window(self, control: str) -> int:
        rule = self.rule(control)
        return rule.window_ms if rule is not None and rule.window_ms is not None else self.policy.window_ms

    def may_precede(self, archive: Finding) -> bool:
        """Whether this archive's signature lets it be a predecessor under its rule."""
        rule = self.rule(archive.control_id)
        if rule is None or rule.archives == "any":
            return True
        return (archive.compliance_status == "NOT_AVAILABLE"
                and "CONFIG_RETURNS_NOT_APPLICABLE" in archive.reason_codes)

    def may_pair(self, f: Finding) -> bool:
        return (f.record_state != "ARCHIVED" and f.is_control_finding
                and f.updated_at - f.created_at <= self.policy.first_sight_age_ms)

    def archives_after(self, history: list[Finding], decided: list[Decided | None],
                       i: int) -> list[int]:
        """The events to decide before `history[i]`: for each other finding of its
        partition key with an archive stamped at most a hold after it, that finding's
        undecided events up to the first such archive."""
        f = history[i]
        waiting = [j for j in range(i + 1, len(history)) if decided[j] is None]
        first_archive: dict[str, int] = {}
        for j in waiting:
            a = history[j]
            if (a.record_state == "ARCHIVED" and a.partition_key == f.partition_key
                    and a.id != f.id and a.updated_at <= f.updated_at + self.policy.hold_ms):
                first_archive.setdefault(a.id, j)
        return [j for j in waiting if j <= first_archive.get(history[j].id, -1)]

    # -- one event ----------------------------------------------------------------------

    def state_of(self, finding_id: str, now: int) -> Known | None:
        """Known state, unless older than the state TTL at event time `now` (§3 rule 2)."""
        known = self.known.get(finding_id)
        if known is not None and known.updated_at < now - self.policy.state_ttl_ms:
            return None
        return known

    def decide(self, f: Finding) -> Decided:
        known = self.state_of(f.id, f.updated_at)
        if known is not None and f.updated_at <= known.updated_at:
            return Decided("silent", "duplicate_event", known.dedup_key)  # rule 2
        if f.record_state == "ARCHIVED":
            return self.archived(f, known)  # rule 3
        if known is None and f.updated_at - f.created_at > self.policy.first_sight_age_ms:
            return self.bootstrap(f)  # rule 4
        return self.active(f, known)  # rules 5-10

    def fresh(self, f: Finding) -> Known:
        known = Known(key=f.partition_key, standard=f.standard, control=f.is_control_finding,
                      updated_at=f.updated_at, record_state=f.record_state,
                      severity=int(f.severity))
        self.known[f.id] = known
        return known

    def fold(self, known: Known, f: Finding) -> None:
        """The event becomes part of the finding's state, after its decision."""
        known.updated_at = f.updated_at
        known.record_state = f.record_state
        status = evaluated(f.compliance_status)
        if status is not None:
            known.last_status = status
            known.na_since = False
        elif f.compliance_status == "NOT_AVAILABLE":
            known.na_since = True
        # A finding without Compliance counts as failing while ACTIVE (§3, alertable).
        failing = status in FAILING or (f.compliance_status is None and f.record_state == "ACTIVE")
        if failing:
            # The severity it had while it could alert (ACTIVE), or that its failing
            # period began with.
            if f.record_state == "ACTIVE" or known.dedup_key is None:
                known.severity = int(f.severity)
            if known.dedup_key is None:  # the event that opens the failing period
                known.dedup_key = dedup_key(f.id, f.updated_at_text)

    # -- rule 3 -------------------------------------------------------------------------

    def archived(self, f: Finding, known: Known | None) -> Decided:
        known = known or self.fresh(f)
        last = evaluated(f.compliance_status) or known.last_status
        if last is None:
            last = evaluated(f.previous_compliance_status)
        late: list[dict[str, Any]] = []
        closes: list[dict[str, Any]] = []
        if known.archived_at is None:  # the first archive since it was last ACTIVE
            known.archived_at = f.updated_at
            known.archive_event = f
            if f.is_control_finding and last in FAILING and not known.superseded:
                severity = known.severity if known.last_status in FAILING else int(f.severity)
                predecessor = Predecessor(
                    f.id, f.partition_key, f.standard, f.updated_at, severity,
                    known.dedup_key or dedup_key(f.id, f.updated_at_text), known.opened,
                    recreatable=self.may_precede(f))
                late = self.late_pair(predecessor)
                if predecessor.used:  # a re-creation that alerted on its own took its place
                    if predecessor.opened:
                        closes.append(closed_fields(f, f.id, predecessor.dedup_key, "superseded"))
                    known.opened = predecessor.opened = False
                self.predecessors.append(predecessor)
        self.fold(known, f)
        if evaluated(f.compliance_status) == "PASSED":  # PASSED ends the failing period
            if known.opened and known.dedup_key is not None:  # and resolves its incident
                closes.append(closed_fields(f, f.id, known.dedup_key, "passed"))
            known.notified = known.opened = False
            known.dedup_key = None
            for p in self.predecessors:  # and no risk carries on from its archive
                if p.finding_id == f.id:
                    p.used = True
        return Decided("silent", "archived", known.dedup_key,
                       late_pairs=[p["finding_id"] for p in late], suppressed=late, closes=closes)

    def late_pair(self, predecessor: Predecessor) -> list[dict[str, Any]]:
        """A predecessor after a re-creation that already alerted for it: a late pair."""
        window = self.window(predecessor.key.split("|")[2])
        options = [
            r for r in self.recreations
            if r.key == predecessor.key and not r.paired and r.finding_id != predecessor.finding_id
            and ((r.standard == predecessor.standard and predecessor.recreatable)
                 or (r.standard is None and predecessor.standard is not None))
            and abs(r.created_at - predecessor.archived_at) <= window
        ]
        if not options:
            return []
        best = min(options, key=lambda r: (abs(r.created_at - predecessor.archived_at), r.finding_id))
        best.paired = True
        predecessor.used = True
        if best.severity > predecessor.severity:
            return []  # it alerted as more severe: rightly, not a late pair
        return [suppressed_fields(best.finding_id, predecessor.finding_id, predecessor.key,
                                  predecessor.archived_at, best.created_at, "late_pair")]

    # -- rule 4 -------------------------------------------------------------------------

    def bootstrap(self, f: Finding) -> Decided:
        known = self.fresh(f)
        self.fold(known, f)
        if f.record_state == "ACTIVE" and (f.compliance_status is None or f.compliance_status in FAILING):
            known.notified = True
        return Decided("silent", "bootstrap", known.dedup_key)

    # -- rules 5-10 ---------------------------------------------------------------------

    def alertable(self, f: Finding) -> bool:
        return (f.record_state == "ACTIVE" and f.workflow_status != "SUPPRESSED"
                and f.severity >= self.policy.min_severity
                and (f.compliance_status is None or f.compliance_status in FAILING))

    def active(self, f: Finding, known: Known | None) -> Decided:
        first_sight = known is None
        known = known or self.fresh(f)
        alertable = self.alertable(f)
        if known.record_state == "ARCHIVED" and known.archived_at is not None:
            archived_at = known.archived_at
            known.archived_at = None
            for p in self.predecessors:  # ACTIVE again: nobody's predecessor any more
                if p.finding_id == f.id:
                    p.used = True
            if alertable and known.last_status in FAILING:
                return self.reactivated(f, known, archived_at)  # rule 5
        if alertable and not known.notified:
            decided = self.unnotified(f, known)  # rule 6
        elif alertable:
            decided = Decided("silent", "flap_same_finding" if known.na_since else "periodic_update")
        elif known.last_status in FAILING and f.compliance_status == "PASSED":
            if known.opened:  # a resolve closes only an incident that was opened
                key = known.dedup_key or dedup_key(f.id, f.updated_at_text)
                decided = Decided("resolved", "resolved", key,
                                  alert={**alert_fields(f, "resolved", key), "reason": "passed"})
            else:
                decided = Decided("silent", "passed")
            known.notified = known.opened = False
            known.dedup_key = None
        elif f.workflow_status == "SUPPRESSED" and (f.compliance_status is None
                                                    or f.compliance_status in FAILING):
            decided = Decided("silent", "workflow_suppressed")
        else:
            decided = Decided("silent", "not_alertable" if first_sight else "periodic_update")
        self.fold(known, f)
        if decided.decision != "resolved" and decided.dedup_key is None:
            decided.dedup_key = known.dedup_key
        if decided.decision == "alert":
            decided.alert = alert_fields(f, decided.label, decided.dedup_key)
        return decided

    def reactivated(self, f: Finding, known: Known, archived_at: int) -> Decided:
        # The same rule as a re-creation: a continuation within the window, never when
        # more severe than before the archive.
        if (f.updated_at - archived_at <= self.window(f.control_id)
                and int(f.severity) <= known.severity):
            decided = Decided("suppressed", "reactivated_after_archive",
                              paired_finding_id=f.id,
                              gap_seconds=(f.updated_at - archived_at) / 1000,
                              suppressed=[suppressed_fields(f.id, f.id, f.partition_key, archived_at,
                                                            f.updated_at, "reactivated_after_archive")])
        else:
            closes = []
            if known.opened and known.dedup_key is not None:  # the old one is superseded
                shown = known.archive_event or f
                closes.append(closed_fields(shown, f.id, known.dedup_key, "superseded"))
            known.dedup_key = None  # a new incident
            known.opened = True
            decided = Decided("alert", "reactivated", closes=closes)
        known.notified = True
        self.fold(known, f)
        decided.dedup_key = known.dedup_key
        if decided.decision == "alert":
            decided.alert = alert_fields(f, "reactivated", known.dedup_key)
        return decided

    def unnotified(self, f: Finding, known: Known) -> Decided:
        known.notified = True
        known.opened = True
        if known.last_status == "PASSED":
            return Decided("alert", "regression")
        if known.last_status is not None or not f.is_control_finding:
            return Decided("alert", "new")
        paired = self.pair_with_archive(f)
        if paired is None and f.standard is None:
            paired = self.pair_with_live(f)
        if paired is None:
            self.recreations.append(Recreation(f.id, f.partition_key, f.standard, f.created_at,
                                               int(f.severity)))
            return Decided("alert", "new")
        severity, inherited, opened, decided, closes = paired
        if int(f.severity) > severity:
            return Decided("alert", "new", closes=closes)
        known.dedup_key = inherited
        known.opened = opened
        decided.dedup_key = inherited
        decided.closes = closes  # the other predecessors' open incidents
        return decided

    def pair_with_archive(
        self, f: Finding
    ) -> tuple[int, str, bool, Decided, list[dict[str, Any]]] | None:
        window = self.window(f.control_id)
        oldest = f.updated_at - self.policy.first_sight_age_ms - window
        options = [p for p in self.predecessors
                   if p.key == f.partition_key and p.finding_id != f.id
                   and abs(f.created_at - p.archived_at) <= window and p.archived_at >= oldest
                   and (not p.used or (p.standards and f.standard is not None
                                       and f.standard not in p.standards))]

        def nearest(ps: list[Predecessor]) -> Predecessor:
            return min(ps, key=lambda p: (abs(f.created_at - p.archived_at), p.finding_id))

        same = [p for p in options if p.standard == f.standard and p.recreatable]
        switched = [p for p in options if f.standard is None and p.standard is not None]
        reverse = [p for p in options if f.standard is not None and p.standard is None]
        if same:
            used, reason = [nearest(same)], "recreated_after_archive"
        elif reverse:  # per-standard findings, one per standard, replace a consolidated one
            used, reason = [nearest(reverse)], "consolidation_switch"
            assert f.standard is not None
            used[0].standards.append(f.standard)
        elif switched:  # one consolidated finding replaces every per-standard one
            first = nearest(switched)
            used = [first, *sorted((p for p in switched if p is not first), key=lambda p: p.finding_id)]
            reason = "consolidation_switch"
        else:
            return None
        first = used[0]
        severity = max(p.severity for p in used)
        escalated = int(f.severity) > severity
        inherited, opened, closes = carry_on(
            [(p.finding_id, p.dedup_key, p.opened, p_shown(self.known, p)) for p in used], escalated)
        for p in used:
            self.successor_took(p)
        return severity, inherited, opened, self.paired(f, first, reason), closes

    def paired(self, f: Finding, p: Predecessor, reason: str) -> Decided:
        record = suppressed_fields(f.id, p.finding_id, f.partition_key, p.archived_at,
                                   f.created_at, reason)
        return Decided("suppressed", reason, paired_finding_id=p.finding_id,
                       gap_seconds=(f.created_at - p.archived_at) / 1000, suppressed=[record])

    def pair_with_live(
        self, f: Finding
    ) -> tuple[int, str, bool, Decided, list[dict[str, Any]]] | None:
        """Consolidated finding first: per-standard findings of its partition key still
        ACTIVE, failing and notified."""
        live = {
            finding_id: k for finding_id, k in self.known.items()
            if k.key == f.partition_key and k.standard is not None and k.control
            and k.record_state == "ACTIVE" and k.last_status in FAILING and k.notified
            and not k.superseded and k.dedup_key is not None
            and self.state_of(finding_id, f.updated_at) is not None
        }
        if not live:
            return None
        first = min(live)
        severity = max(k.severity for k in live.values())
        escalated = int(f.severity) > severity
        incidents = []
        for finding_id in sorted(live):
            k = live[finding_id]
            assert k.dedup_key is not None
            shown = replace(f, id=finding_id, severity=Severity(k.severity),
                            generator_id=k.standard or f.generator_id)
            incidents.append((finding_id, k.dedup_key, k.opened, shown))
        inherited, opened, closes = carry_on(incidents, escalated)
        for k in live.values():
            k.superseded = True
            k.opened = False  # its incident is `f`'s now, or closed
        record = suppressed_fields(f.id, first, f.partition_key, None, f.created_at,
                                   "consolidation_switch")
        decided = Decided("suppressed", "consolidation_switch", paired_finding_id=first,
                          gap_seconds=None, suppressed=[record])
        assert inherited is not None
        return severity, inherited, opened, decided, closes


def p_shown(known: dict[str, Known], p: Predecessor) -> Finding:
    """What a predecessor's closing record shows: its finding's archive."""
    shown = known[p.finding_id].archive_event
    assert shown is not None
    return shown


def carry_on(incidents: list[tuple[str, str, bool, Finding]], escalated: bool
             ) -> tuple[str, bool, list[dict[str, Any]]]:
    """§3, closing: a successor replacing predecessors (`incidents`: finding id, key,
    open, what its closing shows; in pairing order) carries on the first open incident
    (or, none open, the first's key with none), unless more severe; every other open
    incident, each key once, closes `superseded`."""
    open_ones = [i for i in incidents if i[2]]
    carried = None if escalated else (open_ones[0] if open_ones else incidents[0])
    closes: list[dict[str, Any]] = []
    done = {carried[1]} if carried is not None else set()
    for finding_id, key, was_open, shown in incidents:
        if was_open and key not in done:
            done.add(key)
            closes.append(closed_fields(shown, finding_id, key, "superseded"))
    if carried is None:
        return incidents[0][1], False, closes
    return carried[1], carried[2], closes
