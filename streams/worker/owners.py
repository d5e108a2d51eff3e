"""Who writes a topic: a worker refuses output topics another app id writes.

Every output record of a worker names its app id in a header (`HEADER_APP_ID`). Before
it starts, a worker reads the last records of its output topics: if they name another
app id, a second worker (a candidate beside production, a test run) would mix its
alerts with that one's, and it stops with one line instead (docs/operations.md,
"A candidate beside production"). Records without the header (written before
flapguard marked them, or by another tool) name no one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from streams.config import ConfigError
from streams.core.records import HEADER_APP_ID
from streams.kafka.security import PLAINTEXT, BrokerSecurity
from streams.kafka.workarounds import all_topics_metadata

# Records read back from the end of each partition: the last one may be a transaction
# marker, which holds none.
TAIL = 8


def refusal(app_id: str, writers: Mapping[str, set[str]]) -> str | None:
    """Why a worker with `app_id` must not write to these topics (topic -> the app ids
    their last records name), or None."""
    for topic, names in sorted(writers.items()):
        others = sorted(names - {app_id})
        if others:
            return (f"{topic} is written by app id {', '.join(map(repr, others))} (its last records "
                    f"say so), not by this worker's {app_id!r}: give it topics of its own "
                    "(--output-prefix), or --allow-shared-outputs to write there anyway")
    return None


def with_prefix(prefix: str, names: Iterable[str | None]) -> list[str | None]:
    """The output topic names under `--output-prefix`."""
    return [None if name is None else f"{prefix}{name}" for name in names]


async def writers(bootstrap: str, topics: Iterable[str], security: BrokerSecurity = PLAINTEXT
                  ) -> dict[str, set[str]]:
    """The app ids the last records of each partition of `topics` name (topics that do
    not exist: none), read with a plain consumer (no group, no commits)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka.availability import start_client

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                **security.aiokafka_kwargs())
    await start_client(consumer, bootstrap, security)
    found: dict[str, set[str]] = {}
    try:
        cluster = await all_topics_metadata(consumer)
        tps = [TopicPartition(topic, p) for topic in set(topics)
               for p in sorted(cluster.partitions_for_topic(topic) or ())]
        if not tps:
            return found
        first, ends = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
        tail = [tp for tp in tps if ends[tp] > first[tp]]
        if not tail:
            return found
        consumer.assign(tail)
        for tp in tail:
            consumer.seek(tp, max(first[tp], ends[tp] - TAIL))
        left = set(tail)
        while left:
            for tp, records in (await consumer.getmany(*left, timeout_ms=1000)).items():
                for record in records:
                    for name, value in record.headers or ():
                        if name == HEADER_APP_ID:
                            found.setdefault(tp.topic, set()).add(bytes(value).decode(errors="replace"))
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return found


async def check_outputs(app_id: str, bootstrap: str, topics: Iterable[str | None],
                        security: BrokerSecurity = PLAINTEXT) -> None:
    """Raise a one-line ConfigError when another app id writes one of these topics."""
    why = refusal(app_id, await writers(bootstrap, [t for t in topics if t], security))
    if why is not None:
        raise ConfigError(why)
