"""Replication of the topics flapguard creates (`streams.kafka.topics`): the broker's own
defaults unless told, never more replicas than brokers, `min.insync.replicas` on every
topic when given, Faust's changelogs included. Real Apache Kafka (one broker)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streams.config import ConfigError
from streams.kafka.topics import Replication, admin_client, create_topics, replication_factor
from tests.kafka_io import WorkerRun


def test_replication_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        Replication(factor=0)
    with pytest.raises(ConfigError, match="no write could ever be acknowledged"):
        Replication(factor=2, min_insync=3)
    assert Replication().topic_config() == {}
    assert Replication(min_insync=2).topic_config() == {"min.insync.replicas": "2"}


class FakeAdmin:
    """The two calls `replication_factor` makes, answering as a 3-broker cluster whose
    `default.replication.factor` is 3 (a real one needs three brokers)."""

    def __init__(self, default: str) -> None:
        self._client = SimpleNamespace(cluster=SimpleNamespace(
            brokers=lambda: [SimpleNamespace(nodeId=n) for n in (3, 1, 2)]))
        self.default = default
        self.asked: list[Any] = []

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        self.asked.extend(resources)
        entry = ("default.replication.factor", self.default, True, 4, False, [])
        return [SimpleNamespace(resources=[(0, "", 4, "1", [entry])])]


def test_the_brokers_default_factor_is_used_unless_one_is_given() -> None:
    admin = FakeAdmin("3")
    assert asyncio.run(replication_factor(admin, Replication())) == 3
    (asked,) = admin.asked
    assert asked.name == "1"  # the lowest broker id
    assert asyncio.run(replication_factor(FakeAdmin("3"), Replication(factor=2))) == 2


def config_of(bootstrap: str, topic: str) -> dict[str, tuple[str, int]]:
    """A topic's configuration: name -> (value, source); source 1 is the topic's own."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    async def go() -> dict[str, tuple[str, int]]:
        async with admin_client(bootstrap, None, 30.0) as admin:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            described = await admin.describe_topics([topic])
        errors = [res[0] for r in responses for res in r.resources if res[0]]
        errors += [t["error_code"] for t in described if t["error_code"]]
        if errors:
            raise LookupError(f"{topic}: error codes {errors}")
        replicas = {len(p["replicas"]) for t in described for p in t["partitions"]}
        entries = {e[0]: (e[1], e[3]) for r in responses for res in r.resources for e in res[4]}
        entries["replicas"] = (",".join(map(str, sorted(replicas))), 0)
        return entries

    return asyncio.run(go())


@pytest.mark.kafka
def test_topics_get_the_brokers_factor_and_the_min_insync_given(
        kafka_bootstrap: str, unique_name: str) -> None:
    plain, strict = f"{unique_name}.plain", f"{unique_name}.strict"
    asyncio.run(create_topics(kafka_bootstrap, {plain: 2}))
    asyncio.run(create_topics(kafka_bootstrap, {strict: 2}, replication=Replication(min_insync=1)))
    assert config_of(kafka_bootstrap, plain)["replicas"] == ("1", 0)
    assert config_of(kafka_bootstrap, plain)["min.insync.replicas"][1] != 1  # the broker's
    assert config_of(kafka_bootstrap, strict)["min.insync.replicas"] == ("1", 1)  # the topic's own


@pytest.mark.kafka
def test_more_replicas_than_brokers_is_one_clear_error(kafka_bootstrap: str, unique_name: str) -> None:
    with pytest.raises(ConfigError, match=r"replication factor 3 needs 3 brokers; the cluster has 1"):
        asyncio.run(create_topics(kafka_bootstrap, {unique_name: 1}, replication=Replication(factor=3)))


@pytest.mark.kafka
def test_the_worker_refuses_more_replicas_than_brokers_in_one_line(kafka_bootstrap: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams", "worker", "--bootstrap-servers", kafka_bootstrap,
         "--replication-factor", "2", "--metrics-address", "off"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "flapguard worker: error: replication factor 2 needs 2 brokers; the cluster has 1 "
        "(set --replication-factor)")


@pytest.mark.kafka
def test_the_workers_changelogs_and_outputs_carry_min_insync(
        kafka_bootstrap: str, unique_name: str, tmp_path: Path) -> None:
    run = WorkerRun(kafka_bootstrap, unique_name, tmp_path, extra=["--min-insync-replicas", "1"])
    run.start()
    try:
        changelog = f"{unique_name}-findings-changelog"
        for topic in (changelog, run.topics["alerts"], f"{unique_name}-keyed-findings"):
            config = wait_for_topic(kafka_bootstrap, topic, run)
            assert config["min.insync.replicas"] == ("1", 1), topic
            assert config["replicas"] == ("1", 0), topic
    finally:
        run.stop()


@pytest.mark.kafka
def test_every_changelog_exists_compacted_before_the_worker_joins_its_group(
        kafka_bootstrap: str, unique_name: str) -> None:
    """A worker that joins its group while a changelog is missing is assigned none of its
    partitions and restores nothing from it: the worker creates them all first."""
    from streams.core.state import Store
    from streams.kafka.topics import Topics
    from streams.worker.app import Worker
    from streams.worker.settings import WorkerSettings

    settings = WorkerSettings(bootstrap_servers=kafka_bootstrap, app_id=unique_name, partitions=3,
                              topics=Topics(findings=f"{unique_name}.findings"), metrics_address=None)
    asyncio.run(Worker(settings).declare_topics())  # what the worker does before it starts
    for table in Store.NAMES:
        config = config_of(kafka_bootstrap, f"{unique_name}-{table}-changelog")
        assert config["cleanup.policy"] == ("compact", 1), table


def wait_for_topic(bootstrap: str, topic: str, run: WorkerRun, timeout: float = 60.0
                   ) -> dict[str, tuple[str, int]]:
    """The topic's configuration once the worker has created it."""
    deadline = time.monotonic() + timeout
    while True:
        run.assert_alive()
        try:
            return config_of(bootstrap, topic)
        except LookupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_broker_that_does_not_say_its_default_gets_topics_all_the_same(
        caplog: pytest.LogCaptureFixture) -> None:
    """Tansu (the demo's broker) answers no DescribeConfigs: as many replicas as there
    are brokers, up to 3, and a warning that says which flag decides; a topic that
    exists already asks nothing."""
    from streams.demo.brokers import TansuBroker

    with TansuBroker() as broker:
        assert asyncio.run(create_topics(broker.bootstrap_servers, {"t": 2})) == {"t": 2}
        (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert "creating topics with 1 replicas (set --replication-factor)" in warning
        caplog.clear()
        assert asyncio.run(create_topics(broker.bootstrap_servers, {"t": 2})) == {"t": 2}
        assert [r for r in caplog.records if r.levelname == "WARNING"] == []
