"""The JSON records flapguard writes (docs/design.md §4 and §5). Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from streams.core.decide import Closure, Decision, Outcome, Pairing, Reason
from streams.core.findings import Finding
from streams.core.state import Origin

# Kafka record headers: the file and line a replayed record came from; the reason a
# record was dead-lettered.
HEADER_INPUT = "flapguard-input"
HEADER_LINE = "flapguard-line"
HEADER_REASON = "flapguard-reason"
# The app id of the worker that wrote an output record: who writes a topic
# (a worker refuses topics another app id writes, docs/operations.md).
HEADER_APP_ID = "flapguard-app-id"
# A dead letter too large to write whole keeps its first bytes; these say what it was.
HEADER_ORIGINAL_SIZE = "flapguard-original-size"
HEADER_ORIGINAL_SHA256 = "flapguard-original-sha256"

Headers = list[tuple[str, bytes]]


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_source(topic: str, offset: int, headers: Iterable[tuple[str, bytes]] | None
                  ) -> tuple[str, int]:
    """The source and line of a Kafka record's findings: the file and line a replayed
    record names in its headers, else the topic and offset."""
    source: str = topic
    line: int = offset
    if headers:
        # The last of each header counts (as in a dict of them); no dict built per record.
        named_input = named_line = None
        for key, value in headers:
            if key == HEADER_INPUT:
                named_input = value
            elif key == HEADER_LINE:
                named_line = value
        if named_input is not None and named_line is not None:
            try:
                # Values are bytes from aiokafka (no copy then), maybe not from elsewhere.
                raw = named_input if type(named_input) is bytes else bytes(named_input)
                # A replayed topic names the same few files on every record.
                source = _SOURCES.get(raw) or _source(raw)
                line = int(named_line if type(named_line) is bytes else bytes(named_line))
            except (ValueError, UnicodeDecodeError):
                pass
    return source, line


_SOURCES: dict[bytes, str] = {}


def _source(raw: bytes) -> str:
    text = raw.decode()
    if len(_SOURCES) >= 1024:
        _SOURCES.clear()
    _SOURCES[raw] = text
    return text


def record_origins(topic: str, partition: int, offset: int,
                   headers: Iterable[tuple[str, bytes]] | None) -> Callable[[int], Origin]:
    """The origin of each finding (by its index) of one Kafka record."""
    source, line = record_source(topic, offset, headers)

    def origin(index: int) -> Origin:
        return Origin(source, line, index, topic, partition, offset)

    return origin


def deadletter_headers(reason: str, origin: Origin) -> Headers:
    """Kafka headers of a dead letter: why, and where the bytes came from."""
    return [
        (HEADER_REASON, reason.encode()),
        ("flapguard-origin-topic", (origin.topic or "").encode()),
        ("flapguard-origin-partition", str(origin.partition).encode()),
        ("flapguard-origin-offset", str(origin.offset).encode()),
        (HEADER_INPUT, origin.source.encode()),
        (HEADER_LINE, str(origin.line).encode()),
        ("flapguard-origin-index", str(origin.index).encode()),
    ]


def fit_dead_letter(raw: bytes, headers: Headers, limit: int) -> tuple[bytes, Headers]:
    """A dead letter of at most `limit` bytes of value and headers: the original bytes
    where they fit; else their first bytes, with the original's size and SHA-256 in
    headers (its origin headers say where the whole record can still be read)."""
    size = len(raw) + _headers_size(headers)
    if size <= limit:
        return raw, headers
    described = [*headers, (HEADER_ORIGINAL_SIZE, str(len(raw)).encode()),
                 (HEADER_ORIGINAL_SHA256, hashlib.sha256(raw).hexdigest().encode())]
    return raw[:max(0, limit - _headers_size(described))], described


def _headers_size(headers: Headers) -> int:
    return sum(len(name) + len(value) for name, value in headers)


def alert_records(outcome: Outcome, emitted_at_ms: int) -> list[dict[str, Any]]:
    """Every `securityhub.alerts` record of one decision, in order: the incidents it
    closed, then its own alert or resolve, if any."""
    records = [closure_record(c, emitted_at_ms) for c in outcome.closes]
    if outcome.decision is Decision.ALERT or outcome.decision is Decision.RESOLVED:
        records.append(alert_record(outcome, emitted_at_ms))
    return records


def alert_record(outcome: Outcome, emitted_at_ms: int) -> dict[str, Any]:
    """`securityhub.alerts`: one per `alert` and per `resolved` (reason `passed`)."""
    f = outcome.finding
    assert f is not None and outcome.kind is not None
    record = _alert_fields(f, f.id, outcome.dedup_key, outcome.kind.value, emitted_at_ms)
    if outcome.decision is Decision.RESOLVED:
        record["reason"] = Reason.PASSED.value
    return record


def closure_record(closure: Closure, emitted_at_ms: int) -> dict[str, Any]:
    """`securityhub.alerts`: the `resolved` of an incident closed without its finding
    passing; reason `archived` or `superseded` (docs/design.md §3, closing). It shows
    the closed finding's archive where kept, else what its partition key says."""
    f = closure.finding
    if f is None:
        account, region, control, resource = [*closure.key.split("|", 3), "", "", ""][:4]
        record: dict[str, Any] = {
            "dedup_key": closure.dedup_key, "kind": "resolved", "finding_id": closure.finding_id,
            "account": account, "region": region, "control_id": control,
            "resource_id": resource, "emitted_at": iso(emitted_at_ms)}
    else:
        record = _alert_fields(f, closure.finding_id, closure.dedup_key, "resolved", emitted_at_ms)
    record["reason"] = closure.reason.value
    return record


def _alert_fields(f: Finding, finding_id: str, key: str | None, kind: str,
                  emitted_at_ms: int) -> dict[str, Any]:
    return {
        "dedup_key": key,
        "kind": kind,
        "finding_id": finding_id,
        "account": f.account,
        "region": f.region,
        "control_id": f.control_id,
        "resource_id": f.resource_id,
        "resource_type": f.resource_type,
        "severity": f.severity.name,
        "title": f.title,
        "compliance_status": f.compliance_status,
        "created_at": f.created_at_text,
        "updated_at": f.updated_at_text,
        "emitted_at": iso(emitted_at_ms),
        "product_arn": f.product_arn,
        "generator_id": f.generator_id,
        "workflow_status": f.workflow_status,
    }


def suppressed_record(pairing: Pairing) -> dict[str, Any]:
    """`securityhub.suppressed`: one per suppression and per late pair."""
    return {
        "finding_id": pairing.finding_id,
        "paired_finding_id": pairing.paired_finding_id,
        "key": pairing.key,
        "archived_at": iso(pairing.archived_at),
        "recreated_at": iso(pairing.recreated_at),
        "gap_seconds": pairing.gap_seconds,
        "reason": pairing.reason.value,
    }


def decision_record(outcome: Outcome) -> dict[str, Any]:
    """One line of `--decisions-out` (and of the decisions topic)."""
    origin = outcome.origin
    f = outcome.finding
    finding_id = f.id if f else (outcome.rejected.finding_id if outcome.rejected else None)
    record: dict[str, Any] = {
        "input": origin.source,
        "line": origin.line,
        "index": origin.index,
        "finding_id": finding_id,
        "decision": outcome.decision.value,
    }
    if outcome.kind is not None:
        record["kind"] = outcome.kind.value
    else:
        record["reason"] = outcome.reason
    record["key"] = outcome.key
    if outcome.pairing is not None:
        record["paired_finding_id"] = outcome.pairing.paired_finding_id
        record["gap_seconds"] = outcome.pairing.gap_seconds
    if outcome.late_pairs:
        record["late_pairs"] = [p.finding_id for p in outcome.late_pairs]
    if outcome.closes:
        record["closes"] = [{"finding_id": c.finding_id, "dedup_key": c.dedup_key,
                             "reason": c.reason.value} for c in outcome.closes]
    if f is not None:
        record["updated_at"] = f.updated_at_text
        record["control_id"] = f.control_id
        record["account"] = f.account
        record["severity"] = f.severity.name
    if outcome.dedup_key is not None and outcome.decision in (
        Decision.ALERT, Decision.RESOLVED, Decision.SUPPRESSED
    ):
        record["dedup_key"] = outcome.dedup_key
    return record


def kafka_decision_record(outcome: Outcome) -> dict[str, Any]:
    """A decisions-topic record: the file form plus topic, partition and offset."""
    origin: Origin = outcome.origin
    record = decision_record(outcome)
    record.update(topic=origin.topic, partition=origin.partition, offset=origin.offset)
    return record
