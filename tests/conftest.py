"""Shared fixtures.

``kafka_bootstrap`` (session): the real Apache Kafka of the test session (docs/design.md §6),
chosen in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` set: that broker, used as it is.
2. ``FLAPGUARD_TEST_BROKER=testcontainers``: testcontainers' Kafka (KRaft); skips when
   no Docker engine answers. ``FLAPGUARD_TEST_KAFKA_IMAGE`` picks the image.
3. Otherwise: ``streams.demo.brokers.KafkaBroker`` from the jars of ``scripts/fetch-kafka``
   (``FLAPGUARD_KAFKA_LIBS`` or ``<repo>/.cache/kafka/libs``); skips, naming the
   reason, when they are missing. ``FLAPGUARD_KEEP_BROKER_DIR=1`` keeps its folder
   (config, data, ``kafka.log``) for a post-mortem.

Tests never run on Tansu. Tests that use ``kafka_bootstrap`` get the ``kafka`` marker, so
``-m "not kafka"`` leaves them out. Topics are never auto-created on the local broker:
create them (``streams.kafka.topics.create_topics``) with names from ``unique_name``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

from streams.demo.brokers import KafkaBroker, default_kafka_libs


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


def _testcontainers_kafka() -> Iterator[str]:
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        pytest.skip(f"FLAPGUARD_TEST_BROKER=testcontainers but no Docker engine answers: {exc}")
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.15
        from testcontainers.kafka import KafkaContainer

    image = os.environ.get("FLAPGUARD_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
    container = (
        KafkaContainer(image)
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_GROUP_MIN_SESSION_TIMEOUT_MS", "500")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_LOG_RETENTION_MS", "-1")
    )
    with container:
        yield container.get_bootstrap_server()


def _local_kafka() -> Iterator[str]:
    libs = default_kafka_libs()
    if not any(libs.glob("kafka_2.13-*.jar")):
        error = libs.with_name(libs.name + ".error")
        why = error.read_text(encoding="utf-8").strip() if error.is_file() else ""
        pytest.skip(
            f"no Apache Kafka jars in {libs}: run scripts/fetch-kafka"
            + (f" (its last run: {why})" if why else "")
        )
    keep = os.environ.get("FLAPGUARD_KEEP_BROKER_DIR", "") not in ("", "0")
    with KafkaBroker(libs, keep_dir=keep) as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers ("host:port") of the session's real Apache Kafka broker."""
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
    elif os.environ.get("FLAPGUARD_TEST_BROKER") == "testcontainers":
        yield from _testcontainers_kafka()
    else:
        yield from _local_kafka()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A prefix unique to this test run, for topic names and Faust app ids
    (``f"{unique_name}-findings"``): tests share one broker and never clean it."""
    base = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-").lower()[:40]
    return f"{base}-{uuid.uuid4().hex[:8]}"
