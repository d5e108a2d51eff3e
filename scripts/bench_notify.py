"""How fast `flapguard notify` delivers, against the limit.

(a) Rendering, pure: alerts per second for each sink's payload (Slack, PagerDuty, SNS).
(b) The limit of the loop: a plain aiokafka consumer that reads the alerts topic and
    POSTs each alert's PagerDuty event to a loopback HTTP server, 16 in flight.
(c) `flapguard notify` end to end (a child process, from start to exit with
    --exit-when-idle), PagerDuty and Slack (unlimited rate) to loopback servers.
(d) Pages behind a Slack backlog: a running notifier, Slack at 1 message/s, 48 alerts
    (12 CRITICAL) written at once; how long after its record was written each page
    reached PagerDuty, how much of Slack's share was out by then, and how long SIGTERM
    takes in the middle of Slack's backlog.
Prints rates and `end-to-end/limit ratio: R`. Slack's real rate (1 message/s per
webhook) bounds production far below either; this measures our overhead only.
A benchmark, not a test: figures vary with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streams.demo.brokers import KafkaBroker, default_kafka_libs  # noqa: E402
from streams.kafka.topics import create_topics  # noqa: E402
from streams.notify.sinks import alert_from_record, pagerduty_event, slack_message, sns_message  # noqa: E402
from tests.notify.test_sinks import FINDING_ID, record  # noqa: E402
from tests.notify_servers import Reply, http_recorder  # noqa: E402


def alerts(count: int) -> list[dict[str, Any]]:
    return [record(dedup_key=f"dk-{i:06d}", finding_id=f"{FINDING_ID}-{i}", title=f"alert {i}")
            for i in range(count)]


def rendering(count: int) -> None:
    parsed = [alert_from_record(a) for a in alerts(count)]
    for name, render in (("slack", slack_message), ("pagerduty", lambda a: pagerduty_event(a, "rk")),
                         ("sns", sns_message)):
        started = time.perf_counter()
        for a in parsed:
            render(a)
        rate = count / (time.perf_counter() - started)
        print(f"render {name:<10} {rate:>10,.0f} alerts/s")


async def produce(bootstrap: str, topic: str, values: list[dict[str, Any]]) -> None:
    from aiokafka import AIOKafkaProducer

    await create_topics(bootstrap, {topic: 4})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for v in values:
            await producer.send(topic, orjson.dumps(v), key=v["dedup_key"].encode())
        await producer.flush()
    finally:
        await producer.stop()


async def limit(bootstrap: str, topic: str, url: str, count: int) -> float:
    import aiohttp
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=f"limit-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    gate = asyncio.Semaphore(16)
    done = 0
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession() as session:
            async def post(value: bytes) -> None:
                async with gate, session.post(url, data=orjson.dumps(pagerduty_event(
                        alert_from_record(orjson.loads(value)), "rk"))) as response:
                    await response.read()

            while done < count:
                batches = await consumer.getmany(timeout_ms=500, max_records=100)
                records = [r for rs in batches.values() for r in rs]
                await asyncio.gather(*(post(r.value) for r in records))
                done += len(records)
                if records:
                    await consumer.commit()
    finally:
        await consumer.stop()
    return count / (time.perf_counter() - started)


def end_to_end(bootstrap: str, topic: str, pd_url: str, slack_url: str, count: int) -> float:
    args = [sys.executable, "-m", "streams", "notify", "--bootstrap-servers", bootstrap,
            "--alerts-topic", topic, "--group-id", f"bench-{uuid.uuid4().hex[:6]}",
            "--deadletter-topic", f"{topic}.dl", "--pagerduty-routing-key", "rk",
            "--pagerduty-url", pd_url, "--slack-webhook-url", slack_url, "--slack-rate", "100000/s",
            "--exit-when-idle", "--session-timeout", "6s"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAPGUARD_")}
    started = time.perf_counter()
    subprocess.run(args, check=True, env=env, capture_output=True)
    return count / (time.perf_counter() - started)


PAGES_AND_CHAT = """
[[route]]
match = { min_severity = "CRITICAL" }
sinks = ["pagerduty"]
continue = true

[[route]]
sinks = ["slack"]
"""


async def produce_timed(bootstrap: str, topic: str, values: list[dict[str, Any]]) -> dict[str, float]:
    """Write one record at a time; when each was handed to the producer, by dedup_key."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    written: dict[str, float] = {}
    try:
        for v in values:
            written[v["dedup_key"]] = time.monotonic()
            await producer.send_and_wait(topic, orjson.dumps(v), key=v["dedup_key"].encode())
    finally:
        await producer.stop()
    return written


def pages_behind_slack(bootstrap: str, tmp: Path) -> None:
    topic = f"bench-pages-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(bootstrap, {topic: 8}))
    made = alerts(48)
    for a in made[::4]:
        a["severity"] = "CRITICAL"
    routes = tmp / "routes.toml"
    routes.write_text(PAGES_AND_CHAT)
    with http_recorder("/hook") as slack, http_recorder("/v2/enqueue") as pd:
        pd.default = Reply(202, b'{"status":"success"}')
        args = [sys.executable, "-m", "streams", "notify", "--bootstrap-servers", bootstrap,
                "--alerts-topic", topic, "--group-id", f"bench-{uuid.uuid4().hex[:6]}",
                "--deadletter-topic", f"{topic}.dl", "--routes", str(routes),
                "--pagerduty-routing-key", "rk", "--pagerduty-url", pd.url,
                "--slack-webhook-url", slack.url, "--slack-rate", "1/s", "--session-timeout", "6s",
                "--metrics-address", "off"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAPGUARD_")}
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(8)  # both sinks' groups joined (a benchmark, not a test)
            written = asyncio.run(produce_timed(bootstrap, topic, made))
            pd.wait_for(12, timeout=120)
            waits = sorted(r.at - written[r.json()["dedup_key"]] for r in pd.requests)
            last_page = max(r.at for r in pd.requests)
            chat = sum(1 for r in slack.requests if r.at <= last_page)
            began = time.monotonic()
            proc.terminate()
            code = proc.wait(timeout=60)
            stopped = time.monotonic() - began
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(f"pages behind a Slack backlog: 12 pages {waits[0]:.3f}-{waits[-1]:.3f}s after their records, "
          f"Slack {chat}/48 out by then; SIGTERM mid-backlog: exit {code} in {stopped:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=5000)
    args = parser.parse_args()
    rendering(args.alerts)
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if given else KafkaBroker(default_kafka_libs())
    try:
        bootstrap = given or broker.__enter__().bootstrap_servers  # type: ignore[union-attr]
        topic = f"bench-notify-{uuid.uuid4().hex[:8]}"
        asyncio.run(produce(bootstrap, topic, alerts(args.alerts)))
        with http_recorder("/v2/enqueue") as pd, http_recorder("/hook") as slack:
            pd.default = Reply(202, b'{"status":"success"}')
            ceiling = asyncio.run(limit(bootstrap, topic, pd.url, args.alerts))
            print(f"limit (consumer + PagerDuty POST, 16 in flight) {ceiling:>8,.0f} alerts/s")
            rate = end_to_end(bootstrap, topic, pd.url, slack.url, args.alerts)
            delivered = len(pd.requests) - args.alerts
            print(f"flapguard notify end to end (PagerDuty + Slack, incl. start-up) {rate:>8,.0f} "
                  f"alerts/s ({delivered} PagerDuty, {len(slack.requests)} Slack requests)")
            print(f"end-to-end/limit ratio: {rate / ceiling:.2f}")
        with tempfile.TemporaryDirectory() as tmp:
            pages_behind_slack(bootstrap, Path(tmp))
    finally:
        if broker is not None:
            broker.__exit__(None, None, None)


if __name__ == "__main__":
    main()
