"""The command line's frame (`streams.cli`): every command registered in `--help` order, and
a bad setting is one line on stderr and exit 1, before any work starts."""

from __future__ import annotations

import pytest

from streams.cli import COMMANDS, build_parser, main


def test_every_command_is_registered_in_help_order() -> None:
    help_text = build_parser().format_help()
    positions = [help_text.index(f"    {name}") for name in COMMANDS]
    assert positions == sorted(positions)
    assert list(COMMANDS) == ["worker", "backtest", "replay", "demo", "generate", "forward", "notify"]


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
