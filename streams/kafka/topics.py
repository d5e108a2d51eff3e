"""flapguard's topics: their names, and creating them with every partition led."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.kafka.availability import BrokerError, connection_error, quiet_bootstrap

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


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
    security: BrokerSecurity | None = None,
) -> dict[str, int]:
    """Create ``topics`` (name -> partitions) with the same topic ``config`` each, and wait
    until every partition has a leader. Topics that already exist are left as they are.
    ``security``: how to connect (default PLAINTEXT). Returns each topic's partition
    count as the broker has it (an existing topic keeps its own)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError, for_code

    if not topics:
        return {}
    deadline = time.monotonic() + timeout
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
        response = await admin.create_topics(
            [
                NewTopic(name, partitions, replication_factor, topic_configs=dict(config or {}))
                for name, partitions in topics.items()
            ],
            timeout_ms=int(timeout * 1000),
        )
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                message = entry[2] if len(entry) > 2 else ""
                raise for_code(code)(f"cannot create topic {name!r}: {message}")
        return await _wait_for_leaders(admin, topics, deadline)
    finally:
        await admin.close()


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


def create_topics_sync(
    bootstrap: str,
    topics: Mapping[str, int],
    config: Mapping[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
    security: BrokerSecurity | None = None,
) -> None:
    """:func:`create_topics` for code without a running event loop."""
    asyncio.run(
        create_topics(bootstrap, topics, config, replication_factor=replication_factor, timeout=timeout,
                      security=security)
    )
