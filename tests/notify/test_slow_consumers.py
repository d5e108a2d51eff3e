"""A slow sink and a stalled consumer of the alerts topic: the worker's output
is all there regardless, and the notifier drops nothing and commits nothing before it
has delivered it. Real Apache Kafka, worker and notifier as child processes."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from streams.core.records import alert_records, decision_record
from streams.kafka.topics import create_topics_sync
from streams.notify.sinks import pagerduty_dedup_key
from tests.kafka_io import WorkerRun, committed, read_until, values
from tests.notify.processes import alive, notify_args, start, stop, wait_until
from tests.notify_servers import ACCEPTED, Reply, http_recorder
from tests.timeline import history, write_jsonl
from tests.worker.test_worker_kafka import all_decided, backtest, replay


def pagerduty_events(alerts: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((pagerduty_dedup_key(a["dedup_key"]), "resolve" if a["kind"] == "resolved" else "trigger")
                   for a in alerts)


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
        log = tmp_path / "notify.log"
        notifier = start(args, log)
        notifier_alive = alive(notifier, log)

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
                stop(notifier, timeout=30)
            run.stop()
        assert notifier.returncode == 0
        bodies = pagerduty.bodies()
    # Every alert delivered exactly once: none dropped, none repeated.
    assert Counter((b["dedup_key"], b["event_action"]) for b in bodies) == wanted
