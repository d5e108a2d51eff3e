"""The backtest report: ground truth, breakdowns, gaps, the window
sweep, the plot, gzip input, the progress bar; and the acceptance run of the issue."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.backtest.generate import Profile, labels_path, write_feed
from streams.backtest.run import Progress, _InOrder, backtest_files
from streams.cli import main
from streams.core.decide import Decision, Outcome
from streams.core.policy import Policy
from streams.core.state import Origin
from tests.builders import INCIDENT, NOW_MS

REPORT_KEYS = {"findings", "decisions", "naive_alerts", "alerts", "suppressed", "findings_per_second",
               "by_reason", "resolved", "dead_letters", "late_pairs", "by_control", "by_account",
               "gaps_hours_by_control"}
LABEL_KEYS = {"missed_true_alerts", "false_alerts", "suppression_precision", "suppression_recall"}


def report_of(*args: str | Path) -> dict[str, Any]:
    out = Path(str(args[args.index("--report-out") + 1]))
    assert main(["backtest", *map(str, args)]) == 0
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return report


@pytest.fixture(scope="module")
def acceptance_feed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's acceptance profile: default settings, 40 accounts, 3 weeks."""
    path = tmp_path_factory.mktemp("acceptance") / "feed.jsonl"
    assert main(["generate", "--seed", "1", "--accounts", "40", "--days", "21", "--out", str(path)]) == 0
    return path


def test_acceptance_no_missed_true_alert_and_99_percent_of_flap_recreations_suppressed(
    acceptance_feed: Path, tmp_path: Path
) -> None:
    report = report_of("--input", acceptance_feed, "--report-out", tmp_path / "r.json")
    assert report.keys() >= REPORT_KEYS
    labels = report["labels"]
    assert labels.keys() >= LABEL_KEYS
    assert report["findings"] > 50_000
    assert labels["missed_true_alerts"] == 0
    assert labels["flap_recreations"] > 1000
    assert labels["flap_recreations_suppressed_share"] >= 0.99
    assert labels["suppression_precision"] == 1.0
    assert labels["suppression_recall"] >= 0.99
    # The naive notifier pages for the flaps; flapguard does not.
    assert report["naive_alerts"] > 3 * report["alerts"]
    assert labels["naive_false_alerts"] > 1000
    assert labels["false_alerts"] < labels["naive_false_alerts"] / 50
    # The rarer situations are in the default feed, each decided as its label says.
    by_truth = labels["by_truth"]
    for truth, decision in (("escalated_recreation", "alert:new"),
                            ("escalated_reactivation", "alert:reactivated"),
                            ("third_party_failure", "alert:new"),
                            ("unmuted_recreation", "suppressed:recreated_after_archive"),
                            ("consolidation_switch", "suppressed:consolidation_switch")):
        decided = {k.split(":", 1)[1]: v for k, v in by_truth.items() if k.startswith(f"{truth}:")}
        assert decided and set(decided) == {decision}, truth
    deleted = labels["deleted_resources"]
    assert deleted["incidents"] > 0 and deleted["open_overdue"] == 0


def test_report_breaks_down_by_control_and_account_and_gives_gap_percentiles(
    acceptance_feed: Path, tmp_path: Path
) -> None:
    report = report_of("--input", acceptance_feed, "--report-out", tmp_path / "r.json")
    by_control = report["by_control"]
    assert sum(sum(v for k, v in c.items() if k != "naive_alert") for c in by_control.values()) \
        == report["findings"]
    assert sum(c.get("alert", 0) for c in by_control.values()) == report["alerts"]
    assert sum(c.get("naive_alert", 0) for c in by_control.values()) == report["naive_alerts"]
    assert len(report["by_account"]) == 40
    assert sum(a.get("suppressed", 0) for a in report["by_account"].values()) == report["suppressed"]
    # RDS.45 is evaluated every 12 h: its flaps come back 12-13 h after the archive.
    rds45 = report["gaps_hours_by_control"]["RDS.45"]
    assert rds45["count"] > 50
    assert 12 <= rds45["p50"] <= rds45["p99"] <= 13.1
    assert 24 <= report["gaps_hours_by_control"]["RDS.27"]["p50"] <= 25  # a 24 h rule


def test_labels_count_missed_and_false_alerts_and_score_suppressions(tmp_path: Path) -> None:
    feed = tmp_path / "incident.jsonl"
    shutil.copy(INCIDENT, feed)
    # The incident's decisions: 1 alert, 2-3 silent, 4 suppressed (the flap), 5-6 silent,
    # 7 alert, 8 dead letter. Ground truth that disagrees twice: line 4 was a real new
    # risk (missed), line 7 was not (false alert).
    truths = {4: (True, "recreated_resource"), 7: (False, "flap_recreation"), 1: (True, "new_failure")}
    labels_path(feed).write_bytes(b"".join(
        orjson.dumps({"line": n, "index": 0, "alert": truths.get(n, (False, ""))[0],
                      "truth": truths.get(n, (False, "update"))[1],
                      "suppress": truths.get(n, (False, ""))[1] == "flap_recreation"}) + b"\n"
        for n in range(1, 9)))
    report = report_of("--input", feed, "--report-out", tmp_path / "r.json")
    labels = report["labels"]
    assert (labels["true_alerts"], labels["missed_true_alerts"], labels["false_alerts"]) == (2, 1, 1)
    assert labels["suppression_precision"] == 0.0  # its one suppression hid a real risk
    assert labels["suppression_recall"] == 0.0  # and the expected one alerted
    assert [e["line"] for e in labels["missed_examples"]] == [4]
    assert [e["line"] for e in labels["false_alert_examples"]] == [7]
    assert labels["naive_false_alerts"] == 1 and labels["naive_missed_true_alerts"] == 0
    # --no-labels: no scoring.
    assert "labels" not in report_of("--input", feed, "--report-out", tmp_path / "r2.json", "--no-labels")


def test_labels_that_do_not_line_up_are_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = tmp_path / "incident.jsonl"
    shutil.copy(INCIDENT, feed)
    labels_path(feed).write_bytes(b'{"line": 2, "index": 0, "alert": false, "truth": "x"}\n')
    assert main(["backtest", "--input", str(feed)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("flapguard backtest: error: labels do not line up with the input")
    assert len(err.splitlines()) == 1


def test_sweep_trades_missed_true_alerts_against_false_alerts_and_plots(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    # With resources deleted and re-created under the same ARN while failing, a long
    # window hides real new risks; a short one lets flaps through.
    write_feed(Profile(seed=8, accounts=6, days=21, deletion_rate=0.01, same_arn_recreate_rate=1.0), feed)
    plot = tmp_path / "sweep.png"
    report = report_of("--input", feed, "--report-out", tmp_path / "r.json",
                       "--sweep", "48h,1h,6h,12h,24h,30h", "--plot", plot)
    rows = report["sweep"]
    assert [r["window_seconds"] / 3600 for r in rows] == [1, 6, 12, 24, 30, 48]
    suppressed = [r["suppressed"] for r in rows]
    missed = [r["missed"] for r in rows]
    false = [r["false"] for r in rows]
    assert suppressed == sorted(suppressed) and suppressed[0] < suppressed[-1]
    assert missed == sorted(missed) and missed[0] < missed[-1]
    assert false == sorted(false, reverse=True) and false[0] > false[-1]
    row_30h = rows[4]
    assert (row_30h["alerts"], row_30h["suppressed"], row_30h["missed"]) == (
        report["alerts"], report["suppressed"], report["labels"]["missed_true_alerts"])
    assert report["gaps_window_seconds"] == 48 * 3600  # gaps from the widest window
    # Per control, each window: what a per-control pairing policy is chosen from.
    per_control = report["sweep_by_control"]
    assert per_control and set(per_control) <= set(report["by_control"])
    for rows_of_control in per_control.values():
        assert [r["window_seconds"] / 3600 for r in rows_of_control] == [1, 6, 12, 24, 30, 48]
    for i, row in enumerate(rows):
        assert sum(c[i]["suppressed"] for c in per_control.values()) == row["suppressed"]
        assert sum(c[i]["alerts"] for c in per_control.values()) == row["alerts"]
    data = plot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (936, 324)


def test_gzip_input_decides_as_the_plain_file(tmp_path: Path) -> None:
    plain = tmp_path / "feed.jsonl"
    packed = tmp_path / "feed.jsonl.gz"
    profile = Profile(seed=2, accounts=2, days=10)
    write_feed(profile, plain)
    write_feed(profile, packed)
    a = backtest_files([plain], policy=Policy(), now_ms=NOW_MS, progress=False).to_json()
    b = backtest_files([packed], policy=Policy(), now_ms=NOW_MS, progress=False).to_json()
    for key in ("findings", "by_reason", "labels", "by_control"):
        assert a[key] == b[key]
    assert a["labels"]["labelled"] == a["findings"]


def test_progress_bar_draws_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = io.StringIO()
    monkeypatch.setattr("sys.stderr", drawn)
    quiet = Progress(1000, enabled=False)
    quiet.at(1000, 5000)
    quiet.close()
    assert drawn.getvalue() == ""
    shown = Progress(1000, enabled=True)
    shown.shown = -1e9  # draw at the next chance
    shown.at(1000, 1024)
    shown.close()
    assert "\r[" in drawn.getvalue() and "100.0%" in drawn.getvalue()
    assert "1,024 lines" in drawn.getvalue()


def test_backtest_moves_the_progress_bar_to_the_end_of_its_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = io.StringIO()
    monkeypatch.setattr("sys.stderr", drawn)
    feed = tmp_path / "feed.jsonl"
    lines = write_feed(Profile(seed=2, accounts=2, days=10), feed).findings
    backtest_files([feed], policy=Policy(), now_ms=NOW_MS, progress=True)
    last = drawn.getvalue().rsplit("\r", 1)[-1]
    assert "100.0%" in last and f"{lines:,} lines" in last


def test_cli_prints_no_progress_bar_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = tmp_path / "feed.jsonl"
    write_feed(Profile(seed=2, accounts=2, days=10), feed)
    assert main(["backtest", "--input", str(feed), "--sweep", "12h,30h"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "labels: missed true alerts 0" in captured.out
    assert "window" in captured.out and "30h" in captured.out


@pytest.mark.parametrize("args, message", [
    (["--sweep", "1h,soon"], "not a duration"),
    (["--sweep", "0s"], "positive durations"),
])
def test_cli_rejects_a_bad_sweep(args: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["backtest", "--input", str(INCIDENT), *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_labels_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", "--input", str(INCIDENT), "--labels", str(tmp_path / "none.jsonl")]) == 1
    assert "labels not found" in capsys.readouterr().err


def test_decisions_are_handed_on_in_input_order_whatever_order_they_are_decided_in() -> None:
    handed: list[int] = []
    ordered = _InOrder(lambda outcome: handed.append(outcome.seq))

    def outcomes(*seqs: int) -> list[Outcome]:
        return [Outcome(Origin("f", s + 1, 0), Decision.SILENT, seq=s) for s in seqs]

    ordered.put(outcomes(0, 1))
    ordered.put(outcomes(3, 5))  # decided before 2 and 4
    assert handed == [0, 1]
    ordered.put(outcomes(2))
    assert handed == [0, 1, 2, 3]
    ordered.put(outcomes(4, 6, 8))
    ordered.put(outcomes(7))
    assert handed == list(range(9))
    assert ordered.waiting == {}
