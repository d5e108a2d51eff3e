"""Each sink drains on its own: a consumer group per sink (`<group-id>.<sink>`), whose
committed offsets are exactly what that sink delivered or dead-lettered. A stalled,
slow or failing Slack never holds back a page, and a stop and restart neither lose nor
repeat a delivery on any sink. `flapguard notify` as a child process on the session's
real Apache Kafka, real HTTP servers standing in for Slack and PagerDuty."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.demo.brokers import free_port
from streams.kafka.topics import create_topics_sync
from streams.notify.sinks import pagerduty_dedup_key
from tests.kafka_io import committed, end_offsets, read_all
from tests.notify.processes import (
    PAGES,
    alive,
    all_alive,
    clean_env,
    notify_args,
    reaped,
    route,
    run,
    start,
    stop,
    stop_all,
    wait_until,
)
from tests.notify.test_service_kafka import alerts, produce_alerts, slack_titles
from tests.notify_servers import ACCEPTED, Reply, http_recorder, released

TIMEOUT = 120
# CRITICAL pages and goes to Slack too; everything goes to Slack.
ROUTES = PAGES + route("chat", "slack")


def burst(count: int) -> list[dict[str, Any]]:
    """`count` alerts, every fourth CRITICAL."""
    made = alerts(count)
    for i, alert in enumerate(made):
        if i % 4 == 0:
            alert["severity"] = "CRITICAL"
    return made


def critical_keys(made: list[dict[str, Any]]) -> Counter[str]:
    return Counter(pagerduty_dedup_key(a["dedup_key"]) for a in made if a["severity"] == "CRITICAL")


def ends(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    return {(topic, p): n for p, n in asyncio.run(end_offsets(bootstrap, topic)).items() if n}


def test_a_stalled_slack_never_delays_a_page_and_a_stop_mid_backlog_neither_loses_nor_repeats(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 2})
    made = burst(48)
    produce_alerts(kafka_bootstrap, topic, made)
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    group = f"{unique_name}-notify"
    gate = threading.Event()
    with http_recorder("/services/T0/B0/x") as slack, http_recorder("/v2/enqueue") as pagerduty:
        slack.default = Reply(200, gate=gate)  # Slack holds every reply until the gate opens
        pagerduty.default = Reply(202, ACCEPTED)
        args = notify_args(kafka_bootstrap, unique_name, "--routes", str(routes),
                           "--slack-webhook-url", slack.url, "--slack-rate", "4/s",
                           "--pagerduty-routing-key", "rk", "--pagerduty-url", pagerduty.url,
                           "--http-timeout", "300s", "--batch-size", "10")
        log = tmp_path / "first.log"
        proc = start(args, log)
        with reaped(proc), released(gate):
            wait_until(lambda: len(pagerduty.requests) >= 12, timeout=TIMEOUT,
                       what="every page delivered", alive=alive(proc, log))
            # Every page is out while Slack has not answered once.
            assert slack.requests and not slack.answered
            assert Counter(b["dedup_key"] for b in pagerduty.bodies()) == critical_keys(made)
            # PagerDuty's progress is the whole topic (alerts routed elsewhere included);
            # Slack's is nothing.
            everything = ends(kafka_bootstrap, topic)
            wait_until(lambda: committed(kafka_bootstrap, f"{group}.pagerduty") == everything,
                       timeout=TIMEOUT, what="PagerDuty's progress committed", alive=alive(proc, log))
            assert committed(kafka_bootstrap, f"{group}.slack") == {}

            gate.set()  # Slack drains at 4 messages/s: stop it in the middle
            slack.wait_answered(6, timeout=TIMEOUT)
            code = stop(proc, timeout=60)
        assert code == 0, log.read_text()[-3000:]
        stopped_after = len(slack.requests)
        assert stopped_after < 48, "Slack had no backlog left when stopped: nothing was tested"
        assert sum(committed(kafka_bootstrap, f"{group}.slack").values()) == stopped_after

        done = run([*args, "--exit-when-idle"], timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr[-3000:]
        # Each alert reached Slack exactly once, each page PagerDuty exactly once.
        assert Counter(slack_titles(slack)) == Counter(a["title"] for a in made)
        assert Counter(b["dedup_key"] for b in pagerduty.bodies()) == critical_keys(made)


def test_a_failing_slack_dead_letters_its_own_deliveries_and_pages_still_go_out(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 1})
    made = burst(16)
    produce_alerts(kafka_bootstrap, topic, made)
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    gate = threading.Event()
    with http_recorder("/services/T0/B0/x") as slack, http_recorder("/v2/enqueue") as pagerduty:
        slack.default = Reply(503, gate=gate)
        pagerduty.default = Reply(202, ACCEPTED)
        args = notify_args(kafka_bootstrap, unique_name, "--routes", str(routes),
                           "--slack-webhook-url", slack.url, "--slack-rate", "100/s",
                           "--pagerduty-routing-key", "rk", "--pagerduty-url", pagerduty.url,
                           "--max-attempts", "2", "--exit-when-idle")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=clean_env(), start_new_session=True)
        with reaped(proc), released(gate):
            pagerduty.wait_for(4, timeout=TIMEOUT)
            assert not slack.answered  # every page out while Slack's first attempt hangs
            gate.set()
            _, stderr = proc.communicate(timeout=TIMEOUT)
    assert Counter(b["dedup_key"] for b in pagerduty.bodies()) == critical_keys(made)
    assert len(slack.requests) == 2 * 16
    dead = read_all(kafka_bootstrap, f"{unique_name}.notify-deadletter")
    assert [(dict(r.headers)["flapguard-sink"], orjson.loads(r.value)["title"]) for r in dead] == [
        (b"slack", a["title"]) for a in made]
    assert proc.returncode == 3
    assert stderr.strip().splitlines()[-1].startswith(
        f"flapguard notify: error: 16 notification(s) dead-lettered to {unique_name}.notify-deadletter "
        "(slack 16); delivered 4 notifications for 16 records")


def test_each_sink_starts_where_the_shared_group_left_off(
    kafka_bootstrap: str, unique_name: str,
) -> None:
    """A notifier that committed under `--group-id` alone (one group for every sink) is
    upgraded: each sink's new group starts at that group's offsets, repeating nothing."""
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 1})
    made = alerts(10)
    produce_alerts(kafka_bootstrap, topic, made)
    shared_commit(kafka_bootstrap, f"{unique_name}-notify", topic, 6)
    with http_recorder("/services/T0/B0/x") as slack:
        done = run(notify_args(kafka_bootstrap, unique_name, "--stdout",
                               "--slack-webhook-url", slack.url, "--slack-rate", "100/s",
                               "--exit-when-idle"), timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr[-3000:]
        assert slack_titles(slack) == [a["title"] for a in made[6:]]
    assert [orjson.loads(line)["title"] for line in done.stdout.splitlines()] == [
        a["title"] for a in made[6:]]


def shared_commit(bootstrap: str, group: str, topic: str, offset: int) -> None:
    async def run() -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.commit({tp: offset})
        finally:
            await consumer.stop()

    asyncio.run(run())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_it_while_a_refused_webhook_waits_to_retry_and_a_restart_delivers_each_once(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path, sig: signal.Signals,
) -> None:
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 2})
    made = burst(20)
    produce_alerts(kafka_bootstrap, topic, made)
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    group = f"{unique_name}-notify"
    refusing = f"http://127.0.0.1:{free_port()}/services/T0/B0/x"  # nothing listens there
    with http_recorder("/v2/enqueue") as pagerduty:
        pagerduty.default = Reply(202, ACCEPTED)
        pages = ["--pagerduty-routing-key", "rk", "--pagerduty-url", pagerduty.url]
        # Minutes of backoff between attempts: only a stop that cuts the pause is prompt.
        args = notify_args(kafka_bootstrap, unique_name, "--routes", str(routes), *pages,
                           "--slack-webhook-url", refusing, "--retry-base", "60s",
                           "--retry-max", "5m", "--max-attempts", "10")
        log = tmp_path / "first.log"
        proc = start(args, log)
        with reaped(proc):
            everything = ends(kafka_bootstrap, topic)
            wait_until(lambda: committed(kafka_bootstrap, f"{group}.pagerduty") == everything
                       and "retry in" in log.read_text(), timeout=TIMEOUT,
                       what="pages delivered and Slack waiting to retry", alive=alive(proc, log))
            code = stop(proc, sig, timeout=60)
        assert code == 0, log.read_text()[-3000:]
        assert committed(kafka_bootstrap, f"{group}.slack") == {}  # nothing delivered, nothing committed
        assert read_all(kafka_bootstrap, f"{unique_name}.notify-deadletter") == []

        with http_recorder("/services/T0/B0/x") as slack:
            done = run(notify_args(kafka_bootstrap, unique_name, "--routes", str(routes), *pages,
                                   "--slack-webhook-url", slack.url, "--slack-rate", "100/s",
                                   "--exit-when-idle"), timeout=TIMEOUT)
            assert done.returncode == 0, done.stderr[-3000:]
            assert Counter(slack_titles(slack)) == Counter(a["title"] for a in made)
        assert Counter(b["dedup_key"] for b in pagerduty.bodies()) == critical_keys(made)


def test_a_webhook_that_never_answers_does_not_hold_up_a_stop(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 1})
    made = alerts(5)
    produce_alerts(kafka_bootstrap, topic, made)
    never = threading.Event()
    with http_recorder("/services/T0/B0/x") as slack:
        slack.default = Reply(200, gate=never)
        args = notify_args(kafka_bootstrap, unique_name, "--slack-webhook-url", slack.url,
                           "--http-timeout", "10m")
        log = tmp_path / "first.log"
        proc = start(args, log)
        with reaped(proc), released(never):
            slack.wait_for(1, timeout=TIMEOUT)
            code = stop(proc, timeout=60)
        assert code == 0, log.read_text()[-3000:]
        assert committed(kafka_bootstrap, f"{unique_name}-notify.slack") == {}
        slack.default = Reply(200)
        done = run([*args, "--exit-when-idle"], timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr[-3000:]
        # The abandoned request is sent again (the sink may have had it); nothing is lost.
        assert slack_titles(slack) == [made[0]["title"]] + [a["title"] for a in made]


def test_a_second_notifier_takes_over_partitions_mid_batch_and_nothing_is_lost(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    """Two notifiers share each sink's group: the partitions a rebalance moves are committed
    as far as delivered, and the first stops delivering them; the second goes on from there."""
    topic = f"{unique_name}.alerts"
    create_topics_sync(kafka_bootstrap, {topic: 2})
    made = alerts(40)
    produce_alerts(kafka_bootstrap, topic, made)
    with http_recorder("/services/T0/B0/first") as first, http_recorder("/services/T0/B0/second") as second:
        def notifier(slack_url: str, log: Path) -> subprocess.Popen[bytes]:
            return start(notify_args(kafka_bootstrap, unique_name, "--slack-webhook-url", slack_url,
                                     "--slack-rate", "4/s", "--batch-size", "40"), log)

        logs = [tmp_path / "first.log", tmp_path / "second.log"]
        with reaped(notifier(first.url, logs[0])) as procs:
            first.wait_for(3, timeout=TIMEOUT)
            procs.append(notifier(second.url, logs[1]))
            everything = ends(kafka_bootstrap, topic)

            seen: list[Any] = []

            def all_delivered_and_committed() -> bool:
                titles = set(slack_titles(first)) | set(slack_titles(second))
                progress = committed(kafka_bootstrap, f"{unique_name}-notify.slack")
                seen[:] = [len(titles), progress, everything]
                return len(titles) == len(made) and progress == everything

            try:
                wait_until(all_delivered_and_committed, timeout=TIMEOUT, what="every alert delivered",
                           alive=all_alive(procs, logs))
            except AssertionError as exc:
                raise AssertionError(f"{exc}; titles, committed, end offsets: {seen}") from None
            codes = stop_all(procs, timeout=60)
        assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
        assert second.requests, "the second notifier took no partition: no rebalance was tested"
        delivered = Counter(slack_titles(first)) + Counter(slack_titles(second))
        assert set(delivered) == {a["title"] for a in made}
        # A rebalance repeats at most the request in flight on each moved partition.
        assert sum(delivered.values()) <= len(made) + 2
