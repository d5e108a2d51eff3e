"""`flapguard notify --metrics-address`: a real notifier on the real broker, scraped over
HTTP, counts what it consumed, delivered, retried and dead-lettered."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from streams.demo.brokers import free_port
from streams.kafka.topics import create_topics_sync
from tests.kafka_io import read_all
from tests.notify.processes import notify_args, start, stop
from tests.notify.test_service_kafka import alerts, produce
from tests.notify_servers import Reply, http_recorder
from tests.scrape import Samples, scrape_until, value

SECRET = "/services/T0/B0/METRICSSECRET"


def test_notifier_metrics_count_deliveries_retries_and_dead_letters_by_sink(
        kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 1})
    good = alerts(3)
    good[2]["severity"] = "CRITICAL"
    good[2]["kind"] = "regression"
    produce(kafka_bootstrap, topic, [orjson.dumps(good[0]), b"{broken", orjson.dumps(good[1]),
                                     orjson.dumps(good[2])], [b"dk-0000", None, b"dk-0001", b"dk-0002"])
    port = free_port()
    log = tmp_path / "notify.log"
    with http_recorder(SECRET) as slack:
        # alert 0: three failures, dead-lettered; alert 1: one failure, then delivered.
        slack.plan = [Reply(503)] * 4
        args = notify_args(kafka_bootstrap, unique_name, "--slack-webhook-url", slack.url,
                           "--stdout", "--slack-rate", "50/s", "--max-attempts", "3",
                           "--batch-size", "1", "--metrics-address", f"127.0.0.1:{port}")
        proc = start(args, log)
        try:
            text, got = scrape_until(
                f"http://127.0.0.1:{port}/metrics",
                lambda s: value(s, "flapguard_notify_delivery_seconds_count", sink="slack") >= 3
                and value(s, "flapguard_notify_delivery_seconds_count", sink="stdout") >= 3
                and value(s, "flapguard_notify_last_commit_timestamp_seconds") > 0
                and value(s, "flapguard_notify_dead_letters_total", sink="slack") >= 1, proc)
        finally:
            code = stop(proc, timeout=30)
    assert code == 0, log.read_text()[-3000:]

    def deliveries(sink: str, outcome: str) -> float:
        return value(got, "flapguard_notify_deliveries_total", sink=sink, outcome=outcome)

    assert [deliveries("slack", o) for o in ("delivered", "retried", "dead_lettered")] == [1, 1, 1]
    assert [deliveries("stdout", o) for o in ("delivered", "retried", "dead_lettered")] == [3, 0, 0]
    assert value(got, "flapguard_notify_delivery_attempts_total", sink="slack") == 3 + 2 + 1
    assert value(got, "flapguard_notify_delivery_attempts_total", sink="stdout") == 3
    assert value(got, "flapguard_notify_alerts_consumed_total", kind="new", severity="MEDIUM") == 2
    assert value(got, "flapguard_notify_alerts_consumed_total", kind="regression",
                 severity="CRITICAL") == 1
    assert value(got, "flapguard_notify_alerts_consumed_total", kind="other", severity="other") == 1
    assert value(got, "flapguard_notify_dead_letters_total", sink="slack") == 1
    assert value(got, "flapguard_notify_dead_letters_total", sink="parse") == 1
    # Counters of sinks not configured exist at 0 (so `increase()` sees their first event).
    assert ("flapguard_notify_deliveries_total", frozenset(
        {("sink", "pagerduty"), ("outcome", "dead_lettered")})) in got
    # The metrics match the dead-letter topic, and never show the webhook's secret path.
    assert len(read_all(kafka_bootstrap, f"{unique_name}.notify-deadletter")) == 2
    assert "METRICSSECRET" not in text and "flapguard_decisions_total" not in text


def test_backlog_and_alert_latency_per_sink_show_a_stalled_sink_and_its_recovery(
        kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 2})
    made = alerts(12)
    produce(kafka_bootstrap, topic, [orjson.dumps(a) for a in made], [a["dedup_key"].encode() for a in made])
    port = free_port()
    log = tmp_path / "notify.log"
    gate = threading.Event()
    with http_recorder(SECRET) as slack:
        slack.default = Reply(200, gate=gate)  # Slack is stalled; stdout is not
        args = notify_args(kafka_bootstrap, unique_name, "--slack-webhook-url", slack.url,
                           "--stdout", "--slack-rate", "50/s", "--http-timeout", "300s",
                           "--metrics-address", f"127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}/metrics"
        proc = start(args, log)
        try:
            def latencies(s: Samples, sink: str) -> float:
                return value(s, "flapguard_notify_alert_latency_seconds_count", sink=sink)

            # stdout has delivered everything; all twelve wait for Slack.
            _, stalled = scrape_until(
                url, lambda s: value(s, "flapguard_notify_backlog", sink="stdout") == 0
                and value(s, "flapguard_notify_backlog", sink="slack") == 12
                and latencies(s, "stdout") == 12, proc)
            assert latencies(stalled, "slack") == 0
            gate.set()
            _, drained = scrape_until(
                url, lambda s: value(s, "flapguard_notify_backlog", sink="slack") == 0
                and latencies(s, "slack") == 12, proc)
        finally:
            gate.set()
            code = stop(proc, timeout=60)
    assert code == 0, log.read_text()[-3000:]
    # Every delivery is in a bucket, none below zero; the sink without deliveries has none.
    assert value(drained, "flapguard_notify_alert_latency_seconds_bucket", sink="slack", le="+Inf") == 12
    assert value(drained, "flapguard_notify_alert_latency_seconds_count", sink="pagerduty") == 0
    assert value(drained, "flapguard_notify_deliveries_total", sink="slack", outcome="delivered") == 12
