"""Parsing (docs/design.md §2 and rule 1 of §3): formats, required fields, Region fallbacks,
timestamps and every dead-letter reason the parser produces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.core.findings import Finding, Rejected, parse_document, parse_message, parse_timestamp
from streams.core.policy import Policy, Severity
from tests.builders import (
    ACCOUNT,
    FSBP,
    INCIDENT,
    NOW_MS,
    REGION,
    RESOURCE,
    at,
    dumps,
    envelope,
    epoch_ms,
    finding,
    load_public,
    page,
    parse,
    parse_one,
)


def rejected(obj: Any, **kwargs: Any) -> Rejected:
    [one] = parse(obj, **kwargs)
    assert isinstance(one, Rejected), one
    return one


# -- one bare finding ------------------------------------------------------------------


def test_bare_finding_maps_every_field_the_decisions_use() -> None:
    obj = finding(
        "x", created=at(hours=-2), updated=at(hours=-1), status="WARNING",
        previous_status="FAILED", reason_codes=["CONFIG_ACCESS_DENIED"], workflow="NOTIFIED",
        severity="CRITICAL", resource_type="AwsRdsDbCluster",
    )
    f = parse_one(obj)
    assert f.id == obj["Id"]
    assert f.product_arn == f"arn:aws:securityhub:{REGION}::product/aws/securityhub"
    assert f.generator_id == "security-control/RDS.45"
    assert (f.account, f.region, f.control_id, f.resource_id) == (ACCOUNT, REGION, "RDS.45", RESOURCE)
    assert f.resource_type == "AwsRdsDbCluster"
    assert f.created_at == epoch_ms(at(hours=-2))
    assert f.updated_at == epoch_ms(at(hours=-1))
    assert (f.created_at_text, f.updated_at_text) == (at(hours=-2), at(hours=-1))
    assert f.severity is Severity.CRITICAL
    assert f.compliance_status == "WARNING"
    assert f.previous_compliance_status == "FAILED"
    assert f.reason_codes == ("CONFIG_ACCESS_DENIED",)
    assert f.record_state == "ACTIVE"
    assert f.workflow_status == "NOTIFIED"
    assert f.title == obj["Title"]


def test_control_id_is_the_security_control_id_when_present_else_the_generator_id() -> None:
    with_control = parse_one(finding(standard=FSBP, control="CloudTrail.2"))
    assert with_control.control_id == "CloudTrail.2"
    legacy = parse_one(finding(standard=FSBP, control=None))
    assert legacy.control_id == legacy.generator_id == f"{FSBP}/RDS.45"


def test_consolidated_finding_has_no_standard_and_per_standard_has_its_generator() -> None:
    assert parse_one(finding()).standard is None
    assert parse_one(finding(standard=FSBP)).standard == f"{FSBP}/RDS.45"


def test_only_security_hub_product_findings_are_control_findings() -> None:
    assert parse_one(finding()).is_control_finding
    assert not parse_one(finding(product="imported")).is_control_finding
    assert not parse_one(finding(product_arn="arn:aws:securityhub:us-east-2::product/aws/guardduty"))\
        .is_control_finding


def test_partition_key_is_account_region_control_and_primary_resource() -> None:
    obj = finding()
    obj["Resources"].append({"Type": "AwsKmsKey", "Id": "arn:aws:kms:us-east-2:1:key/other"})
    assert parse_one(obj).partition_key == f"{ACCOUNT}|{REGION}|RDS.45|{RESOURCE}"


def test_missing_optional_fields_are_tolerated_with_defaults() -> None:
    obj = finding(status=None, workflow=None, record_state=None, drop=["Title", "ProductFields"])
    f = parse_one(obj)
    assert f.compliance_status is None
    assert f.workflow_status is None
    assert f.record_state == "ACTIVE"
    assert f.title == ""
    assert f.previous_compliance_status is None
    assert f.failing  # no Compliance: counts as failing while ACTIVE


def test_workflow_falls_back_to_the_legacy_workflow_state() -> None:
    obj = finding(workflow=None, WorkflowState="NEW")
    assert parse_one(obj).workflow_status == "NEW"


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ({"Label": "low"}, Severity.LOW),
        ({"Label": "INFORMATIONAL", "Normalized": 90}, Severity.INFORMATIONAL),
        ({"Normalized": 95}, Severity.CRITICAL),
        ({"Normalized": 70}, Severity.HIGH),
        ({"Normalized": 40}, Severity.MEDIUM),
        ({"Normalized": 1}, Severity.LOW),
        ({"Normalized": 0}, Severity.INFORMATIONAL),
        ({"Label": "SEVERE"}, Severity.HIGH),
        ({}, Severity.HIGH),
        ("HIGH", Severity.HIGH),
    ],
)
def test_severity_comes_from_label_then_normalized_and_unknown_fails_loud(
    severity: Any, expected: Severity
) -> None:
    obj = finding(Severity=severity)
    assert parse_one(obj).severity is expected


def test_missing_severity_is_treated_as_high_never_below_the_minimum() -> None:
    assert parse_one(finding(severity=None)).severity is Severity.HIGH


# -- Region fallbacks ------------------------------------------------------------------


def test_region_falls_back_to_the_primary_resource_region() -> None:
    f = parse_one(finding(region=None, resource_region="ap-northeast-1"))
    assert f.region == "ap-northeast-1"


def test_empty_region_falls_back_like_a_missing_one() -> None:
    assert parse_one(finding(Region="", resource_region="eu-central-1")).region == "eu-central-1"


def test_region_falls_back_to_the_product_arn_when_the_resource_has_none() -> None:
    obj = finding(region=None, drop=["Resources.0.Region"],
                  product_arn="arn:aws:securityhub:sa-east-1::product/aws/securityhub")
    assert parse_one(obj).region == "sa-east-1"


def test_region_and_account_come_from_the_finding_not_the_eventbridge_envelope() -> None:
    event = envelope([finding()], account="999999999999", region="eu-west-1")
    [f] = parse(event)
    assert isinstance(f, Finding)
    assert (f.account, f.region) == (ACCOUNT, REGION)


# -- formats ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "detail_type", ["Security Hub Findings - Imported", "Security Hub Findings - Custom Action"]
)
def test_eventbridge_envelope_yields_each_finding_in_order(detail_type: str) -> None:
    first, second = finding("one"), finding("two", status="PASSED")
    out = parse(envelope([first, second], detail_type=detail_type))
    assert [f.id for f in out if isinstance(f, Finding)] == [first["Id"], second["Id"]]


def test_public_custom_action_envelope_with_two_findings_gives_two_findings() -> None:
    event = load_public("asr-eventbridge-custom-action-cis-1.6-two-findings.json")
    out = parse(event)
    assert all(isinstance(f, Finding) for f in out)
    assert [f.compliance_status for f in out if isinstance(f, Finding)] == ["WARNING", "PASSED"]


def test_getfindings_page_yields_each_finding() -> None:
    out = parse(page([finding("one"), finding("two"), finding("three")]))
    assert [f.id.rsplit("/", 1)[1] for f in out if isinstance(f, Finding)] == ["one", "two", "three"]


def test_json_array_yields_each_finding() -> None:
    out = parse([finding("one"), finding("two")])
    assert [type(f) for f in out] == [Finding, Finding]


def test_json_array_of_envelopes_and_pages_yields_their_findings_in_order() -> None:
    out = parse([envelope([finding("one"), finding("two")]), page([finding("three")]), finding("four")])
    assert [f.id.rsplit("/", 1)[1] for f in out if isinstance(f, Finding)] == [
        "one", "two", "three", "four"]


def test_an_empty_envelope_inside_an_array_is_still_one_dead_letter() -> None:
    out = parse([finding("one"), envelope([])])
    assert [type(x) for x in out] == [Finding, Rejected]


def test_insight_results_event_is_one_dead_letter_not_a_finding() -> None:
    event = load_public("awsdocs-2023-eventbridge-insight-results-template.json")
    data = dumps(event)
    [one] = parse(data)
    assert isinstance(one, Rejected)
    assert one.reason == "not_a_finding"
    assert one.raw == data


def test_findings_event_without_a_findings_list_is_a_malformed_envelope() -> None:
    event = envelope([])
    del event["detail"]["findings"]
    assert rejected(event).reason == "malformed_envelope"


@pytest.mark.parametrize(
    "document",
    [envelope([]), page([]), []],
    ids=["eventbridge", "page", "array"],
)
def test_an_empty_envelope_page_or_array_is_one_dead_letter(document: Any) -> None:
    assert rejected(document).reason == "empty_envelope"


def test_a_bad_finding_inside_a_good_envelope_is_dead_lettered_alone() -> None:
    good_one, good_two = finding("one"), finding("two")
    bad = finding("bad", drop=["AwsAccountId"])
    out = parse(envelope([good_one, bad, good_two]))
    assert [type(x) for x in out] == [Finding, Rejected, Finding]
    reject = out[1]
    assert isinstance(reject, Rejected)
    assert reject.reason == "missing_field:AwsAccountId"
    assert reject.finding_id == bad["Id"]
    # The dead letter carries that finding alone, not the whole envelope.
    assert orjson.loads(reject.raw) == bad


def test_a_bad_item_in_a_page_is_dead_lettered_alone() -> None:
    out = parse(page([finding("one"), "not a finding", finding("two")]))
    assert [type(x) for x in out] == [Finding, Rejected, Finding]
    assert isinstance(out[1], Rejected)
    assert out[1].reason == "not_a_finding"


def test_a_rejected_bare_finding_keeps_the_original_bytes() -> None:
    data = b'{"Id": "x",   "SchemaVersion": "2018-10-08"}'
    one = rejected(data)
    assert one.raw == data
    assert one.finding_id == "x"


def test_too_many_findings_in_one_message_is_one_dead_letter() -> None:
    policy = Policy(max_findings_per_message=3)
    assert len(parse(page([finding(str(i)) for i in range(3)]), policy=policy)) == 3
    assert rejected(page([finding(str(i)) for i in range(4)]), policy=policy).reason == \
        "too_many_findings"


def test_oversized_message_is_dead_lettered_before_parsing() -> None:
    data = dumps(finding())
    policy = Policy(max_message_bytes=len(data) - 1)
    one = rejected(data, policy=policy)
    assert one.reason == "oversized"
    assert one.raw == data
    assert isinstance(parse(data, policy=Policy(max_message_bytes=len(data)))[0], Finding)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"\xff\xfe\x00", b"not json", b'{"Id": "x"', INCIDENT.read_bytes().splitlines()[7]],
    ids=["empty", "open-brace", "binary", "text", "truncated", "incident-line-8"],
)
def test_unparseable_bytes_are_one_dead_letter(data: bytes) -> None:
    one = rejected(data)
    assert one.reason == "unparseable"
    assert one.raw == data
    assert one.finding_id is None


@pytest.mark.parametrize(
    "document", [{"foo": 1}, 42, "text", None, True, {"detail": {}, "source": "aws.health"}],
)
def test_json_that_is_not_a_finding_is_one_dead_letter(document: Any) -> None:
    assert rejected(document).reason == "not_a_finding"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("Id", "missing_field:Id"),
        ("ProductArn", "missing_field:ProductArn"),
        ("GeneratorId", "missing_field:GeneratorId"),
        ("AwsAccountId", "missing_field:AwsAccountId"),
        ("CreatedAt", "missing_field:CreatedAt"),
        ("UpdatedAt", "missing_field:UpdatedAt"),
        ("Resources", "missing_field:Resources"),
        ("Resources.0", "missing_field:Resources"),
        ("Resources.0.Id", "missing_field:Resources[0].Id"),
    ],
)
def test_missing_required_field_is_a_dead_letter_naming_it(path: str, reason: str) -> None:
    assert rejected(finding(drop=[path])).reason == reason


def test_missing_resource_id_is_told_apart_from_a_missing_finding_id_by_the_finding_id() -> None:
    obj = finding(drop=["Resources.0.Id"])
    one = rejected(obj)
    assert one.reason.startswith("missing_field:")
    assert one.finding_id == obj["Id"]
    assert rejected(finding(drop=["Id"])).finding_id is None


@pytest.mark.parametrize("field", ["Id", "ProductArn", "GeneratorId", "AwsAccountId", "CreatedAt"])
def test_empty_required_string_counts_as_missing(field: str) -> None:
    assert rejected(finding(**{field: ""})).reason == f"missing_field:{field}"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"Id": 17}, "malformed_field:Id"),
        ({"ProductArn": ["arn"]}, "malformed_field:ProductArn"),
        ({"GeneratorId": {"x": 1}}, "malformed_field:GeneratorId"),
        ({"AwsAccountId": 123456789012}, "malformed_field:AwsAccountId"),
        ({"CreatedAt": "yesterday"}, "malformed_field:CreatedAt"),
        ({"UpdatedAt": "2025-13-01T00:00:00Z"}, "malformed_field:UpdatedAt"),
        ({"UpdatedAt": 1759276800000}, "malformed_field:UpdatedAt"),
        ({"Resources": ["arn:aws:rds:x"]}, "malformed_field:Resources"),
        ({"Resources": [{"Id": 5}]}, "malformed_field:Resources[0].Id"),
        ({"Region": 5}, "malformed_field:Region"),
    ],
)
def test_malformed_field_is_a_dead_letter_naming_it(overrides: dict[str, Any], reason: str) -> None:
    assert rejected(finding(**overrides)).reason == reason


def test_update_more_than_an_hour_ahead_of_the_wall_clock_is_a_future_timestamp() -> None:
    now = datetime(2025, 10, 1, 12, tzinfo=UTC)
    now_ms = epoch_ms(now.isoformat())
    limit = (now + timedelta(hours=1)).isoformat(timespec="milliseconds")
    beyond = (now + timedelta(hours=1, milliseconds=1)).isoformat(timespec="milliseconds")
    ok = parse(finding(created=at(), updated=limit), now_ms=now_ms)
    assert isinstance(ok[0], Finding)
    assert rejected(finding(created=at(), updated=beyond), now_ms=now_ms).reason == "future_timestamp"


def test_created_after_updated_is_bad_timestamps() -> None:
    obj = finding(created=at(hours=1), updated=at())
    assert rejected(obj).reason == "bad_timestamps"
    assert isinstance(parse(finding(created=at(), updated=at()))[0], Finding)


# -- timestamps ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-10-01T04:44:21.000Z", 1759293861000),
        ("2025-10-01T13:44:21+09:00", 1759293861000),
        ("2025-10-01T04:44:21", 1759293861000),
        ("2025-09-30T16:14:03.5Z", 1759248843500),
        ("2020-05-08T03:39:36.463Z", 1588909176463),
    ],
)
def test_timestamps_are_epoch_milliseconds_in_utc(text: str, expected: int) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    ["2004-06-05T11:18:56.235Z", "2038-06-01T00:00:00.123Z", "2021-09-28T16:10:00.093Z"],
)
def test_timestamps_keep_every_millisecond(text: str) -> None:
    # Two updates one millisecond apart must stay one millisecond apart: a lost
    # millisecond turns the later one into a duplicate_event and shifts windows.
    assert parse_timestamp(text) == epoch_ms(text)


# -- documents and files ---------------------------------------------------------------


def test_parse_document_always_returns_at_least_one_entry() -> None:
    documents: list[Any] = [{}, [], {"Findings": None}, {"detail-type": "x"}]
    for document in documents:
        out = parse_document(document, b"raw", policy=Policy(), now_ms=NOW_MS)
        assert len(out) == 1
        assert isinstance(out[0], Rejected)


def test_a_non_string_resource_type_is_tolerated_as_empty() -> None:
    obj = finding()
    obj["Resources"][0]["Type"] = 7
    f = parse_one(obj)
    assert f.resource_type == ""


def test_finding_json_round_trip_gives_an_equal_finding() -> None:
    f = parse_one(finding(reason_codes=["CONFIG_RETURNS_NOT_APPLICABLE"], previous_status="FAILED"))
    again = Finding.from_json(orjson.loads(orjson.dumps(f.to_json())))
    assert again == f
    assert again.severity is f.severity


def test_parse_message_of_a_bare_public_finding_matches_parse_document() -> None:
    data = dumps(finding())
    doc = parse_document(orjson.loads(data), data, policy=Policy(), now_ms=NOW_MS)
    assert parse_message(data, policy=Policy(), now_ms=NOW_MS) == doc
