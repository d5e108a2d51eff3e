"""Test helpers: ASFF findings built from a public sample, envelopes, and small runners.

`finding(...)` starts from a published Security Hub sample (the consolidated
CloudTrail.2 control finding of the AWS documentation, or its per-standard FSBP
sibling, see `fixtures/public/SOURCES.md`) and overrides what a test cares about:
id, times, compliance status, record state, workflow, severity, product, standard,
account, region and resource. Times are written relative to `T0` with `at(...)`.

The runners feed findings through the real code paths: `Run` through the `Decider`
(events decided in the order given), `backtest(...)` through `run_backtest`
(partitions, hold and reorder buffer included).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from streams.backtest.run import Occurrence, run_backtest
from streams.core.decide import Decider, Outcome, rejected_outcome
from streams.core.findings import Finding, Rejected, parse_message
from streams.core.policy import Policy
from streams.core.state import Origin, Store

FIXTURES = Path(__file__).parent / "fixtures"
PUBLIC = FIXTURES / "public"
INCIDENT = FIXTURES / "incident-rds45.jsonl"
INCIDENT_EXPECTED = FIXTURES / "incident-rds45.expected.json"

CONSOLIDATED_TEMPLATE = "awsdocs-2023-sample-consolidated-security-control-cloudtrail2.json"
PER_STANDARD_TEMPLATE = "awsdocs-2023-sample-fsbp-cloudtrail2-standard-control.json"
IMPORTED_ENVELOPE_TEMPLATE = "asr-eventbridge-imported-afsbp-ec2.7-failed.json"
CUSTOM_ACTION_ENVELOPE_TEMPLATE = "asr-eventbridge-custom-action-cis-2.3-warning-s3-cross-region.json"

T0 = datetime(2025, 10, 1, tzinfo=UTC)
# The "wall clock" the parser checks future timestamps against: well after T0.
NOW_MS = int((T0 + timedelta(days=365)).timestamp()) * 1000

ACCOUNT = "123456789012"
REGION = "us-east-2"
CONTROL = "RDS.45"
RESOURCE = "arn:aws:rds:us-east-2:123456789012:cluster:orders-aurora"
OTHER_RESOURCE = "arn:aws:rds:us-east-2:123456789012:cluster:billing-aurora"
SECURITY_HUB_PRODUCT = "arn:aws:securityhub:{region}::product/aws/securityhub"
IMPORTED_PRODUCT = "arn:aws:securityhub:{region}:{account}:product/{account}/default"

FSBP = "aws-foundational-security-best-practices/v/1.0.0"
CIS140 = "cis-aws-foundations-benchmark/v/1.4.0"
NIST = "nist-800-53/v/5.0.0"

HOUR = 3_600_000
MINUTE = 60_000


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def at(*, days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0,
       ms: int = 0) -> str:
    """An ASFF timestamp relative to T0."""
    delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds, milliseconds=ms)
    return iso(T0 + delta)


def epoch_ms(text: str) -> int:
    """Exact epoch milliseconds of an ASFF timestamp (integer arithmetic, no floats)."""
    moment = datetime.fromisoformat(text)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


@functools.cache
def _public_bytes(name: str) -> bytes:
    return (PUBLIC / name).read_bytes()


def load_public(name: str) -> Any:
    """A fresh decoded copy of a public sample."""
    return orjson.loads(_public_bytes(name))


def finding_id(name: str, *, control: str = CONTROL, standard: str | None = None,
               account: str = ACCOUNT, region: str = REGION) -> str:
    if standard is None:
        return f"arn:aws:securityhub:{region}:{account}:security-control/{control}/finding/{name}"
    return f"arn:aws:securityhub:{region}:{account}:subscription/{standard}/{control}/finding/{name}"


def finding(
    name: str = "a",
    *,
    id: str | None = None,
    created: str | None = None,
    updated: str | None = None,
    status: str | None = "FAILED",
    previous_status: str | None = None,
    reason_codes: Sequence[str] = (),
    record_state: str | None = "ACTIVE",
    workflow: str | None = "NEW",
    severity: str | None = "MEDIUM",
    product: str = "securityhub",
    product_arn: str | None = None,
    standard: str | None = None,
    generator_id: str | None = None,
    control: str | None = CONTROL,
    account: str = ACCOUNT,
    region: str | None = REGION,
    resource: str = RESOURCE,
    resource_type: str = "AwsRdsDbCluster",
    resource_region: str | None = None,
    title: str | None = None,
    drop: Iterable[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    """One ASFF finding from the public sample, with overrides.

    `standard=None` makes a consolidated finding (GeneratorId `security-control/...`),
    a standard such as `FSBP` a per-standard one (GeneratorId `<standard>/<control>`).
    `product="imported"` makes a BatchImportFindings finding of the member account.
    `control=None` drops `Compliance.SecurityControlId` (the control id is then the
    GeneratorId). `status=None` drops `Compliance` altogether. `drop` removes fields by
    dotted path (`"Region"`, `"Resources.0.Region"`); `extra` sets top-level fields.
    """
    template = CONSOLIDATED_TEMPLATE if standard is None else PER_STANDARD_TEMPLATE
    obj: dict[str, Any] = load_public(template)
    region_text = region or REGION
    created = created or at()
    updated = updated or created
    control_text = control or "RDS.45"
    obj["Id"] = id or finding_id(name, control=control_text, standard=standard,
                                 account=account, region=region_text)
    if product_arn is None:
        if product == "securityhub":
            product_arn = SECURITY_HUB_PRODUCT.format(region=region_text)
        elif product == "imported":
            product_arn = IMPORTED_PRODUCT.format(region=region_text, account=account)
        else:
            product_arn = product
    obj["ProductArn"] = product_arn
    if generator_id is None:
        generator_id = (f"security-control/{control_text}" if standard is None
                        else f"{standard}/{control_text}")
    obj["GeneratorId"] = generator_id
    obj["AwsAccountId"] = account
    if region is None:
        obj.pop("Region", None)
    else:
        obj["Region"] = region
    obj["CreatedAt"] = created
    obj["FirstObservedAt"] = created
    obj["UpdatedAt"] = updated
    obj["LastObservedAt"] = updated
    obj["Title"] = title or f"{control_text} test finding {name}"
    if severity is None:
        obj.pop("Severity", None)
        obj.pop("FindingProviderFields", None)
    else:
        obj["Severity"] = {"Label": severity, "Original": severity}
    obj["Resources"] = [{
        "Type": resource_type,
        "Id": resource,
        "Partition": "aws",
        "Region": resource_region or region_text,
    }]
    product_fields = obj.setdefault("ProductFields", {})
    product_fields["Resources:0/Id"] = resource
    product_fields["aws/securityhub/FindingId"] = f"{product_arn}/{obj['Id']}"
    if standard is not None:
        product_fields["StandardsArn"] = f"arn:aws:securityhub:::standards/{standard}"
        product_fields["ControlId"] = control_text
    if previous_status is None:
        product_fields.pop("PreviousComplianceStatus", None)
    else:
        product_fields["PreviousComplianceStatus"] = previous_status
    if status is None:
        obj.pop("Compliance", None)
    else:
        compliance = obj["Compliance"]
        compliance["Status"] = status
        if control is None:
            compliance.pop("SecurityControlId", None)
        else:
            compliance["SecurityControlId"] = control
        if reason_codes:
            compliance["StatusReasons"] = [
                {"ReasonCode": code, "Description": f"test reason {code}"} for code in reason_codes
            ]
    if record_state is None:
        obj.pop("RecordState", None)
    else:
        obj["RecordState"] = record_state
    if workflow is None:
        obj.pop("Workflow", None)
        obj.pop("WorkflowState", None)
    else:
        obj["Workflow"] = {"Status": workflow}
        obj["WorkflowState"] = "NEW"
    for path in drop:
        _drop(obj, path)
    obj.update(extra)
    return obj


def _drop(obj: Any, path: str) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    if isinstance(obj, list):
        del obj[int(last)]
    else:
        obj.pop(last, None)


def change_path(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set (or, with the value "<delete>", remove) a nested field in place; a path
    through a missing or non-object field changes nothing."""
    target: Any = obj
    for name in path[:-1]:
        target = target.get(name) if isinstance(target, dict) else None
    if isinstance(target, dict):
        if value == "<delete>":
            target.pop(path[-1], None)
        else:
            target[path[-1]] = copy.deepcopy(value)


def evolve(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A later event of the same finding: a deep copy with top-level ASFF fields changed
    and, for convenience, `updated=`, `status=`, `record_state=`, `workflow=`,
    `severity=`, `previous_status=`."""
    obj = copy.deepcopy(base)
    if "updated" in changes:
        obj["UpdatedAt"] = obj["LastObservedAt"] = changes.pop("updated")
    if "status" in changes:
        obj["Compliance"]["Status"] = changes.pop("status")
    if "record_state" in changes:
        obj["RecordState"] = changes.pop("record_state")
    if "workflow" in changes:
        obj["Workflow"] = {"Status": changes.pop("workflow")}
    if "severity" in changes:
        label = changes.pop("severity")
        obj["Severity"] = {"Label": label, "Original": label}
    if "previous_status" in changes:
        obj["ProductFields"]["PreviousComplianceStatus"] = changes.pop("previous_status")
    if "reason_codes" in changes:
        obj["Compliance"]["StatusReasons"] = [{"ReasonCode": c} for c in changes.pop("reason_codes")]
    obj.update(changes)
    return obj


def archived(base: dict[str, Any], updated: str, **changes: Any) -> dict[str, Any]:
    """The archive Security Hub writes when Config says NOT_APPLICABLE (docs/design.md §1)."""
    changes.setdefault("status", "NOT_AVAILABLE")
    changes.setdefault("previous_status", base.get("Compliance", {}).get("Status", "FAILED"))
    changes.setdefault("reason_codes", ["CONFIG_RETURNS_NOT_APPLICABLE"])
    return evolve(base, updated=updated, record_state="ARCHIVED", **changes)


def envelope(findings: list[Any], *, detail_type: str = "Security Hub Findings - Imported",
             account: str = "999999999999", region: str = "eu-west-1") -> dict[str, Any]:
    """An EventBridge event from the public ASR sample, carrying `findings`. Its account
    and Region are deliberately those of an administrator / aggregation Region."""
    name = (CUSTOM_ACTION_ENVELOPE_TEMPLATE if detail_type.endswith("Custom Action")
            else IMPORTED_ENVELOPE_TEMPLATE)
    event: dict[str, Any] = load_public(name)
    event["detail-type"] = detail_type
    event["account"] = account
    event["region"] = region
    event["detail"]["findings"] = findings
    return event


def page(findings: list[Any]) -> dict[str, Any]:
    """A GetFindings response page."""
    return {"Findings": findings, "NextToken": "token"}


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def jsonl(objects: Iterable[Any]) -> bytes:
    return b"".join(orjson.dumps(o) + b"\n" for o in objects)


def parse(obj: Any, *, policy: Policy | None = None, now_ms: int = NOW_MS) -> list[Finding | Rejected]:
    data = obj if isinstance(obj, bytes) else dumps(obj)
    return parse_message(data, policy=policy or Policy(), now_ms=now_ms)


def parse_one(obj: Any, *, policy: Policy | None = None, now_ms: int = NOW_MS) -> Finding:
    [parsed] = parse(obj, policy=policy, now_ms=now_ms)
    assert isinstance(parsed, Finding), parsed
    return parsed


class Run:
    """Decides events one by one, in the order given, through one `Decider` and store."""

    def __init__(self, policy: Policy | None = None, *, store: Store | None = None,
                 now_ms: int = NOW_MS) -> None:
        self.policy = policy or Policy()
        self.store = store or Store.in_memory()
        self.decider = Decider(self.store, self.policy, 0)
        self.now_ms = now_ms
        self.outcomes: list[Outcome] = []

    def __call__(self, obj: Any) -> Outcome:
        [outcome] = self.all(obj)
        return outcome

    def all(self, obj: Any) -> list[Outcome]:
        """Every outcome of one message (an envelope or page may hold several)."""
        line = len(self.outcomes) + 1
        out = []
        for index, parsed in enumerate(parse(obj, policy=self.policy, now_ms=self.now_ms)):
            origin = Origin("test", line, index)
            if isinstance(parsed, Rejected):
                out.append(rejected_outcome(parsed, origin))
            else:
                out.append(self.decider.decide(parsed, origin))
        self.outcomes.extend(out)
        return out

    def many(self, *objs: Any) -> list[Outcome]:
        return [self(obj) for obj in objs]


def occurrences(messages: Iterable[Any], *, policy: Policy | None = None,
                now_ms: int = NOW_MS, source: str = "test") -> list[Occurrence]:
    """Occurrences as `read_occurrences` makes them, one message per line."""
    policy = policy or Policy()
    out: list[Occurrence] = []
    for line, message in enumerate(messages, start=1):
        data = message if isinstance(message, bytes) else dumps(message)
        for index, parsed in enumerate(parse_message(data, policy=policy, now_ms=now_ms)):
            out.append(Occurrence(len(out), Origin(source, line, index), parsed))
    return out


def backtest(messages: Iterable[Any], *, policy: Policy | None = None, partitions: int = 1,
             now_ms: int = NOW_MS) -> list[Outcome]:
    """Decisions of `run_backtest` over the messages, in input order."""
    policy = policy or Policy()
    decided: list[Outcome] = []
    run_backtest(occurrences(messages, policy=policy, now_ms=now_ms), policy=policy,
                 partitions=partitions, on_decision=decided.append)
    return decided


def summary(outcome: Outcome) -> tuple[str, str | None]:
    """(decision, kind or reason): what the tables of docs/design.md §3 name."""
    return outcome.decision.value, outcome.kind_or_reason


def policy(**durations: str | int) -> Policy:
    """A Policy from durations such as `window="1h"` (strings) or milliseconds (ints)."""
    from streams.config import parse_duration_ms

    values: dict[str, Any] = {}
    for name, value in durations.items():
        if name == "min_severity":
            values[name] = value
            continue
        values[f"{name}_ms"] = parse_duration_ms(value) if isinstance(value, str) else value
    return Policy(**values)
