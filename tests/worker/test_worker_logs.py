"""What the worker says, on real Apache Kafka: one format for every line (JSON here), no
terminal escape codes, a "ready" line once its state is restored and a "stopped" line
at SIGTERM, and no ERROR for a normal first start (aiokafka's "not found in cluster
metadata" while the changelogs are created)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.kafka_io import WorkerRun


def lines_of(run: WorkerRun) -> list[str]:
    return (run.workdir / f"worker-{run.starts}.log").read_text(errors="replace").splitlines()


def wait_for_line(run: WorkerRun, text: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines_of(run)):
        run.assert_alive()
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(lines_of(run)[-20:])
        time.sleep(0.2)


@pytest.mark.kafka
def test_a_first_start_and_stop_say_ready_and_stopped_in_one_format_with_no_error(
        kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    run = WorkerRun(kafka_bootstrap, unique_name, tmp_path, extra=["--log-format", "json"])
    run.create_source(partitions=1)
    run.start()
    try:
        wait_for_line(run, "ready: keyed partitions")
    finally:
        run.stop()
    assert run.proc is not None and run.proc.returncode == 0
    records = [orjson.loads(line) for line in lines_of(run)]  # every line is one JSON object
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)
    messages = [r["message"] for r in records]
    (ready,) = [m for m in messages if m.startswith("ready: ")]
    assert "keyed partitions [0, 1, 2, 3]" in ready and "state restored in" in ready
    assert messages[-1] == "stopped"
    assert [r for r in records if r["level"] in ("ERROR", "CRITICAL")] == []
    assert not any("\x1b[" in line for line in lines_of(run))
