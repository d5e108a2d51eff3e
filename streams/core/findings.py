"""Parsing Security Hub input into findings: bare ASFF, EventBridge envelopes, pages.

Pure: bytes or decoded JSON in, `Finding` or `Rejected` out. No exception escapes
`parse_message` or `parse_document`; bad input becomes a `Rejected` with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from streams.core.policy import Policy, Severity

SECURITY_HUB_PRODUCT_SUFFIX = "product/aws/securityhub"


CONSOLIDATED_PREFIX = "security-control/"


FINDINGS_DETAIL_TYPES = frozenset(
    {"Security Hub Findings - Imported", "Security Hub Findings - Custom Action"}
)


FAILING = frozenset({"FAILED", "WARNING"})


NOT_AVAILABLE = "NOT_AVAILABLE"


ACTIVE = "ACTIVE"


ARCHIVED = "ARCHIVED"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_MAX_ID_LENGTH = 512


# ASFF Severity.Normalized bands, used when a finding carries no Label.
_NORMALIZED_BANDS = ((90, Severity.CRITICAL), (70, Severity.HIGH), (40, Severity.MEDIUM),
                     (1, Severity.LOW), (0, Severity.INFORMATIONAL))


# A msgspec Struct, not a dataclass: its __init__ is C, where a dataclass's is a Python
# function that set these 19 fields one by one at about the cost of the rest of parsing
# a finding. Frozen (and so hashable); `gc=False`: it holds only strings and numbers.
# `array_like`: msgspec writes it as a JSON array (the worker's reorder buffer holds
# findings: see `streams.state`); `to_json` is its object form, field by field.
class Finding(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """The fields of one ASFF finding that decisions, keys and alerts use."""

    id: str
    product_arn: str
    generator_id: str
    account: str
    region: str
    control_id: str
    resource_id: str
    resource_type: str
    created_at: int  # epoch milliseconds
    updated_at: int
    created_at_text: str
    updated_at_text: str
    title: str
    severity: Severity
    compliance_status: str | None
    previous_compliance_status: str | None
    reason_codes: tuple[str, ...]
    record_state: str
    workflow_status: str | None

    @property
    def partition_key(self) -> str:
        """account | region | control | primary resource: findings that may pair share it."""
        return f"{self.account}|{self.region}|{self.control_id}|{self.resource_id}"

    @property
    def standard(self) -> str | None:
        """The standard of a per-standard finding (its GeneratorId); None when consolidated."""
        return None if self.generator_id.startswith(CONSOLIDATED_PREFIX) else self.generator_id

    @property
    def is_control_finding(self) -> bool:
        """Only Security Hub's own control findings may pair (forged-product rule)."""
        return self.product_arn.endswith(SECURITY_HUB_PRODUCT_SUFFIX)

    @property
    def failing(self) -> bool:
        """FAILED or WARNING; a finding without Compliance counts as failing while ACTIVE."""
        return self.compliance_status is None or self.compliance_status in FAILING

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__struct_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        values = dict(data)
        values["severity"] = Severity(values["severity"])
        values["reason_codes"] = tuple(values["reason_codes"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input that cannot be decided on: it becomes a `dead_letter` decision."""

    reason: str
    raw: bytes
    finding_id: str | None = None


Parsed = Finding | Rejected


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_timestamp(text: str) -> int:
    """RFC 3339 text -> epoch milliseconds (a missing offset means UTC)."""
    # A finding's CreatedAt comes back with every update of it: remember recent texts.
    ms = _TIMESTAMPS.get(text)
    return _parse_timestamp(text) if ms is None else ms


def _parse_timestamp(text: str) -> int:
    """`parse_timestamp` without looking in the cache; the cache then holds the text."""
    ms = _timestamp_ms(text)
    if len(_TIMESTAMPS) >= _TIMESTAMP_CACHE_SIZE:
        _TIMESTAMPS.clear()
    _TIMESTAMPS[text] = ms
    return ms


def _timestamp_ms(text: str) -> int:
    """RFC 3339 text -> epoch milliseconds, neither looked up nor kept in the cache."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic: `timestamp() * 1000` loses a millisecond for some dates. The
    # milliseconds are the floor of the microseconds, as `// timedelta(milliseconds=1)`
    # gives them at twice the cost.
    since = moment - _EPOCH
    ms: int = since.days * 86_400_000 + since.seconds * 1000 + since.microseconds // 1000
    return ms


_TIMESTAMPS: dict[str, int] = {}


_TIMESTAMP_CACHE_SIZE = 65_536


def _text(obj: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = obj.get(name)
    if value is None or value == "":
        if required:
            raise _Bad(f"missing_field:{name}")
        return ""
    if not isinstance(value, str):
        raise _Bad(f"malformed_field:{name}")
    return value


def _optional_text(obj: Any, name: str) -> str | None:
    if not isinstance(obj, dict):
        return None
    value = obj.get(name)
    return value if isinstance(value, str) and value else None


def _time(obj: dict[str, Any], name: str) -> tuple[int, str]:
    text = _text(obj, name)
    try:
        return parse_timestamp(text), text
    except (ValueError, OverflowError, OSError):
        raise _Bad(f"malformed_field:{name}") from None


def _severity(obj: Any) -> Severity:
    if isinstance(obj, dict):
        label = obj.get("Label")
        if isinstance(label, str) and label.upper() in Severity.__members__:
            return Severity[label.upper()]
        normalized = obj.get("Normalized")
        if isinstance(normalized, int | float) and not isinstance(normalized, bool):
            for floor, severity in _NORMALIZED_BANDS:
                if normalized >= floor:
                    return severity
    # Unknown severity fails loud: never silently below the minimum.
    return Severity.HIGH


def _region_from_arn(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 else ""


_SEVERITY_LABELS = {s.name: s for s in Severity}


def _fast_finding(obj: dict[str, Any], policy: Policy, now_ms: int) -> Finding | None:
    """The common case of `finding_from_json` in one straight pass: every field present
    and of its usual type. Returns None for anything else, which the general path then
    decides (including every rejection), so both give the same result."""
    get = obj.get
    try:
        finding_id = obj["Id"]
        product_arn = obj["ProductArn"]
        generator_id = obj["GeneratorId"]
        account = obj["AwsAccountId"]
        created_text = obj["CreatedAt"]
        updated_text = obj["UpdatedAt"]
        region = obj["Region"]
        resources = obj["Resources"]
    except KeyError:
        return None
    if not (type(finding_id) is str and finding_id and type(product_arn) is str and product_arn
            and type(generator_id) is str and generator_id and type(account) is str and account
            and type(created_text) is str and created_text and type(updated_text) is str
            and updated_text and type(region) is str and region
            and type(resources) is list and resources):
        return None
    primary = resources[0]
    if type(primary) is not dict:
        return None
    resource_id = primary.get("Id")
    if type(resource_id) is not str or not resource_id:
        return None
    try:
        created_at = parse_timestamp(created_text)
        updated_at = parse_timestamp(updated_text)
    except (ValueError, OverflowError, OSError):
        return None
    if updated_at > now_ms + policy.future_tolerance_ms or created_at > updated_at:
        return None
    compliance = get("Compliance")
    control_id = generator_id
    status = None
    reason_codes: tuple[str, ...] = ()
    if type(compliance) is dict:
        value = compliance.get("SecurityControlId")
        if type(value) is str and value:
            control_id = value
        value = compliance.get("Status")
        if type(value) is str and value:
            status = value
        reasons = compliance.get("StatusReasons")
        if type(reasons) is list:
            reason_codes = tuple(
                r["ReasonCode"] for r in reasons
                if isinstance(r, dict) and isinstance(r.get("ReasonCode"), str)
            )
    elif compliance is not None:
        return None
    severity_obj = get("Severity")
    severity = None
    if type(severity_obj) is dict:
        label = severity_obj.get("Label")
        if type(label) is str:
            severity = _SEVERITY_LABELS.get(label)
    if severity is None:
        severity = _severity(severity_obj)
    product_fields = get("ProductFields")
    previous = None
    if type(product_fields) is dict:
        value = product_fields.get("PreviousComplianceStatus")
        if type(value) is str and value:
            previous = value
    resource_type = primary.get("Type")
    title = get("Title")
    record_state = get("RecordState")
    workflow = get("Workflow")
    workflow_status = workflow.get("Status") if type(workflow) is dict else None
    if type(workflow_status) is not str or not workflow_status:
        value = get("WorkflowState")
        workflow_status = value if type(value) is str and value else None
    return Finding(
        finding_id,
        product_arn,
        generator_id,
        account,
        region,
        control_id,
        resource_id,
        resource_type if type(resource_type) is str and resource_type else "",
        created_at,
        updated_at,
        created_text,
        updated_text,
        title if type(title) is str and title else "",
        severity,
        status,
        previous,
        reason_codes,
        record_state if type(record_state) is str and record_state else ACTIVE,
        workflow_status,
    )


def finding_from_json(obj: Any, *, policy: Policy, now_ms: int) -> Finding:
    """Validate one decoded ASFF finding; raises `_Bad` with the dead-letter reason."""
    if type(obj) is dict:
        fast = _fast_finding(obj, policy, now_ms)
        if fast is not None:
            return fast
    if not isinstance(obj, dict) or ("Id" not in obj and "SchemaVersion" not in obj):
        raise _Bad("not_a_finding")
    finding_id = _text(obj, "Id")
    product_arn = _text(obj, "ProductArn")
    generator_id = _text(obj, "GeneratorId")
    account = _text(obj, "AwsAccountId")
    created_at, created_text = _time(obj, "CreatedAt")
    updated_at, updated_text = _time(obj, "UpdatedAt")
    resources = obj.get("Resources")
    if not isinstance(resources, list) or not resources:
        raise _Bad("missing_field:Resources")
    primary = resources[0]
    if not isinstance(primary, dict):
        raise _Bad("malformed_field:Resources")
    try:
        resource_id = _text(primary, "Id")
    except _Bad as bad:
        raise _Bad(bad.reason.replace(":Id", ":Resources[0].Id")) from None
    if updated_at > now_ms + policy.future_tolerance_ms:
        raise _Bad("future_timestamp")
    if created_at > updated_at:
        raise _Bad("bad_timestamps")
    region = (
        _text(obj, "Region", required=False)
        or (_optional_text(primary, "Region") or "")
        or _region_from_arn(product_arn)
    )
    compliance = obj.get("Compliance")
    product_fields = obj.get("ProductFields")
    control_id = _optional_text(compliance, "SecurityControlId") or generator_id
    reasons = compliance.get("StatusReasons") if isinstance(compliance, dict) else None
    reason_codes = tuple(
        r["ReasonCode"] for r in reasons or ()
        if isinstance(r, dict) and isinstance(r.get("ReasonCode"), str)
    ) if isinstance(reasons, list) else ()
    return Finding(
        id=finding_id,
        product_arn=product_arn,
        generator_id=generator_id,
        account=account,
        region=region,
        control_id=control_id,
        resource_id=resource_id,
        resource_type=_optional_text(primary, "Type") or "",
        created_at=created_at,
        updated_at=updated_at,
        created_at_text=created_text,
        updated_at_text=updated_text,
        title=_optional_text(obj, "Title") or "",
        severity=_severity(obj.get("Severity")),
        compliance_status=_optional_text(compliance, "Status"),
        previous_compliance_status=_optional_text(product_fields, "PreviousComplianceStatus"),
        reason_codes=reason_codes,
        record_state=_optional_text(obj, "RecordState") or ACTIVE,
        workflow_status=_optional_text(obj.get("Workflow"), "Status")
        or _optional_text(obj, "WorkflowState"),
    )


def finding_items(document: Any) -> list[Any] | None:
    """The finding candidates in a decoded document; None when it holds none. An array
    may hold findings, envelopes and pages alike; their findings are taken in order."""
    if isinstance(document, list):
        out: list[Any] = []
        for element in document:
            inner = finding_items(element) if isinstance(element, dict) else None
            out.extend(inner or [element])  # nothing inside: the element is rejected
        return out
    if not isinstance(document, dict):
        return None
    if "detail-type" in document or ("detail" in document and "source" in document):
        if not _findings_event(document):
            return None
        detail = document.get("detail")
        findings = detail.get("findings") if isinstance(detail, dict) else None
        return findings if isinstance(findings, list) else None
    if "Findings" in document and "Id" not in document:
        findings = document["Findings"]
        return findings if isinstance(findings, list) else None
    return [document]


def _findings_event(envelope: dict[str, Any]) -> bool:
    # A detail-type of another type (a list, say) is no findings event: it must not
    # reach the set, which would raise for an unhashable one.
    detail_type = envelope.get("detail-type")
    return type(detail_type) is str and detail_type in FINDINGS_DETAIL_TYPES


def _raw(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return repr(obj).encode()


def _candidate_id(obj: Any) -> str | None:
    """The `Id` of a rejected finding, for the dead-letter headers: only a plausible
    one (ASFF caps it at 512 characters), never a header-sized payload."""
    value = obj.get("Id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and len(value) <= _MAX_ID_LENGTH else None


def within_limits_by_size(raw: bytes, policy: Policy) -> bool:
    """True when the bytes alone prove every finding in them keeps the depth and
    string limits: no more opening brackets than the depth limit, no more bytes than
    the string limit. C-speed passes over the bytes, so that ordinary messages are
    never walked."""
    # The brackets are what removing them removes: `replace` finds them with memchr,
    # several times faster than `count` or `translate` on a 2 KB finding.
    return (len(raw) <= policy.max_string_length
            and len(raw) - len(raw.replace(b"{", b"").replace(b"[", b"")) <= policy.max_depth)


def limit_violation(value: Any, policy: Policy) -> str | None:
    """`too_deep` or `string_too_long` when a decoded finding breaks a limit, else None.

    Iterative, so a deep document cannot exhaust the stack; stops at the first breach.
    """
    max_depth = policy.max_depth
    max_length = policy.max_string_length
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            if depth > max_depth:
                return "too_deep"
            for key, child in node.items():
                if len(key) > max_length:
                    return "string_too_long"
                stack.append((child, depth + 1))
        elif type(node) is list:
            if depth > max_depth:
                return "too_deep"
            stack.extend((child, depth + 1) for child in node)
        elif type(node) is str and len(node) > max_length:
            return "string_too_long"
    return None


def parse_document(
    document: Any, raw: bytes, *, policy: Policy, now_ms: int
) -> list[Parsed]:
    """Every finding occurrence of one decoded document, in order; at least one entry.

    A bad finding inside a good envelope or page is rejected alone: a finding over
    the depth or string limit cannot take its neighbours down with it. `raw` is the
    document's bytes (empty when there are none, as for API pages).
    """
    items = finding_items(document)
    if items is None:
        reason = "not_a_finding"
        if isinstance(document, dict) and _findings_event(document):
            reason = "malformed_envelope"
        return [Rejected(reason, raw)]
    if not items:
        return [Rejected("empty_envelope", raw)]
    if len(items) > policy.max_findings_per_message:
        return [Rejected("too_many_findings", raw)]
    single = len(items) == 1 and items[0] is document
    screened = bool(raw) and within_limits_by_size(raw, policy)
    return [_parse_item(item, raw if single else None, screened, policy, now_ms) for item in items]


def item_limit_violation(item: Any, policy: Policy) -> str | None:
    """`limit_violation` of one finding of a larger document (a page, an envelope of
    several): the byte screen over the finding's own JSON first, which an ordinary
    finding passes at a tenth of the cost of the walk (the document as a whole has
    more brackets and bytes than any one finding may have)."""
    try:
        if within_limits_by_size(orjson.dumps(item), policy):
            return None
    except orjson.JSONEncodeError:  # deeper than orjson goes: the walk says how
        pass
    return limit_violation(item, policy)


def _parse_item(item: Any, raw: bytes | None, screened: bool, policy: Policy, now_ms: int) -> Parsed:
    """One finding of a document; `raw` is its bytes when it is the whole document."""
    try:
        reason = None
        if not screened:
            reason = limit_violation(item, policy) if raw is not None else item_limit_violation(item, policy)
        if reason is None:
            return finding_from_json(item, policy=policy, now_ms=now_ms)
    except _Bad as bad:
        reason = bad.reason
    except Exception as exc:  # defensive: a parser bug must not lose input
        reason = f"parser_error:{type(exc).__name__}"
    return Rejected(reason, _raw(item) if raw is None else raw, _candidate_id(item))


def parse_message(data: bytes, *, policy: Policy, now_ms: int) -> list[Parsed]:
    """One Kafka message value (or one JSON Lines line) -> its finding occurrences."""
    fast = envelope_finding(data, policy=policy, now_ms=now_ms)
    if fast is not None:
        return [fast]
    if len(data) <= policy.max_message_bytes:
        page = page_findings(data, policy=policy, now_ms=now_ms)
        if page is not None:
            return page
    return parse_general(data, policy=policy, now_ms=now_ms)


def parse_general(data: bytes, *, policy: Policy, now_ms: int) -> list[Parsed]:
    """`parse_message` without its fast paths: orjson decodes the whole message (the
    limit `scripts/bench` measures the worker against parses this way)."""
    if len(data) > policy.max_message_bytes:
        return [Rejected("oversized", data)]
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [Rejected("unparseable", data)]
    return parse_document(document, data, policy=policy, now_ms=now_ms)


# Fast paths (one-finding EventBridge envelope; page): msgspec decodes only these
# fields, strictly typed; any other type, or anything `_wire_finding` is unsure of, takes
# the general orjson path, so both give the same finding (one known difference, `1e400`
# in an unread field: docs/security.md). `gc=False`: short-lived, no cycles. Fields are
# in the order Security Hub writes them: msgspec then finds each key at the first
# comparison (about 1,000 instructions per finding; docs/performance.md). Keep that order.
class _WireResource(msgspec.Struct, gc=False):
    Type: str | None = None
    Id: str | None = None


class _WireReason(msgspec.Struct, gc=False):
    ReasonCode: str | None = None


class _WireCompliance(msgspec.Struct, gc=False):
    Status: str | None = None
    SecurityControlId: str | None = None
    StatusReasons: list[_WireReason] | None = None


class _WireSeverity(msgspec.Struct, gc=False):
    Label: str | None = None


class _WireProductFields(msgspec.Struct, gc=False):
    PreviousComplianceStatus: str | None = None


class _WireWorkflow(msgspec.Struct, gc=False):
    Status: str | None = None


class _WireFinding(msgspec.Struct, gc=False):
    Id: str | None = None
    ProductArn: str | None = None
    Region: str | None = None
    GeneratorId: str | None = None
    AwsAccountId: str | None = None
    CreatedAt: str | None = None
    UpdatedAt: str | None = None
    Severity: _WireSeverity | None = None
    Title: str | None = None
    ProductFields: _WireProductFields | None = None
    Resources: list[_WireResource] | None = None
    Compliance: _WireCompliance | None = None
    WorkflowState: str | None = None
    Workflow: _WireWorkflow | None = None
    RecordState: str | None = None


class _WireDetail(msgspec.Struct, gc=False):
    findings: list[_WireFinding] | None = None


class _WireEnvelope(msgspec.Struct, gc=False, rename={"detail_type": "detail-type"}):
    detail_type: str | None = None
    detail: _WireDetail | None = None


_decode_envelope = msgspec.json.Decoder(_WireEnvelope).decode


def envelope_finding(data: bytes, policy: Policy, now_ms: int) -> Finding | None:
    """The finding of a message that is an EventBridge envelope of exactly one ordinary
    finding, as `parse_message` gives it; None for any other message (which
    `parse_message` then decides on its general path). Its arguments may be given by
    position: the backtests call it per message, and keywords cost a little per call."""
    size = len(data)
    if size > policy.max_message_bytes:
        return None
    # msgspec does not check the UTF-8 of the fields it skips, where orjson rejects
    # bad UTF-8: only pure ASCII takes the fast path. Then `within_limits_by_size`,
    # inlined: this runs per message.
    if (not data.isascii() or size > policy.max_string_length
            or size - len(data.replace(b"{", b"").replace(b"[", b"")) > policy.max_depth):
        return None
    try:
        envelope = _decode_envelope(data)
    except Exception:  # any doubt (malformed, another type, too deep): the general path
        return None
    detail = envelope.detail
    if detail is None or envelope.detail_type not in FINDINGS_DETAIL_TYPES:
        return None
    items = detail.findings
    if items is None or len(items) != 1:
        return None
    return _wire_finding(items[0], policy, now_ms)


def _wire_finding(wire: _WireFinding, policy: Policy, now_ms: int) -> Finding | None:
    """`_fast_finding` over msgspec's decoded fields (their types are checked); None
    when the general path must say what the finding is (a rejection, say)."""
    finding_id = wire.Id
    product_arn = wire.ProductArn
    generator_id = wire.GeneratorId
    account = wire.AwsAccountId
    created_text = wire.CreatedAt
    updated_text = wire.UpdatedAt
    region = wire.Region
    resources = wire.Resources
    severity_obj = wire.Severity
    if not (finding_id and product_arn and generator_id and account and created_text
            and updated_text and region and resources and severity_obj is not None):
        return None
    severity = _SEVERITY_LABELS.get(severity_obj.Label)  # type: ignore[arg-type]
    primary = resources[0]
    resource_id = primary.Id
    if severity is None or not resource_id:
        return None
    # `parse_timestamp`, inlined: CreatedAt is usually in its cache.
    created_at = _TIMESTAMPS.get(created_text)
    updated_at = _TIMESTAMPS.get(updated_text)
    try:
        if created_at is None:
            created_at = _parse_timestamp(created_text)
        if updated_at is None:  # the usual miss: each update has its own time, not kept
            updated_at = _timestamp_ms(updated_text)
    except (ValueError, OverflowError, OSError):
        return None
    if updated_at > now_ms + policy.future_tolerance_ms or created_at > updated_at:
        return None
    compliance = wire.Compliance
    control_id = generator_id
    status = None
    reason_codes: tuple[str, ...] = ()
    if compliance is not None:
        control_id = compliance.SecurityControlId or generator_id
        status = compliance.Status or None
        reasons = compliance.StatusReasons
        if reasons:
            reason_codes = tuple(r.ReasonCode for r in reasons if r.ReasonCode is not None)
    product_fields = wire.ProductFields
    previous = (product_fields.PreviousComplianceStatus or None) if product_fields is not None else None
    workflow = wire.Workflow
    return Finding(
        finding_id,
        product_arn,
        generator_id,
        account,
        region,
        control_id,
        resource_id,
        primary.Type or "",
        created_at,
        updated_at,
        created_text,
        updated_text,
        wire.Title or "",
        severity,
        status,
        previous,
        reason_codes,
        wire.RecordState or ACTIVE,
        (workflow.Status if workflow is not None else None) or wire.WorkflowState or None,
    )


class _WirePage(msgspec.Struct, gc=False, rename={"detail_type": "detail-type"}):
    """A page (`{"Findings": [...]}`, as GetFindings and BatchImportFindings carry
    them): each finding's bytes kept whole. The other fields only tell whether the
    general path would read the document as a page at all (an empty `Raw`: absent)."""

    Findings: list[msgspec.Raw] | None = None
    Id: msgspec.Raw = msgspec.Raw()
    detail_type: msgspec.Raw = msgspec.Raw()
    detail: msgspec.Raw = msgspec.Raw()
    source: msgspec.Raw = msgspec.Raw()


_decode_page = msgspec.json.Decoder(_WirePage).decode


_decode_finding = msgspec.json.Decoder(_WireFinding).decode


def page_findings(data: bytes, *, policy: Policy, now_ms: int) -> list[Parsed] | None:
    """What `parse_message` gives for a page of findings, without building the ~3 KB
    of each finding that flapguard does not read; None for any other message (the
    general path then parses it). A finding this path is not sure of is parsed by the
    general path alone, from its own bytes: the result is the same either way."""
    # A page has the key; a single finding (which has not) is not scanned twice more.
    if b'"Findings"' not in data or not data.isascii():  # msgspec skips UTF-8 checks
        return None
    try:
        page = _decode_page(data)
    except Exception:  # malformed, too deep, another shape: the general path says why
        return None
    items = page.Findings
    if items is None or page.Id or page.detail_type or (page.detail and page.source):
        return None
    if not items or len(items) > policy.max_findings_per_message:
        return None  # rejected whole: the general path says why
    out: list[Parsed] = []
    page_screened: bool | None = None  # `parse_document`'s screen of the whole page
    for item in items:
        raw = bytes(item)
        fast = None
        if within_limits_by_size(raw, policy):
            try:
                fast = _wire_finding(_decode_finding(raw), policy, now_ms)
            except Exception:  # another type somewhere: the general path says what
                fast = None
        if fast is not None:
            out.append(fast)
            continue
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:  # the whole page is unparseable to orjson
            return None
        if page_screened is None:
            page_screened = within_limits_by_size(data, policy)
        out.append(_parse_item(document, None, page_screened, policy, now_ms))
    return out
