"""Who writes a topic (streams/worker/owners.py, docs/operations.md): every output
record names the app id that wrote it, and a worker refuses to start on output topics
whose last records another app id wrote, unless it is given topics of its own
(`--output-prefix`) or told to share them (`--allow-shared-outputs`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streams.cli import build_parser
from streams.cli.worker import worker_settings_from
from streams.core.records import HEADER_APP_ID
from streams.worker.owners import refusal, writers
from tests.kafka_io import WorkerRun, read_until, values
from tests.worker.test_worker_kafka import INCIDENT, replay


def test_a_topic_another_app_id_writes_is_refused_and_one_of_its_own_is_not() -> None:
    assert refusal("candidate", {"securityhub.alerts": {"candidate"}}) is None
    assert refusal("candidate", {}) is None
    why = refusal("candidate", {"securityhub.alerts": {"flapguard", "candidate"}})
    assert why is not None and why.startswith("securityhub.alerts is written by app id 'flapguard'")
    assert "--output-prefix" in why and "--allow-shared-outputs" in why


def test_the_output_prefix_goes_before_every_output_topic_and_not_the_findings_topic() -> None:
    args = build_parser().parse_args(["worker", "--output-prefix", "candidate-12h.",
                                      "--decisions-topic", "securityhub.decisions"])
    topics = worker_settings_from(args).topics
    assert topics.findings == "securityhub.findings"
    assert (topics.alerts, topics.suppressed, topics.deadletter, topics.decisions) == (
        "candidate-12h.securityhub.alerts", "candidate-12h.securityhub.suppressed",
        "candidate-12h.securityhub.deadletter", "candidate-12h.securityhub.decisions")


def worker_args(run: WorkerRun, app_id: str, *extra: str) -> list[str]:
    t = run.topics
    return [sys.executable, "-m", "streams", "worker", "--bootstrap-servers", run.bootstrap,
            "--app-id", app_id, "--findings-topic", t["findings"], "--alerts-topic", t["alerts"],
            "--suppressed-topic", t["suppressed"], "--deadletter-topic", t["deadletter"],
            "--decisions-topic", t["decisions"], "--partitions", str(run.partitions),
            "--data-dir", str(run.workdir / app_id), "--metrics-address", "off", *extra]


def test_a_candidate_worker_refuses_the_topics_production_writes(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    production = WorkerRun(kafka_bootstrap, unique_name, tmp_path)
    production.create_source(partitions=1)
    production.start()
    try:
        replay(production, INCIDENT)
        alerts = production.topics["alerts"]

        def two_alerts(got: dict[str, list[Any]]) -> bool:
            return len(values(got[alerts])) >= 2

        got = read_until(kafka_bootstrap, [alerts], two_alerts, timeout=120, alive=production.assert_alive)
    finally:
        production.stop()
    # Every output record names the app id that wrote it.
    assert {dict(r.headers)[HEADER_APP_ID] for r in got[alerts]} == {unique_name.encode()}
    outputs = [production.topics[role] for role in ("alerts", "suppressed", "deadletter", "decisions")]
    found = asyncio.run(writers(kafka_bootstrap, outputs))
    assert found == {topic: {unique_name} for topic in outputs}

    # Another app id on those topics: one line, exit 1, before it starts.
    candidate = f"{unique_name}-candidate"
    refused = subprocess.run(worker_args(production, candidate), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 1
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"flapguard worker: error: {production.topics['alerts']} is written by "
                           f"app id '{unique_name}'")


@pytest.mark.parametrize("flag", ["--output-prefix", "--allow-shared-outputs"])
def test_a_candidate_with_topics_of_its_own_or_told_to_share_is_not_refused(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, flag: str
) -> None:
    """The guard passes: the worker goes on to start (it is stopped once it is ready)."""
    production = WorkerRun(kafka_bootstrap, unique_name, tmp_path)
    production.create_source(partitions=1)
    asyncio.run(_mark(kafka_bootstrap, production.topics["alerts"], unique_name))
    extra = [flag, f"{unique_name}-c."] if flag == "--output-prefix" else [flag]
    log = tmp_path / "candidate.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(worker_args(production, f"{unique_name}-c", *extra, "--log-level", "INFO"),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_line(log, "ready:", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    import time

    deadline = time.monotonic() + 120
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
        time.sleep(0.2)


async def _mark(bootstrap: str, topic: str, app_id: str) -> None:
    from aiokafka import AIOKafkaProducer

    from streams.kafka.topics import create_topics

    await create_topics(bootstrap, {topic: 1})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", headers=[(HEADER_APP_ID, app_id.encode())])
    finally:
        await producer.stop()
