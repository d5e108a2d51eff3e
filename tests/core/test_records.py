"""Output records (docs/design.md §4 and §5): alerts, suppressions, decision lines."""

from __future__ import annotations

import hashlib

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.core.decide import Reason
from streams.core.records import (
    HEADER_INPUT,
    HEADER_LINE,
    alert_record,
    decision_record,
    fit_dead_letter,
    iso,
    kafka_decision_record,
    record_source,
    suppressed_record,
)
from streams.core.state import Origin
from tests.builders import (
    FSBP,
    RESOURCE,
    Run,
    archived,
    at,
    envelope,
    epoch_ms,
    evolve,
    finding,
)

ALERT_FIELDS = {"dedup_key", "kind", "finding_id", "account", "region", "control_id",
                "resource_id", "resource_type", "severity", "title", "compliance_status",
                "created_at", "updated_at", "emitted_at"}
SUPPRESSED_FIELDS = {"finding_id", "paired_finding_id", "key", "archived_at", "recreated_at",
                     "gap_seconds", "reason"}


def test_iso_writes_utc_milliseconds_with_a_z() -> None:
    assert iso(epoch_ms("2025-10-01T04:44:21.007Z")) == "2025-10-01T04:44:21.007Z"
    assert iso(None) is None


def test_alert_record_has_every_field_of_the_alerts_topic() -> None:
    run = Run()
    obj = finding(created=at(), updated=at(minutes=1), severity="HIGH", title="audit logging off")
    outcome = run(obj)
    record = alert_record(outcome, emitted_at_ms=epoch_ms(at(minutes=6)))
    assert record.keys() >= ALERT_FIELDS
    assert record["kind"] == "new"
    assert record["dedup_key"] == outcome.dedup_key
    assert record["finding_id"] == obj["Id"]
    assert (record["account"], record["region"], record["control_id"]) == \
        ("123456789012", "us-east-2", "RDS.45")
    assert (record["resource_id"], record["resource_type"]) == (RESOURCE, "AwsRdsDbCluster")
    assert record["severity"] == "HIGH"
    assert record["title"] == "audit logging off"
    assert record["compliance_status"] == "FAILED"
    assert (record["created_at"], record["updated_at"]) == (at(), at(minutes=1))
    assert record["emitted_at"] == at(minutes=6)
    orjson.dumps(record)  # JSON-serialisable as it is


def test_resolved_record_carries_the_key_of_the_alert_it_closes() -> None:
    run = Run()
    obj = finding(created=at())
    alert = alert_record(run(obj), emitted_at_ms=0)
    resolved = alert_record(run(evolve(obj, updated=at(hours=1), status="PASSED")), emitted_at_ms=0)
    assert resolved["kind"] == "resolved"
    assert resolved["compliance_status"] == "PASSED"
    assert resolved["dedup_key"] == alert["dedup_key"]


def test_suppressed_record_for_a_recreation() -> None:
    run = Run()
    old = finding("old", created=at(days=-2))
    run(old)
    run(archived(old, at()))
    new = finding("new", created=at(hours=12, minutes=30, seconds=18))
    outcome = run(new)
    assert outcome.pairing is not None
    record = suppressed_record(outcome.pairing)
    assert record.keys() == SUPPRESSED_FIELDS
    assert record == {
        "finding_id": new["Id"],
        "paired_finding_id": old["Id"],
        "key": outcome.key,
        "archived_at": at(),
        "recreated_at": at(hours=12, minutes=30, seconds=18),
        "gap_seconds": 45018.0,
        "reason": "recreated_after_archive",
    }


def test_suppressed_record_for_a_switch_with_a_live_finding_has_no_archive_time() -> None:
    run = Run()
    run(finding("fsbp", standard=FSBP, created=at(days=-3)))
    outcome = run(finding("consolidated", created=at()))
    assert outcome.pairing is not None
    record = suppressed_record(outcome.pairing)
    assert record["reason"] == "consolidation_switch"
    assert record["archived_at"] is None
    assert record["gap_seconds"] is None
    assert record["recreated_at"] == at()


def test_suppressed_record_for_a_late_pair() -> None:
    run = Run()
    old = finding("old", created=at(days=-2))
    run(old)
    new = finding("new", created=at(hours=2))
    run(new)
    late = run(archived(old, at()))
    [pair] = late.late_pairs
    assert pair.reason is Reason.LATE_PAIR
    record = suppressed_record(pair)
    assert record["reason"] == "late_pair"
    assert (record["finding_id"], record["paired_finding_id"]) == (new["Id"], old["Id"])
    assert record["gap_seconds"] == 7200.0


def test_decision_record_of_an_alert() -> None:
    run = Run()
    obj = finding(created=at())
    outcome = run(obj)
    record = decision_record(outcome)
    assert {k: record[k] for k in ("input", "line", "index", "finding_id", "decision", "kind")} == {
        "input": "test", "line": 1, "index": 0, "finding_id": obj["Id"], "decision": "alert",
        "kind": "new",
    }
    assert "reason" not in record
    assert record["key"] == outcome.key
    assert record["dedup_key"] == outcome.dedup_key
    assert "paired_finding_id" not in record


def test_decision_record_of_a_suppression_names_the_paired_finding() -> None:
    run = Run()
    old = finding("old", created=at(days=-2))
    run(old)
    run(archived(old, at()))
    record = decision_record(run(finding("new", created=at(hours=1))))
    assert record["decision"] == "suppressed"
    assert record["reason"] == "recreated_after_archive"
    assert "kind" not in record
    assert record["paired_finding_id"] == old["Id"]
    assert record["gap_seconds"] == 3600.0


def test_decision_record_of_a_silent_decision_has_a_reason_and_no_dedup_key() -> None:
    run = Run()
    obj = finding(created=at())
    run(obj)
    record = decision_record(run(obj))
    assert (record["decision"], record["reason"]) == ("silent", "duplicate_event")
    assert "dedup_key" not in record


def test_decision_record_of_a_late_archive_lists_the_late_pairs() -> None:
    run = Run()
    old = finding("old", created=at(days=-2))
    run(old)
    new = finding("new", created=at(hours=2))
    run(new)
    record = decision_record(run(archived(old, at())))
    assert record["late_pairs"] == [new["Id"]]


def test_decision_record_of_unparseable_input_has_no_finding_id_and_no_key() -> None:
    run = Run()
    [outcome] = run.all(b"{truncated")
    record = decision_record(outcome)
    assert record == {"input": "test", "line": 1, "index": 0, "finding_id": None,
                      "decision": "dead_letter", "reason": "unparseable", "key": None}


def test_decision_record_of_a_bad_finding_in_an_envelope_names_its_id_and_index() -> None:
    run = Run()
    bad = finding("bad", drop=["CreatedAt"])
    outcomes = run.all(envelope([finding("good"), bad]))
    record = decision_record(outcomes[1])
    assert (record["index"], record["finding_id"], record["decision"], record["reason"]) == \
        (1, bad["Id"], "dead_letter", "missing_field:CreatedAt")


def test_kafka_decision_record_adds_topic_partition_and_offset() -> None:
    run = Run()
    outcome = run(finding(created=at()))
    outcome.origin = Origin("in.jsonl", 4, 0, topic="securityhub.findings", partition=3, offset=77)
    record = kafka_decision_record(outcome)
    assert (record["topic"], record["partition"], record["offset"]) == ("securityhub.findings", 3, 77)
    assert (record["input"], record["line"]) == ("in.jsonl", 4)
    assert {k: v for k, v in record.items() if k not in ("topic", "partition", "offset")} == \
        decision_record(outcome)


def test_a_dead_letter_that_fits_is_written_whole() -> None:
    headers = [("flapguard-reason", b"unparseable")]
    assert fit_dead_letter(b"x" * 100, headers, limit=1000) == (b"x" * 100, headers)


@given(st.binary(max_size=5000), st.integers(min_value=300, max_value=6000))
def test_a_dead_letter_never_exceeds_its_limit_and_says_what_was_cut(raw: bytes, limit: int) -> None:
    headers = [("flapguard-reason", b"unparseable"), ("flapguard-origin-offset", b"17")]
    value, written = fit_dead_letter(raw, headers, limit)
    assert len(value) + sum(len(k) + len(v) for k, v in written) <= limit
    assert raw.startswith(value)
    if value != raw:
        described = dict(written)
        assert described["flapguard-original-size"] == str(len(raw)).encode()
        assert described["flapguard-original-sha256"] == hashlib.sha256(raw).hexdigest().encode()
        assert written[:2] == headers
    else:
        assert written == headers


def test_a_record_names_its_source_in_its_headers_else_the_topic_and_offset() -> None:
    named = [(HEADER_INPUT, b"feed.jsonl"), (HEADER_LINE, b"12")]
    assert record_source("t", 5, named) == ("feed.jsonl", 12)
    assert record_source("t", 5, [("other", b"x"), *named]) == ("feed.jsonl", 12)
    assert record_source("t", 5, None) == ("t", 5)
    assert record_source("t", 5, [(HEADER_INPUT, b"feed.jsonl")]) == ("t", 5)  # no line
    # The last of a header counts; a bad line keeps the named file and the offset.
    assert record_source("t", 5, [*named, (HEADER_INPUT, b"b.jsonl")]) == ("b.jsonl", 12)
    assert record_source("t", 5, [(HEADER_LINE, b"x"), (HEADER_INPUT, b"a")]) == ("a", 5)
    assert record_source("t", 5, [(HEADER_LINE, b"1"), (HEADER_INPUT, b"\xff")]) == ("t", 5)
    assert record_source("t", 5, [(HEADER_LINE, b"7"), (HEADER_INPUT, bytearray(b"c"))]) == ("c", 7)
    assert record_source("t", 5, [(HEADER_LINE, memoryview(b"8")), (HEADER_INPUT, b"d")]) == ("d", 8)
