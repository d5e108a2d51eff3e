"""flapguard's topics: their names, and creating them with every partition led."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.config import ConfigError
from streams.kafka.availability import BrokerError, connection_error, quiet_bootstrap
from streams.kafka.workarounds import broker_ids

if TYPE_CHECKING:
    from streams.kafka.security import BrokerSecurity


@dataclass(frozen=True, slots=True)
class Topics:
    findings: str = "securityhub.findings"
    alerts: str = "securityhub.alerts"
    suppressed: str = "securityhub.suppressed"
    deadletter: str = "securityhub.deadletter"
    decisions: str | None = None


_TOPIC_ALREADY_EXISTS = 36

log = logging.getLogger("flapguard.kafka")


@dataclass(frozen=True, slots=True)
class Replication:
    """Replicas of every topic flapguard creates (outputs, the keyed topic, Faust's
    changelogs, the forwarders' and the notifier's topics). None: the broker's own
    `default.replication.factor` and `min.insync.replicas`."""

    factor: int | None = None
    min_insync: int | None = None

    def __post_init__(self) -> None:
        if self.factor is not None and self.factor < 1:
            raise ConfigError("--replication-factor must be at least 1")
        if self.min_insync is not None and self.min_insync < 1:
            raise ConfigError("--min-insync-replicas must be at least 1")
        if self.factor is not None and self.min_insync is not None and self.min_insync > self.factor:
            raise ConfigError(f"--min-insync-replicas {self.min_insync} is more than "
                              f"--replication-factor {self.factor}: no write could ever be acknowledged")

    def topic_config(self) -> dict[str, str]:
        """What a topic's own configuration says (nothing: the broker's default applies,
        and follows it when it changes)."""
        return {} if self.min_insync is None else {"min.insync.replicas": str(self.min_insync)}


BROKER_DEFAULTS = Replication()


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str, security: BrokerSecurity | None, timeout: float
                       ) -> AsyncIterator[Any]:
    """A started admin client; a connection failure says why in one line."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaConnectionError

    auth = security.aiokafka_kwargs() if security is not None else {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000),
                                **auth)
    try:
        with quiet_bootstrap():
            await admin.start()
    except KafkaConnectionError:
        # It says only "Unable to bootstrap"; the reason (a refused password, an unknown
        # CA...) went to a log line. Say it in the error.
        error = await connection_error(bootstrap, security, timeout=min(timeout, 10.0))
        if error is None:
            raise
        raise error from None
    try:
        yield admin
    finally:
        await admin.close()


async def replication_factor(admin: Any, replication: Replication) -> int:
    """The replication factor to create topics with: the one given, else the broker's
    `default.replication.factor` (aiokafka's CreateTopics cannot ask for "the broker's
    default"), checked against the brokers the cluster has."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import KafkaError

    brokers = broker_ids(admin)
    factor = replication.factor
    if factor is None:
        name = "default.replication.factor"
        try:
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.BROKER, str(brokers[0]), {name: None})])
        except KafkaError as exc:
            # Kafka-protocol brokers that are not Apache Kafka (the demo's Tansu) may not
            # answer: Kafka's own recommendation, as many replicas as there are, up to 3.
            factor = min(3, len(brokers))
            log.warning("the broker did not give its default.replication.factor (%s); creating "
                        "topics with %s replicas (set --replication-factor)", type(exc).__name__, factor)
            return factor
        entries = {e[0]: e[1] for r in responses for res in r.resources for e in res[4]}
        factor = int(entries.get(name) or 1)
    if factor > len(brokers):
        raise ConfigError(f"replication factor {factor} needs {factor} brokers; the cluster has "
                          f"{len(brokers)} (set --replication-factor)")
    return factor


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    *,
    replication: Replication = BROKER_DEFAULTS,
    timeout: float = 30.0,
    security: BrokerSecurity | None = None,
) -> dict[str, int]:
    """Create ``topics`` (name -> partitions) with the same topic ``config`` each, and wait
    until every partition has a leader. Topics that already exist are left as they are.
    ``security``: how to connect (default PLAINTEXT). Returns each topic's partition
    count as the broker has it (an existing topic keeps its own)."""
    from aiokafka.admin import NewTopic
    from aiokafka.errors import for_code

    if not topics:
        return {}
    deadline = time.monotonic() + timeout
    async with admin_client(bootstrap, security, timeout) as admin:
        existing = set(await admin.list_topics())
        missing = {name: partitions for name, partitions in topics.items() if name not in existing}
        if not missing:
            return await _wait_for_leaders(admin, topics, deadline)
        factor = await replication_factor(admin, replication)
        configs = {**replication.topic_config(), **(config or {})}
        response = await admin.create_topics(
            [NewTopic(name, partitions, factor, topic_configs=configs)
             for name, partitions in missing.items()],
            timeout_ms=int(timeout * 1000),
        )
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = entry[2] if len(entry) > 2 else ""
                raise for_code(code)(f"cannot create topic {name!r}: {message}")
        return await _wait_for_leaders(admin, topics, deadline)


async def _wait_for_leaders(admin: Any, topics: Mapping[str, int], deadline: float
                            ) -> dict[str, int]:
    pending = dict(topics)
    counts: dict[str, int] = {}
    while True:
        described = await admin.describe_topics(list(pending))
        for topic in described:
            partitions = topic.get("partitions", [])
            if (
                topic.get("error_code") == 0
                and partitions
                and all(p.get("error_code") == 0 and p.get("leader", -1) >= 0 for p in partitions)
            ):
                pending.pop(topic.get("topic"), None)
                counts[topic.get("topic")] = len(partitions)
        if not pending:
            return counts
        if time.monotonic() >= deadline:
            raise BrokerError(f"topics without partition leaders: {sorted(pending)}")
        await asyncio.sleep(0.05)


async def delete_topics(bootstrap: str, prefix: str, *, security: BrokerSecurity | None = None,
                        timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with `prefix` (the topics a demo or a
    `--via-kafka` run created under its own app id: its inputs, outputs, keyed topic and
    Faust's changelogs); the names deleted."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    async with admin_client(bootstrap, security, timeout) as admin:
        names = sorted(name for name in await admin.list_topics() if name.startswith(prefix))
        if names:
            await admin.delete_topics(names, timeout_ms=int(timeout * 1000))
    return names


def create_topics_sync(
    bootstrap: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    *,
    replication: Replication = BROKER_DEFAULTS,
    timeout: float = 30.0,
    security: BrokerSecurity | None = None,
) -> None:
    """:func:`create_topics` for code without a running event loop."""
    asyncio.run(
        create_topics(bootstrap, topics, config, replication=replication, timeout=timeout,
                      security=security)
    )
