"""The worker and a broker that is down at start-up or lost mid-stream.

These tests take their own Apache Kafka broker (module scope) down and bring it back on
the same port and data (`KafkaBroker.halt`/`resume`); the session's shared broker is
never touched. Expected decisions come from the in-process backtest of the same input.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.core.records import decision_record
from streams.demo.brokers import KafkaBroker, default_kafka_libs
from tests.kafka_io import AlertKey, WorkerRun, alert_keys, expected_alert_keys, read_all, read_until, values
from tests.timeline import history, write_jsonl
from tests.worker.test_worker_kafka import all_decided, backtest, replay

pytestmark = pytest.mark.kafka

# The worker waits for the broker before its first step (who writes the outputs, then the topics).
WAITING = "waiting for it before "
LOST = "unreachable ("
BACK = "reachable again after"


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    libs = default_kafka_libs()
    if not any(libs.glob("kafka_2.13-*.jar")):
        pytest.skip(f"no Apache Kafka jars in {libs}: run scripts/fetch-kafka")
    with KafkaBroker(libs) as started:
        yield started


@pytest.fixture
def run(broker: KafkaBroker, unique_name: str, tmp_path: Path) -> Iterator[WorkerRun]:
    worker = WorkerRun(broker.bootstrap_servers, unique_name, tmp_path)
    worker.create_source(partitions=1)
    yield worker
    worker.stop()


def wait_for_log(run: WorkerRun, done: Callable[[str], bool], *, timeout: float, what: str) -> str:
    """The worker's log once `done(log)` holds; fails if the worker exits first."""
    path = run.workdir / f"worker-{run.starts}.log"
    deadline = time.monotonic() + timeout
    while True:
        run.assert_alive()
        text = path.read_text(errors="replace") if path.exists() else ""
        if done(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in the worker's log within {timeout}s:\n{run.log_tail()}")
        time.sleep(0.1)


def flapguard_lines(text: str, needle: str) -> list[str]:
    """flapguard's own lines about the broker (Faust's log format has no logger name;
    aiokafka never writes "Kafka broker at")."""
    return [line for line in text.splitlines() if "Kafka broker at " in line and needle in line]


def expected_alerts(path: Path, partitions: int) -> tuple[int, set[AlertKey]]:
    expected = [decision_record(o) for o in backtest(path, partitions=partitions)]
    return len(expected), expected_alert_keys(expected)


def test_worker_started_while_the_broker_is_down_waits_with_backoff_then_decides_everything(
    broker: KafkaBroker, run: WorkerRun, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=31, accounts=2, days=30))
    count, wanted = expected_alerts(path, run.partitions)
    assert len(wanted) > 20
    replay(run, path)
    broker.halt()
    try:
        run.start()
        # Several attempts, each announced, further and further apart; still running.
        text = wait_for_log(run, lambda log: len(flapguard_lines(log, WAITING)) >= 4, timeout=60,
                            what="fourth attempt to reach the broker")
    finally:
        broker.resume()
    delays = [float(m) for m in re.findall(r"next in ([0-9.]+) s", "\n".join(flapguard_lines(text, WAITING)))]
    assert delays == sorted(delays) and delays[-1] >= 3 * delays[0], delays
    assert f"Kafka broker at {broker.bootstrap_servers} unavailable" in text

    t = run.topics
    got = read_until(run.bootstrap, [t["alerts"], t["decisions"]], all_decided(run, count),
                     timeout=180, alive=run.assert_alive)
    assert alert_keys(got[t["alerts"]]) == wanted
    wait_for_log(run, lambda log: bool(flapguard_lines(log, "available after")), timeout=5,
                        what="line saying the broker is available")
    assert run.starts == 1


def test_broker_lost_mid_stream_loses_no_alert_and_the_worker_carries_on(
    broker: KafkaBroker, run: WorkerRun, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=37, accounts=8, days=60))
    count, wanted = expected_alerts(path, run.partitions)
    assert len(wanted) > 100
    replay(run, path)
    run.start()
    t = run.topics
    read_until(run.bootstrap, [t["decisions"]], lambda got: len(got[t["decisions"]]) >= count // 4,
               timeout=180, alive=run.assert_alive)
    broker.halt(kill=True)  # no goodbye: in-flight requests are lost with it
    try:
        text = wait_for_log(run, lambda log: bool(flapguard_lines(log, LOST)), timeout=30,
                            what="line saying the broker is unreachable")
    finally:
        broker.resume()
    resumed_ms = time.time() * 1000
    (lost,) = flapguard_lines(text, LOST)
    assert "nothing is dropped" in lost

    got = read_until(run.bootstrap, [t["alerts"], t["decisions"]], all_decided(run, count),
                     timeout=240, alive=run.assert_alive)
    # The outage hit the worker mid-stream: a fair share was decided after it.
    after = [r for r in got[t["decisions"]] if r.timestamp >= resumed_ms]
    assert len(after) >= count // 10, (len(after), count)
    seen = alert_keys(got[t["alerts"]])
    assert seen == wanted, (sorted(seen - wanted)[:5], sorted(wanted - seen)[:5])
    # Every alert record carries the dedup_key of an expected alert (repeats allowed).
    assert {a["dedup_key"] for a in values(read_all(run.bootstrap, t["alerts"]))} == {w[0] for w in wanted}
    wait_for_log(run, lambda log: bool(flapguard_lines(log, BACK)), timeout=10,
                 what="line saying the broker is back")
    assert run.starts == 1
