"""The forwarders' pure parts: token bucket, cursor sweep, record transforms."""

from __future__ import annotations

import io

import orjson
import pytest

from streams.core.policy import Policy
from streams.core.records import HEADER_REASON
from streams.ingest.cursor import SeenSet, Sweep
from streams.ingest.forward import Progress, Route, page_records, pages
from streams.ingest.ratelimit import TokenBucket
from streams.ingest.sqs import message_records
from tests.builders import NOW_MS, at, envelope, epoch_ms, finding, parse, parse_one

# -- token bucket ---------------------------------------------------------------------


def test_bucket_lets_a_burst_through_then_paces_at_the_rate() -> None:
    bucket = TokenBucket(rate=3, burst=6)
    waits = [bucket.reserve(now=100.0) for _ in range(9)]
    assert waits[:6] == [0.0] * 6
    assert waits[6:] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_bucket_refills_with_time_but_never_beyond_its_burst() -> None:
    bucket = TokenBucket(rate=3, burst=6)
    for _ in range(6):
        bucket.reserve(now=0.0)
    assert bucket.reserve(now=1.0) == 0.0  # 3 tokens back after a second
    for _ in range(2):
        assert bucket.reserve(now=1.0) == 0.0
    assert bucket.reserve(now=1.0) > 0
    idle = TokenBucket(rate=3, burst=6)
    idle.reserve(now=0.0)
    waits = [idle.reserve(now=3600.0) for _ in range(7)]
    assert waits.count(0.0) == 6  # an hour idle still saves up only the burst


def test_sustained_requests_never_exceed_the_rate() -> None:
    bucket = TokenBucket(rate=3, burst=6)
    now, sent = 0.0, []
    for _ in range(60):
        now += bucket.reserve(now)
        sent.append(now)
    # Over any window after the burst, no more than rate * seconds + burst requests.
    assert sent[-1] - sent[6] == pytest.approx((60 - 7) / 3)


def test_bucket_rejects_a_nonsense_configuration() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=6)


# -- cursor -------------------------------------------------------------------------

MIN = 60_000


def test_a_sweep_starts_one_overlap_before_the_stored_cursor_and_never_before_since() -> None:
    assert Sweep(stored=None, overlap_ms=10 * MIN, trust_order=True).since == 0
    assert Sweep(stored=100 * MIN, overlap_ms=10 * MIN, trust_order=True).since == 90 * MIN
    assert Sweep(stored=100 * MIN, overlap_ms=10 * MIN, trust_order=True, floor_ms=95 * MIN).since == 95 * MIN
    sweep = Sweep(stored=100 * MIN, overlap_ms=10 * MIN, trust_order=True)
    assert not sweep.wanted(89 * MIN)
    assert sweep.wanted(90 * MIN)
    assert sweep.wanted(None)  # unreadable time: forwarded, the worker dead-letters it


def test_a_sorted_endpoint_moves_the_cursor_page_by_page() -> None:
    sweep = Sweep(stored=None, overlap_ms=0, trust_order=True)
    assert sweep.page_acked([1, 2, 3]) == 3
    assert sweep.page_acked([3, 5]) == 5
    assert sweep.page_acked([]) is None
    assert sweep.finished() is None  # nothing newer than what is stored


def test_out_of_order_pages_hold_the_cursor_until_the_sweep_ends() -> None:
    sweep = Sweep(stored=None, overlap_ms=0, trust_order=True)
    assert sweep.page_acked([10, 20]) == 20
    assert sweep.page_acked([5, 30]) is None  # 5 < 20: the endpoint does not sort
    assert sweep.page_acked([40]) is None
    assert sweep.finished() == 40


def test_an_endpoint_not_trusted_to_sort_moves_the_cursor_only_at_the_end() -> None:
    sweep = Sweep(stored=7, overlap_ms=0, trust_order=False)
    assert sweep.page_acked([8, 9]) is None
    assert sweep.finished() == 9
    assert Sweep(stored=50, overlap_ms=0, trust_order=False).finished() is None


def test_the_cursor_never_moves_back() -> None:
    sweep = Sweep(stored=100, overlap_ms=20, trust_order=True)
    assert sweep.page_acked([85, 90]) is None  # the overlap, already covered
    assert sweep.page_acked([120]) == 120


def test_seen_set_skips_repeats_and_forgets_what_is_older_than_the_overlap() -> None:
    seen = SeenSet()
    assert seen.first_time("a", 1)
    assert not seen.first_time("a", 1)
    assert seen.first_time("a", 2)  # a newer update of the same finding is news
    seen.forget_before(2)
    assert seen.first_time("a", 1)


# -- transforms ---------------------------------------------------------------------


def test_page_records_key_each_finding_by_the_core_partition_key() -> None:
    good = finding("g", updated=at(hours=1))
    bad = finding("b", drop=["Resources"])
    records = page_records([good, bad], source="securityhub:us-east-1", policy=Policy(), now_ms=NOW_MS)
    assert [r.route for r in records] == [Route.FINDINGS, Route.FINDINGS]
    assert records[0].key == parse_one(good).partition_key.encode()
    assert records[0].updated_at == epoch_ms(at(hours=1))
    assert orjson.loads(records[0].value) == good
    assert records[1].key is None and orjson.loads(records[1].value) == bad


def test_an_eventbridge_message_becomes_one_record_per_finding() -> None:
    findings = [finding("x", account="111111111111"), finding("y", account="222222222222")]
    body = orjson.dumps(envelope(findings))
    records = message_records(body, source="sqs:q", message_id="m-1", policy=Policy(), now_ms=NOW_MS)
    assert [orjson.loads(r.value) for r in records] == findings
    assert [r.key for r in records] == [parse_one(f).partition_key.encode() for f in findings]
    assert all(("flapguard-message-id", b"m-1") in r.headers for r in records)


@pytest.mark.parametrize(("body", "reason"), [
    (b"\x00garbage", "unparseable"),
    (orjson.dumps({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification"}),
     "not_a_finding"),
    (orjson.dumps(envelope([])), "empty_envelope"),
])
def test_a_message_that_is_not_security_hub_input_is_one_dead_letter(body: bytes, reason: str) -> None:
    (record,) = message_records(body, source="sqs:q", message_id="m-2", policy=Policy(), now_ms=NOW_MS)
    assert record.route is Route.DEADLETTER
    assert record.value == body
    assert dict(record.headers)[HEADER_REASON] == reason.encode()


def test_progress_is_shown_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    Progress(quiet, every_s=0).add(5, epoch_ms(at()))
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = Terminal()
    progress = Progress(shown, every_s=0)
    progress.add(5, epoch_ms(at()))
    progress.close()
    assert "forwarded 5 findings" in shown.getvalue()
    assert "cursor 2025-10-01T00:00:00.000Z" in shown.getvalue()


def test_a_restarted_pass_may_begin_older_without_losing_trust_in_the_order() -> None:
    sweep = Sweep(stored=None, overlap_ms=0, trust_order=True)
    assert sweep.page_acked([1, 5]) == 5
    sweep.restart()  # throttled: the pass starts again from the cursor
    assert sweep.page_acked([5, 6]) == 6


def test_pages_hold_the_findings_in_order_within_their_count_and_size() -> None:
    values = [orjson.dumps(finding(f"f{i}")) for i in range(250)]
    out = list(pages(values))
    assert [len(orjson.loads(p)["Findings"]) for p in out] == [100, 100, 50]
    assert [f for p in out for f in orjson.loads(p)["Findings"]] == [orjson.loads(v) for v in values]
    assert [r.id for r in parse(out[2])] == [parse_one(orjson.loads(v)).id for v in values[200:]]
    by_size = list(pages(values, size=len(values[0]) * 3 + 10))
    assert [len(orjson.loads(p)["Findings"]) for p in by_size][:2] == [3, 3]
    big = orjson.dumps(finding("big", title="t" * 5000))
    alone = pages([values[0], big, values[1]], size=4000)
    assert [len(orjson.loads(p)["Findings"]) for p in alone] == [1, 1, 1]
    assert list(pages([])) == []
