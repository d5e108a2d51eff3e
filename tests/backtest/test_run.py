"""The in-process backtest and `flapguard backtest` (docs/design.md §2, §5): the incident
fixture, the public samples, input formats, decision lines, report, exit codes."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.backtest.run import BATCH_GC_THRESHOLD, backtest_files, batch_gc, read_occurrences, run_backtest
from streams.cli import main
from streams.core.decide import Outcome
from streams.core.policy import Policy
from streams.core.records import alert_record, decision_record
from tests.builders import (
    INCIDENT,
    INCIDENT_EXPECTED,
    NOW_MS,
    OTHER_RESOURCE,
    PUBLIC,
    archived,
    at,
    backtest,
    dumps,
    envelope,
    evolve,
    finding,
    jsonl,
    load_public,
    occurrences,
    page,
    parse_one,
    summary,
)

DECISION_FIELDS = {"input", "line", "index", "finding_id", "decision", "key"}


def incident_expected() -> list[dict[str, Any]]:
    expected: list[dict[str, Any]] = orjson.loads(INCIDENT_EXPECTED.read_bytes())
    return expected


def decide_files(paths: list[Path], policy: Policy | None = None, partitions: int = 1) -> list[Outcome]:
    policy = policy or Policy()
    out: list[Outcome] = []
    run_backtest(read_occurrences(paths, policy=policy, now_ms=NOW_MS), policy=policy,
                 partitions=partitions, on_decision=out.append)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def cli(*args: str | Path) -> int:
    return main(["backtest", *map(str, args)])


# -- the incident fixture --------------------------------------------------------------


def test_incident_gives_exactly_the_expected_decisions_in_process() -> None:
    outcomes = decide_files([INCIDENT])
    expected = incident_expected()
    assert len(outcomes) == len(expected) == 8
    for outcome, want in zip(outcomes, expected, strict=True):
        record = decision_record(outcome)
        assert record["line"] == want["line"]
        assert record["index"] == 0
        assert record["finding_id"] == want["finding_id"], want["note"]
        assert record["decision"] == want["decision"], want["note"]
        if want["kind_or_reason"] is not None:
            assert outcome.kind_or_reason == want["kind_or_reason"], want["note"]


def test_incident_recreation_is_paired_with_the_archived_finding_over_12h30m18s() -> None:
    outcomes = decide_files([INCIDENT])
    recreation = outcomes[3]
    assert recreation.pairing is not None
    assert outcomes[2].finding is not None
    assert recreation.pairing.paired_finding_id == outcomes[2].finding.id
    assert recreation.pairing.gap_seconds == 12 * 3600 + 30 * 60 + 18
    # It inherits the key of the alert that opened the incident on line 1.
    assert recreation.dedup_key == outcomes[0].dedup_key
    assert outcomes[6].dedup_key != outcomes[0].dedup_key


def test_incident_with_a_window_shorter_than_the_gap_alerts_the_recreation() -> None:
    outcomes = decide_files([INCIDENT], policy=Policy(window_ms=12 * 3_600_000))
    assert summary(outcomes[3]) == ("alert", "new")


def test_incident_report_counts_decisions_and_the_naive_notifier() -> None:
    policy = Policy()
    report = run_backtest(read_occurrences([INCIDENT], policy=policy, now_ms=NOW_MS), policy=policy)
    summary_json = report.to_json()
    assert summary_json["findings"] == 8
    assert summary_json["alerts"] == 2
    assert summary_json["suppressed"] == 1
    assert summary_json["resolved"] == 0
    assert summary_json["dead_letters"] == 1
    assert summary_json["naive_alerts"] == 3  # lines 1, 4 and 7: the noise is line 4
    assert summary_json["decisions"] == {"alert": 2, "dead_letter": 1, "silent": 4, "suppressed": 1}
    assert summary_json["by_reason"]["suppressed:recreated_after_archive"] == 1
    assert summary_json["window_seconds"] == 30 * 3600
    assert summary_json["hold_seconds"] == 300


def test_cli_backtest_of_the_incident_writes_decisions_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    decisions, report = tmp_path / "decisions.jsonl", tmp_path / "report.json"
    assert cli("--input", INCIDENT, "--decisions-out", decisions, "--report-out", report) == 0
    lines = read_jsonl(decisions)
    expected = incident_expected()
    assert len(lines) == len(expected)
    for line, want in zip(lines, expected, strict=True):
        assert line.keys() >= DECISION_FIELDS
        assert ("kind" in line) != ("reason" in line)
        assert line["input"] == str(INCIDENT)
        assert (line["line"], line["index"]) == (want["line"], 0)
        assert line["finding_id"] == want["finding_id"]
        assert line["decision"] == want["decision"]
        if want["kind_or_reason"] is not None:
            assert line.get("kind", line.get("reason")) == want["kind_or_reason"]
    assert lines[3]["paired_finding_id"] == expected[2]["finding_id"]
    assert lines[3]["key"] == lines[2]["key"] == (
        "123456789012|ap-northeast-1|RDS.45|arn:aws:rds:ap-northeast-1:123456789012:cluster:orders-aurora")
    assert lines[7]["key"] is None
    assert lines[7]["reason"] == "unparseable"
    written = orjson.loads(report.read_bytes())
    assert (written["findings"], written["alerts"], written["suppressed"], written["dead_letters"]) == \
        (8, 2, 1, 1)
    out = capsys.readouterr().out
    assert "findings 8" in out
    assert "naive notifier: 3 alerts" in out


def test_cli_options_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLAPGUARD_WINDOW", "12h")
    decisions = tmp_path / "d.jsonl"
    assert cli("--input", INCIDENT, "--decisions-out", decisions) == 0
    assert read_jsonl(decisions)[3]["decision"] == "alert"
    # A flag wins over the environment.
    assert cli("--input", INCIDENT, "--decisions-out", decisions, "--window", "13h") == 0
    assert read_jsonl(decisions)[3]["decision"] == "suppressed"


@pytest.mark.parametrize("partitions", [2, 4, 8])
def test_cli_backtest_with_partitions_gives_the_same_decisions(tmp_path: Path, partitions: int) -> None:
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    assert cli("--input", INCIDENT, "--decisions-out", one) == 0
    assert cli("--input", INCIDENT, "--decisions-out", many, "--partitions", str(partitions)) == 0
    assert read_jsonl(one) == read_jsonl(many)


def test_flapguard_backtest_exit_codes_in_a_subprocess(tmp_path: Path) -> None:
    def flapguard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams", "backtest", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    ok = flapguard("--input", str(INCIDENT), "--report-out", str(tmp_path / "r.json"))
    assert ok.returncode == 0, ok.stderr  # even though one line went to dead_letter
    assert orjson.loads((tmp_path / "r.json").read_bytes())["dead_letters"] == 1
    missing = flapguard("--input", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 1
    assert "input not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    usage = flapguard("--input", str(INCIDENT), "--window", "soon")
    assert usage.returncode == 2
    assert "not a duration" in usage.stderr


def test_cli_missing_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--input", tmp_path / "nope.jsonl") == 1
    err = capsys.readouterr().err
    assert err.startswith("flapguard backtest: error: input not found")


@pytest.mark.parametrize("args", [
    ["--partitions", "0"],
    ["--hold", "-5m"],
    ["--min-severity", "SEVERE"],
])
def test_cli_rejects_bad_options_as_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("--input", INCIDENT, *args)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


# -- input formats through the CLI -----------------------------------------------------


def test_cli_reads_every_input_format_and_numbers_lines_and_indexes(tmp_path: Path) -> None:
    pretty = tmp_path / "pretty.json"
    pretty.write_bytes(orjson.dumps(page([finding("p1"), finding("p2", resource=OTHER_RESOURCE)]),
                                    option=orjson.OPT_INDENT_2))
    array = tmp_path / "array.json"
    array.write_bytes(dumps([finding("a1", control="EC2.8"), finding("a2", control="EC2.9")]))
    lines = tmp_path / "lines.jsonl"
    insight = load_public("awsdocs-2023-eventbridge-insight-results-template.json")
    lines.write_bytes(
        jsonl([finding("l1", control="S3.1")])
        + b"\n"  # a blank line: no occurrence, but it counts for the numbering
        + jsonl([envelope([finding("e1", control="S3.2"), finding("e2", control="S3.3")],
                          detail_type="Security Hub Findings - Custom Action")])
        + jsonl([insight, envelope([])])
        + b"{not json\n"
        + jsonl([page([finding("g1", control="S3.4"), {"Id": "broken"}])])
    )
    decisions = tmp_path / "d.jsonl"
    assert cli("--input", pretty, array, lines, "--decisions-out", decisions) == 0
    got = [(Path(r["input"]).name, r["line"], r["index"], r["decision"],
            r.get("kind", r.get("reason")), (r["finding_id"] or "").rsplit("/", 1)[-1])
           for r in read_jsonl(decisions)]
    assert got == [
        ("pretty.json", 1, 0, "alert", "new", "p1"),
        ("pretty.json", 1, 1, "alert", "new", "p2"),
        ("array.json", 1, 0, "alert", "new", "a1"),
        ("array.json", 1, 1, "alert", "new", "a2"),
        ("lines.jsonl", 1, 0, "alert", "new", "l1"),
        ("lines.jsonl", 3, 0, "alert", "new", "e1"),
        ("lines.jsonl", 3, 1, "alert", "new", "e2"),
        ("lines.jsonl", 4, 0, "dead_letter", "not_a_finding", ""),
        ("lines.jsonl", 5, 0, "dead_letter", "empty_envelope", ""),
        ("lines.jsonl", 6, 0, "dead_letter", "unparseable", ""),
        ("lines.jsonl", 7, 0, "alert", "new", "g1"),
        ("lines.jsonl", 7, 1, "dead_letter", "missing_field:ProductArn", "broken"),
    ]


def test_decisions_are_written_in_input_order_whatever_the_hold_reorders(tmp_path: Path) -> None:
    old = finding("old", created=at(days=-10))
    path = tmp_path / "in.jsonl"
    # The re-creation comes first, then its archive, within the hold.
    path.write_bytes(jsonl([old, finding("new", created=at(minutes=1)), archived(old, at())]))
    decisions = tmp_path / "d.jsonl"
    assert cli("--input", path, "--decisions-out", decisions) == 0
    got = [(r["line"], r["decision"], r.get("kind", r.get("reason"))) for r in read_jsonl(decisions)]
    assert got == [(1, "alert", "new"), (2, "suppressed", "recreated_after_archive"),
                   (3, "silent", "archived")]


def test_alerts_out_holds_the_alerts_topic_records_in_the_order_they_are_decided(
    tmp_path: Path,
) -> None:
    base = finding("a", created=at())
    # The PASSED event arrives first; the hold decides the alert first, then the resolve.
    passed = evolve(base, updated=at(minutes=1), status="PASSED")
    other = finding("b", created=at(hours=1), resource=OTHER_RESOURCE)
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl([passed, base, other]))
    alerts, decisions = tmp_path / "alerts.jsonl", tmp_path / "d.jsonl"
    assert cli("--input", path, "--alerts-out", alerts, "--decisions-out", decisions) == 0
    records = read_jsonl(alerts)
    assert [(r["finding_id"], r["kind"]) for r in records] == [
        (base["Id"], "new"), (base["Id"], "resolved"), (other["Id"], "new")]
    # Every field but the wall clock's `emitted_at` is what the worker writes.
    by_line = {r["line"]: r for r in read_jsonl(decisions)}
    expected = [alert_record(o, 0) for o in decide_files([path])
                if o.decision.value in ("alert", "resolved")]
    order = {o["finding_id"] + o["kind"]: o for o in expected}
    for record in records:
        want = order[record["finding_id"] + record["kind"]]
        assert {k: v for k, v in record.items() if k != "emitted_at"} == \
            {k: v for k, v in want.items() if k != "emitted_at"}
        assert record["emitted_at"].endswith("Z")
    assert records[0]["dedup_key"] == records[1]["dedup_key"] == by_line[2]["dedup_key"]


def test_alerts_out_with_via_kafka_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl([finding()]))
    assert cli("--input", path, "--alerts-out", tmp_path / "a.jsonl", "--via-kafka") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--alerts-out" in err


def test_late_pairs_are_counted_in_the_report() -> None:
    old = finding("old", created=at(days=-10))
    outcomes: list[Outcome] = []
    other = finding("other", created=at(hours=3), resource=OTHER_RESOURCE)  # releases "new"
    messages = [old, finding("new", created=at(hours=2)), other, archived(old, at())]
    policy = Policy()
    report = run_backtest(occurrences(messages, policy=policy), policy=policy,
                          on_decision=outcomes.append)
    assert report.late_pairs == 1
    assert report.to_json()["late_pairs"] == 1
    assert [summary(o) for o in outcomes] == [
        ("alert", "new"), ("alert", "new"), ("alert", "new"), ("silent", "archived")]
    assert [p.finding_id for p in outcomes[3].late_pairs] == [finding("new")["Id"]]


def test_a_forged_clock_is_dead_lettered_and_neither_releases_holds_nor_expires_state() -> None:
    old = finding("old", created=at(days=-10))
    forged = finding("forged", created=at(days=300), updated=at(days=500))  # past NOW_MS + 1 h
    outcomes = backtest([old, archived(old, at()), forged, finding("new", created=at(hours=1))])
    assert [summary(o) for o in outcomes] == [
        ("alert", "new"), ("silent", "archived"), ("dead_letter", "future_timestamp"),
        ("suppressed", "recreated_after_archive")]


def test_backtest_decides_each_partition_on_its_own_watermark() -> None:
    # With 2 partitions, a busy partition's watermark must not make another partition's
    # re-creation late: the result equals the single-partition one.
    old = finding("old", created=at(days=-10))
    messages = [old, finding("new", created=at(minutes=1)), archived(old, at())]
    messages += [finding(f"x{i}", created=at(hours=i + 1), resource=f"arn:aws:rds:r:1:cluster:{i}")
                 for i in range(20)]
    single = [summary(o) for o in backtest(messages)]
    assert [summary(o) for o in backtest(messages, partitions=2)] == single
    assert single[1] == ("suppressed", "recreated_after_archive")


# -- the public samples ----------------------------------------------------------------

# What each sample's content says, at the default settings, decided on its own.
PUBLIC_DECISIONS: dict[str, list[tuple[str, str]]] = {
    # Custom Action, 2 findings: WARNING created 25 days before; PASSED created 12.5 h before.
    "asr-eventbridge-custom-action-cis-1.6-two-findings.json":
        [("silent", "bootstrap"), ("silent", "not_alertable")],
    "asr-eventbridge-custom-action-cis-2.3-warning-s3-cross-region.json": [("silent", "bootstrap")],
    # FAILED, first sight at creation, but INFORMATIONAL: below the minimum severity.
    "asr-eventbridge-imported-afsbp-ec2.7-failed.json": [("silent", "not_alertable")],
    "asr-eventbridge-imported-cis-1.3-warning-config-access-denied.json": [("silent", "bootstrap")],
    "asr-simdata-afsbp-ec2.8-instance.json": [("alert", "new")],
    "asr-simdata-afsbp-rds.1-aurora-cluster-snapshot.json": [("alert", "new")],
    "asr-simdata-afsbp-rds.6-db-instance.json": [("silent", "bootstrap")],
    "asr-simdata-afsbp-rds.7-db-cluster.json": [("alert", "new")],
    "asr-simdata-afsbp-redshift.1-cluster.json": [("alert", "new")],
    "awsdocs-2023-eventbridge-insight-results-template.json": [("dead_letter", "not_a_finding")],
    "awsdocs-2023-sample-cis120-2.7-standard-control.json": [("silent", "bootstrap")],
    "awsdocs-2023-sample-cis140-3.7-standard-control.json": [("silent", "bootstrap")],
    "awsdocs-2023-sample-consolidated-security-control-cloudtrail2.json": [("silent", "bootstrap")],
    "awsdocs-2023-sample-controltower-cloudtrail2-standard-control.json": [("alert", "new")],
    "awsdocs-2023-sample-fsbp-cloudtrail2-standard-control.json": [("silent", "bootstrap")],
    "awsdocs-2023-sample-nist80053-cloudtrail2-standard-control.json": [("alert", "new")],
    "awsdocs-2023-sample-pcidss-cloudtrail1-standard-control.json": [("silent", "bootstrap")],
}


def test_every_public_sample_is_covered() -> None:
    assert sorted(p.name for p in PUBLIC.glob("*.json")) == sorted(PUBLIC_DECISIONS)
    assert (PUBLIC / "SOURCES.md").is_file()


def findings_of(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, dict) and "detail-type" in document:
        return list(document["detail"].get("findings", []))
    return [document]


def expected_partition_key(obj: dict[str, Any]) -> str:
    """docs/design.md §2 written out: account | region | control | Resources[0].Id, Region
    falling back to Resources[0].Region, then the ProductArn's Region."""
    primary = obj["Resources"][0]
    region = obj.get("Region") or primary.get("Region") or obj["ProductArn"].split(":")[3]
    control = obj.get("Compliance", {}).get("SecurityControlId") or obj["GeneratorId"]
    return f"{obj['AwsAccountId']}|{region}|{control}|{primary['Id']}"


@pytest.mark.parametrize("name", sorted(PUBLIC_DECISIONS))
def test_public_sample_parses_keys_and_decides_as_its_content_says(name: str) -> None:
    outcomes = decide_files([PUBLIC / name])
    assert [summary(o) for o in outcomes] == PUBLIC_DECISIONS[name]
    originals = findings_of(load_public(name))
    decided = [o for o in outcomes if o.finding is not None]
    for outcome in outcomes:
        assert (outcome.origin.line, outcome.origin.source) == (1, str(PUBLIC / name))
    for index, (outcome, original) in enumerate(zip(decided, originals, strict=True)):
        f = outcome.finding
        assert f is not None
        assert outcome.origin.index == index
        assert f.id == original["Id"]
        assert f.partition_key == outcome.key == expected_partition_key(original)
        assert f.compliance_status == original["Compliance"]["Status"]
        assert f.severity.name == original["Severity"]["Label"]


def test_public_envelopes_are_keyed_by_the_finding_not_the_envelope() -> None:
    event = load_public("asr-eventbridge-imported-cis-1.3-warning-config-access-denied.json")
    [outcome] = decide_files([PUBLIC / "asr-eventbridge-imported-cis-1.3-warning-config-access-denied.json"])
    assert outcome.finding is not None
    # No Region on the finding: it comes from Resources[0].Region.
    assert "Region" not in event["detail"]["findings"][0]
    assert outcome.finding.region == event["detail"]["findings"][0]["Resources"][0]["Region"]
    assert outcome.finding.control_id == event["detail"]["findings"][0]["GeneratorId"]


def test_public_consolidated_and_per_standard_cloudtrail2_samples_share_their_key() -> None:
    names = ["awsdocs-2023-sample-consolidated-security-control-cloudtrail2.json",
             "awsdocs-2023-sample-fsbp-cloudtrail2-standard-control.json",
             "awsdocs-2023-sample-pcidss-cloudtrail1-standard-control.json",
             "awsdocs-2023-sample-cis120-2.7-standard-control.json"]
    outcomes = decide_files([PUBLIC / n for n in names])
    assert len({o.key for o in outcomes}) == 1
    standards = {o.finding.standard for o in outcomes if o.finding}
    assert len(standards) == 4
    assert None in standards  # the consolidated one


def test_all_public_samples_in_one_backtest_give_one_decision_per_finding(tmp_path: Path) -> None:
    paths = sorted(PUBLIC.glob("*.json"))
    decisions = tmp_path / "d.jsonl"
    assert cli("--input", *paths, "--decisions-out", decisions) == 0
    lines = read_jsonl(decisions)
    assert len(lines) == sum(len(v) for v in PUBLIC_DECISIONS.values())
    assert all(line["line"] == 1 for line in lines)
    insight = [x for x in lines if x["input"].endswith("insight-results-template.json")]
    assert [(x["decision"], x["finding_id"], x["index"]) for x in insight] == [("dead_letter", None, 0)]


def test_findings_are_placed_on_keyed_partitions_as_the_worker_places_them_chunk_after_chunk() -> None:
    """`--partitions N`: murmur2 over a chunk of keys at once gives each finding the
    partition `partition_for` gives it alone, across chunk boundaries, keys new and known
    mixed in a chunk, rejections in between."""
    from streams.backtest.run import PLACE_CHUNK, _placed
    from streams.core.findings import Finding, Rejected
    from streams.core.keys import Placements, partition_for
    from streams.core.state import Origin

    occurrences: list[tuple[int, Origin, Finding | Rejected]] = []
    for n in range(PLACE_CHUNK * 3 + 7):
        resource = f"arn:aws:rds:us-east-1:1:db:{n % (PLACE_CHUNK + 13)}"
        parsed: Finding | Rejected = (Rejected("unparseable", b"x") if n % 97 == 0
                                      else parse_one(finding(resource=resource)))
        occurrences.append((n, Origin("f", n + 1, 0), parsed))
    got: list[tuple[int, int]] = []
    for chunk, place in _placed(occurrences, Placements(5)):
        assert place is not None
        got.extend((seq, place()) for seq, _, parsed in chunk if isinstance(parsed, Finding))
    want = [(seq, partition_for(parsed.partition_key, 5)) for seq, _, parsed in occurrences
            if isinstance(parsed, Finding)]
    assert got == want and len({p for _, p in got}) == 5
    # One partition: the occurrences as they come, nothing to place.
    assert list(_placed(occurrences, None)) == [(occurrences, None)]


# -- the cyclic collector ----------------------------------------------------------------


def test_a_backtest_runs_with_the_collector_seldom_and_restores_it_after() -> None:
    before = gc.get_threshold()
    during: list[int] = []
    report = backtest_files([INCIDENT], policy=Policy(), now_ms=NOW_MS, labels=None,
                            on_decision=lambda _: during.append(gc.get_threshold()[0]))
    assert report.findings == len(during) == 8
    assert set(during) == {max(BATCH_GC_THRESHOLD, before[0])}
    assert gc.get_threshold() == before


def test_the_collectors_thresholds_come_back_when_a_backtest_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), batch_gc():
        assert gc.get_threshold()[0] == max(BATCH_GC_THRESHOLD, before[0])
        raise RuntimeError("a bad labels file, say")
    assert gc.get_threshold() == before
