"""`flapguard generate`: a deterministic, labelled, multi-account feed
that behaves like Security Hub, and its ground truth in a separate file."""

from __future__ import annotations

import gzip
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.backtest.generate import (
    DAY_MS,
    EXPECTED_SUPPRESSIONS,
    HOUR_MS,
    MINUTE_MS,
    TRUE_ALERTS,
    Profile,
    labels_path,
    write_feed,
)
from streams.cli import main
from streams.core.findings import parse_timestamp

SMALL = Profile(seed=5, accounts=6, days=21)  # a seed with an account that switches


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return [orjson.loads(line) for line in data.splitlines()]


def the_finding(line: dict[str, Any]) -> dict[str, Any]:
    if "detail" in line:
        (finding,) = line["detail"]["findings"]
        return finding
    return line


@pytest.fixture(scope="module")
def small_feed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("feed") / "feed.jsonl"
    write_feed(SMALL, path)
    return path.read_bytes().splitlines(), read_jsonl(labels_path(path))


def test_the_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    profile = Profile(seed=9, accounts=2, days=6)
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_feed(profile, a)
    write_feed(profile, b)
    write_feed(Profile(seed=10, accounts=2, days=6), c)
    assert a.read_bytes() == b.read_bytes()
    assert labels_path(a).read_bytes() == labels_path(b).read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_labels_sit_beside_the_feed_one_per_line(small_feed: Any) -> None:
    lines, labels = small_feed
    assert len(lines) == len(labels) > 5000
    assert [label["line"] for label in labels] == list(range(1, len(lines) + 1))
    assert all(label["index"] == 0 for label in labels)
    for line, label in zip(lines[:200], labels[:200], strict=True):
        assert the_finding(orjson.loads(line))["Id"] == label["finding_id"]
    assert labels_path(Path("x/feed.jsonl")) == Path("x/feed.labels.jsonl")
    assert labels_path(Path("x/feed.jsonl.gz")) == Path("x/feed.labels.jsonl.gz")


def test_every_behaviour_of_the_issue_is_in_the_default_profile(small_feed: Any) -> None:
    _, labels = small_feed
    truths = Counter(label["truth"] for label in labels)
    for truth in ("known", "update", "flap_archive", "flap_recreation", "flap_reactivation",
                  "new_failure", "regression", "remediated", "deleted", "switch_archive",
                  "consolidation_switch", "duplicate", "echo"):
        assert truths[truth] > 0, truth
    assert truths["recreated_resource"] == 0  # opt-in only
    # The rarer situations (escalations, unmuted returns, the third-party clock) are
    # tested with their rates turned up in test_generate_situations.py.
    assert {label["truth"] for label in labels if label["alert"]} <= TRUE_ALERTS - {"recreated_resource"}
    assert {"new_failure", "regression", "escalated_recreation", "third_party_failure"} <= {
        label["truth"] for label in labels if label["alert"]}
    assert {label["truth"] for label in labels if label["suppress"]} <= EXPECTED_SUPPRESSIONS
    assert {"flap_recreation", "flap_reactivation", "consolidation_switch"} <= {
        label["truth"] for label in labels if label["suppress"]}


def test_a_flap_archives_as_not_available_and_comes_back_as_a_new_finding_hours_later(
    small_feed: Any,
) -> None:
    lines, labels = small_feed
    archived_at: dict[str, int] = {}  # resource | control -> first flap archive
    seen_ids: set[str] = set()
    gaps = []
    inverted = 0  # re-creations whose predecessor is archived just after them
    waiting: dict[str, int] = {}  # resource | control -> such a re-creation
    for raw, label in zip(lines, labels, strict=True):
        f = the_finding(orjson.loads(raw))
        key = f"{f['Resources'][0]['Id']}|{f['Compliance'].get('SecurityControlId')}|{f['GeneratorId']}"
        previous = f["ProductFields"].get("PreviousComplianceStatus")
        if label["truth"] == "flap_archive" and previous == "FAILED":
            assert f["RecordState"] == "ARCHIVED"
            assert f["Compliance"]["Status"] == "NOT_AVAILABLE"
            assert f["Compliance"]["StatusReasons"][0]["ReasonCode"] == "CONFIG_RETURNS_NOT_APPLICABLE"
            if key in waiting:  # stamped 1-3 min after its re-creation: an inversion
                assert MINUTE_MS <= parse_timestamp(f["UpdatedAt"]) - waiting.pop(key) <= 3 * MINUTE_MS
                inverted += 1
            else:
                archived_at[key] = parse_timestamp(f["UpdatedAt"])
        elif label["truth"] == "flap_recreation":
            assert f["Id"] not in seen_ids
            assert f["CreatedAt"] == f["UpdatedAt"]
            assert (f["Compliance"]["Status"], f["Workflow"]["Status"]) == ("FAILED", "NEW")
            if key in archived_at:
                gaps.append(parse_timestamp(f["CreatedAt"]) - archived_at.pop(key))
            else:  # its predecessor's archive is still to come
                waiting[key] = parse_timestamp(f["CreatedAt"])
        elif f["RecordState"] == "ACTIVE" and label["truth"] not in ("duplicate", "echo"):
            archived_at.pop(key, None)  # came back otherwise (a reactivation, a return)
        seen_ids.add(f["Id"])
    assert not waiting
    assert len(gaps) > 100
    assert 0 < inverted < len(gaps) / 10
    assert min(gaps) >= 12 * HOUR_MS  # the next periodic evaluation, or later
    assert sorted(gaps)[len(gaps) // 2] <= 25 * HOUR_MS


def test_per_standard_findings_exist_and_share_the_consolidated_key(small_feed: Any) -> None:
    lines, labels = small_feed
    by_key: dict[str, set[str]] = defaultdict(set)
    for raw, label in zip(lines, labels, strict=True):
        if label["truth"] in ("switch_archive", "consolidation_switch"):
            f = the_finding(orjson.loads(raw))
            by_key[f"{f['Resources'][0]['Id']}|{f['Compliance']['SecurityControlId']}"].add(
                "consolidated" if f["GeneratorId"].startswith("security-control/") else "per-standard")
    assert by_key
    assert any(kinds == {"consolidated", "per-standard"} for kinds in by_key.values())


def test_delivery_effects_duplicates_echoes_and_bounded_disorder(small_feed: Any) -> None:
    lines, labels = small_feed
    earlier: set[bytes] = set()
    seen_updates: set[tuple[str, str]] = set()
    latest = 0
    lateness = []
    for raw, label in zip(lines, labels, strict=True):
        f = the_finding(orjson.loads(raw))
        if label["truth"] == "duplicate":
            assert raw in earlier  # EventBridge redelivers the same event, byte for byte
        if label["truth"] == "echo":
            assert (f["Id"], f["UpdatedAt"]) in seen_updates  # same UpdatedAt
            assert f["Workflow"]["Status"] == "NOTIFIED"
        earlier.add(raw)
        seen_updates.add((f["Id"], f["UpdatedAt"]))
        if not f["ProductArn"].endswith("product/aws/securityhub"):
            continue  # a third-party clock runs ahead (test_generate_situations.py)
        updated = parse_timestamp(f["UpdatedAt"])
        lateness.append(latest - updated)
        latest = max(latest, updated)
    assert max(lateness) > 0  # some arrive out of order ...
    assert max(lateness) < 5 * MINUTE_MS  # ... always within the default hold


def test_same_arn_recreation_is_opt_in_and_labelled_a_true_alert(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    write_feed(Profile(seed=4, accounts=6, days=21, deletion_rate=0.02, same_arn_recreate_rate=1.0), path)
    labels = read_jsonl(labels_path(path))
    recreated = [label for label in labels if label["truth"] == "recreated_resource"]
    assert any(label["alert"] for label in recreated)  # muted checks aside, a real new risk


def test_feed_spans_the_requested_days(tmp_path: Path) -> None:
    stats = write_feed(Profile(seed=1, accounts=2, days=30), tmp_path / "f.jsonl")
    assert stats.first_ms is not None and stats.last_ms is not None
    assert 29 * DAY_MS <= stats.last_ms - stats.first_ms <= 31 * DAY_MS


def test_cli_generate_writes_gzip_feed_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "feed.jsonl.gz"
    assert main(["generate", "--seed", "5", "--accounts", "2", "--days", "3", "--out", str(out),
                 "--format", "bare"]) == 0
    findings = read_jsonl(out)
    labels = read_jsonl(labels_path(out))
    assert len(findings) == len(labels) > 100
    assert "SchemaVersion" in findings[0]  # bare ASFF, no envelope
    assert f"wrote {len(findings)} findings" in capsys.readouterr().out
    plain = tmp_path / "feed.jsonl"
    assert main(["generate", "--seed", "5", "--accounts", "2", "--days", "3", "--out", str(plain),
                 "--format", "bare"]) == 0
    assert gzip.decompress(out.read_bytes()) == plain.read_bytes()


@pytest.mark.parametrize("args", [["--accounts", "0"], ["--days", "-1"], ["--start", "yesterday"],
                                  ["--same-arn-recreate-rate", "2"],
                                  ["--lambda-recreate-rate", "-0.1"]])
def test_cli_generate_rejects_bad_options(tmp_path: Path, args: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--out", str(tmp_path / "f.jsonl"), *args])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_a_deleted_resource_is_archived_for_every_control_and_never_comes_back(small_feed: Any) -> None:
    lines, labels = small_feed
    deleted: dict[str, set[str]] = defaultdict(set)  # resource -> controls archived as deleted
    after: list[tuple[str, str]] = []
    for raw, label in zip(lines, labels, strict=True):
        f = the_finding(orjson.loads(raw))
        resource, control = f["Resources"][0]["Id"], f["Compliance"].get("SecurityControlId")
        if label["truth"] == "deleted":
            assert f["RecordState"] == "ARCHIVED"
            deleted[resource].add(control)
        elif control in deleted.get(resource, ()) and label["truth"] != "duplicate":
            after.append((resource, label["truth"]))
    assert len(deleted) >= 3
    assert not after  # nothing after the deletion (same-ARN re-creation is opt-in)
    # Every control of a deleted resource is archived, not just one.
    assert any(len(controls) > 1 for controls in deleted.values())
