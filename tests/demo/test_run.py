"""`flapguard demo`, as a user runs it: on its own Tansu broker, and on a real Apache Kafka
broker given with --bootstrap-servers, where it leaves no topic behind and prints its
report and nothing else."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from streams.demo.run import Collected, DemoError, _complete, collect
from streams.kafka.topics import admin_client, create_topics

REPORT = [
    "ALERTS (2)",
    "SUPPRESSED (1)",
    "  recreated_after_archive    finding …7e1d93a0f456 paired with …0d8f4e2b7c11, re-created 12.51 h "
    "after archive",
    "DEAD LETTERS (1)",
]


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams", "demo", *args], capture_output=True,
                          text=True, timeout=180)


def topics(bootstrap: str) -> set[str]:
    async def go() -> set[str]:
        async with admin_client(bootstrap, None, 30.0) as admin:
            return set(await admin.list_topics())

    return asyncio.run(go())


def assert_report(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(line in lines for line in REPORT), done.stdout
    assert sum(line.startswith("  new ") for line in lines) == 2


def test_the_demo_on_its_own_broker_prints_the_incidents_report() -> None:
    done = demo()
    assert_report(done)
    assert "(local Tansu, started for the demo)" in done.stdout
    assert done.stderr == ""


@pytest.mark.kafka
def test_the_demo_on_a_real_broker_leaves_no_topic_behind_and_no_noise(kafka_bootstrap: str) -> None:
    before = topics(kafka_bootstrap)
    done = demo("--bootstrap-servers", kafka_bootstrap)
    assert_report(done)
    assert done.stderr == ""  # no "not found in cluster metadata", no NotLeaderForPartitionError
    assert {t for t in topics(kafka_bootstrap) - before if t.startswith("flapguard-demo-")} == set()


def test_the_demo_waits_for_every_record_its_decisions_announce() -> None:
    # Decisions, alerts, suppressions and dead letters are on four topics, read in no fixed
    # order: all decisions in is not yet every alert in.
    decisions = [{"decision": "alert"}, {"decision": "suppressed"}, {"decision": "dead_letter"},
                 {"decision": "silent", "closes": [{"dedup_key": "k"}]}]
    got = Collected(decisions=decisions[:3])
    assert not _complete(got, 4)
    got.decisions = decisions
    assert not _complete(got, 4)
    got.alerts = [{"kind": "new"}]
    got.suppressed = [{"reason": "recreated_after_archive"}]
    got.dead_letters = [("unparseable", "{")]
    assert not _complete(got, 4)  # the closing's `resolved` record is still to come
    got.alerts.append({"kind": "resolved"})
    assert _complete(got, 4)


def test_a_demo_that_times_out_says_how_far_each_topic_got(kafka_bootstrap: str, unique_name: str) -> None:
    names = {role: f"{unique_name}.{role}" for role in ("alerts", "suppressed", "deadletter", "decisions")}
    asyncio.run(create_topics(kafka_bootstrap, dict.fromkeys(names.values(), 1)))
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with pytest.raises(DemoError, match=r"^timed out with 0 of 3 decisions, 0 alerts, 0 suppressions "
                                            r"and 0 dead letters in$"):
            asyncio.run(collect(kafka_bootstrap, names, 3, time.monotonic() + 1, worker))
    finally:
        worker.kill()
        worker.wait()
