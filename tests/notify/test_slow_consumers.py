"""A slow sink and a stalled consumer of the alerts topic: the worker's output
is all there regardless, and the notifier drops nothing and commits nothing before it
has delivered it. Real Apache Kafka, worker and notifier as child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from streams.core.records import alert_records, decision_record
from streams.kafka.topics import create_topics_sync
from streams.notify.sinks import pagerduty_dedup_key
from tests.kafka_io import WorkerRun, read_until, values
from tests.notify.test_service_kafka import clean_env, notify_args
from tests.notify_servers import Reply, http_recorder
from tests.timeline import history, write_jsonl
from tests.worker.test_worker_kafka import all_decided, backtest, replay

ACCEPTED = b'{"status":"success","message":"Event processed"}'


def pagerduty_events(alerts: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((pagerduty_dedup_key(a["dedup_key"]), "resolve" if a["kind"] == "resolved" else "trigger")
                   for a in alerts)


def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets, by (topic, partition)."""
    async def run() -> dict[tuple[str, int], int]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    return asyncio.run(run())


def wait_until(condition: Any, *, timeout: float, what: str, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


def test_a_stalled_then_slow_sink_delays_no_worker_output_and_loses_or_precommits_no_alert(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    run = WorkerRun(kafka_bootstrap, unique_name, tmp_path)
    run.create_source(partitions=1)
    t = run.topics
    path = write_jsonl(tmp_path / "history.jsonl", history(seed=41, accounts=3, days=40))
    outcomes = backtest(path, partitions=run.partitions)
    expected = [decision_record(o) for o in outcomes]
    # What the worker puts on the alerts topic: alerts, resolves and closings.
    expected_alerts = [record for o in outcomes for record in alert_records(o, 0)]
    wanted = pagerduty_events(expected_alerts)
    assert len(expected_alerts) > 40
    create_topics_sync(kafka_bootstrap, {t["alerts"]: run.partitions})
    group = f"{unique_name}-notify.pagerduty"

    gate = threading.Event()
    with http_recorder("/v2/enqueue") as pagerduty:
        # Every reply waits for the gate (a stalled sink), then takes 20 ms (a slow one).
        pagerduty.default = Reply(202, ACCEPTED, delay_s=0.02, gate=gate)
        # The stall outlasts the consumer session many times over: the group must not
        # evict the notifier (which would deliver the batch again elsewhere).
        args = notify_args(kafka_bootstrap, unique_name,
                           "--pagerduty-routing-key", "rk", "--pagerduty-url", pagerduty.url,
                           "--http-timeout", "300s", "--session-timeout", "1500ms",
                           "--batch-size", "20")
        log = (tmp_path / "notify.log").open("wb")
        notifier = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
                                    start_new_session=True)
        log.close()

        def notifier_alive() -> None:
            if notifier.poll() is not None:
                raise AssertionError(f"notifier exited with {notifier.returncode}:\n"
                                     f"{(tmp_path / 'notify.log').read_text()[-3000:]}")

        def both_alive() -> None:
            run.assert_alive()
            notifier_alive()

        try:
            replay(run, path)
            run.start()
            # The worker's whole output is there while the notifier is stuck.
            got = read_until(kafka_bootstrap, [t["alerts"], t["decisions"]],
                             all_decided(run, len(expected)), timeout=180, alive=both_alive)
            written = values(got[t["alerts"]])
            assert pagerduty_events(written) == wanted
            assert pagerduty.requests, "the notifier never took a batch: nothing was stalled"
            assert not pagerduty.answered
            # Nothing committed before delivery.
            assert all(offset == 0 for offset in committed(kafka_bootstrap, group).values())

            gate.set()
            pagerduty.wait_for(sum(wanted.values()), timeout=120)
            ends = Counter(r.partition for r in got[t["alerts"]])
            wait_until(lambda: committed(kafka_bootstrap, group)
                       == {(t["alerts"], p): n for p, n in ends.items()},
                       timeout=60, what="every delivered alert committed", alive=notifier_alive)
        finally:
            gate.set()
            if notifier.poll() is None:
                os.killpg(notifier.pid, signal.SIGTERM)
            notifier.wait(timeout=30)
            run.stop()
        assert notifier.returncode == 0
        bodies = pagerduty.bodies()
    # Every alert delivered exactly once: none dropped, none repeated.
    assert Counter((b["dedup_key"], b["event_action"]) for b in bodies) == wanted
