"""The decision table of docs/design.md §3: one finding occurrence in, one `Outcome` out.

Pure: state comes and goes through the `Store` interface; no I/O, no clock (the
caller's watermark and `now` are the only times). Rules are tried in the order of
the design, first match wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from heapq import heappop, heappush

import msgspec

from streams.core.findings import (
    ACTIVE,
    ARCHIVED,
    CONSOLIDATED_PREFIX,
    FAILING,
    NOT_AVAILABLE,
    SECURITY_HUB_PRODUCT_SUFFIX,
    Finding,
    Rejected,
)
from streams.core.keys import bucket_key, bucket_start, buckets_covering, dedup_key
from streams.core.policy import Policy, Severity
from streams.core.state import (
    Archive,
    Bucket,
    FindingState,
    LiveMember,
    LiveSet,
    Origin,
    Recreation,
    Store,
    opened,
)

PASSED = "PASSED"
WORKFLOW_SUPPRESSED = "SUPPRESSED"


class Decision(StrEnum):
    ALERT = "alert"
    SUPPRESSED = "suppressed"
    RESOLVED = "resolved"
    SILENT = "silent"
    DEAD_LETTER = "dead_letter"


class AlertKind(StrEnum):
    NEW = "new"
    REGRESSION = "regression"
    REACTIVATED = "reactivated"
    RESOLVED = "resolved"


class Reason(StrEnum):
    DUPLICATE_EVENT = "duplicate_event"
    ARCHIVED = "archived"
    BOOTSTRAP = "bootstrap"
    FLAP_SAME_FINDING = "flap_same_finding"
    PERIODIC_UPDATE = "periodic_update"
    WORKFLOW_SUPPRESSED = "workflow_suppressed"
    NOT_ALERTABLE = "not_alertable"
    PASSED = "passed"  # failing before, PASSED now, and no incident was opened to resolve
    RECREATED_AFTER_ARCHIVE = "recreated_after_archive"
    REACTIVATED_AFTER_ARCHIVE = "reactivated_after_archive"
    CONSOLIDATION_SWITCH = "consolidation_switch"
    LATE_PAIR = "late_pair"
    # Why an incident closed without its finding passing (docs/design.md §3, closing).
    SUPERSEDED = "superseded"  # a successor opened an incident of its own


# The members most events take, as globals: in Python 3.11 `Decision.SILENT` is looked
# up through `EnumType.__getattr__`, about ten times the cost of reading a global.
_D_SILENT = Decision.SILENT
_D_RESOLVED = Decision.RESOLVED
_R_DUPLICATE_EVENT = Reason.DUPLICATE_EVENT
_R_ARCHIVED = Reason.ARCHIVED
_R_BOOTSTRAP = Reason.BOOTSTRAP
_R_FLAP_SAME_FINDING = Reason.FLAP_SAME_FINDING
_R_PERIODIC_UPDATE = Reason.PERIODIC_UPDATE
_R_WORKFLOW_SUPPRESSED = Reason.WORKFLOW_SUPPRESSED
_R_NOT_ALERTABLE = Reason.NOT_ALERTABLE


@dataclass(frozen=True, slots=True)
class Pairing:
    """A suppression, or a late pair: what `securityhub.suppressed` records."""

    finding_id: str
    paired_finding_id: str
    key: str
    archived_at: int | None
    recreated_at: int
    reason: Reason

    @property
    def gap_seconds(self) -> float | None:
        if self.archived_at is None:
            return None
        return (self.recreated_at - self.archived_at) / 1000


class Closure(msgspec.Struct, frozen=True, gc=False):
    """An incident closed by something else than a `resolved` decision (docs/design.md
    §3, closing): `archived` (nothing continued the archived finding in time),
    `superseded` (a successor opened an incident of its own) or `passed` (the finding
    passed while archived). It becomes a `resolved` alert record."""

    finding_id: str
    dedup_key: str
    reason: Reason
    key: str  # partition key
    # What the alert record shows: the closed finding's ARCHIVED event (None for an
    # archive recorded before it was kept: the record then shows what the key says).
    finding: Finding | None


class Outcome(msgspec.Struct, gc=False):  # a Struct for speed, as `Finding`
    """The one decision for one finding occurrence, with what the outputs need;
    `closes`: the incidents closed as this decision was taken (before it, when their
    time had come; by it, when it superseded them)."""

    origin: Origin
    decision: Decision
    finding: Finding | None = None
    kind: AlertKind | None = None
    reason: str | None = None
    dedup_key: str | None = None
    pairing: Pairing | None = None
    late_pairs: tuple[Pairing, ...] = ()  # a tuple, as `closes`
    rejected: Rejected | None = None
    seq: int = -1  # arrival order, set by the engine
    closes: tuple[Closure, ...] = ()  # a tuple: no list to build per decision

    @property
    def kind_or_reason(self) -> str | None:
        return self.kind.value if self.kind is not None else self.reason

    @property
    def key(self) -> str | None:
        return self.finding.partition_key if self.finding else None


def rejected_outcome(rejected: Rejected, origin: Origin, seq: int = -1) -> Outcome:
    return Outcome(origin, Decision.DEAD_LETTER, reason=rejected.reason, rejected=rejected,
                   seq=seq)


def pairing_horizon(policy: Policy, moment: int, window_ms: int | None = None) -> int:
    """The oldest archive a finding decided at `moment` may pair with (under `window_ms`;
    by default the widest window of any control). A new finding was created no more
    than the first-sight age before its update (else it is a bootstrap), so this
    changes nothing for it; a finding that stayed unevaluated for longer than that no
    longer pairs with archives from before its time."""
    window = policy.widest_window_ms if window_ms is None else window_ms
    return moment - policy.first_sight_age_ms - window


def closing_deadline(policy: Policy, archived_at: int, control_id: str) -> int:
    """The last `UpdatedAt` that may still continue an archive of `archived_at`: a
    reactivation within the control's window, or a re-creation created within it (and
    so updated within the first-sight age after that). Past it, the archived finding's
    incident closes (docs/design.md §3, closing)."""
    return archived_at + policy.window_for(control_id) + policy.first_sight_age_ms


def control_of_key(partition_key: str) -> str:
    """The control id of a partition key (account | region | control | resource)."""
    parts = partition_key.split("|", 3)
    return parts[2] if len(parts) > 2 else ""


def _evaluated(status: str | None) -> str | None:
    return status if status is not None and status != NOT_AVAILABLE else None


class Decider:
    """Applies the decision table to findings of one partition, in event-time order."""

    def __init__(self, store: Store, policy: Policy, partition: int) -> None:
        self.store = store
        self.policy = policy
        self.p = partition
        # The open incidents of archived findings, by the moment they close if nothing
        # continues them: (deadline, partition key, finding id, archived_at). Built from
        # the store (a restarted worker closes what its state holds), kept as archives
        # come; the store says at closing time whether each is still open.
        self.timers: list[tuple[int, str, str, int]] = []
        for key, bucket in store.buckets.items():
            if bucket.p == partition:
                for archive in bucket.archives:
                    if not archive.used and archive.opened:
                        self.timers.append(self._timer(key.rsplit("@", 1)[0], archive))
        self.timers.sort()
        # Incidents the decision being taken closes (`_decide` hands them to its outcome).
        self._closing: list[Closure] = []

    # -- entry point ----------------------------------------------------------------

    def decide(self, f: Finding, origin: Origin) -> Outcome:
        state = self.store.findings.get(f.id)  # `_current`, inlined: this is per event
        if state is not None:
            if state.updated_at < f.updated_at - self.policy.state_ttl_ms:
                state = None
            elif f.updated_at <= state.updated_at:
                return self._silent(origin, f, _R_DUPLICATE_EVENT, state)  # rule 2
            else:
                status = f.compliance_status
                if (status is not None and status == state.last_status and not state.na_since
                        and f.record_state == ACTIVE and state.record_state == ACTIVE):
                    failing = status in FAILING
                    if not failing or (state.notified
                                       and f.workflow_status != WORKFLOW_SUPPRESSED):
                        # Rules 7 and 10 for the most common event (three in four of a
                        # generated feed), inlined: an ACTIVE finding re-evaluated with
                        # the status it had, failing and already notified, or not
                        # failing. What `_active` and `_absorb` do then, without their
                        # tests: the decision is a periodic update, and only the state's
                        # time (and, while failing, its severity and incident key)
                        # changes.
                        state.updated_at = f.updated_at
                        if failing:
                            state.severity = int(f.severity)
                            if state.dedup_key is None:
                                state.dedup_key = dedup_key(f.id, f.updated_at_text)
                        if state.standard is not None and state.control:  # `_save`, inlined
                            self._update_live(f.id, state)
                        self.store.findings.put(f.id, state)
                        return Outcome(origin, _D_SILENT, f, None, _R_PERIODIC_UPDATE,
                                       state.dedup_key)
        return self._decide(f, origin, state)

    def _decide(self, f: Finding, origin: Origin, state: FindingState | None) -> Outcome:
        """Rules 3-10 for an event newer than `state` (None: no current state)."""
        if f.record_state == ARCHIVED:
            outcome = self._archived(f, origin, state)  # rule 3
        elif state is None and f.updated_at - f.created_at > self.policy.first_sight_age_ms:
            outcome = self._bootstrap(f, origin)  # rule 4
        else:
            outcome = self._active(f, origin, state)  # rules 5-10
        if self._closing:
            outcome.closes = tuple(self._closing)
            self._closing.clear()
        return outcome

    # -- closing incidents (docs/design.md §3, closing) ---------------------------------

    def _timer(self, partition_key: str, archive: Archive) -> tuple[int, str, str, int]:
        return (closing_deadline(self.policy, archive.archived_at, control_of_key(partition_key)),
                partition_key,
                archive.finding_id, archive.archived_at)

    def close_due(self, moment: int) -> list[Closure]:
        """Close, as `archived`, the open incidents of archived findings whose deadline
        is before `moment`: the engine calls this before it decides an event stamped
        `moment`, when nothing stamped at or before a deadline is still to be decided."""
        timers = self.timers
        closed: list[Closure] = []
        while timers and timers[0][0] < moment:
            _, partition_key, finding_id, archived_at = heappop(timers)
            key = bucket_key(partition_key, bucket_start(archived_at, self.policy.bucket_ms))
            bucket = self.store.buckets.get(key)
            if bucket is None:
                continue
            for archive in bucket.archives:
                if (archive.finding_id == finding_id and archive.archived_at == archived_at
                        and not archive.used and archive.opened):
                    archive.used = True
                    self._end_incident(archive)
                    self.store.buckets.put(key, bucket)
                    closed.append(self._closure(archive, partition_key, Reason.ARCHIVED))
        return closed

    def _closure(self, archive: Archive, partition_key: str, reason: Reason) -> Closure:
        return Closure(archive.finding_id, archive.dedup_key, reason, partition_key,
                       archive.finding)

    def _end_incident(self, archive: Archive) -> None:
        """`archive`'s incident is no longer its finding's: closed, or taken over by a
        successor (so that the finding, if it comes back, never resolves it again)."""
        archive.opened = False
        state = self.store.findings.get(archive.finding_id)
        if state is not None and state.archived_at == archive.archived_at and state.opened is not False:
            state.opened = False
            self.store.findings.put(archive.finding_id, state)

    def _carry_on(self, incidents: Sequence[tuple[str, str, bool, Finding | None]],
                  partition_key: str, escalated: bool) -> tuple[str, bool]:
        """A successor replaces predecessors whose incidents are `incidents`: (finding
        id, dedup_key, open, what a closing shows), first in pairing order. Unless it is
        more severe (`escalated`: it opens its own), it carries on the first open one (or,
        with none open, the first's key); every other open one closes, `superseded`.
        Returns the key it inherits and whether an incident is open under it."""
        carried = None if escalated else next((i for i in incidents if i[2]), incidents[0])
        closed: set[str] = set() if carried is None else {carried[1]}
        for finding_id, key, was_open, shown in incidents:
            if was_open and key not in closed:
                closed.add(key)
                self._closing.append(Closure(finding_id, key, Reason.SUPERSEDED, partition_key,
                                             shown))
        first = carried or incidents[0]
        return first[1], first[2] and carried is not None

    # -- rules ----------------------------------------------------------------------

    def _archived(self, f: Finding, origin: Origin, state: FindingState | None) -> Outcome:
        state = state or self._new_state(f)
        last = _evaluated(f.compliance_status) or state.last_status
        if last is None:
            last = _evaluated(f.previous_compliance_status)
        first_archive = state.archived_at is None
        late: list[Pairing] = []
        predecessor = False
        if first_archive:
            state.archived_at = f.updated_at
            if f.is_control_finding and last in FAILING and not state.superseded:
                predecessor = True
                severity = state.severity if state.last_status in FAILING else int(f.severity)
                archive = Archive(
                    finding_id=f.id,
                    standard=f.standard,
                    archived_at=f.updated_at,
                    severity=severity,
                    dedup_key=state.dedup_key or dedup_key(f.id, f.updated_at_text),
                    opened=opened(state),
                    finding=f,
                    recreatable=self.policy.archive_may_precede(
                        f.control_id, f.compliance_status, f.reason_codes),
                )
                late = self._record_archive(f.partition_key, archive)
                if archive.used:  # a re-creation that alerted on its own took its place
                    state.opened = False
        self._absorb(state, f)
        if _evaluated(f.compliance_status) == PASSED:
            if opened(state) and state.dedup_key is not None:  # and resolves its incident
                self._closing.append(Closure(f.id, state.dedup_key, Reason.PASSED,
                                             f.partition_key, f))
            state.notified = False  # PASSED ends the failing period, archived or not
            state.opened = False
            state.dedup_key = None
            if not first_archive and state.archived_at is not None:
                # and its archive carries no risk on: a later failure is new risk.
                self._use_own_archive(f.partition_key, f.id, state.archived_at)
        elif first_archive and not predecessor and opened(state) and state.dedup_key is not None:
            # No re-creation may continue it, its own reactivation may: its incident
            # closes in time as a predecessor's does.
            self._store_archive(f.partition_key, Archive(
                f.id, f.standard, f.updated_at, state.severity, state.dedup_key,
                finding=f, predecessor=False))
        self._save(f.id, state)
        outcome = Outcome(origin, _D_SILENT, f, reason=_R_ARCHIVED)
        outcome.dedup_key = state.dedup_key
        if late:
            outcome.late_pairs = tuple(late)
        return outcome

    def _bootstrap(self, f: Finding, origin: Origin) -> Outcome:
        state = self._new_state(f)
        self._absorb(state, f)
        # `f.failing`, inlined (a property is a Python call): a bootstrap is common.
        status = f.compliance_status
        if (status is None or status in FAILING) and f.record_state == ACTIVE:
            state.notified = True
        self._save(f.id, state)
        return Outcome(origin, _D_SILENT, f, reason=_R_BOOTSTRAP,
                       dedup_key=state.dedup_key)

    def _active(self, f: Finding, origin: Origin, state: FindingState | None) -> Outcome:
        first_sight = state is None
        state = state or self._new_state(f)
        alertable = (  # rules 6-7 apply: ACTIVE, not suppressed, severe enough, failing
            f.record_state == ACTIVE
            and f.workflow_status != WORKFLOW_SUPPRESSED
            and f.severity >= self.policy.min_severity
            and (f.compliance_status is None or f.compliance_status in FAILING)
        )
        if state.record_state == ARCHIVED and state.archived_at is not None:
            archived_at = state.archived_at
            state.archived_at = None
            own = self._use_own_archive(f.partition_key, f.id, archived_at)
            if alertable and state.last_status in FAILING:
                return self._reactivated(f, origin, state, archived_at, own)  # rule 5
        if alertable and not state.notified:
            outcome = self._unnotified(f, origin, state)  # rule 6
        elif alertable:
            reason = _R_FLAP_SAME_FINDING if state.na_since else _R_PERIODIC_UPDATE
            # Positional (kind=None, reason): most events end here, and keywords cost.
            outcome = Outcome(origin, _D_SILENT, f, None, reason)  # rule 7
        elif state.last_status in FAILING and f.compliance_status == PASSED:
            if opened(state):  # rule 8: a resolve closes only what an alert opened
                outcome = Outcome(origin, _D_RESOLVED, f, kind=AlertKind.RESOLVED,
                                  dedup_key=state.dedup_key or dedup_key(f.id, f.updated_at_text))
            else:
                outcome = Outcome(origin, _D_SILENT, f, reason=Reason.PASSED)
            state.notified = False  # PASSED ends the failing period
            state.opened = False
            state.dedup_key = None
        elif f.failing and f.workflow_status == WORKFLOW_SUPPRESSED:
            outcome = Outcome(origin, _D_SILENT, f, reason=_R_WORKFLOW_SUPPRESSED)
        else:
            reason = _R_NOT_ALERTABLE if first_sight else _R_PERIODIC_UPDATE
            outcome = Outcome(origin, _D_SILENT, f, None, reason)  # rule 10
        self._absorb(state, f)
        if outcome.dedup_key is None and outcome.decision is not _D_RESOLVED:
            outcome.dedup_key = state.dedup_key
        self._save(f.id, state)
        return outcome

    def _reactivated(
        self, f: Finding, origin: Origin, state: FindingState, archived_at: int,
        own: Archive | None,
    ) -> Outcome:
        # As a re-creation (rule 6): a continuation of the risk it had before its archive,
        # unless more severe now. Not notified before means muted (it carries on muted)
        # or below the minimum (so anything alertable now is more severe).
        if (f.updated_at - archived_at <= self.policy.window_for(f.control_id)
                and int(f.severity) <= state.severity):
            pairing = Pairing(f.id, f.id, f.partition_key, archived_at, f.updated_at,
                              Reason.REACTIVATED_AFTER_ARCHIVE)
            outcome = Outcome(origin, Decision.SUPPRESSED, f,
                              reason=Reason.REACTIVATED_AFTER_ARCHIVE, pairing=pairing)
        else:
            # Beyond the window, or more severe: a new incident under a key of its own
            # (the old key would fold the escalation into the incident already open),
            # and the one still open is superseded.
            if opened(state) and state.dedup_key is not None:
                self._closing.append(Closure(
                    f.id, state.dedup_key, Reason.SUPERSEDED, f.partition_key,
                    own.finding if own is not None and own.finding is not None else f))
            state.dedup_key = None
            state.opened = True
            outcome = Outcome(origin, Decision.ALERT, f, kind=AlertKind.REACTIVATED)
        state.notified = True
        self._absorb(state, f)
        outcome.dedup_key = state.dedup_key
        self._save(f.id, state)
        return outcome

    def _unnotified(self, f: Finding, origin: Origin, state: FindingState) -> Outcome:
        state.notified = True
        state.opened = True  # unless it continues a predecessor's incident, below
        if state.last_status == PASSED:
            return Outcome(origin, Decision.ALERT, f, kind=AlertKind.REGRESSION)
        if state.last_status is not None or not f.is_control_finding:
            return Outcome(origin, Decision.ALERT, f, kind=AlertKind.NEW)
        paired = self._pair_with_archive(f)
        if paired is None and f.standard is None:
            paired = self._pair_with_live(f)
        if paired is None:
            self._record_recreation(f)
            return Outcome(origin, Decision.ALERT, f, kind=AlertKind.NEW)
        pairing, escalated, inherited, was_opened = paired
        if escalated:  # its predecessors' incidents were closed, `superseded`
            return Outcome(origin, Decision.ALERT, f, kind=AlertKind.NEW)
        state.dedup_key = inherited  # the re-creation takes its predecessor's place
        state.opened = was_opened
        return Outcome(origin, Decision.SUPPRESSED, f, reason=pairing.reason, pairing=pairing,
                       dedup_key=inherited)

    # -- pairing --------------------------------------------------------------------

    def _buckets_near(self, partition_key: str, moment: int,
                      window: int) -> list[tuple[str, Bucket]]:
        found = []
        for start in buckets_covering(moment - window, moment + window, self.policy.bucket_ms):
            key = bucket_key(partition_key, start)
            bucket = self.store.buckets.get(key)
            if bucket is not None:
                found.append((key, bucket))
        return found

    def _pair_with_archive(self, f: Finding) -> tuple[Pairing, bool, str, bool] | None:
        """Rule 6: the nearest unused predecessor of the same pairing identity; for a
        consolidated finding with none, the per-standard archives of its partition key.
        Returns the pairing, whether `f` is more severe (it then opens an incident of
        its own), and the incident it inherits otherwise: key, and whether open."""
        window = self.policy.window_for(f.control_id)
        # Archives older than this never pair (see `pairing_horizon`), swept or not.
        oldest = pairing_horizon(self.policy, f.updated_at, window)
        candidates: list[tuple[int, str, Archive, str, Bucket]] = []
        for key, bucket in self._buckets_near(f.partition_key, f.created_at, window):
            for archive in bucket.archives:
                gap = abs(f.created_at - archive.archived_at)
                if (archive.predecessor and gap <= window and archive.finding_id != f.id
                        and archive.archived_at >= oldest
                        and (not archive.used or self._reverse_open(archive, f))):
                    candidates.append((gap, archive.finding_id, archive, key, bucket))
        same = [c for c in candidates if c[2].standard == f.standard and c[2].recreatable]
        reverse = [c for c in candidates if f.standard is not None and c[2].standard is None]
        if same:
            used = [min(same, key=lambda c: (c[0], c[1]))]
            reason = Reason.RECREATED_AFTER_ARCHIVE
        elif reverse:
            # Consolidation turned off: one per-standard finding per enabled standard
            # replaces the consolidated one. Each of them continues it; the first
            # carries its incident on, the others inherit the key with no incident.
            used = [min(reverse, key=lambda c: (c[0], c[1]))]
            assert f.standard is not None
            used[0][2].standards.append(f.standard)
            reason = Reason.CONSOLIDATION_SWITCH
        else:
            # One consolidated finding replaces every per-standard one: use them all up.
            used = sorted((c for c in candidates if f.standard is None and c[2].standard is not None),
                          key=lambda c: (c[0], c[1]))
            if not used:
                return None
            used = used[:1] + sorted(used[1:], key=lambda c: c[1])
            reason = Reason.CONSOLIDATION_SWITCH
        first = used[0][2]
        pairing = Pairing(f.id, first.finding_id, f.partition_key, first.archived_at,
                          f.created_at, reason)
        escalated = int(f.severity) > max(c[2].severity for c in used)
        inherited, was_opened = self._carry_on(
            [(c[2].finding_id, c[2].dedup_key, c[2].opened, c[2].finding) for c in used],
            f.partition_key, escalated)
        for c in used:
            c[2].used = True
            self._end_incident(c[2])
        for _, _, _, key, bucket in used:
            self.store.buckets.put(key, bucket)
        return pairing, escalated, inherited, was_opened

    @staticmethod
    def _reverse_open(archive: Archive, f: Finding) -> bool:
        """A consolidated archive already replaced by per-standard findings of other
        standards is still a predecessor for `f`'s standard (consolidation turned off)."""
        return (bool(archive.standards) and f.standard is not None
                and f.standard not in archive.standards)

    def _pair_with_live(self, f: Finding) -> tuple[Pairing, bool, str, bool] | None:
        """Consolidation switch, consolidated finding first: per-standard findings of the
        same partition key are still ACTIVE, failing and notified. They are replaced:
        one open incident of theirs carries on under `f` (`_carry_on`) unless `f` is more
        severe; the others close, `superseded`."""
        live = self.store.live.get(f.partition_key)
        if live is None or not live.members:
            return None
        members = {m: live.members[m] for m in live.members if self._current(m, f) is not None}
        if not members:
            return None
        first_id = min(members)
        escalated = int(f.severity) > max(m.severity for m in members.values())
        incidents = []
        for member_id in sorted(members):
            member = self.store.findings.get(member_id)
            if member is not None:
                entry = members[member_id]
                shown = msgspec.structs.replace(f, id=member_id, severity=Severity(entry.severity),
                                                generator_id=member.standard or f.generator_id)
                incidents.append((member_id, entry.dedup_key, entry.opened, shown))
                member.superseded = True
                member.live = False
                member.opened = False  # its incident is `f`'s now, or closed
                self.store.findings.put(member_id, member)
        self.store.live.delete(f.partition_key)
        if not incidents:
            return None
        inherited, was_opened = self._carry_on(incidents, f.partition_key, escalated)
        pairing = Pairing(f.id, first_id, f.partition_key, None, f.created_at,
                          Reason.CONSOLIDATION_SWITCH)
        return pairing, escalated, inherited, was_opened

    def _record_archive(self, partition_key: str, archive: Archive) -> list[Pairing]:
        """Store a new predecessor; if a re-creation already alerted for it, that is a
        late pair: recorded, never a second alert."""
        window = self.policy.window_for(control_of_key(partition_key))
        best: tuple[int, str, Recreation, str, Bucket] | None = None
        for key, bucket in self._buckets_near(partition_key, archive.archived_at, window):
            for rec in bucket.recreations:
                gap = abs(rec.created_at - archive.archived_at)
                pairs = (rec.standard == archive.standard and archive.recreatable) or (
                    rec.standard is None and archive.standard is not None
                )
                if not rec.paired and pairs and gap <= window and rec.finding_id != archive.finding_id:
                    candidate = (gap, rec.finding_id, rec, key, bucket)
                    if best is None or candidate[:2] < best[:2]:
                        best = candidate
        late: list[Pairing] = []
        if best is not None:
            _, _, rec, key, bucket = best
            rec.paired = True
            archive.used = True
            # The re-creation alerted with an incident of its own: this one's closes.
            if archive.opened:
                self._closing.append(self._closure(archive, partition_key, Reason.SUPERSEDED))
                archive.opened = False
            self.store.buckets.put(key, bucket)
            if rec.severity <= archive.severity:
                late.append(Pairing(rec.finding_id, archive.finding_id, partition_key,
                                    archive.archived_at, rec.created_at, Reason.LATE_PAIR))
        self._store_archive(partition_key, archive)
        return late

    def _store_archive(self, partition_key: str, archive: Archive) -> None:
        """Add `archive` to its bucket; an open incident gets its closing timer."""
        start = bucket_start(archive.archived_at, self.policy.bucket_ms)
        key = bucket_key(partition_key, start)
        bucket = self.store.buckets.get(key) or Bucket(self.p, start)
        bucket.archives.append(archive)
        self.store.buckets.put(key, bucket)
        if archive.opened and not archive.used:
            heappush(self.timers, self._timer(partition_key, archive))

    def _record_recreation(self, f: Finding) -> None:
        start = bucket_start(f.created_at, self.policy.bucket_ms)
        key = bucket_key(f.partition_key, start)
        bucket = self.store.buckets.get(key) or Bucket(self.p, start)
        bucket.recreations.append(
            Recreation(f.id, f.standard, f.created_at, int(f.severity))
        )
        self.store.buckets.put(key, bucket)

    def _use_own_archive(self, partition_key: str, finding_id: str,
                         archived_at: int) -> Archive | None:
        """A finding that is ACTIVE again (or PASSED) can no longer be another's
        predecessor, and its incident, if open, is its own again: returns its archive."""
        key = bucket_key(partition_key, bucket_start(archived_at, self.policy.bucket_ms))
        bucket = self.store.buckets.get(key)
        if bucket is None:
            return None
        for archive in bucket.archives:
            if archive.finding_id == finding_id and not archive.used:
                archive.used = True
                self.store.buckets.put(key, bucket)
                return archive
        return None

    # -- state ----------------------------------------------------------------------

    def _current(self, finding_id: str, f: Finding) -> FindingState | None:
        """A finding's state, unless it expired before `f`'s time. The engine's sweep
        deletes only states expired for every event still to come, so a decision is the
        same whether or not a sweep has run."""
        state = self.store.findings.get(finding_id)
        if state is not None and state.updated_at < f.updated_at - self.policy.state_ttl_ms:
            return None
        return state

    def _new_state(self, f: Finding) -> FindingState:
        # `Finding.partition_key`, `standard` and `is_control_finding`, inlined: a
        # property is a Python call, and a new state is made per first sight.
        generator_id = f.generator_id
        return FindingState(
            p=self.p,
            partition_key=f"{f.account}|{f.region}|{f.control_id}|{f.resource_id}",
            standard=None if generator_id.startswith(CONSOLIDATED_PREFIX) else generator_id,
            control=f.product_arn.endswith(SECURITY_HUB_PRODUCT_SUFFIX),
            created_at=f.created_at,
            updated_at=f.updated_at,
            record_state=f.record_state,
            last_status=None,
            na_since=False,
            severity=int(f.severity),
            notified=False,
            dedup_key=None,
            archived_at=None,
            opened=False,
        )

    def _absorb(self, state: FindingState, f: Finding) -> None:
        """Fold the event into the finding's state once its decision is taken."""
        state.updated_at = f.updated_at
        state.record_state = f.record_state
        status = f.compliance_status
        evaluated = status if status is not None and status != NOT_AVAILABLE else None  # `_evaluated`
        if evaluated is not None:
            state.last_status = evaluated
            state.na_since = False
        elif status == NOT_AVAILABLE:
            state.na_since = True
        failing_now = evaluated in FAILING or (status is None and f.record_state == ACTIVE)
        if failing_now:
            if f.record_state == ACTIVE or state.dedup_key is None:
                # What a continuation is compared with: the severity it had while it was
                # ACTIVE (and could alert), not one it took on while archived, unless
                # its failing period begins archived.
                state.severity = int(f.severity)
            if state.dedup_key is None:
                state.dedup_key = dedup_key(f.id, f.updated_at_text)

    def _save(self, finding_id: str, state: FindingState) -> None:
        if state.standard is not None and state.control:  # `_update_live`'s own test, first
            self._update_live(finding_id, state)
        self.store.findings.put(finding_id, state)

    def _update_live(self, finding_id: str, state: FindingState) -> None:
        """Keep the index of live per-standard findings that a consolidated one may replace."""
        if state.standard is None or not state.control:
            return
        member = (
            state.record_state == ACTIVE
            and state.last_status in FAILING
            and state.notified
            and not state.superseded
            and state.dedup_key is not None
        )
        live = self.store.live.get(state.partition_key) if member or state.live else None
        if member == state.live:
            if not member:
                return
            if live is not None:  # unchanged if it holds the entry it would get
                current = live.members.get(finding_id)
                if (current is None if not state.dedup_key else
                        current is not None and current.severity == state.severity
                        and current.dedup_key == state.dedup_key
                        and current.opened == opened(state)):
                    return
        # Built only now: most events change nothing here.
        entry = (LiveMember(state.severity, state.dedup_key, opened(state)) if state.dedup_key
                 else None)
        live = live or LiveSet(self.p)
        if member and entry is not None:
            live.members[finding_id] = entry
        else:
            live.members.pop(finding_id, None)
        state.live = member
        if live.members:
            self.store.live.put(state.partition_key, live)
        else:
            self.store.live.delete(state.partition_key)

    def _silent(
        self, origin: Origin, f: Finding, reason: Reason, state: FindingState
    ) -> Outcome:
        return Outcome(origin, _D_SILENT, f, reason=reason, dedup_key=state.dedup_key)
