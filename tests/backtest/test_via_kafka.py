"""`flapguard backtest --via-kafka`: a generated feed of more than
100,000 findings over several months, replayed onto a fresh one-partition topic and
decided by the real worker (a child process, 4 keyed partitions), agrees decision for
decision with the in-process backtest, and reports the same way.

It is the longest test of the suite (the worker decides a few hundred findings a
second: every decision waits for the broker's acknowledgements before its state is
written); `FLAPGUARD_AGREEMENT_ACCOUNTS` shrinks the feed for a quick local run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest

from streams.backtest.generate import DAY_MS, Profile, write_feed
from streams.backtest.run import backtest_files
from streams.backtest.via_kafka import kafka_backtest, worker_command
from streams.cli import build_parser, main
from streams.cli.options import policy_from
from streams.core.policy import Policy, Severity
from streams.core.records import decision_record

PARTITIONS = 4
COMPARED = ("input", "line", "index", "finding_id", "decision", "kind", "reason", "key",
            "paired_finding_id", "dedup_key", "gap_seconds", "late_pairs")


@pytest.mark.timeout(1800)
def test_kafka_backtest_agrees_with_the_in_process_one_decision_for_decision(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    accounts = int(os.environ.get("FLAPGUARD_AGREEMENT_ACCOUNTS", "12"))
    feed = tmp_path / "feed.jsonl"
    stats = write_feed(Profile(seed=23, accounts=accounts, days=100), feed)
    if accounts >= 12:
        assert stats.findings >= 100_000
    assert stats.first_ms is not None and stats.last_ms is not None
    assert stats.last_ms - stats.first_ms >= 99 * DAY_MS  # several months of event time

    policy = Policy()
    now_ms = int(time.time() * 1000)
    expected: list[dict[str, object]] = []
    in_process = backtest_files([feed], policy=policy, partitions=PARTITIONS, now_ms=now_ms,
                                on_decision=lambda o: expected.append(decision_record(o)),
                                progress=False)
    decisions = tmp_path / "kafka-decisions.jsonl"
    with decisions.open("wb") as out:
        via_kafka = kafka_backtest([feed], bootstrap=kafka_bootstrap, policy=policy,
                                   partitions=PARTITIONS, now_ms=now_ms, decisions_out=out,
                                   app_id=unique_name, timeout_s=1500)
    got = [orjson.loads(line) for line in decisions.read_bytes().splitlines()]

    assert len(got) == len(expected) == stats.findings
    mismatches = [(want["line"], {k: want.get(k) for k in COMPARED}, {k: have.get(k) for k in COMPARED})
                  for want, have in zip(expected, got, strict=True)
                  if any(want.get(k) != have.get(k) for k in COMPARED)]
    assert not mismatches, mismatches[:5]

    # The same report either way, ground truth included.
    a, b = in_process.to_json(), via_kafka.to_json()
    for key in ("findings", "decisions", "by_reason", "naive_alerts", "alerts", "suppressed",
                "by_control", "by_account", "gaps_hours_by_control", "labels"):
        assert a[key] == b[key], key
    assert a["suppressed"] > 1000 and a["alerts"] > 50
    assert a["labels"]["missed_true_alerts"] == 0


def test_cli_via_kafka_reports_the_worker_decisions_with_labels(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = tmp_path / "feed.jsonl.gz"
    assert main(["generate", "--seed", "4", "--accounts", "2", "--days", "4", "--out", str(feed)]) == 0
    local, remote = tmp_path / "local.json", tmp_path / "kafka.json"
    assert main(["backtest", "--input", str(feed), "--report-out", str(local)]) == 0
    assert main(["backtest", "--input", str(feed), "--report-out", str(remote), "--via-kafka",
                 "--bootstrap-servers", kafka_bootstrap, "--decisions-out",
                 str(tmp_path / "d.jsonl")]) == 0
    a, b = orjson.loads(local.read_bytes()), orjson.loads(remote.read_bytes())
    assert a["findings"] > 300
    for key in ("findings", "by_reason", "naive_alerts", "labels", "by_account"):
        assert a[key] == b[key], key
    decisions = [orjson.loads(line) for line in (tmp_path / "d.jsonl").read_bytes().splitlines()]
    assert len(decisions) == a["findings"]
    assert {d["input"] for d in decisions} == {str(feed)}  # the gzip input, as given
    assert "labels: missed true alerts 0" in capsys.readouterr().out


def test_the_worker_it_starts_decides_with_the_whole_policy(tmp_path: Path) -> None:
    """Every setting of the policy reaches the worker's command line, the input limits
    included: a backtest with `--max-message-bytes 64KiB` must not run a worker with 4 MiB."""
    policy = Policy(window_ms=12 * 3_600_000, hold_ms=90_000, min_severity=Severity.HIGH,
                    first_sight_age_ms=6 * 3_600_000, state_ttl_ms=30 * 86_400_000,
                    max_message_bytes=64 * 1024, max_findings_per_message=7, max_depth=9,
                    max_string_length=2048)
    topics = {role: f"t.{role}" for role in ("findings", "alerts", "suppressed", "deadletter", "decisions")}
    args = build_parser().parse_args(
        ["worker", *worker_command("127.0.0.1:9092", "app", topics, policy=policy, partitions=3,
                                   data_dir=tmp_path)])
    assert policy_from(args) == policy
