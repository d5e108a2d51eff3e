"""Held alerts across a rebalance: the notifier giving a partition up commits the first
alert it still holds and says in the commit's metadata which later ones it finished; the
member taking the partition over sends neither those again nor loses the held ones. Real
Apache Kafka, notifiers as child processes, real HTTP servers for Slack."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from streams.demo.brokers import free_port
from streams.kafka.topics import create_topics_sync
from streams.notify.ledger import PREFIX
from tests.kafka_io import committed_with_metadata
from tests.notify.processes import (
    alive,
    all_alive,
    notify_args,
    reaped,
    route,
    run,
    start,
    stop_all,
    wait_until,
)
from tests.notify.test_service_kafka import alerts
from tests.notify_servers import Recorder, http_recorder
from tests.scrape import scrape, value

TIMEOUT = 90
# CRITICAL goes out at once; the rest is held in one group for ten minutes.
ROUTES = (route("now", "slack", min_severity="CRITICAL")
          + route("later", "slack", group_by=["account"], group_wait="10m"))
TITLE = re.compile(r"alert (\d+)")


def write(bootstrap: str, topic: str, made: list[dict[str, Any]]) -> None:
    """Alert i on partition i % 2."""
    async def run() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for i, alert in enumerate(made):
                await producer.send_and_wait(topic, orjson.dumps(alert), key=alert["dedup_key"].encode(),
                                             partition=i % 2)
        finally:
            await producer.stop()

    asyncio.run(run())


def held(port: int) -> float:
    try:
        samples = scrape(f"http://127.0.0.1:{port}/metrics")[1]
    except OSError:
        return 0.0  # not listening yet
    return value(samples, "flapguard_notify_held_alerts", sink="slack")


def titles(slack: Recorder) -> list[int]:
    out = []
    for body in slack.bodies():
        texts = [b["text"]["text"] for b in body["blocks"] if b.get("type") == "section" and "text" in b]
        out += [int(n) for n in TITLE.findall("\n".join(texts))]
    return out


def test_a_partition_moved_while_alerts_are_held_is_neither_repeated_nor_lost(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    topic, group = f"{unique_name}.alerts", f"{unique_name}-notify.slack"
    create_topics_sync(kafka_bootstrap, {topic: 2})
    # Both partitions hold CRITICAL alerts, and end with one that is held.
    made: list[dict[str, Any]] = alerts(42)
    critical = {i for i in range(42) if i % 3 == 0}
    for i in critical:
        made[i]["severity"] = "CRITICAL"
    write(kafka_bootstrap, topic, made)
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    with http_recorder("/services/T0/B0/a") as first, http_recorder("/services/T0/B0/b") as second:
        ports = [free_port(), free_port()]

        def notifier(url: str, log: Path, port: int) -> subprocess.Popen[bytes]:
            return start(notify_args(kafka_bootstrap, unique_name, "--routes", str(routes),
                                     "--slack-webhook-url", url, "--slack-rate", "50/s",
                                     "--log-level", "DEBUG", "--metrics-address", f"127.0.0.1:{port}"), log)

        logs = [tmp_path / "first.log", tmp_path / "second.log"]
        with reaped(notifier(first.url, logs[0], ports[0])) as procs:
            # The first notifier sent every CRITICAL alert and holds the rest: its commits
            # stop at the first held alert and name what it finished beyond it.
            wait_until(lambda: len(first.requests) == len(critical), timeout=TIMEOUT,
                       what="every CRITICAL alert sent", alive=alive(procs[0], logs[0]))
            wait_until(lambda: len(committed_with_metadata(kafka_bootstrap, group)) == 2 and all(
                metadata.startswith(PREFIX)
                for _, metadata in committed_with_metadata(kafka_bootstrap, group).values()),
                timeout=TIMEOUT, what="commits that name what was finished", alive=alive(procs[0], logs[0]))
            # A second notifier joins: a partition moves to it.
            procs.append(notifier(second.url, logs[1], ports[1]))
            wait_until(lambda: re.search(r"slack: assigned \['[^\]]", logs[1].read_text()) is not None,
                       timeout=TIMEOUT, what="a partition assigned to the second notifier",
                       alive=alive(procs[1], logs[1]))
            # Each holds its partition's held alerts again: each has read its partition to
            # the end (the last alert of each is held), skipping what the first finished.
            wait_until(lambda: held(ports[1]) > 0 and held(ports[0]) + held(ports[1]) == 42 - len(critical),
                       timeout=TIMEOUT, what="both partitions read again after the rebalance",
                       alive=all_alive(procs, logs))
            codes = stop_all(procs, timeout=60)
        assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
        # Nothing was sent twice: the second notifier skipped what the first had finished.
        assert sorted(titles(first)) == sorted(critical) and titles(second) == []

        with http_recorder("/services/T0/B0/c") as third:
            done = run([*notify_args(kafka_bootstrap, unique_name, "--routes", str(routes),
                                     "--slack-webhook-url", third.url, "--slack-rate", "50/s"),
                        "--exit-when-idle"], timeout=TIMEOUT)
            assert done.returncode == 0, done.stderr[-3000:]
            # The held alerts, in one grouped message, each once.
            assert Counter(titles(third)) == Counter(i for i in range(42) if i not in critical)
            assert len(third.requests) == 1
