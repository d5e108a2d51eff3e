"""What each notification sink sends, rendered from one alert record. Pure: no I/O.

Everything in an alert record except `kind` and `severity` can be text an attacker
chose (a member account imports findings of its own; resource names and tags end up
in titles), so every renderer treats it as data:

- Slack: values are escaped (`&`, `<`, `>`: no `<!channel>`, no `<http://evil|click>`)
  and shown as inline code, where mrkdwn applies no formatting; `verbatim` stops
  Slack's automatic linking of raw URLs, channels and mentions. Only our own console
  link is a link, and its finding id is percent-encoded.
- SNS: the subject is printable ASCII under 100 characters; the body is plain text
  within SNS's 256 KB, long fields cut with a note saying so.
- PagerDuty: JSON fields, cut to the Events v2 limits.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote

import orjson

from streams.core.policy import Severity
from streams.notify.controls import derived_control, standard_label


class Kind(Enum):
    NEW = "new"
    REGRESSION = "regression"
    REACTIVATED = "reactivated"
    RESOLVED = "resolved"
    # A kind this notifier does not know (a newer worker's): rendered generically, as an
    # alert, under its own name (`Alert.kind_name`), never dead-lettered.
    OTHER = "other"

    @classmethod
    def of(cls, text: str) -> Kind:
        try:
            return cls(text)
        except ValueError:
            return cls.OTHER


class ResolveReason(Enum):
    """Why a `resolved` alert closed its incident (the record's `reason`)."""

    PASSED = "passed"          # the finding passed (also a record with no reason)
    ARCHIVED = "archived"      # archived, and not re-created within the window: gone
    SUPERSEDED = "superseded"  # a successor finding opened its own incident
    OTHER = "other"            # a reason this notifier does not know: shown as written

    @classmethod
    def of(cls, text: str) -> ResolveReason:
        if not text:
            return cls.PASSED
        try:
            return cls(text)
        except ValueError:
            return cls.OTHER


# What a message says about why an incident closed.
RESOLVE_WHY = {
    ResolveReason.PASSED: "the finding passed",
    ResolveReason.ARCHIVED: "the finding was archived and not re-created within the window "
    "(the resource or the control is gone)",
    ResolveReason.SUPERSEDED: "a successor finding opened its own incident",
}


class AlertError(ValueError):
    """An alerts-topic record that cannot be notified (dead-lettered, never retried)."""


@dataclass(frozen=True, slots=True)
class Alert:
    """The fields of an alerts-topic record (`streams.core.records.alert_record`) that sinks use."""

    dedup_key: str
    kind: Kind
    severity: Severity
    finding_id: str
    account: str
    region: str
    # The security control id, derived from a legacy finding's whole GeneratorId where the
    # standard allows (`streams.notify.controls`); `record_control_id` is the record's own.
    control_id: str
    resource_id: str
    resource_type: str
    title: str
    compliance_status: str
    created_at: str
    updated_at: str
    product_arn: str
    raw: dict[str, Any]
    record_control_id: str = ""
    # A per-standard finding's standard (`CIS AWS Foundations Benchmark v1.4.0`); None when
    # consolidated.
    standard: str | None = None
    # The kind as the record wrote it (differs from `kind.value` only for Kind.OTHER).
    kind_name: str = ""
    # A `resolved` alert's reason as written ("" when it gives none).
    reason_name: str = ""

    @property
    def resolved(self) -> bool:
        return self.kind is Kind.RESOLVED

    @property
    def kind_label(self) -> str:
        return self.kind_name or self.kind.value

    @property
    def reason(self) -> ResolveReason | None:
        """Why a `resolved` alert closed its incident; None for any other kind."""
        return ResolveReason.of(self.reason_name) if self.resolved else None

    def closed_because(self) -> str:
        """Why the incident closed, in words (a reason it does not know: as written)."""
        reason = self.reason
        if reason is None:
            return ""
        if reason is ResolveReason.OTHER:
            return f"closed: {self.reason_name}"
        return RESOLVE_WHY[reason]


def parse_alert(value: bytes) -> Alert:
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise AlertError(f"not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise AlertError("not a JSON object")
    return alert_from_record(record)


def alert_from_record(record: dict[str, Any]) -> Alert:
    def text(name: str) -> str:
        value = record.get(name)
        return "" if value is None else str(value)

    for required in ("dedup_key", "kind", "finding_id"):
        if not text(required):
            raise AlertError(f"missing field {required}")
    kind_name = word(text("kind"))
    kind = Kind.of(kind_name)
    try:
        severity = Severity.parse(text("severity") or "INFORMATIONAL")
    except ValueError:
        raise AlertError(f"unknown severity {text('severity')[:40]!r}") from None
    control_id, generator_id = text("control_id"), text("generator_id")
    return Alert(
        dedup_key=text("dedup_key"), kind=kind, severity=severity, finding_id=text("finding_id"),
        account=text("account"), region=text("region"),
        control_id=derived_control(control_id, generator_id),
        resource_id=text("resource_id"), resource_type=text("resource_type"), title=text("title"),
        compliance_status=text("compliance_status"), created_at=text("created_at"),
        updated_at=text("updated_at"), product_arn=text("product_arn"), raw=record,
        record_control_id=control_id, standard=standard_label(generator_id),
        kind_name=kind_name, reason_name=word(text("reason")),
    )


# ----------------------------------------------------------------------------- text

_NOT_WORD = re.compile(r"[^A-Za-z0-9_.-]")


def word(text: str) -> str:
    """A kind or reason as written, reduced to a short plain word (letters, digits, `_.-`):
    a name this notifier does not know is shown, and cannot carry markup anywhere."""
    return _NOT_WORD.sub("?", text.strip())[:40]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")


def one_line(text: str) -> str:
    """Control characters and line breaks become one space: a value cannot add lines."""
    return _CONTROL.sub(" ", text).strip()


def cut(text: str, limit: int) -> str:
    """At most `limit` characters; a cut says how much it left out."""
    if len(text) <= limit:
        return text
    note = f"… [truncated, {len(text) - limit} more characters]"
    keep = max(0, limit - len(note))
    return text[:keep] + note[: limit - keep]


def cut_utf8(text: str, limit: int) -> str:
    """At most `limit` UTF-8 bytes; a cut says how much it left out."""
    data = text.encode()
    if len(data) <= limit:
        return text
    note = f"\n… [truncated: {len(data)} bytes, {{}} bytes left out]"
    # The note's size with the largest count it can show: the result stays within `limit`.
    room = max(0, limit - len(note.format(len(data)).encode()))
    kept = data[:room].decode(errors="ignore")
    return kept + note.format(len(data) - len(kept.encode()))


CONSOLE_ID_LIMIT = 512


def console_url(alert: Alert) -> str:
    """The Security Hub console filtered on this finding id (id percent-encoded)."""
    region = alert.region if _REGION.match(alert.region) else ""
    host = f"{region}.console.aws.amazon.com" if region else "console.aws.amazon.com"
    query = f"?region={region}" if region else ""
    if len(alert.finding_id) > CONSOLE_ID_LIMIT:
        # No real finding id is this long; a link must still fit Slack's 3000 characters.
        return f"https://{host}/securityhub/home{query}#/findings"
    # The console's search syntax, itself percent-encoded inside the fragment.
    search = quote(f"Id=\\operator\\:EQUALS\\:{alert.finding_id}", safe="")
    # Also encode the unreserved `_` and `~`: nothing in the link looks like mrkdwn.
    search = search.replace("_", "%5F").replace("~", "%7E")
    return f"https://{host}/securityhub/home{query}#/findings?search={search}"


# ---------------------------------------------------------------------------- Slack

SLACK_FIELD_LIMIT = 300
SLACK_TITLE_LIMIT = 1000
_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "\u02cb"})
_EMOJI = {
    Severity.CRITICAL: ":red_circle:",
    Severity.HIGH: ":large_orange_circle:",
    Severity.MEDIUM: ":large_yellow_circle:",
    Severity.LOW: ":large_blue_circle:",
    Severity.INFORMATIONAL: ":white_circle:",
}


def slack_escape(text: str) -> str:
    """Slack's three reserved characters as entities: no link, mention or command."""
    return text.translate({ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"})


def slack_code(text: str, limit: int = SLACK_FIELD_LIMIT) -> str:
    """An untrusted value as inline code: escaped, one line, no backtick to close the span
    early (shown as a look-alike), so `*bold*`, `_x_` and `:emoji:` stay literal."""
    value = cut(one_line(text), limit) or "-"
    return f"`{value.translate(_SLACK_ESCAPES)}`"


def _headline(alert: Alert) -> str:
    if alert.resolved:
        reason = alert.reason
        why = "" if reason is ResolveReason.PASSED else f", {alert.reason_name}"
        return f"Resolved ({alert.severity.name}{why})"
    return f"{alert.severity.name} security finding ({alert.kind_label})"


def slack_fallback(alert: Alert) -> str:
    """The notification text (a phone's notification, the sidebar): what, where and whose
    come first, since a phone shows only the start; the same escaping as the blocks."""
    standard = f" ({slack_code(alert.standard, 100)})" if alert.standard else ""
    return (f"{_headline(alert)}: {slack_code(alert.control_id)}{standard} on "
            f"{slack_code(alert.resource_id)} in account {slack_code(alert.account, 40)} "
            f"{slack_code(alert.region, 40)}: {slack_code(alert.title or '(no title)', SLACK_TITLE_LIMIT)}")


def slack_message(alert: Alert) -> dict[str, Any]:
    """A Block Kit incoming-webhook payload."""
    def field(label: str, value: str) -> dict[str, Any]:
        return {"type": "mrkdwn", "text": f"*{label}*\n{slack_code(value)}", "verbatim": True}

    emoji = ":white_check_mark:" if alert.resolved else _EMOJI[alert.severity]
    headline = _headline(alert)
    title = slack_code(alert.title or "(no title)", SLACK_TITLE_LIMIT)
    standard = [field("Standard", alert.standard)] if alert.standard else []
    why = (f"closed: {slack_code(alert.reason_name)}" if alert.reason is ResolveReason.OTHER
           else alert.closed_because())
    closed = [{"type": "section", "text": {"type": "mrkdwn", "verbatim": True,
                                            "text": f"*Closed because* {why}"}}
              ] if alert.resolved else []
    return {
        "text": slack_fallback(alert),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"{headline}", "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} {title}", "verbatim": True}},
            {
                "type": "section",
                "fields": [
                    field("Severity", alert.severity.name),
                    field("Control", alert.control_id),
                    field("Resource", alert.resource_id),
                    field("Resource type", alert.resource_type),
                    field("Account / Region", f"{alert.account} / {alert.region}"),
                    field("Status", alert.compliance_status),
                    *standard,
                ],
            },
            *closed,
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "verbatim": True,
                     "text": f"<{console_url(alert)}|Open in Security Hub> · finding "
                     f"{slack_code(alert.finding_id)} · updated {slack_code(alert.updated_at, 40)}"},
                ],
            },
        ],
    }


# ------------------------------------------------------------------------ PagerDuty

PAGERDUTY_SEVERITY = {
    Severity.CRITICAL: "critical",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "info",
    Severity.INFORMATIONAL: "info",
}
PAGERDUTY_DEDUP_LIMIT = 255
PAGERDUTY_SUMMARY_LIMIT = 1024
PAGERDUTY_DETAIL_LIMIT = 4096


def pagerduty_dedup_key(dedup_key: str) -> str:
    """The alert's dedup_key; one too long for PagerDuty becomes a stable hash of itself,
    so a repeat and the `resolve` still name the same incident."""
    if len(dedup_key) <= PAGERDUTY_DEDUP_LIMIT:
        return dedup_key
    return "sha256:" + hashlib.sha256(dedup_key.encode()).hexdigest()


def pagerduty_event(alert: Alert, routing_key: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 `trigger`, or `resolve` for a resolved alert."""
    dedup = pagerduty_dedup_key(alert.dedup_key)
    if alert.resolved:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup}
    summary = one_line(f"{alert.severity.name} {alert.control_id}: {alert.title} ({alert.resource_id})")
    details = {name: cut(one_line(str(alert.raw.get(name) or "")), PAGERDUTY_DETAIL_LIMIT) for name in (
        "kind", "finding_id", "account", "region", "control_id", "resource_id", "resource_type",
        "title", "compliance_status", "created_at", "updated_at", "emitted_at", "dedup_key")}
    if alert.standard:
        details["standard"] = cut(one_line(alert.standard), PAGERDUTY_DETAIL_LIMIT)
    payload: dict[str, Any] = {
        "summary": cut(summary, PAGERDUTY_SUMMARY_LIMIT),
        "source": cut(one_line(alert.resource_id or alert.account or "unknown"), 255),
        "severity": PAGERDUTY_SEVERITY[alert.severity],
        "class": alert.kind_label,
        "custom_details": details,
    }
    # Optional fields are left out rather than sent empty.
    for name, value in (("component", alert.control_id), ("group", alert.account)):
        if one_line(value):
            payload[name] = cut(one_line(value), 255)
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup,
        "payload": payload,
        "links": [{"href": console_url(alert), "text": "Open in Security Hub"}],
    }


# ------------------------------------------------------------------------------ SNS

SNS_SUBJECT_LIMIT = 99
SNS_MESSAGE_LIMIT = 256 * 1024
SNS_FIELD_LIMIT = 8 * 1024


@dataclass(frozen=True, slots=True)
class SnsMessage:
    subject: str
    message: str
    attributes: dict[str, dict[str, str]]

    def size(self) -> int:
        """Bytes SNS counts against its 256 KB: the body plus every attribute."""
        return len(self.message.encode()) + sum(
            len(name.encode()) + len(a["DataType"].encode()) + len(a["StringValue"].encode())
            for name, a in self.attributes.items()
        )


def ascii_subject(text: str) -> str:
    """SNS subjects: printable ASCII, no line break, starting with a letter, digit or
    punctuation, under 100 characters."""
    folded = unicodedata.normalize("NFKD", one_line(text)).encode("ascii", "ignore").decode()
    printable = "".join(c if 32 <= ord(c) < 127 else "?" for c in folded).strip()
    printable = cut(printable, SNS_SUBJECT_LIMIT)
    printable = printable.replace("…", "...")
    return printable[:SNS_SUBJECT_LIMIT] or "flapguard alert"


def sns_attributes(alert: Alert) -> dict[str, dict[str, str]]:
    """For subscription filter policies: severity, account, control (and kind)."""
    values = {
        "severity": alert.severity.name,
        "account": alert.account,
        "control": alert.control_id,
        "kind": alert.kind_label,
        **({"reason": (alert.reason or ResolveReason.PASSED).value} if alert.resolved else {}),
    }
    return {name: {"DataType": "String", "StringValue": cut(one_line(v), 256) or "unknown"}
            for name, v in values.items()}


def sns_message(alert: Alert, limit: int = SNS_MESSAGE_LIMIT) -> SnsMessage:
    """A readable text body for email subscribers (the JSON record follows for machines)."""
    attributes = sns_attributes(alert)
    subject = ascii_subject(f"[{alert.severity.name}] {alert.control_id} {alert.kind_label}: {alert.title}")
    lines = [
        f"{_headline(alert)}",
        "",
        f"Title:         {cut(one_line(alert.title), SNS_FIELD_LIMIT)}",
        f"Severity:      {alert.severity.name}",
        f"Kind:          {alert.kind_label}",
        *([f"Closed:        {alert.closed_because()}"] if alert.resolved else []),
        f"Control:       {cut(one_line(alert.control_id), SNS_FIELD_LIMIT)}",
        *([f"Standard:      {cut(one_line(alert.standard), SNS_FIELD_LIMIT)}"] if alert.standard else []),
        f"Resource:      {cut(one_line(alert.resource_id), SNS_FIELD_LIMIT)}",
        f"Resource type: {cut(one_line(alert.resource_type), SNS_FIELD_LIMIT)}",
        f"Account:       {cut(one_line(alert.account), SNS_FIELD_LIMIT)}",
        f"Region:        {cut(one_line(alert.region), SNS_FIELD_LIMIT)}",
        f"Status:        {cut(one_line(alert.compliance_status), SNS_FIELD_LIMIT)}",
        f"Updated at:    {cut(one_line(alert.updated_at), 64)}",
        f"Finding:       {cut(one_line(alert.finding_id), SNS_FIELD_LIMIT)}",
        f"Dedup key:     {cut(one_line(alert.dedup_key), 512)}",
        "",
        f"Open in Security Hub: {console_url(alert)}",
        "",
        "Record:",
    ]
    text = "\n".join(lines) + "\n"
    record = orjson.dumps(alert.raw, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    # A 1 KB margin: SNS's own accounting of attributes is not documented to the byte.
    room = limit - 1024 - SnsMessage("", "", attributes).size()
    body = cut_utf8(text + record, room)
    return SnsMessage(subject=subject, message=body, attributes=attributes)


# --------------------------------------------------------------------------- stdout

def stdout_line(alert: Alert) -> bytes:
    """One JSON line: the record as received (for pipes and jq)."""
    return orjson.dumps(alert.raw) + b"\n"


# --------------------------------------------------------------------------- groups

# A grouped message lists at most this many alerts, then says how many more it holds.
GROUP_LIST_LIMIT = 30
SLACK_SECTION_LIMIT = 2900  # Slack's section text limit is 3000 characters


def group_counts(alerts: list[Alert]) -> str:
    """`10 new, 2 resolved`: the kinds of a group's alerts, most frequent first."""
    counts: dict[str, int] = {}
    for alert in alerts:
        counts[alert.kind_label] = counts.get(alert.kind_label, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def highest_severity(alerts: list[Alert]) -> Severity:
    return max((a.severity for a in alerts), default=Severity.INFORMATIONAL)


def _group_line(alert: Alert) -> str:
    emoji = ":white_check_mark:" if alert.resolved else _EMOJI[alert.severity]
    what = f"resolved ({alert.reason_name or 'passed'})" if alert.resolved else alert.kind_label
    standard = f" ({slack_code(alert.standard, 60)})" if alert.standard else ""
    return (f"{emoji} *{alert.severity.name}* {what} {slack_code(alert.control_id, 40)}{standard} on "
            f"{slack_code(alert.resource_id, 150)} {slack_code(alert.title or '(no title)', 100)} "
            f"<{console_url(alert)}|finding> {slack_code(short_id(alert.finding_id), 20)}")


def short_id(finding_id: str) -> str:
    return finding_id if len(finding_id) <= 13 else "…" + finding_id[-12:]


def slack_group_message(labels: str, alerts: list[Alert]) -> dict[str, Any]:
    """One Block Kit message for a group of alerts (`labels`: what they share, e.g.
    `account 111111111111, control RDS.45`): the first GROUP_LIST_LIMIT are listed, one
    line each, and the message says how many more it stands for."""
    if len(alerts) == 1:
        return slack_message(alerts[0])
    listed, more = alerts[:GROUP_LIST_LIMIT], len(alerts) - GROUP_LIST_LIMIT
    top = highest_severity(alerts)
    headline = f"{len(alerts)} security findings ({group_counts(alerts)})"
    shared = f"{_EMOJI[top]} highest {top.name} · {slack_code(labels, 400)}"
    sections: list[str] = []
    for line in map(_group_line, listed):
        if sections and len(sections[-1]) + 1 + len(line) <= SLACK_SECTION_LIMIT:
            sections[-1] += "\n" + line
        else:
            sections.append(line[:SLACK_SECTION_LIMIT])
    tail = [{"type": "context", "elements": [{"type": "mrkdwn", "verbatim": True, "text":
             f"… and {more} more in this group, not listed here (the alerts topic has every one)"}]}
            ] if more > 0 else []
    return {
        "text": (f"{cut(headline, 200)}, highest {top.name}: {slack_code(labels, 400)}; first "
                 f"{_headline(alerts[0])}: {slack_code(alerts[0].control_id)} on "
                 f"{slack_code(alerts[0].resource_id)}"),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "emoji": True, "text": cut(headline, 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "verbatim": True, "text": shared}},
            *({"type": "section", "text": {"type": "mrkdwn", "verbatim": True, "text": text}}
              for text in sections),
            *tail,
        ],
    }


def sns_group_message(labels: str, alerts: list[Alert], limit: int = SNS_MESSAGE_LIMIT) -> SnsMessage:
    """One SNS message for a group: a line per alert (the first GROUP_LIST_LIMIT), then the
    records. Attributes: the highest severity, and account, control and kind where every
    alert shares them (else `mixed`), so that filter policies still work."""
    if len(alerts) == 1:
        return sns_message(alerts[0], limit)
    top = highest_severity(alerts)

    def shared(values: set[str]) -> str:
        return values.pop() if len(values) == 1 else "mixed"

    values = {"severity": top.name, "account": shared({a.account for a in alerts}),
              "control": shared({a.control_id for a in alerts}),
              "kind": shared({a.kind_label for a in alerts})}
    attributes = {name: {"DataType": "String", "StringValue": cut(one_line(v), 256) or "unknown"}
                  for name, v in values.items()}
    subject = ascii_subject(f"[{top.name}] {len(alerts)} findings ({group_counts(alerts)}): {labels}")
    listed, more = alerts[:GROUP_LIST_LIMIT], len(alerts) - GROUP_LIST_LIMIT
    lines = [f"{len(alerts)} security findings ({group_counts(alerts)}), highest {top.name}",
             f"Group: {cut(one_line(labels), SNS_FIELD_LIMIT)}", ""]
    for alert in listed:
        what = f"resolved ({alert.reason_name or 'passed'})" if alert.resolved else alert.kind_label
        lines.append(f"- {alert.severity.name} {what} {cut(one_line(alert.control_id), 200)} on "
                     f"{cut(one_line(alert.resource_id), 1024)}: {cut(one_line(alert.title), 300)} "
                     f"({cut(one_line(alert.finding_id), 1024)})")
    if more > 0:
        lines.append(f"... and {more} more in this group, not listed here")
    lines += ["", "Records:"]
    records = orjson.dumps([a.raw for a in alerts],
                           option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    room = limit - 1024 - SnsMessage("", "", attributes).size()
    return SnsMessage(subject=subject, message=cut_utf8("\n".join(lines) + "\n" + records, room),
                      attributes=attributes)
