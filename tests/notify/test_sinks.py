"""Rendering alerts for Slack, PagerDuty, SNS, stdout and Security Hub write-back: pure."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

from streams.core.policy import Severity
from streams.notify.sinks import (
    GROUP_LIST_LIMIT,
    PAGERDUTY_SEVERITY,
    SNS_MESSAGE_LIMIT,
    AlertError,
    Kind,
    alert_from_record,
    ascii_subject,
    console_url,
    cut,
    cut_utf8,
    pagerduty_dedup_key,
    pagerduty_event,
    parse_alert,
    slack_code,
    slack_group_message,
    slack_message,
    sns_group_message,
    sns_message,
    stdout_line,
)
from streams.notify.writeback import (
    WriteBackError,
    alerted_item,
    id_filters,
    predecessor_ids,
    securityhub_product_arn,
    suppressed_item,
    update_requests,
)

FINDING_ID = ("arn:aws:securityhub:ap-northeast-1:123456789012:security-control/RDS.45/finding/"
              "7e1d93a0-0000-4000-8000-000000000001")
HOSTILE = [
    "<!channel> wake up",
    "<!here|here> and <!everyone>",
    "<http://evil.example|click here>",
    "<@U012345> <#C012345>",
    "*bold* _italic_ ~strike~ `code` ```block```",
    "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "a & b &amp; &lt;",
    "line one\nline two\r\n> quoted",
]


def record(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "dedup_key": "dk-0123456789abcdef",
        "kind": "new",
        "finding_id": FINDING_ID,
        "account": "123456789012",
        "region": "ap-northeast-1",
        "control_id": "RDS.45",
        "resource_id": "arn:aws:rds:ap-northeast-1:123456789012:cluster:orders-aurora",
        "resource_type": "AwsRdsDbCluster",
        "severity": "MEDIUM",
        "title": "Aurora MySQL DB clusters should publish audit logs to CloudWatch Logs",
        "compliance_status": "FAILED",
        "created_at": "2025-10-01T04:44:21.000Z",
        "updated_at": "2025-10-01T04:44:21.000Z",
        "emitted_at": "2025-10-01T04:50:00.000Z",
        "product_arn": "arn:aws:securityhub:ap-northeast-1::product/aws/securityhub",
    }
    base.update(overrides)
    return base


def alert(**overrides: Any):  # type: ignore[no-untyped-def]
    return alert_from_record(record(**overrides))


def all_texts(payload: Any) -> list[str]:
    """Every string Slack renders from a payload (the `text` of every text object)."""
    found: list[str] = []
    if isinstance(payload, dict):
        for key, value in payload.items():
            if key == "text" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(all_texts(value))
    elif isinstance(payload, list):
        for item in payload:
            found.extend(all_texts(item))
    return found


def outside_code(text: str) -> str:
    """Text with our inline code spans removed: what Slack would format."""
    return re.sub(r"`[^`]*`", "", text)


# ------------------------------------------------------------------------ parsing

def test_parse_alert_reads_a_worker_alert_record() -> None:
    parsed = parse_alert(orjson.dumps(record()))
    assert parsed.kind is Kind.NEW
    assert parsed.severity is Severity.MEDIUM
    assert parsed.dedup_key == "dk-0123456789abcdef"
    assert parsed.raw["emitted_at"] == "2025-10-01T04:50:00.000Z"


@pytest.mark.parametrize(("value", "why"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (orjson.dumps(record(dedup_key=None)), "missing field dedup_key"),
    (orjson.dumps(record(severity="APOCALYPTIC")), "unknown severity"),
])
def test_parse_alert_refuses_records_it_cannot_notify(value: bytes, why: str) -> None:
    with pytest.raises(AlertError, match=why):
        parse_alert(value)


def test_missing_optional_fields_render_everywhere() -> None:
    bare = alert_from_record({"dedup_key": "k", "kind": "new", "finding_id": "id"})
    assert bare.severity is Severity.INFORMATIONAL
    slack_message(bare)
    pagerduty_event(bare, "rk")
    assert sns_message(bare).attributes["account"]["StringValue"] == "unknown"


# -------------------------------------------------------------------------- Slack

@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("where", ["title", "resource_id", "control_id", "account", "region",
                                   "resource_type", "finding_id", "updated_at", "compliance_status"])
def test_hostile_values_are_inert_in_slack(hostile: str, where: str) -> None:
    payload = slack_message(alert(**{where: hostile}))
    for text in all_texts(payload):
        # Our only link is the console link; nothing else may open `<`.
        without_ours = re.sub(r"<https://[a-z0-9.-]+\.aws\.amazon\.com/securityhub/home[^|>]*"
                              r"\|Open in Security Hub>", "", text)
        assert "<" not in without_ours and ">" not in without_ours, text
        # Formatting markers of untrusted text sit inside code spans only.
        for marker in ("*bold*", "_italic_", "~strike~"):
            assert marker not in outside_code(text)
        # Every `&` we send starts an entity we wrote.
        assert not re.search(r"&(?!amp;|lt;|gt;)", text), text
    # A value cannot add a line of its own (no forged "> quote" or fields).
    assert "\n> quoted" not in orjson.dumps(payload).decode()


def test_slack_mrkdwn_objects_are_verbatim() -> None:
    payload = slack_message(alert())
    mrkdwn = [o for o in _objects(payload) if o.get("type") == "mrkdwn"]
    assert mrkdwn and all(o["verbatim"] is True for o in mrkdwn)


def _objects(payload: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(payload, dict):
        found.append(payload)
        for value in payload.values():
            found.extend(_objects(value))
    elif isinstance(payload, list):
        for item in payload:
            found.extend(_objects(item))
    return found


def test_slack_code_escapes_and_keeps_the_text_readable() -> None:
    assert slack_code("<!channel> *x* a&b") == "`&lt;!channel&gt; *x* a&amp;b`"
    # A backtick cannot close the span early.
    assert slack_code("`rm -rf` *") == "`\u02cbrm -rf\u02cb *`"
    assert slack_code("") == "`-`"


def test_slack_message_shows_the_essentials() -> None:
    payload = slack_message(alert(severity="HIGH"))
    rendered = " ".join(all_texts(payload))
    for expected in ("HIGH", "RDS.45", "orders-aurora", "123456789012 / ap-northeast-1",
                     "Aurora MySQL DB clusters should publish audit logs", "Open in Security Hub"):
        assert expected in rendered
    assert payload["blocks"][0]["type"] == "header"
    assert "HIGH security finding (new)" in payload["text"]


def test_slack_resolved_says_resolved() -> None:
    payload = slack_message(alert(kind="resolved", compliance_status="PASSED"))
    assert payload["blocks"][0]["text"]["text"].startswith("Resolved")
    assert ":white_check_mark:" in payload["blocks"][1]["text"]["text"]


def test_slack_cuts_a_huge_title_and_says_so() -> None:
    payload = slack_message(alert(title="A" * 300_000))
    section = payload["blocks"][1]["text"]["text"]
    assert len(section) < 3000  # Slack's section text limit
    assert "truncated" in section
    assert len(orjson.dumps(payload)) < 20_000


def test_every_slack_text_fits_slack_limits_whatever_the_field_sizes() -> None:
    huge = "x" * 300_000
    payload = slack_message(alert(**{name: huge for name in (
        "title", "resource_id", "control_id", "account", "region", "resource_type", "finding_id",
        "updated_at", "compliance_status")}))
    assert len(payload["blocks"][0]["text"]["text"]) <= 150  # header
    for text in all_texts(payload):
        assert len(text) <= 3000
    for field in payload["blocks"][2]["fields"]:
        assert len(field["text"]) <= 2000
    assert console_url(alert(finding_id=huge)).endswith("#/findings")


def test_console_link_encodes_the_finding_id_and_ignores_a_bogus_region() -> None:
    url = console_url(alert(finding_id="x|y>z <!channel>", region="evil.example/"))
    assert url.startswith("https://console.aws.amazon.com/securityhub/home#/findings?search=")
    assert not set("|<> ") & set(url)
    assert unquote(url.split("search=")[1]).endswith("x|y>z <!channel>")
    regional = console_url(alert())
    assert regional.startswith("https://ap-northeast-1.console.aws.amazon.com/securityhub/home"
                               "?region=ap-northeast-1#")


# ---------------------------------------------------------------------- PagerDuty

@pytest.mark.parametrize(("severity", "expected"), [
    ("CRITICAL", "critical"), ("HIGH", "error"), ("MEDIUM", "warning"), ("LOW", "info"),
    ("INFORMATIONAL", "info"),
])
def test_pagerduty_trigger_maps_severity(severity: str, expected: str) -> None:
    event = pagerduty_event(alert(severity=severity), "routing-key-1")
    assert event["event_action"] == "trigger"
    assert event["payload"]["severity"] == expected
    assert event["routing_key"] == "routing-key-1"
    assert event["dedup_key"] == "dk-0123456789abcdef"
    assert set(PAGERDUTY_SEVERITY.values()) <= {"critical", "error", "warning", "info"}


def test_pagerduty_trigger_has_summary_source_and_link() -> None:
    event = pagerduty_event(alert(), "rk")
    payload = event["payload"]
    assert payload["summary"].startswith("MEDIUM RDS.45: Aurora MySQL")
    assert payload["source"].endswith("cluster:orders-aurora")
    assert payload["component"] == "RDS.45" and payload["group"] == "123456789012"
    assert payload["custom_details"]["finding_id"] == FINDING_ID
    assert event["links"][0]["href"] == console_url(alert())


def test_pagerduty_resolve_for_a_resolved_alert_carries_only_the_key() -> None:
    event = pagerduty_event(alert(kind="resolved"), "rk")
    assert event == {"routing_key": "rk", "event_action": "resolve", "dedup_key": "dk-0123456789abcdef"}


def test_pagerduty_dedup_key_fits_255_characters_stably() -> None:
    long_key = "k" * 300
    first = pagerduty_dedup_key(long_key)
    assert len(first) <= 255 and first == pagerduty_dedup_key(long_key)
    assert first != pagerduty_dedup_key("k" * 301)
    assert pagerduty_dedup_key("k" * 255) == "k" * 255
    trigger = pagerduty_event(alert(dedup_key=long_key), "rk")
    resolve = pagerduty_event(alert(dedup_key=long_key, kind="resolved"), "rk")
    assert trigger["dedup_key"] == resolve["dedup_key"] == first


def test_pagerduty_summary_is_cut_to_1024_on_one_line() -> None:
    event = pagerduty_event(alert(title="x\n" * 100_000), "rk")
    summary = event["payload"]["summary"]
    assert len(summary) <= 1024 and "\n" not in summary and "truncated" in summary
    assert len(orjson.dumps(event)) < 512 * 1024  # PagerDuty's event size limit


# ---------------------------------------------------------------------------- SNS

def test_sns_subject_is_printable_ascii_under_100() -> None:
    subject = sns_message(alert(title="Ünïcödé — 日本語 \n\t" + "x" * 500)).subject
    assert len(subject) < 100
    assert all(32 <= ord(c) < 127 for c in subject)
    assert subject.startswith("[MEDIUM] RDS.45 new: Unicode")
    assert ascii_subject("   ") == "flapguard alert"


def test_sns_message_has_filterable_attributes() -> None:
    message = sns_message(alert(severity="CRITICAL"))
    assert {k: v["StringValue"] for k, v in message.attributes.items()} == {
        "severity": "CRITICAL", "account": "123456789012", "control": "RDS.45", "kind": "new"}
    assert all(v["DataType"] == "String" for v in message.attributes.values())


def test_sns_body_is_readable_text_for_email() -> None:
    body = sns_message(alert()).message
    assert body.startswith("MEDIUM security finding (new)\n")
    assert "\nResource:      arn:aws:rds:ap-northeast-1:123456789012:cluster:orders-aurora\n" in body
    assert "Open in Security Hub: https://ap-northeast-1.console.aws.amazon.com/" in body
    assert '"dedup_key": "dk-0123456789abcdef"' in body


def test_sns_a_300kb_description_is_cut_within_256kb_and_says_so() -> None:
    big = alert(title="d" * 300_000, description="é" * 150_000)
    message = sns_message(big)
    assert message.size() <= SNS_MESSAGE_LIMIT
    assert "truncated" in message.message
    assert message.message.encode().decode() == message.message  # still valid UTF-8


def test_cut_and_cut_utf8_keep_limits_and_say_how_much_was_left_out() -> None:
    assert cut("abc", 3) == "abc"
    cut_text = cut("a" * 500, 100)
    assert len(cut_text) == 100 and "more characters" in cut_text
    cut_bytes = cut_utf8("日" * 100_000, 1000)
    assert len(cut_bytes.encode()) <= 1000 and "bytes left out" in cut_bytes


def test_stdout_line_is_the_record_as_one_json_line() -> None:
    line = stdout_line(alert(title="two\nlines"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == record(title="two\nlines")


# ---------------------------------------------------------------------- write-back

def test_alerted_finding_becomes_notified_without_touching_its_note() -> None:
    item = alerted_item(alert())
    assert (item.finding_id, item.workflow, item.note) == (FINDING_ID, "NOTIFIED", None)
    assert item.product_arn == "arn:aws:securityhub:ap-northeast-1::product/aws/securityhub"


def test_suppressed_recreation_notes_predecessor_and_gap() -> None:
    item = suppressed_item({
        "finding_id": FINDING_ID, "paired_finding_id": "arn:aws:securityhub:x:1:old",
        "key": "k", "archived_at": "2025-09-30T16:14:03.000Z",
        "recreated_at": "2025-10-01T04:44:21.000Z", "gap_seconds": 45018.0,
        "reason": "recreated_after_archive",
    })
    assert item is not None and item.workflow == "NOTIFIED"
    assert item.note == ("flapguard: not notified again (recreated_after_archive): re-created "
                         "12h30m18s after arn:aws:securityhub:x:1:old was archived; predecessor "
                         "archived at 2025-09-30T16:14:03.000Z.")
    assert item.product_arn == "arn:aws:securityhub:ap-northeast-1::product/aws/securityhub"


def test_suppressed_recreation_copies_a_muted_predecessors_workflow() -> None:
    record = {"finding_id": FINDING_ID, "paired_finding_id": "old", "gap_seconds": 60.0,
              "reason": "recreated_after_archive"}
    muted = suppressed_item(record, {"old": "SUPPRESSED"})
    told = suppressed_item(record, {"old": "NOTIFIED"})
    unknown = suppressed_item(record, {})
    assert muted is not None and muted.workflow == "SUPPRESSED"
    assert told is not None and told.workflow == "NOTIFIED"
    assert unknown is not None and unknown.workflow == "NOTIFIED"  # never hides more


def test_predecessor_lookups_name_each_predecessor_once_in_filters_of_twenty() -> None:
    records = [{"reason": "recreated_after_archive", "paired_finding_id": f"p{i % 30}"}
               for i in range(45)]
    records.append({"reason": "late_pair", "paired_finding_id": "late"})  # needs no write-back
    ids = predecessor_ids(records)
    assert ids == [f"p{i}" for i in range(30)]
    filters = id_filters(ids)
    assert [len(f["Id"]) for f in filters] == [20, 10]
    assert filters[0]["Id"][0] == {"Value": "p0", "Comparison": "EQUALS"}


def test_late_pair_needs_no_write_back_and_bad_records_are_refused() -> None:
    assert suppressed_item({"finding_id": FINDING_ID, "reason": "late_pair"}) is None
    with pytest.raises(WriteBackError):
        suppressed_item({"reason": "recreated_after_archive"})
    with pytest.raises(WriteBackError):
        securityhub_product_arn("not-an-arn")
    assert securityhub_product_arn("arn:aws-us-gov:securityhub:us-gov-west-1:123456789012:x") == \
        "arn:aws-us-gov:securityhub:us-gov-west-1::product/aws/securityhub"


def test_note_is_cut_to_512_characters() -> None:
    item = suppressed_item({"finding_id": FINDING_ID, "paired_finding_id": "p" * 1000,
                            "reason": "consolidation_switch", "gap_seconds": 1})
    assert item is not None and item.note is not None and len(item.note) == 512


def test_update_requests_batch_100_per_call_grouped_by_workflow_and_note() -> None:
    items = [(i, alerted_item(alert(finding_id=f"{FINDING_ID}-{i}"))) for i in range(250)]
    items.append((999, alerted_item(alert(finding_id=f"{FINDING_ID}-0"))))  # a repeat
    noted = suppressed_item({"finding_id": FINDING_ID, "paired_finding_id": "p",
                             "reason": "recreated_after_archive", "gap_seconds": 60})
    assert noted is not None
    items.append((1000, noted))
    requests = update_requests(items)
    sizes = [len(r["FindingIdentifiers"]) for r, _ in requests]
    assert sizes == [100, 100, 50, 1]
    first, members = requests[0]
    assert first["Workflow"] == {"Status": "NOTIFIED"} and "Note" not in first
    assert members[:2] == [0, 999]  # both records of the repeated finding ride on one entry
    last, last_members = requests[-1]
    assert last["Note"]["UpdatedBy"] == "flapguard" and last_members == [1000]


# ------------------------------------------------------- standards and legacy controls

FSBP = "aws-foundational-security-best-practices/v/1.0.0/RDS.45"
NIST = "nist-800-53/v/5.0.0/RDS.45"


def test_per_standard_findings_of_one_resource_and_control_say_which_standard() -> None:
    fsbp, nist = (slack_message(alert(control_id="RDS.45", generator_id=g)) for g in (FSBP, NIST))
    assert fsbp["blocks"] != nist["blocks"]
    assert "AWS Foundational Security Best Practices v1.0.0" in fsbp["text"]
    assert "NIST SP 800-53 v5.0.0" in nist["text"]
    fields = {f["text"].split("\n")[0]: f["text"] for f in fsbp["blocks"][2]["fields"]}
    assert fields["*Standard*"] == "*Standard*\n`AWS Foundational Security Best Practices v1.0.0`"
    assert "Standard:      NIST SP 800-53 v5.0.0" in sns_message(alert(generator_id=NIST)).message
    assert pagerduty_event(alert(generator_id=NIST), "rk")["payload"]["custom_details"]["standard"] == (
        "NIST SP 800-53 v5.0.0")


def test_a_consolidated_finding_names_no_standard() -> None:
    message = slack_message(alert(generator_id="security-control/RDS.45"))
    assert "Standard" not in orjson.dumps(message).decode()


def test_slacks_notification_text_names_control_resource_account_and_region() -> None:
    text = slack_message(alert())["text"]
    assert text == ("MEDIUM security finding (new): `RDS.45` on "
                    "`arn:aws:rds:ap-northeast-1:123456789012:cluster:orders-aurora` in account "
                    "`123456789012` `ap-northeast-1`: `Aurora MySQL DB clusters should publish audit "
                    "logs to CloudWatch Logs`")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_slacks_notification_text_keeps_hostile_values_inert(hostile: str) -> None:
    text = slack_message(alert(resource_id=hostile, account=hostile, generator_id=hostile))["text"]
    assert "<" not in text and "\n" not in text
    assert outside_code(text).count("*") == 0


def test_a_legacy_findings_control_is_shown_as_the_security_control_id() -> None:
    legacy = alert(control_id=FSBP, generator_id=FSBP)
    assert legacy.control_id == "RDS.45"
    assert legacy.record_control_id == FSBP
    assert "`RDS.45`" in slack_message(legacy)["text"]
    assert pagerduty_event(legacy, "rk")["payload"]["component"] == "RDS.45"
    # The record is passed on as it is: dedup_key and control as the worker wrote them.
    assert pagerduty_event(legacy, "rk")["payload"]["custom_details"]["control_id"] == FSBP


# ---------------------------------------------------------- kinds and resolve reasons

@pytest.mark.parametrize(("reason", "words"), [
    (None, "the finding passed"),
    ("passed", "the finding passed"),
    ("archived", "archived and not re-created within the window"),
    ("superseded", "a successor finding opened its own incident"),
])
def test_a_resolved_alert_says_why_its_incident_closed_in_slack_and_sns(
    reason: str | None, words: str,
) -> None:
    resolved = alert(kind="resolved", compliance_status="PASSED", **({"reason": reason} if reason else {}))
    payload = slack_message(resolved)
    assert any(words in t for t in all_texts(payload))
    header = payload["blocks"][0]["text"]["text"]
    assert header.startswith("Resolved") and (reason in (None, "passed") or reason in header)
    if reason in ("archived", "superseded"):
        assert reason in payload["text"]  # the phone's notification says it too
    message = sns_message(resolved)
    assert f"Closed:        {resolved.closed_because()}" in message.message
    assert message.attributes["reason"]["StringValue"] == (reason or "passed")


@pytest.mark.parametrize("reason", ["archived", "superseded", "passed", "retired", None])
def test_pagerduty_resolves_the_dedup_key_whatever_the_reason(reason: str | None) -> None:
    event = pagerduty_event(alert(kind="resolved", **({"reason": reason} if reason else {})), "rk")
    assert event == {"routing_key": "rk", "event_action": "resolve", "dedup_key": "dk-0123456789abcdef"}


def test_an_unknown_resolve_reason_is_shown_as_written_and_inert() -> None:
    resolved = alert(kind="resolved", reason="<!channel> gone*")
    assert resolved.reason_name == "??channel??gone?"
    texts = all_texts(slack_message(resolved))
    assert any("closed: `??channel??gone?`" in t for t in texts)
    assert not any("<!channel>" in t for t in texts)


def test_an_alert_kind_it_does_not_know_is_rendered_generically_never_refused() -> None:
    escalated = parse_alert(orjson.dumps(record(kind="escalated", severity="CRITICAL")))
    assert escalated.kind is Kind.OTHER and escalated.kind_label == "escalated"
    assert slack_message(escalated)["blocks"][0]["text"]["text"] == "CRITICAL security finding (escalated)"
    event = pagerduty_event(escalated, "rk")
    assert event["event_action"] == "trigger" and event["payload"]["class"] == "escalated"
    assert sns_message(escalated).attributes["kind"]["StringValue"] == "escalated"
    hostile = parse_alert(orjson.dumps(record(kind="<!channel>")))
    assert hostile.kind_label == "??channel?"


# ------------------------------------------------------------------ grouped messages

def test_a_grouped_slack_message_lists_every_alert_with_its_finding_and_link() -> None:
    group = [alert(title=f"alert {i}", finding_id=f"{FINDING_ID}-{i}",
                   severity="CRITICAL" if i == 3 else "MEDIUM") for i in range(5)]
    group.append(alert(kind="resolved", reason="archived", title="gone", finding_id=f"{FINDING_ID}-9"))
    payload = slack_group_message("account 123456789012, control RDS.45", group)
    assert payload["blocks"][0]["text"]["text"] == "6 security findings (5 new, 1 resolved)"
    listed = "\n".join(t for t in all_texts(payload["blocks"][2:]))
    for i in range(5):
        assert f"`alert {i}`" in listed
    assert "resolved (archived)" in listed
    assert listed.count("|finding>") == 6
    assert "highest CRITICAL" in payload["text"]
    assert "`account 123456789012, control RDS.45`" in payload["text"]
    assert all(len(t) <= 3000 for t in all_texts(payload))


def test_a_long_group_lists_a_bounded_number_and_says_how_many_more() -> None:
    group = [alert(title=f"alert {i}" + "x" * 90, finding_id=f"{FINDING_ID}-{i}",
                   resource_id="arn:aws:s3:::" + "b" * 140) for i in range(GROUP_LIST_LIMIT + 12)]
    payload = slack_group_message("account 123456789012", group)
    texts = all_texts(payload)
    assert sum(t.count("|finding>") for t in texts) == GROUP_LIST_LIMIT
    assert texts[-1].startswith("… and 12 more in this group")
    assert len(payload["blocks"]) <= 50 and all(len(t) <= 3000 for t in texts)
    assert len(orjson.dumps(payload)) < 40_000


def test_a_group_of_one_is_the_single_alert_message() -> None:
    one = alert()
    assert slack_group_message("x", [one]) == slack_message(one)
    assert sns_group_message("x", [one]) == sns_message(one)


def test_a_grouped_sns_message_keeps_filter_policies_working_and_fits() -> None:
    group = [alert(severity="LOW", title="a" * 5000), alert(severity="HIGH", control_id="S3.1")]
    message = sns_group_message("account 123456789012", group * 40)
    attributes = {k: v["StringValue"] for k, v in message.attributes.items()}
    assert attributes == {"severity": "HIGH", "account": "123456789012", "control": "mixed", "kind": "new"}
    assert message.subject.startswith("[HIGH] 80 findings (80 new)")
    assert len(message.subject) < 100 and message.size() <= SNS_MESSAGE_LIMIT
    assert "... and 50 more in this group" in message.message
