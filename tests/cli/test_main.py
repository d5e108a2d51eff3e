"""The command line's frame (`streams.cli`): every command registered in `--help` order, and
a bad setting is one line on stderr and exit 1, before any work starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.cli import COMMANDS, build_parser, main


def test_every_command_is_registered_in_help_order() -> None:
    help_text = build_parser().format_help()
    positions = [help_text.index(f"    {name}") for name in COMMANDS]
    assert positions == sorted(positions)
    assert list(COMMANDS) == ["worker", "backtest", "explain", "diff", "replay", "demo", "generate",
                             "forward", "notify"]


def test_a_bad_store_is_one_line_and_exit_1_before_the_worker_starts(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--store", "redis://", "--bootstrap-servers", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err == "flapguard worker: error: unknown --store 'redis://' (one of memory://, rocksdb://)\n"


def test_a_bad_store_from_the_environment_is_refused_alike(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAPGUARD_STORE", "rocks")
    assert main(["worker", "--bootstrap-servers", "127.0.0.1:1"]) == 1
    assert "unknown --store 'rocks'" in capsys.readouterr().err


INCIDENT = Path(__file__).parents[1] / "fixtures" / "incident-rds45.jsonl"


def flapguard(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams", *args],
                          input=stdin.decode() if stdin is not None else None, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_a_bad_environment_value_is_reported_by_the_command_that_runs() -> None:
    done = flapguard("backtest", "--input", str(INCIDENT), env={"FLAPGUARD_WINDOW": "abc"})
    assert done.returncode == 2
    assert done.stderr.startswith("flapguard backtest: error: FLAPGUARD_WINDOW: not a duration: 'abc'")
    # The flag replaces the variable: nothing to report.
    assert flapguard("backtest", "--input", str(INCIDENT), "--window", "2h",
                     env={"FLAPGUARD_WINDOW": "abc"}).returncode == 0


@pytest.mark.parametrize(("value", "message"), [
    ("30x", "argument --window: not a duration: '30x' (write it like 90s, 5m, 24h or 7d)"),
    ("-5h", "argument --window: a duration cannot be negative: '-5h'"),
])
def test_a_bad_duration_is_named_once_and_said_plainly(
        value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["backtest", "--input", str(INCIDENT), "--window", value])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"flapguard backtest: error: {message} (see --help)\n"


def test_standard_input_is_backtested_as_the_file_is() -> None:
    from_file = flapguard("backtest", "--input", str(INCIDENT), "--no-labels")
    from_stdin = flapguard("backtest", "--input", "-", "--no-labels", stdin=INCIDENT.read_bytes())
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout.splitlines()[:-1] == from_file.stdout.splitlines()[:-1]  # all but the rate
    assert "alerts 2  suppressed 1" in from_stdin.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--input", "-", "--sweep", "1h,2h"], "--input -: standard input is read once, and --sweep reads"),
    (["--input", "/dev/stdin", "--via-kafka"], "input is not a regular file (a pipe?): /dev/stdin; "
                                               "--via-kafka reads its input again"),
    (["--input", "-", "-"], "--input -: standard input can be given once"),
    (["--input", str(INCIDENT.parent)], f"input is a directory, not a file: {INCIDENT.parent}"),
    (["--input", str(INCIDENT), "--plot", "sweep.txt"], "--plot sweep.txt: not a picture format"),
    (["--input", str(INCIDENT), "--plot", "/no/such/folder/sweep.png"], "no such folder: /no/such/folder"),
])
def test_inputs_and_outputs_that_cannot_work_are_refused_before_any_work(
        args: list[str], message: str) -> None:
    done = flapguard("backtest", *args, stdin=b"")
    assert done.returncode == 1
    assert done.stdout == ""  # no report: nothing was decided
    (line,) = done.stderr.splitlines()
    assert line.startswith("flapguard backtest: error: ") and message in line


def test_an_empty_input_is_an_error_not_a_silent_zero(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n \n")
    done = flapguard("backtest", "--input", str(empty))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "flapguard backtest: error: the input holds nothing to decide (is it empty?)\n"
    done = flapguard("backtest", "--input", "-", stdin=b"")
    assert done.returncode == 1 and "nothing to decide" in done.stderr


def test_concatenated_pretty_printed_documents_are_backtested_as_documents(tmp_path: Path) -> None:
    """Two pretty-printed documents one after another (what `jq .` writes): two units,
    not dozens of unparseable lines."""
    lines = INCIDENT.read_bytes().splitlines()
    both = tmp_path / "both.json"
    both.write_bytes(b"\n".join(orjson.dumps(orjson.loads(line), option=orjson.OPT_INDENT_2)
                                for line in lines[:2]) + b"\n")
    done = flapguard("backtest", "--input", str(both), "--no-labels")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("findings 2  alerts 1  suppressed 0  resolved 0  dead letters 0")


def test_an_input_that_is_mostly_not_findings_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """A log file given by mistake: refused on its first records, before the broker is
    even asked (nothing listens at the address given)."""
    lines = INCIDENT.read_bytes().splitlines()
    mistaken = tmp_path / "mistake.log"
    mistaken.write_bytes(b"\n".join([lines[0], *(f"GET /index.html {n}".encode() for n in range(3))]))
    done = flapguard("replay", "--input", str(mistaken), "--bootstrap-servers", "127.0.0.1:1")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "flapguard replay: error: 3 of the first 4 records hold no finding that parses; not findings, "
        "or broken in export? (--allow-unparseable replays them anyway, to be dead-lettered); nothing "
        "was written\n")


@pytest.mark.kafka
def test_replay_says_how_many_records_hold_no_finding(kafka_bootstrap: str, unique_name: str,
                                                      tmp_path: Path) -> None:
    lines = INCIDENT.read_bytes().splitlines()
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"\n".join([*lines[:3], b'{"SchemaVersion": "2018-10-08", "Id": "cut']))
    done = flapguard("replay", "--input", str(mixed), "--bootstrap-servers", kafka_bootstrap,
                     "--topic", f"{unique_name}.findings")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"replayed 4 records to {unique_name}.findings\n"
    assert done.stderr == "warning: 1 of them hold no finding that parses; the worker dead-letters them\n"
    # Told to, a mostly broken input is replayed whole.
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\n".join([lines[0], b"{", b"[1"]))
    done = flapguard("replay", "--input", str(broken), "--bootstrap-servers", kafka_bootstrap,
                     "--topic", f"{unique_name}.findings", "--allow-unparseable")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"replayed 3 records to {unique_name}.findings\n"
