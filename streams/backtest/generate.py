"""`flapguard generate`: a deterministic, labelled Security Hub feed at SOC scale.

Pure generator functions (`generate`) and a thin file writer (`write_feed`). The feed
models what Security Hub does across accounts x Regions x resources x controls:
periodic evaluations (12 or 24 h) and ~18 h refreshes, status-dependent controls that
flap through NOT_AVAILABLE + CONFIG_RETURNS_NOT_APPLICABLE + ARCHIVED and come back as
a brand-new finding at a later evaluation, same-id reactivations, genuinely new
failures, remediations, regressions, resource deletions, the consolidated-findings
switch in both directions, flaps that come back more severe (escalations), muted checks
whose re-creation comes back unmuted, re-creations stamped just before their
predecessor's archive (event-time inversion), a third-party product whose clock runs
ahead, Lambda functions re-created under the same ARN (opt-in), and delivery effects:
EventBridge duplicates, bounded out-of-order arrival and BatchUpdateFindings echoes
(same `UpdatedAt`).

Every occurrence gets a ground-truth label in a separate file (`labels_path`), aligned
line by line: should a notifier alert on it? The decision code never reads it.

Memory is bounded by the number of resources and the arrival jitter, not the length
of the feed: each (resource, control) is a generator in event time, they are merged
lazily, and a small heap applies the arrival jitter.
"""

from __future__ import annotations

import gzip
import heapq
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
DAY_MS = 24 * HOUR_MS

# Ground-truth categories. `alert` says whether a notifier should page; `suppress`
# marks the noise a naive notifier alerts on and flapguard exists to keep quiet.
TRUE_ALERTS = frozenset({
    "new_failure", "regression", "recreated_resource",
    # A flap that comes back more severe than it was before the archive: new risk
    # (docs/design.md §3, continuation: never when more severe).
    "escalated_recreation", "escalated_reactivation",
    # A muted check's re-creation, unmuted and more severe: risk never alerted.
    "escalated_unmuted_recreation",
    # A new failing finding of another product (no pairing for it, whatever its clock).
    "third_party_failure",
})
EXPECTED_SUPPRESSIONS = frozenset({
    "flap_recreation", "flap_reactivation", "consolidation_switch",
    # A muted check's re-creation that comes back unmuted at the same severity: the
    # operator's mute carries over (docs/design.md §3, continuation).
    "unmuted_recreation",
})

STANDARDS = {
    "fsbp": "aws-foundational-security-best-practices/v/1.0.0",
    "nist": "nist-800-53/v/5.0.0",
    "pci": "pci-dss/v/3.2.1",
}


@dataclass(frozen=True, slots=True)
class Control:
    id: str
    title: str
    severity: str
    period_h: int  # 12 or 24: periodic Config rule; 18: change-triggered refresh
    status_dependent: bool  # NOT_APPLICABLE while the resource is not available


@dataclass(frozen=True, slots=True)
class ResourceType:
    asff_type: str
    arn: str  # format string: {region} {account} {name}
    controls: tuple[Control, ...]
    weight: int


CATALOGUE: tuple[ResourceType, ...] = (
    ResourceType("AwsRdsDbCluster", "arn:aws:rds:{region}:{account}:cluster:{name}", (
        Control("RDS.45", "Aurora MySQL DB clusters should have audit logging enabled", "MEDIUM", 12, True),
        Control("RDS.27", "RDS DB clusters should be encrypted at rest", "MEDIUM", 24, True),
        Control("RDS.14", "Amazon Aurora clusters should have backtracking enabled", "MEDIUM", 24, True),
    ), 3),
    ResourceType("AwsDocumentDbCluster", "arn:aws:rds:{region}:{account}:cluster:{name}", (
        Control("DocumentDB.2", "Amazon DocumentDB clusters should have an adequate backup retention "
                "period", "MEDIUM", 24, True),
        Control("DocumentDB.4", "Amazon DocumentDB clusters should publish audit logs to CloudWatch Logs",
                "MEDIUM", 12, True),
    ), 1),
    ResourceType("AwsNeptuneDbCluster", "arn:aws:rds:{region}:{account}:cluster:{name}", (
        Control("Neptune.2", "Neptune DB clusters should publish audit logs to CloudWatch Logs",
                "MEDIUM", 24, True),
    ), 1),
    ResourceType("AwsRedshiftCluster", "arn:aws:redshift:{region}:{account}:cluster:{name}", (
        Control("Redshift.4", "Amazon Redshift clusters should have audit logging enabled", "MEDIUM", 24,
                True),
        Control("Redshift.6", "Amazon Redshift should have automatic upgrades to major versions enabled",
                "MEDIUM", 12, True),
    ), 1),
    ResourceType("AwsEc2Instance", "arn:aws:ec2:{region}:{account}:instance/i-{name}", (
        Control("EC2.8", "EC2 instances should use Instance Metadata Service Version 2 (IMDSv2)", "HIGH",
                18, False),
        Control("SSM.1", "Amazon EC2 instances should be managed by AWS Systems Manager", "MEDIUM", 24,
                True),
    ), 3),
    ResourceType("AwsS3Bucket", "arn:aws:s3:::{name}", (
        Control("S3.5", "S3 general purpose buckets should require requests to use SSL", "MEDIUM", 18,
                False),
        Control("S3.9", "S3 general purpose buckets should have server access logging enabled", "MEDIUM",
                18, False),
    ), 3),
    ResourceType("AwsLambdaFunction", "arn:aws:lambda:{region}:{account}:function:{name}", (
        Control("Lambda.2", "Lambda functions should use supported runtimes", "MEDIUM", 24, False),
    ), 2),
)


@dataclass(frozen=True, slots=True)
class Profile:
    """What to generate. The defaults are the acceptance profile's behaviour rates."""

    seed: int = 1
    accounts: int = 40
    days: float = 21.0
    start_ms: int = int(datetime(2025, 9, 1, tzinfo=UTC).timestamp() * 1000)
    regions: tuple[str, ...] = ("us-east-1", "eu-west-1", "ap-northeast-1")
    resources_per_region: int = 12
    failing_share: float = 0.4  # of checks failing when the feed begins
    new_resource_share: float = 0.15  # resources created during the feed
    flap_rate: float = 0.12  # per evaluation of a status-dependent, failing check
    reactivation_share: float = 0.2  # flaps that come back under the same Id
    long_pause_share: float = 0.004  # flaps that stay unavailable for 36-64 h
    remediation_rate: float = 0.004  # per evaluation of a failing check
    regression_rate: float = 0.003  # per evaluation of a passing check
    deletion_rate: float = 0.002  # per resource and day
    # Deleted and re-created under the same ARN while still failing: a real new
    # resource the window would hide. Off in the default profile.
    same_arn_recreate_rate: float = 0.0
    # The same for Lambda functions only, re-created 45-90 min after the deletion (the
    # finding archived while still FAILED): what `archives = "not_applicable"` in a
    # pairing policy is for. Off in the default profile: at default settings (no
    # `--pairing`) flapguard pairs and suppresses them.
    lambda_recreate_rate: float = 0.0
    # The situations below draw from random streams of their own, so that turning one
    # off leaves the rest of the feed as it was.
    escalation_share: float = 0.02  # flap returns (failing, not muted) more severe
    unmuted_return_share: float = 0.5  # muted checks' flap re-creations back as NEW
    muted_escalation_share: float = 0.25  # of those, more severe than before
    inversion_share: float = 0.03  # flap re-creations stamped 1-3 min before the archive
    unswitch_share: float = 0.05  # accounts on consolidated findings that turn it off
    third_party_share: float = 0.1  # accounts importing a product with a clock ahead
    muted_share: float = 0.01  # checks an operator set to Workflow SUPPRESSED
    per_standard_share: float = 0.15  # accounts still on per-standard findings
    switch_share: float = 0.5  # of those, accounts that switch to consolidated findings
    duplicate_rate: float = 0.02  # EventBridge delivers an event twice
    echo_rate: float = 0.02  # a BatchUpdateFindings echo after an event
    max_jitter_ms: int = 2 * MINUTE_MS  # out-of-order arrival, well inside the 5 min hold
    envelope: bool = True  # EventBridge events (else bare ASFF findings)

    @property
    def end_ms(self) -> int:
        return self.start_ms + int(self.days * DAY_MS)


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth of one occurrence."""

    alert: bool
    truth: str
    finding_id: str

    @property
    def suppress(self) -> bool:
        return self.truth in EXPECTED_SUPPRESSIONS

    def to_json(self, line: int, index: int = 0) -> dict[str, Any]:
        return {"line": line, "index": index, "alert": self.alert, "truth": self.truth,
                "suppress": self.suppress, "finding_id": self.finding_id}


@dataclass(slots=True)
class Emitted:
    """One finding occurrence: the ASFF finding and its label."""

    at: int  # event time (UpdatedAt), ms
    finding: dict[str, Any]
    label: Label
    twin: Emitted | None = None  # the original of an EventBridge duplicate
    data: bytes | None = None  # the encoded line, once written


def iso(ms: int) -> str:
    """The common ASFF form, `YYYY-MM-DDTHH:MM:SS.sssZ`."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def account_id(n: int) -> str:
    return f"{200000000000 + n * 7919:012d}"


# -- one check: one (resource, control), its findings and their lives ---------------


@dataclass(slots=True)
class _Check:
    rng: random.Random
    profile: Profile
    account: str
    region: str
    resource_arn: str
    resource_type: str
    control: Control
    standards: tuple[str, ...]  # empty: consolidated findings
    switch_at: int | None  # when the account switches to consolidated findings
    muted: bool
    xrng: random.Random  # the newer situations' draws (escalation, inversion, ...)
    severity: str  # the control's severity now (an escalation raises it)
    unswitch_at: int | None = None  # when the account turns consolidated findings off
    unswitch_standards: tuple[str, ...] = ()  # ... and the standards it has enabled
    deleted_at: int | None = None  # the resource is deleted (all its checks archived)
    recreated_after: int | None = None  # ... and re-created under the same ARN this much later
    ids: dict[str | None, str] = field(default_factory=dict)  # standard -> finding Id
    created: dict[str | None, int] = field(default_factory=dict)
    status: str = "FAILED"
    workflow: str = "NEW"

    def new_id(self, standard: str | None, at: int) -> str:
        uid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        if standard is None:
            fid = (f"arn:aws:securityhub:{self.region}:{self.account}:security-control/"
                   f"{self.control.id}/finding/{uid}")
        else:
            fid = (f"arn:aws:securityhub:{self.region}:{self.account}:subscription/"
                   f"{STANDARDS[standard]}/{self.control.id}/finding/{uid}")
        self.ids[standard] = fid
        self.created[standard] = at
        return fid

    def finding(self, standard: str | None, at: int, status: str, *, record: str = "ACTIVE",
                previous: str | None = None, workflow: str | None = None,
                severity: str | None = None) -> dict[str, Any]:
        fid = self.ids[standard]
        created = iso(self.created[standard])
        updated = iso(at)
        generator = (f"security-control/{self.control.id}" if standard is None
                     else f"{STANDARDS[standard]}/{self.control.id}")
        compliance: dict[str, Any] = {
            "Status": status,
            "SecurityControlId": self.control.id,
            "AssociatedStandards": [{"StandardsId": f"standards/{STANDARDS[s]}"}
                                    for s in (self.standards or ("fsbp",))],
        }
        if status == "NOT_AVAILABLE":
            compliance["StatusReasons"] = [{
                "ReasonCode": "CONFIG_RETURNS_NOT_APPLICABLE",
                "Description": "This finding has a compliance status of NOT AVAILABLE because the "
                               "AWS Config rule returned NOT_APPLICABLE.",
            }]
        product_fields = {
            "RelatedAWSResources:0/type": "AWS::Config::ConfigRule",
            "aws/securityhub/ProductName": "Security Hub",
            "aws/securityhub/CompanyName": "AWS",
            "aws/securityhub/FindingId": f"arn:aws:securityhub:{self.region}::product/aws/"
                                         f"securityhub/{fid}",
        }
        if previous is not None:
            product_fields["PreviousComplianceStatus"] = previous
        severity = severity or self.severity
        return {
            "SchemaVersion": "2018-10-08",
            "Id": fid,
            "ProductArn": f"arn:aws:securityhub:{self.region}::product/aws/securityhub",
            "ProductName": "Security Hub",
            "CompanyName": "AWS",
            "Region": self.region,
            "GeneratorId": generator,
            "AwsAccountId": self.account,
            "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"],
            "FirstObservedAt": created,
            "LastObservedAt": updated,
            "CreatedAt": created,
            "UpdatedAt": updated,
            "Severity": {"Label": severity, "Normalized": _NORMALIZED[severity], "Original": severity},
            "Title": self.control.title,
            "ProductFields": product_fields,
            "Resources": [{"Type": self.resource_type, "Id": self.resource_arn, "Partition": "aws",
                           "Region": self.region}],
            "Compliance": compliance,
            "WorkflowState": "NEW",
            "Workflow": {"Status": workflow or self.workflow},
            "RecordState": record,
        }

    def findings(self) -> tuple[str | None, ...]:
        """The standards of its findings (None: one consolidated finding)."""
        return self.standards if self.standards else (None,)


_NORMALIZED = {"INFORMATIONAL": 0, "LOW": 1, "MEDIUM": 40, "HIGH": 70, "CRITICAL": 90}


def _check_events(c: _Check) -> Iterator[Emitted]:
    """One check's occurrences in event-time order."""
    p, rng, period = c.profile, c.rng, c.control.period_h * HOUR_MS
    pending: list[tuple[int, int, Emitted]] = []  # events scheduled ahead of the clock
    counter = 0

    def put(e: Emitted) -> None:
        nonlocal counter
        heapq.heappush(pending, (e.at, counter, e))
        counter += 1

    def emit(standard: str | None, at: int, status: str, truth: str, alert: bool = False,
             **kwargs: Any) -> None:
        put(Emitted(at, c.finding(standard, at, status, **kwargs), Label(alert, truth, c.ids[standard])))

    end = p.end_ms
    new_resource = rng.random() < p.new_resource_share
    c.status = "FAILED" if rng.random() < p.failing_share else "PASSED"
    if c.muted:
        c.workflow = "SUPPRESSED"
    if new_resource:
        t = p.start_ms + rng.randrange(int(0.1 * (end - p.start_ms)), int(0.9 * (end - p.start_ms)))
        for s in c.findings():
            c.new_id(s, t)
            alert = c.status == "FAILED" and not c.muted
            emit(s, t, c.status, "new_failure" if alert else "new_resource", alert)
    else:
        t = p.start_ms + rng.randrange(0, period)
        for s in c.findings():
            c.new_id(s, t - rng.randrange(2 * DAY_MS, 300 * DAY_MS))
            # Created before the feed and notified then (a notifier marked it NOTIFIED).
            if c.status == "FAILED" and not c.muted:
                c.workflow = "NOTIFIED"
            emit(s, t, c.status, "known")
    switched = False
    while True:
        t += period + (rng.randrange(-45 * MINUTE_MS, 45 * MINUTE_MS) if c.control.period_h == 18
                       else rng.randrange(0, 5 * MINUTE_MS))
        while pending and pending[0][0] <= t:
            e = heapq.heappop(pending)[2]
            if e.at < end:  # a return scheduled past the end is not in this feed
                yield e
        if t >= end:
            break
        failing = c.status == "FAILED"
        roll = rng.random()
        if c.switch_at is not None and not switched and t >= c.switch_at:
            switched = True
            t = _switch(c, t, emit)
            continue
        if c.unswitch_at is not None and t >= c.unswitch_at:
            c.unswitch_at = None
            t = _unswitch(c, t, emit)
            continue
        if c.deleted_at is not None and t >= c.deleted_at:
            for s in c.findings():
                emit(s, t, c.status, "deleted", record="ARCHIVED")
            c.deleted_at = None
            if c.recreated_after is not None:
                # A new resource under the same ARN; still misconfigured where it was
                # failing: a real new risk.
                again = t + c.recreated_after
                c.workflow = "SUPPRESSED" if c.muted else "NEW"
                alert = failing and not c.muted
                for s in c.findings():
                    c.new_id(s, again)
                    emit(s, again, c.status, "recreated_resource" if alert else "new_resource", alert)
                t = again
                continue
            break
        if c.control.status_dependent:
            if roll < p.flap_rate:
                t = _flap(c, t, emit)
                continue
            roll -= p.flap_rate
        if failing and roll < p.remediation_rate:
            c.status, c.workflow = "PASSED", "RESOLVED"
            for s in c.findings():
                emit(s, t, "PASSED", "remediated")
            continue
        if not failing and roll < p.regression_rate:
            c.status = "FAILED"
            c.workflow = "SUPPRESSED" if c.muted else "NEW"
            for s in c.findings():
                emit(s, t, "FAILED", "regression", not c.muted)
            continue
        for s in c.findings():
            emit(s, t, c.status, "update")
    while pending:  # scheduled before the end, happening after it: not in this feed
        e = heapq.heappop(pending)[2]
        if e.at < end:
            yield e


_MORE_SEVERE = {"INFORMATIONAL": "LOW", "LOW": "MEDIUM", "MEDIUM": "HIGH", "HIGH": "CRITICAL"}


def _flap(c: _Check, t: int, emit: Any) -> int:
    """The resource is unavailable at this evaluation (a backup, a paused cluster, a
    stopped instance): NOT_AVAILABLE + ARCHIVED; it comes back at a later evaluation,
    usually as a brand-new finding. Returns the time of the return.

    Also, from the check's own stream (`xrng`): a return more severe than before the
    archive (the control's severity raised meanwhile: a true alert); a muted check's
    re-creation back unmuted (`Workflow.Status` NEW, as Security Hub creates it: the
    mute carries over, unless it is more severe); and a re-creation stamped 1-3 min
    before its predecessor's archive (Security Hub archives the old finding in the
    evaluation that creates the new one, and stamps the archive after it)."""
    p, rng, period, x = c.profile, c.rng, c.control.period_h * HOUR_MS, c.xrng
    failing = c.status == "FAILED" and not c.muted
    if rng.random() < p.long_pause_share:
        back = t + rng.randrange(36 * HOUR_MS, 64 * HOUR_MS)  # paused over a weekend
    else:
        back = t + period + rng.randrange(0, HOUR_MS)
    reactivated = rng.random() < p.reactivation_share
    before = c.severity
    unmuted = (not reactivated and c.status == "FAILED" and c.muted
               and x.random() < p.unmuted_return_share)
    share = p.muted_escalation_share if unmuted else p.escalation_share if failing else 0.0
    escalated = before in _MORE_SEVERE and share > 0 and x.random() < share
    inverted = not reactivated and p.inversion_share > 0 and x.random() < p.inversion_share
    if not inverted:
        for s in c.findings():
            emit(s, t, "NOT_AVAILABLE", "flap_archive", record="ARCHIVED", previous=c.status)
    if escalated:
        c.severity = _MORE_SEVERE[before]
    if reactivated:
        truth = "escalated_reactivation" if escalated else "flap_reactivation"
        for s in c.findings():
            emit(s, back, c.status, truth if failing else "update", failing and escalated)
        return back
    old = {s: (c.ids[s], c.created[s]) for s in c.findings()}
    old_workflow = c.workflow  # the old finding keeps its own
    if unmuted:
        c.muted, c.workflow = False, "NEW"
        truth = "escalated_unmuted_recreation" if escalated else "unmuted_recreation"
    else:
        c.workflow = "SUPPRESSED" if c.muted else "NEW"
        truth = ("escalated_recreation" if escalated else "flap_recreation") if failing else "new_resource"
    for s in c.findings():
        c.new_id(s, back)
        emit(s, back, c.status, truth, truth in TRUE_ALERTS)
    now = {s: (c.ids[s], c.created[s]) for s in c.findings()}
    if inverted:
        # The old finding is archived only now, stamped 1-3 min after its re-creation.
        late = back + x.randrange(MINUTE_MS, 3 * MINUTE_MS + 1)
        for s in c.findings():
            c.ids[s], c.created[s] = old[s]
            emit(s, late, "NOT_AVAILABLE", "flap_archive", record="ARCHIVED", previous=c.status,
                 severity=before, workflow=old_workflow)
            c.ids[s], c.created[s] = now[s]
        return back
    # The old finding gets one more update at the same second.
    for s in c.findings():
        c.ids[s], c.created[s] = old[s]
        emit(s, back, "NOT_AVAILABLE", "flap_archive", record="ARCHIVED", previous="NOT_AVAILABLE",
             severity=before, workflow=old_workflow)
        c.ids[s], c.created[s] = now[s]
    return back


def _switch(c: _Check, t: int, emit: Any) -> int:
    """The consolidated-findings switch: every per-standard finding is archived and one
    consolidated finding is created, within 18 h of each other in either order."""
    rng = c.rng
    failing = c.status == "FAILED" and not c.muted
    for s in c.findings():
        emit(s, t + rng.randrange(0, 18 * HOUR_MS), c.status, "switch_archive", record="ARCHIVED")
    c.standards = ()
    created = t + rng.randrange(0, 18 * HOUR_MS)
    c.new_id(None, created)
    if c.workflow == "NOTIFIED":
        c.workflow = "NEW"
    emit(None, created, c.status, "consolidation_switch" if failing else "new_resource")
    return created


def _unswitch(c: _Check, t: int, emit: Any) -> int:
    """Consolidation turned off: the consolidated finding is archived and one
    per-standard finding per enabled standard is created, each within 18 h after it.
    Each replaces the consolidated finding (an expected suppression while failing);
    their later failures are their own."""
    failing = c.status == "FAILED" and not c.muted
    emit(None, t, c.status, "switch_archive", record="ARCHIVED")
    if c.workflow == "NOTIFIED":
        c.workflow = "NEW"
    c.standards = c.unswitch_standards
    last = t
    for s in c.standards:
        created = t + c.xrng.randrange(MINUTE_MS, 18 * HOUR_MS)
        c.new_id(s, created)
        emit(s, created, c.status, "consolidation_switch" if failing else "new_resource")
        last = max(last, created)
    return last


def _checks(profile: Profile) -> Iterator[_Check]:
    types = [rt for rt in CATALOGUE for _ in range(rt.weight)]
    for a in range(profile.accounts):
        account = account_id(a)
        arng = random.Random(f"{profile.seed}:account:{a}")
        per_standard = arng.random() < profile.per_standard_share
        switch_at = None
        if per_standard and arng.random() < profile.switch_share:
            span = profile.end_ms - profile.start_ms
            switch_at = profile.start_ms + arng.randrange(span // 4, 3 * span // 4)
        standards = tuple(sorted(arng.sample(sorted(STANDARDS), 2))) if per_standard else ()
        # Consolidation turned off (accounts on consolidated findings only), from a
        # stream of its own.
        urng = random.Random(f"{profile.seed}:unswitch:{a}")
        unswitch_at = None
        unswitch_standards: tuple[str, ...] = ()
        if not per_standard and urng.random() < profile.unswitch_share:
            span = profile.end_ms - profile.start_ms
            unswitch_at = profile.start_ms + urng.randrange(span // 4, 3 * span // 4)
            unswitch_standards = tuple(sorted(urng.sample(sorted(STANDARDS), 2)))
        span = profile.end_ms - profile.start_ms
        deleted_share = 1 - (1 - profile.deletion_rate) ** profile.days
        for region in profile.regions:
            for r in range(profile.resources_per_region):
                rng = random.Random(f"{profile.seed}:{a}:{region}:{r}")
                rt = rng.choice(types)
                name = f"{rt.asff_type.removeprefix('Aws').lower()[:10]}-{region[:2]}-{r:04d}-{a:04d}"
                arn = rt.arn.format(region=region, account=account, name=name)
                deleted_at = profile.start_ms + rng.randrange(span) if rng.random() < deleted_share else None
                recreated_after = (rng.randrange(10 * MINUTE_MS, 6 * HOUR_MS)
                                   if rng.random() < profile.same_arn_recreate_rate else None)
                if (recreated_after is None and rt.asff_type == "AwsLambdaFunction"
                        and profile.lambda_recreate_rate > 0):
                    lrng = random.Random(f"{profile.seed}:lambda:{a}:{region}:{r}")
                    if lrng.random() < profile.lambda_recreate_rate:
                        recreated_after = lrng.randrange(45 * MINUTE_MS, 90 * MINUTE_MS)
                for control in rt.controls:
                    yield _Check(
                        rng=random.Random(f"{profile.seed}:{a}:{region}:{r}:{control.id}"),
                        profile=profile, account=account, region=region, resource_arn=arn,
                        resource_type=rt.asff_type, control=control, standards=standards,
                        switch_at=switch_at, muted=rng.random() < profile.muted_share,
                        xrng=random.Random(f"{profile.seed}:{a}:{region}:{r}:{control.id}:x"),
                        severity=control.severity, unswitch_at=unswitch_at,
                        unswitch_standards=unswitch_standards,
                        deleted_at=deleted_at, recreated_after=recreated_after,
                    )


# -- a third-party product whose clock runs ahead ---------------------------------------

THIRD_PARTY_RULES = (
    ("open-admin-port", "Security group allows administrative ports from the internet", "HIGH"),
    ("unencrypted-volume", "EBS volume is not encrypted with a customer managed key", "MEDIUM"),
    ("stale-access-key", "IAM access key has not been rotated for 90 days", "MEDIUM"),
)
THIRD_PARTY_GENERATOR = "acme-posture-scanner"


def _third_party_events(profile: Profile, a: int, region: str, skew_ms: int) -> Iterator[Emitted]:
    """Findings an account imports from a product of its own (`BatchImportFindings`,
    ProductArn `product/{account}/default`, no `SecurityControlId`: the control is the
    GeneratorId), with a clock `skew_ms` (30-55 min) ahead of the true time, inside the
    1 h future tolerance. A few failures start during the feed (each a true alert: such
    findings never pair), are refreshed daily and some are remediated. `at` is the true
    time (arrival order); `UpdatedAt` is the skewed clock."""
    rng = random.Random(f"{profile.seed}:third-party:{a}:{region}")
    account = account_id(a)
    product = f"arn:aws:securityhub:{region}:{account}:product/{account}/default"
    span = profile.end_ms - profile.start_ms
    lives: list[Iterator[Emitted]] = []
    for n in range(rng.randint(1, 3)):
        rule, title, severity = rng.choice(THIRD_PARTY_RULES)
        born = profile.start_ms + rng.randrange(span // 20, 9 * span // 10)
        instance = f"i-{rng.getrandbits(64):016x}"
        fid = f"{product}/{THIRD_PARTY_GENERATOR}/{instance}/{rule}/{n}"
        events: list[Emitted] = []
        created = iso(born + skew_ms)
        t, status = born, "FAILED"
        while t < profile.end_ms:
            updated = iso(t + skew_ms)
            first = t == born
            finding = {
                "SchemaVersion": "2018-10-08",
                "Id": fid,
                "ProductArn": product,
                "ProductName": "Default",
                "CompanyName": "Personal",
                "Region": region,
                "GeneratorId": f"{THIRD_PARTY_GENERATOR}/{rule}",
                "AwsAccountId": account,
                "Types": ["Software and Configuration Checks/AWS Security Best Practices"],
                "FirstObservedAt": created,
                "LastObservedAt": updated,
                "CreatedAt": created,
                "UpdatedAt": updated,
                "Severity": {"Label": severity, "Normalized": _NORMALIZED[severity]},
                "Title": title,
                "ProductFields": {"aws/securityhub/ProductName": "Default",
                                  "aws/securityhub/CompanyName": "Personal",
                                  "aws/securityhub/FindingId": fid},
                "Resources": [{"Type": "AwsEc2Instance", "Partition": "aws", "Region": region,
                               "Id": f"arn:aws:ec2:{region}:{account}:instance/{instance}"}],
                "Compliance": {"Status": status},
                "WorkflowState": "NEW",
                "Workflow": {"Status": "NEW"},
                "RecordState": "ACTIVE",
            }
            truth = "third_party_failure" if first else "remediated" if status == "PASSED" \
                else "third_party_update"
            events.append(Emitted(t, finding, Label(first, truth, fid)))
            if status == "PASSED":
                break
            t += DAY_MS + rng.randrange(-HOUR_MS, HOUR_MS)
            if rng.random() < 0.1:
                status = "PASSED"
        lives.append(iter(events))
    return heapq.merge(*lives, key=lambda e: e.at)


def _third_party(profile: Profile) -> Iterator[Iterator[Emitted]]:
    """The third-party streams: a share of accounts, each with its own clock skew."""
    for a in range(profile.accounts):
        arng = random.Random(f"{profile.seed}:third-party:{a}")
        if arng.random() < profile.third_party_share:
            skew = arng.randrange(30 * MINUTE_MS, 55 * MINUTE_MS + 1)
            for region in profile.regions:
                yield _third_party_events(profile, a, region, skew)


def _deliveries(profile: Profile, events: Iterator[Emitted]) -> Iterator[Emitted]:
    """Delivery effects: arrival jitter (bounded), EventBridge duplicates, echoes."""
    rng = random.Random(f"{profile.seed}:delivery")
    heap: list[tuple[int, int, Emitted]] = []
    n = 0
    jitter = profile.max_jitter_ms
    for e in events:
        while heap and heap[0][0] <= e.at:
            yield heapq.heappop(heap)[2]
        arrival = e.at + rng.randrange(0, jitter + 1)
        heapq.heappush(heap, (arrival, n, e))
        n += 1
        if rng.random() < profile.duplicate_rate:
            copy = Emitted(e.at, e.finding, Label(False, "duplicate", e.label.finding_id), twin=e)
            heapq.heappush(heap, (arrival + rng.randrange(1, 60_000), n, copy))
            n += 1
        if rng.random() < profile.echo_rate and e.finding["RecordState"] == "ACTIVE":
            echoed = dict(e.finding, Workflow={"Status": "NOTIFIED"})
            echo = Emitted(e.at, echoed, Label(False, "echo", e.label.finding_id))
            heapq.heappush(heap, (arrival + rng.randrange(1_000, 90_000), n, echo))
            n += 1
    while heap:
        yield heapq.heappop(heap)[2]


def generate(profile: Profile) -> Iterator[Emitted]:
    """Every occurrence of the feed, in arrival order."""
    streams = [_check_events(c) for c in _checks(profile)]
    streams += _third_party(profile)
    merged = heapq.merge(*streams, key=lambda e: e.at)
    return _deliveries(profile, merged)


# -- the file writer ------------------------------------------------------------------


def labels_path(feed: Path) -> Path:
    """`feed.jsonl` -> `feed.labels.jsonl`; `feed.jsonl.gz` -> `feed.labels.jsonl.gz`."""
    name = feed.name
    for suffix in (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".gz"):
        if name.endswith(suffix):
            gz = ".gz" if suffix.endswith(".gz") else ""
            return feed.with_name(f"{name[: -len(suffix)]}.labels.jsonl{gz}")
    return feed.with_name(f"{name}.labels.jsonl")


def open_output(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.GzipFile(path, "wb", compresslevel=3)  # type: ignore[return-value]
    return path.open("wb")


def envelope(finding: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "detail-type": "Security Hub Findings - Imported",
        "source": "aws.securityhub",
        "account": finding["AwsAccountId"],
        "time": finding["UpdatedAt"][:19] + "Z",
        "region": finding["Region"],
        "resources": [finding["ProductFields"]["aws/securityhub/FindingId"]],
        "detail": {"findings": [finding]},
    }


@dataclass(slots=True)
class FeedStats:
    findings: int = 0
    true_alerts: int = 0
    expected_suppressions: int = 0
    first_ms: int | None = None
    last_ms: int | None = None


def write_feed(profile: Profile, out: Path) -> FeedStats:
    """Write the feed to `out` and its labels beside it (`labels_path`)."""
    stats = FeedStats()
    rng = random.Random(f"{profile.seed}:envelopes")
    with open_output(out) as feed, open_output(labels_path(out)) as labels:
        for line, e in enumerate(generate(profile), start=1):
            if e.twin is not None and e.twin.data is not None:
                data = e.twin.data  # an EventBridge duplicate is the same event, byte for byte
                e.twin = None
            else:
                doc = envelope(e.finding, rng) if profile.envelope else e.finding
                data = orjson.dumps(doc)
                e.data = data
            feed.write(data + b"\n")
            labels.write(orjson.dumps(e.label.to_json(line)) + b"\n")
            stats.findings += 1
            stats.true_alerts += e.label.alert
            stats.expected_suppressions += e.label.suppress
            stats.first_ms = e.at if stats.first_ms is None else min(stats.first_ms, e.at)
            stats.last_ms = e.at if stats.last_ms is None else max(stats.last_ms, e.at)
    return stats
