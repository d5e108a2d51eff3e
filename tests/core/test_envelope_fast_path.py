"""The envelope fast path of `parse_message` (msgspec) changes nothing
but speed: on any message it gives what the general path (orjson, `parse_document`)
gives, findings and dead-letter reasons alike, and the backtest decides the same."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.backtest import run as backtest_module
from streams.backtest.generate import Profile, write_feed
from streams.backtest.run import backtest_files
from streams.core import findings as findings_module
from streams.core.findings import Parsed, Rejected, envelope_finding, parse_document, parse_message
from streams.core.policy import Policy
from streams.core.records import decision_record
from tests.builders import NOW_MS, change_path, envelope, finding
from tests.core.test_core_speedups import JSON_VALUES, PATHS
from tests.hypothesis_profile import CORE

POLICY = Policy()


def general(data: bytes, policy: Policy = POLICY) -> list[Parsed]:
    """`parse_message` as it was before the fast path."""
    if len(data) > policy.max_message_bytes:
        return [Rejected("oversized", data)]
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return [Rejected("unparseable", data)]
    return parse_document(document, data, policy=policy, now_ms=NOW_MS)


def assert_same(data: bytes, policy: Policy = POLICY) -> list[Parsed]:
    got = parse_message(data, policy=policy, now_ms=NOW_MS)
    assert got == general(data, policy)
    return got


def sample() -> dict[str, Any]:
    inner = finding("a", previous_status="FAILED", reason_codes=["CONFIG_RETURNS_NOT_APPLICABLE"])
    return envelope([inner])


ENVELOPE_PATHS = [("detail-type",), ("detail",), ("detail", "findings"), ("source",)]
ENVELOPE_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(["Security Hub Findings - Custom Action", "Security Hub Findings - Imported",
                     "Scheduled Event"]),
    st.just({"findings": []}), st.just([1]), st.just([{}]),
)


@CORE
@given(
    st.lists(st.tuples(st.sampled_from(PATHS), st.one_of(st.just("<delete>"), JSON_VALUES)),
             max_size=4),
    st.lists(st.tuples(st.sampled_from(ENVELOPE_PATHS),
                       st.one_of(st.just("<delete>"), ENVELOPE_VALUES)), max_size=2),
    st.integers(0, 2),
)
def test_fast_path_equals_the_general_parser_on_any_variant(
    changes: list[tuple[tuple[str, ...], Any]],
    envelope_changes: list[tuple[tuple[str, ...], Any]],
    extra_findings: int,
) -> None:
    event = sample()
    inner = event["detail"]["findings"][0]
    for path, value in changes:
        change_path(inner, path, value)
    event["detail"]["findings"].extend(copy.deepcopy(inner) for _ in range(extra_findings))
    for path, value in envelope_changes:
        change_path(event, path, value)
    assert_same(orjson.dumps(event))


# Text that orjson and msgspec might read differently, written into the message itself.
TEXT_EDITS = [
    (b'"Title":"', b'"Title":"caf\xc3\xa9 \\u00e9 \\/ \\" \\\\ \\t '),  # non-ASCII, escapes
    (b'"Title":"', b'"Title":"\\ud83d\\ude00 '),  # an escaped surrogate pair
    (b'"Title":"', b'"Title":"\\ud800 '),  # a lone surrogate
    (b'"Title":"', b'"Title":"\xff '),  # invalid UTF-8 in a field flapguard reads
    (b'"ProductName":"', b'"ProductName":"\xff\xfe '),  # ... and in one it skips
    (b'"ProductName":"', b'"ProductName":"\xed\xa0\x80 '),  # an encoded surrogate
    (b'"ProductName":"', b'"ProductName":"\x01 '),  # a raw control character
    (b'"ProductName":"', b'"ProductName":"\\q '),  # a bad escape
    (b'"SchemaVersion":', b'"Big":123456789012345678901234567890,"SchemaVersion":'),
    (b'"SchemaVersion":', b'"Small":-1.5e-300,"SchemaVersion":'),
    (b'"SchemaVersion":', b'"Lead":01,"SchemaVersion":'),
    (b'"SchemaVersion":', b'"Bad":NaN,"SchemaVersion":'),
    (b'"SchemaVersion":', b'"Comma":[1,],"SchemaVersion":'),
    (b'"SchemaVersion":', b'"Deep":' + b"[" * 600 + b"]" * 600 + b',"SchemaVersion":'),
    (b'"SchemaVersion":', b'"Deep":' + b"[" * 1023 + b"]" * 1023 + b',"SchemaVersion":'),
    (b'"SchemaVersion":', b'"Id":"first","SchemaVersion":'),  # a duplicate key: last wins
    (b'"RecordState":"ACTIVE"', b'"RecordState":"ACTIVE","RecordState":"ARCHIVED"'),
    (b'"detail-type":', b'"detail-type":"Scheduled Event","detail-type":'),
    (b'"Label":"MEDIUM"', b'"Label":"medium"'),
    (b'"Resources":[', b'"Resources":[7,'),
    (b'"Compliance":{', b'"Compliance":{"StatusReasons":[{"ReasonCode":""},{"X":1}],'),
    (b"{", b"  {"),
]


@pytest.mark.parametrize(("old", "new"), TEXT_EDITS)
def test_fast_path_equals_the_general_parser_on_tricky_text(old: bytes, new: bytes) -> None:
    data = orjson.dumps(sample())
    assert old in data
    assert_same(data.replace(old, new, 1))
    assert_same(data.replace(old, new, 1) + b"\n")
    assert_same(data.replace(old, new, 1) + b" trailing")
    assert_same(data.replace(old, new, 1)[:-3])


@CORE
@given(st.binary(max_size=40), st.integers(0, 10_000))
def test_fast_path_equals_the_general_parser_on_bytes_spliced_in(noise: bytes, where: int) -> None:
    data = orjson.dumps(sample())
    at = where % len(data)
    assert_same(data[:at] + noise + data[at:])


def test_limits_apply_before_the_fast_path() -> None:
    data = orjson.dumps(sample())
    assert assert_same(data, Policy(max_message_bytes=len(data) - 1))[0] == Rejected("oversized", data)
    [rejected] = assert_same(data, Policy(max_depth=3))
    assert isinstance(rejected, Rejected) and rejected.reason == "too_deep"
    [rejected] = assert_same(data, Policy(max_string_length=20))
    assert isinstance(rejected, Rejected) and rejected.reason == "string_too_long"


def test_every_envelope_of_a_generated_feed_takes_the_fast_path(tmp_path: Path) -> None:
    path = tmp_path / "feed.jsonl"
    write_feed(Profile(seed=6, accounts=2, days=5), path)
    lines = path.read_bytes().splitlines()
    for line in lines[:3000]:
        fast = envelope_finding(line, policy=POLICY, now_ms=NOW_MS)
        assert fast is not None
        assert [fast] == general(line)


def test_backtest_decides_the_same_without_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "feed.jsonl"
    write_feed(Profile(seed=3, accounts=3, days=8), path)

    def records() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        out: list[dict[str, Any]] = []
        report = backtest_files([path], policy=POLICY, now_ms=NOW_MS, progress=False,
                                on_decision=lambda o: out.append(decision_record(o)))
        summary = report.to_json()
        for volatile in ("seconds", "findings_per_second"):
            summary.pop(volatile)
        return out, summary

    fast = records()
    for module in (findings_module, backtest_module):
        monkeypatch.setattr(module, "envelope_finding", lambda *args, **kwargs: None)
    assert records() == fast
    assert len(fast[0]) > 1000


@pytest.mark.parametrize("detail_type", [["Security Hub Findings - Imported"], {"a": 1}, 7])
def test_an_envelope_whose_detail_type_is_not_text_is_rejected_not_raised(detail_type: Any) -> None:
    event = sample()
    event["detail-type"] = detail_type
    [rejected] = parse_message(orjson.dumps(event), policy=POLICY, now_ms=NOW_MS)
    assert isinstance(rejected, Rejected) and rejected.reason == "not_a_finding"
