"""The generator's rarer situations (escalations, muted checks back unmuted, consolidation
turned off, event-time inversion, a third-party clock ahead, deleted resources, Lambda
functions re-created under the same ARN): each generated with its ground truth, at rates
turned up so a small feed holds many, and decided by the backtest as its label says."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.backtest.generate import MINUTE_MS, Profile, generate, labels_path, write_feed
from streams.backtest.run import LabelScore, Report, backtest_files, read_labels
from streams.cli import main
from streams.core.decide import Outcome
from streams.core.findings import Finding, parse_timestamp
from streams.core.policy import Policy, Severity
from streams.core.records import decision_record
from tests.backtest.test_generate import read_jsonl, the_finding
from tests.builders import NOW_MS

REPO = Path(__file__).resolve().parents[2]
PAIRING_EXAMPLE = REPO / "streams" / "data" / "pairing.example.toml"

# Every new situation, turned up: a small feed with dozens of each.
RICH = Profile(seed=3, accounts=8, days=14, escalation_share=0.3, muted_share=0.15,
               unmuted_return_share=1.0, muted_escalation_share=0.5, inversion_share=0.3,
               unswitch_share=0.6, third_party_share=0.5, deletion_rate=0.01)

SECURITY_HUB = "product/aws/securityhub"


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The feed, its labels, and each line's decision (default settings)."""
    path = tmp_path_factory.mktemp("rich") / "feed.jsonl"
    write_feed(RICH, path)
    decided: dict[int, Outcome] = {}
    report = backtest_files([path], policy=Policy(), now_ms=NOW_MS, progress=False,
                            on_decision=lambda o: decided.__setitem__(o.origin.line, o))
    lines = [the_finding(orjson.loads(raw)) for raw in path.read_bytes().splitlines()]
    return {"path": path, "lines": lines, "labels": read_jsonl(labels_path(path)),
            "decided": decided, "report": report.to_json()}


def decisions_of(rich: dict[str, Any], truth: str) -> Counter[str]:
    return Counter(f"{o.decision}:{o.kind_or_reason}" for label in rich["labels"]
                   if label["truth"] == truth
                   for o in [rich["decided"][label["line"]]])


def key_of(f: dict[str, Any]) -> str:
    return f"{f['Resources'][0]['Id']}|{f['Compliance'].get('SecurityControlId')}|{f['GeneratorId']}"


def test_each_situation_is_decided_as_its_label_says(rich: dict[str, Any]) -> None:
    expected = {
        "escalated_recreation": {"alert:new"},
        "escalated_reactivation": {"alert:reactivated"},
        "escalated_unmuted_recreation": {"alert:new"},
        "unmuted_recreation": {"suppressed:recreated_after_archive"},
        "consolidation_switch": {"suppressed:consolidation_switch"},
        "third_party_failure": {"alert:new"},
        "third_party_update": {"silent:periodic_update"},
    }
    for truth, decisions in expected.items():
        got = decisions_of(rich, truth)
        assert sum(got.values()) >= 3, truth
        assert set(got) == decisions, (truth, got)
    labels = rich["report"]["labels"]
    assert labels["missed_true_alerts"] == 0
    assert labels["flap_recreations_suppressed_share"] >= 0.99
    assert labels["suppression_precision"] == 1.0


def test_an_escalation_comes_back_more_severe_than_before_its_archive(rich: dict[str, Any]) -> None:
    before: dict[str, str] = {}  # key -> severity while ACTIVE, last seen
    escalations = 0
    for f, label in zip(rich["lines"], rich["labels"], strict=True):
        key = key_of(f)
        severity = f["Severity"]["Label"]
        if label["truth"].startswith("escalated_"):
            assert label["alert"]
            previous = before.get(key) if label["truth"] == "escalated_reactivation" else None
            if previous is None:  # a new Id: compare with the check's last finding
                previous = next(v for k, v in before.items()
                                if k.rsplit("|", 1)[0] == key.rsplit("|", 1)[0])
            assert Severity[severity] > Severity[previous], (label, severity, previous)
            escalations += 1
        if f["RecordState"] == "ACTIVE" and label["truth"] not in ("duplicate", "echo"):
            before[key] = severity
    assert escalations >= 10


def test_a_muted_check_comes_back_unmuted_and_only_the_more_severe_return_alerts(
    rich: dict[str, Any],
) -> None:
    workflow: dict[str, str] = {}  # resource | control | standard -> workflow, last seen
    seen = Counter[str]()
    for f, label in zip(rich["lines"], rich["labels"], strict=True):
        check = key_of(f)
        if label["truth"] in ("unmuted_recreation", "escalated_unmuted_recreation"):
            assert workflow[check] == "SUPPRESSED"  # muted until its archive
            assert (f["Workflow"]["Status"], f["Compliance"]["Status"]) == ("NEW", "FAILED")
            assert label["alert"] == (label["truth"] == "escalated_unmuted_recreation")
            assert label["suppress"] == (label["truth"] == "unmuted_recreation")
            seen[label["truth"]] += 1
        if label["truth"] not in ("duplicate", "echo"):
            workflow[check] = f["Workflow"]["Status"]
    assert seen["unmuted_recreation"] >= 3 and seen["escalated_unmuted_recreation"] >= 3


def test_consolidation_turned_off_creates_one_per_standard_finding_per_standard_after_the_archive(
    rich: dict[str, Any],
) -> None:
    archived: dict[str, int] = {}  # resource | control -> consolidated finding archived
    successors: dict[str, dict[str, tuple[str, int]]] = defaultdict(dict)  # by finding Id
    for f, label in zip(rich["lines"], rich["labels"], strict=True):
        check = f"{f['Resources'][0]['Id']}|{f['Compliance'].get('SecurityControlId')}"
        consolidated = f["GeneratorId"].startswith("security-control/")
        if label["truth"] == "switch_archive" and consolidated:
            archived[check] = parse_timestamp(f["UpdatedAt"])
        if label["truth"] in ("consolidation_switch", "new_resource") and not consolidated \
                and check in archived \
                and parse_timestamp(f["CreatedAt"]) - archived[check] <= 18 * 60 * MINUTE_MS:
            successors[check][f["Id"]] = (f["GeneratorId"], parse_timestamp(f["CreatedAt"]))
    assert len(archived) >= 10
    assert len(successors) == len(archived)
    for check, by_id in successors.items():
        created = list(by_id.values())
        standards = [g for g, _ in created]
        assert len(standards) == len(set(standards)) == 2  # one per enabled standard
        assert all(0 < at - archived[check] <= 18 * 60 * MINUTE_MS for _, at in created)
    assert decisions_of(rich, "consolidation_switch")["suppressed:consolidation_switch"] >= 20


def test_consolidation_turned_off_then_a_real_failure_of_a_per_standard_finding_alerts(
    tmp_path: Path,
) -> None:
    # Every account turns consolidation off early; checks remediate and regress often.
    path = tmp_path / "feed.jsonl"
    write_feed(replace(RICH, seed=11, unswitch_share=1.0, remediation_rate=0.05, regression_rate=0.05,
                       per_standard_share=0.0), path)
    decided: dict[int, Outcome] = {}
    backtest_files([path], policy=Policy(), now_ms=NOW_MS, progress=False,
                   on_decision=lambda o: decided.__setitem__(o.origin.line, o))
    switched: set[str] = set()  # per-standard findings that replaced a consolidated one
    regressions = Counter[str]()
    for raw, label in zip(path.read_bytes().splitlines(), read_jsonl(labels_path(path)), strict=True):
        f = the_finding(orjson.loads(raw))
        if label["truth"] == "consolidation_switch":
            switched.add(f["Id"])
        elif label["truth"] == "regression" and f["Id"] in switched:
            o = decided[label["line"]]
            regressions[f"{o.decision}:{o.kind_or_reason}"] += 1
    assert regressions and set(regressions) == {"alert:regression"}


def test_an_inverted_recreation_is_stamped_before_its_predecessors_archive_and_still_pairs(
    rich: dict[str, Any],
) -> None:
    waiting: dict[str, tuple[int, int]] = {}  # key -> (re-creation's UpdatedAt, line)
    inverted = []
    for f, label in zip(rich["lines"], rich["labels"], strict=True):
        key = key_of(f)
        if label["truth"] == "flap_recreation":
            waiting[key] = (parse_timestamp(f["UpdatedAt"]), label["line"])
        elif label["truth"] == "flap_archive" and key in waiting \
                and f["ProductFields"].get("PreviousComplianceStatus") == "FAILED":
            updated, line = waiting.pop(key)
            ahead = parse_timestamp(f["UpdatedAt"]) - updated
            if 0 < ahead <= 3 * MINUTE_MS:
                inverted.append((line, ahead))
        elif label["truth"] not in ("duplicate", "echo"):
            waiting.pop(key, None)
    assert len(inverted) >= 20
    assert all(ahead >= MINUTE_MS for _, ahead in inverted)
    for line, ahead in inverted:
        outcome = rich["decided"][line]
        assert (outcome.decision, outcome.reason) == ("suppressed", "recreated_after_archive")
        assert outcome.pairing is not None and outcome.pairing.gap_seconds == -ahead / 1000


def test_a_third_party_clock_runs_30_to_55_minutes_ahead_and_its_failures_alert(
    rich: dict[str, Any],
) -> None:
    # The generator's own occurrences carry the true time (`at`) beside the finding.
    ahead = [parse_timestamp(e.finding["UpdatedAt"]) - e.at for e in generate(RICH)
             if not e.finding["ProductArn"].endswith(SECURITY_HUB)]
    assert len(ahead) > 50
    assert min(ahead) >= 30 * MINUTE_MS and max(ahead) <= 55 * MINUTE_MS
    for f, label in zip(rich["lines"], rich["labels"], strict=True):
        if f["ProductArn"].endswith(SECURITY_HUB):
            continue
        account = f["AwsAccountId"]
        assert f["ProductArn"].endswith(f":{account}:product/{account}/default")
        assert "SecurityControlId" not in f["Compliance"]
        assert label["truth"] in ("third_party_failure", "third_party_update", "remediated",
                                  "duplicate", "echo")
    decided = rich["decided"]
    assert {decided[label["line"]].finding.control_id for label in rich["labels"]  # type: ignore[union-attr]
            if label["truth"] == "third_party_failure"} <= {
        "acme-posture-scanner/open-admin-port", "acme-posture-scanner/unencrypted-volume",
        "acme-posture-scanner/stale-access-key"}


def test_third_party_findings_change_no_decision_about_security_hub_findings(
    rich: dict[str, Any], tmp_path: Path,
) -> None:
    # The same feed without them: every Security Hub finding decided alike.
    raw = rich["path"].read_bytes().splitlines()
    kept = [n for n, f in enumerate(rich["lines"]) if f["ProductArn"].endswith(SECURITY_HUB)]
    assert len(kept) < len(raw)
    bare = tmp_path / "bare.jsonl"
    bare.write_bytes(b"".join(raw[n] + b"\n" for n in kept))
    without: list[tuple[Any, ...]] = []
    backtest_files([bare], policy=Policy(), now_ms=NOW_MS, progress=False, labels=None,
                   on_decision=lambda o: without.append((o.decision, o.kind_or_reason, o.dedup_key)))
    decided = rich["decided"]
    with_them = [(o.decision, o.kind_or_reason, o.dedup_key) for n in kept for o in [decided[n + 1]]]
    assert with_them == without


def test_incidents_of_deleted_resources_are_closed_archived(rich: dict[str, Any]) -> None:
    deleted = rich["report"]["labels"]["deleted_resources"]
    assert deleted["incidents"] >= 5
    assert deleted["open_overdue"] == 0
    assert deleted["closed"].get("archived", 0) + deleted["open_within_window"] == deleted["incidents"]
    assert set(deleted["closed"]) <= {"archived"}
    assert deleted["continued"] == 0  # nothing re-created under the same ARN


def test_the_deleted_resources_measure_is_the_same_from_decision_records(rich: dict[str, Any]) -> None:
    # The Kafka path reports from decision records: the same figures.
    outcomes = [rich["decided"][n] for n in sorted(rich["decided"])]
    report = Report(policy=Policy())
    report.labels = LabelScore()
    report.truths = iter(read_labels([labels_path(rich["path"])]))
    for outcome in outcomes:
        parsed = outcome.finding if outcome.finding is not None else outcome.rejected
        assert isinstance(parsed, Finding)
        report.add_record(decision_record(outcome), parsed)
    assert report.to_json()["labels"] == rich["report"]["labels"]


def test_lambda_recreated_under_the_same_arn_is_missed_by_default_and_alerts_with_the_pairing_example(
    tmp_path: Path,
) -> None:
    feed = tmp_path / "feed.jsonl"
    write_feed(Profile(seed=4, accounts=8, days=14, deletion_rate=0.02, lambda_recreate_rate=1.0), feed)
    labels = read_jsonl(labels_path(feed))
    lines = [the_finding(orjson.loads(raw)) for raw in feed.read_bytes().splitlines()]
    recreated = [(f, label) for f, label in zip(lines, labels, strict=True)
                 if label["truth"] == "recreated_resource"]
    assert recreated and all(f["Compliance"]["SecurityControlId"] == "Lambda.2" for f, _ in recreated)
    assert all(label["alert"] for _, label in recreated)

    def report(*args: str) -> dict[str, Any]:
        out = tmp_path / f"r{len(args)}.json"
        assert main(["backtest", "--input", str(feed), "--report-out", str(out), *args]) == 0
        result: dict[str, Any] = orjson.loads(out.read_bytes())
        return result["labels"]

    default = report()
    by_truth = {k: v for k, v in default["by_truth"].items() if k.startswith("recreated_resource:")}
    assert by_truth == {"recreated_resource:suppressed:recreated_after_archive": len(recreated)}
    assert default["missed_true_alerts"] == len(recreated)
    paired = report("--pairing", str(PAIRING_EXAMPLE))
    assert paired["missed_true_alerts"] == 0
    assert {k: v for k, v in paired["by_truth"].items() if k.startswith("recreated_resource:")} == {
        "recreated_resource:alert:new": len(recreated)}
