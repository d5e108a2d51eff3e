"""Held alerts across a rebalance: the notifier giving a partition up commits the first
alert it still holds and says in the commit's metadata which later ones it finished; the
member taking the partition over sends neither those again nor loses the held ones. Real
Apache Kafka, notifiers as child processes, real HTTP servers for Slack."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from streams.demo.brokers import free_port
from streams.kafka.topics import create_topics_sync
from streams.notify.ledger import PREFIX
from tests.notify.test_service_kafka import alerts, clean_env, notify_args
from tests.notify.test_sink_progress import alive, start
from tests.notify.test_slow_consumers import wait_until
from tests.notify_servers import Recorder, http_recorder
from tests.scrape import scrape, value

TIMEOUT = 90
# CRITICAL goes out at once; the rest is held in one group for ten minutes.
ROUTES = """
[[route]]
name = "now"
match = { min_severity = "CRITICAL" }
sinks = ["slack"]

[[route]]
name = "later"
sinks = ["slack"]
group_by = ["account"]
group_wait = "10m"
"""
TITLE = re.compile(r"alert (\d+)")


def commits(bootstrap: str, group: str) -> dict[int, tuple[int, str]]:
    """The group's committed offsets and metadata, by partition."""
    async def run() -> dict[int, tuple[int, str]]:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: (meta.offset, meta.metadata)
                for tp, meta in offsets.items() if meta.offset >= 0}

    return asyncio.run(run())


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
        procs = [notifier(first.url, logs[0], ports[0])]
        try:
            # The first notifier sent every CRITICAL alert and holds the rest: its commits
            # stop at the first held alert and name what it finished beyond it.
            wait_until(lambda: len(first.requests) == len(critical), timeout=TIMEOUT,
                       what="every CRITICAL alert sent", alive=alive(procs[0], logs[0]))
            wait_until(lambda: len(commits(kafka_bootstrap, group)) == 2 and all(
                metadata.startswith(PREFIX) for _, metadata in commits(kafka_bootstrap, group).values()),
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
                       alive=lambda: [alive(p, log)() for p, log in zip(procs, logs, strict=True)])
            for proc in procs:
                os.killpg(proc.pid, signal.SIGTERM)
            codes = [proc.wait(timeout=60) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
        # Nothing was sent twice: the second notifier skipped what the first had finished.
        assert sorted(titles(first)) == sorted(critical) and titles(second) == []

        with http_recorder("/services/T0/B0/c") as third:
            done = subprocess.run([*notify_args(kafka_bootstrap, unique_name, "--routes", str(routes),
                                                "--slack-webhook-url", third.url, "--slack-rate", "50/s"),
                                   "--exit-when-idle"], capture_output=True, text=True, timeout=TIMEOUT,
                                  env=clean_env())
            assert done.returncode == 0, done.stderr[-3000:]
            # The held alerts, in one grouped message, each once.
            assert Counter(titles(third)) == Counter(i for i in range(42) if i not in critical)
            assert len(third.requests) == 1
