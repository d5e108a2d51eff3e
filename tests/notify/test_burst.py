"""A burst, as a new account or a newly enabled standard makes one: 500 alerts (alert
timestamps over two minutes) routed to PagerDuty (the CRITICAL ones) and to a grouping
Slack route, on the session's real Apache Kafka, `flapguard notify` as a child process,
real HTTP servers standing in for Slack and PagerDuty.

- PagerDuty is never held back by grouping or by Slack: every page is delivered while
  Slack has not answered a single message.
- Slack receives grouped messages, far fewer than alerts, each listing its findings.
- A SIGTERM while alerts are held in their groups, then a restart: every alert reaches
  Slack in exactly one message and every page reaches PagerDuty exactly once.
- The deliveries topic records each alert's outcome on each sink, once.

PagerDuty latency (alert record acknowledged -> page received) is printed, not asserted:
a shared machine's scheduling is no test of the notifier.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from streams.kafka.topics import create_topics_sync
from streams.notify.sinks import GROUP_LIST_LIMIT
from tests.kafka_io import read_all
from tests.notify.processes import PAGES, alive, notify_args, reaped, route, run, start, stop, wait_until
from tests.notify.test_sinks import FINDING_ID, record
from tests.notify_servers import ACCEPTED, Recorder, Reply, http_recorder, released

TIMEOUT = 90
ALERTS = 500
ACCOUNTS = [f"{n}{n}{n}{n}{n}{n}{n}{n}{n}{n}{n}{n}" for n in range(1, 6)]
CONTROLS = ["RDS.45", "S3.1", "EC2.19", "IAM.6"]
GROUPS = len(ACCOUNTS) * len(CONTROLS)
# A long group_interval: the second wave stays held in its groups until the stop.
ROUTES = PAGES + route("chat", "slack", group_by=["account", "control"], group_wait="3s", group_interval="5m")
TITLE = re.compile(r"burst (\d{3})")


def burst() -> list[dict[str, Any]]:
    """500 alerts of 20 account/control groups, one in ten CRITICAL, `UpdatedAt` over 2 minutes."""
    start_ms = 1_759_300_000_000
    made = []
    for i in range(ALERTS):
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((start_ms + i * 240) / 1000))
        made.append(record(dedup_key=f"dk-burst-{i:03d}", title=f"burst {i:03d}",
                           finding_id=f"{FINDING_ID}-{i}", account=ACCOUNTS[i % len(ACCOUNTS)],
                           control_id=CONTROLS[(i // len(ACCOUNTS)) % len(CONTROLS)],
                           severity="CRITICAL" if i % 10 == 0 else "MEDIUM",
                           updated_at=f"{at}.{(start_ms + i * 240) % 1000:03d}Z"))
    return made


def write(bootstrap: str, topic: str, alerts: list[dict[str, Any]]) -> dict[str, float]:
    """Write the alerts; when each was acknowledged (time.monotonic(), by dedup_key)."""
    acked: dict[str, float] = {}

    async def run() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            sent = []
            for alert in alerts:
                future = await producer.send(topic, orjson.dumps(alert), key=alert["dedup_key"].encode())
                key = alert["dedup_key"]
                future.add_done_callback(lambda _, key=key: acked.__setitem__(key, time.monotonic()))
                sent.append(future)
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(run())
    return acked


def pages(pagerduty: Recorder) -> list[tuple[str, float]]:
    with pagerduty.changed:
        return [(r.json()["dedup_key"], r.at) for r in pagerduty.requests]


def listed(message: dict[str, Any]) -> list[int]:
    """The alerts a Slack message lists (a grouped message, or one alert's own)."""
    texts = [b["text"]["text"] for b in message["blocks"] if b.get("type") == "section" and "text" in b]
    return [int(n) for n in TITLE.findall("\n".join(texts))]


def test_a_burst_pages_at_once_groups_slack_and_a_stop_mid_group_neither_loses_nor_repeats(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path,
) -> None:
    topic, deliveries = f"{unique_name}.alerts", f"{unique_name}.deliveries"
    create_topics_sync(kafka_bootstrap, {topic: 4})
    made = burst()
    critical = {a["dedup_key"] for a in made if a["severity"] == "CRITICAL"}
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    gate = threading.Event()
    with http_recorder("/services/T0/B0/x") as slack, http_recorder("/v2/enqueue") as pagerduty:
        slack.default = Reply(200, gate=gate)  # Slack answers nothing until the pages are out
        pagerduty.default = Reply(202, ACCEPTED)
        args = notify_args(kafka_bootstrap, unique_name, "--routes", str(routes),
                           "--slack-webhook-url", slack.url, "--slack-rate", "20/s",
                           "--pagerduty-routing-key", "rk", "--pagerduty-url", pagerduty.url,
                           "--http-timeout", "120s", "--deliveries-topic", deliveries)
        log = tmp_path / "first.log"
        proc = start(args, log)
        with reaped(proc), released(gate):
            # The notifier is up and has joined every group when a first page goes through.
            first = write(kafka_bootstrap, topic, made[:1])
            wait_until(lambda: len(pagerduty.requests) == 1, timeout=TIMEOUT, what="the first page",
                       alive=alive(proc, log))
            wave1 = write(kafka_bootstrap, topic, made[1:ALERTS // 2])
            wanted1 = critical & {a["dedup_key"] for a in made[:ALERTS // 2]}
            wait_until(lambda: {k for k, _ in pages(pagerduty)} >= wanted1, timeout=TIMEOUT,
                       what="the first wave's pages", alive=alive(proc, log))
            # Every page of the first wave is out, and Slack has not answered once.
            assert not slack.answered
            gate.set()
            # Each group's first message (one per account and control: every group has
            # alerts in the first wave).
            slack.wait_answered(GROUPS, timeout=TIMEOUT)
            first_wave_messages = len(slack.requests)

            # The second wave joins groups that sent a message already: held for
            # group_interval. Stop while it is held.
            wave2 = write(kafka_bootstrap, topic, made[ALERTS // 2:])
            wait_until(lambda: {k for k, _ in pages(pagerduty)} >= critical, timeout=TIMEOUT,
                       what="the second wave's pages", alive=alive(proc, log))
            held_at_stop = ALERTS - sum(len(listed(m)) for m in slack.bodies())
            code = stop(proc, timeout=60)
        assert code == 0, log.read_text()[-3000:]
        assert held_at_stop > 0, "nothing was held at the stop: the stop mid-group was not tested"

        done = run([*args, "--exit-when-idle"], timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr[-3000:]

    # PagerDuty: each CRITICAL exactly once, nothing else.
    assert Counter(k for k, _ in pages(pagerduty)) == Counter(critical)
    # Slack: every alert in exactly one message, in far fewer messages than alerts.
    messages = slack.bodies()
    every = Counter(n for m in messages for n in listed(m))
    assert every == Counter(range(ALERTS))
    assert len(messages) <= 2 * GROUPS + 2, len(messages)
    assert all(len(listed(m)) <= GROUP_LIST_LIMIT for m in messages)
    for message in messages:
        numbers = listed(message)
        # A message is one group: one account and one control.
        assert len({(made[n]["account"], made[n]["control_id"]) for n in numbers}) == 1
    # Each alert's outcome on each sink is recorded once.
    records = [orjson.loads(r.value) for r in read_all(kafka_bootstrap, deliveries)]
    outcomes = Counter((r["sink"], r["outcome"]) for r in records)
    assert outcomes == {("slack", "delivered"): ALERTS, ("pagerduty", "delivered"): len(critical),
                        ("pagerduty", "skipped"): ALERTS - len(critical)}
    assert len({(r["sink"], r["dedup_key"]) for r in records}) == len(records)
    assert all(r["group"].startswith("account ") for r in records if r["sink"] == "slack")

    # The first page also waited for the notifier's consumer groups to form: apart.
    acked = {**wave1, **wave2}
    latency = sorted(at - acked[key] for key, at in pages(pagerduty) if key in acked)
    warm_up = next(at for key, at in pages(pagerduty) if key in first) - first[made[0]["dedup_key"]]
    print(f"\nburst: {ALERTS} alerts, {len(critical)} pages, {len(messages)} Slack messages "
          f"({first_wave_messages} before the stop, {held_at_stop} alerts held at the stop); "
          f"PagerDuty latency from the alert record's acknowledgement: median "
          f"{statistics.median(latency):.3f} s, p95 {latency[int(0.95 * (len(latency) - 1))]:.3f} s, "
          f"max {latency[-1]:.3f} s ({len(latency)} pages; the first page, as the groups formed: "
          f"{warm_up:.3f} s)")
