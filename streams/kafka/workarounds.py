"""Every place flapguard reaches into faust-streaming's, aiokafka's or Faust's RocksDB
store's internals, for something their public API does not offer; each says the defect
or the gap it answers. Checked against faust-streaming 0.15.3 and aiokafka 0.14.0
(pinned in pyproject.toml); tests/kafka/test_workarounds.py fails if either changes
what is reached into here. docs/operations.md lists the defects. Faust and mode are
imported where they are used: the forwarders, the notifier and the backtest run
without them.
"""

from __future__ import annotations

import functools
from typing import Any

READ_COMMITTED = "read_committed"


def read_committed_consumer() -> None:
    """faust-streaming 0.15 creates its consumer read_uncommitted unless the app is
    `exactly_once` (`AIOKafkaConsumerThread._create_worker_consumer`): the worker would
    decide the records of aborted transactions, which the offset guard's own reader
    (read_committed) never sees, so the two paths would disagree. The consumer is made
    read_committed as Faust creates it: aiokafka hands `_isolation_level` to its fetcher
    when it starts. Idempotent."""
    from faust.transport.drivers import aiokafka as driver

    cls: Any = driver.AIOKafkaConsumerThread
    original = cls._create_worker_consumer
    if getattr(original, "flapguard_read_committed", False):
        return

    @functools.wraps(original)
    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._isolation_level = READ_COMMITTED
        return consumer

    create.flapguard_read_committed = True  # type: ignore[attr-defined]
    cls._create_worker_consumer = create


def last_stable_offset(app: Any, tp: Any) -> int | None:
    """How far a read_committed consumer can read `tp` (its last stable offset): the
    records of a transaction still open lie beyond it. Faust's `highwater` gives the high
    watermark unless the app is `exactly_once`. None until a fetch has told."""
    consumer = app.consumer._thread._ensure_consumer()
    offset = consumer.last_stable_offset(tp)
    return int(offset) if offset is not None and offset >= 0 else None


# -- Faust's consumer: committed offsets and skipped offsets (`streams.worker.offsets`) --


def committed_offset(app: Any, tp: Any) -> int | None:
    """The offset Faust's consumer has committed for `tp` (None: nothing yet). Faust keeps
    it and has no public accessor; the offset guard starts a partition from it."""
    committed = app.consumer._committed_offset.get(tp)
    return int(committed) if committed is not None else None


def count_as_done(app: Any, tp: Any, start: int, end: int) -> None:
    """Add offsets `start` to `end` (excluded) of `tp` to Faust's record of skipped offsets
    ("gaps"), read by the offset guard itself: Faust would otherwise hold its commits at
    the hole, or, where it noticed the jump itself, commit past records never processed."""
    gaps = app.consumer._gap[tp]
    gaps.addi(start, end)
    gaps.merge_overlaps()


# -- Faust's stream: batches acknowledged by the agent (`streams.worker.batches`) --------


def read_passively(stream: Any) -> None:
    """Have `stream` deliver its events to its processors without an `async for` over it,
    as `Stream.take_events` does: Faust has no public way to build other batches
    (`streams.worker.batches` also closes a batch once the consumer has delivered all it
    had)."""
    from mode.utils.aiter import aiter

    stream._enable_passive(aiter(stream.channel))


def remove_processor(stream: Any, processor: Any) -> None:
    """Faust has `add_processor` and no `remove_processor`."""
    stream._processors.remove(processor)


# -- aiokafka's producer, under Faust's (`streams.worker.app`, `streams.worker.outbox`) --


def aiokafka_producer(app: Any) -> Any:
    """The app's aiokafka producer, started: records go to it as whole batches (Faust's
    `Topic.send` does more work per record than deciding it) and Faust does not expose
    it."""
    return app.producer._ensure_producer()


def started_producer(app: Any) -> Any | None:
    """The app's aiokafka producer if Faust has started it, else None."""
    return getattr(app.producer, "_producer", None)


async def partition_count(producer: Any, topic: str) -> int:
    """How many partitions `topic` has, from the producer's metadata (fetched if it has
    none): what `send` uses to place a keyed record, which `send_batch` does not do."""
    return len(await producer.client._wait_on_metadata(topic))


def track_topic(producer: Any, topic: str) -> None:
    """Have the producer keep `topic` in its metadata. It refreshes metadata only for the
    topics it tracks (all topics while it tracks none): a topic it learnt of from an
    all-topics refresh, which `send_batch` does not add, drops out of its metadata at the
    next refresh, and a batch for it then waits for a leader until it expires (Faust's
    20-minute request timeout), with a rebalance waiting on it."""
    client = producer.client
    if topic not in client._topics:
        client.add_topic(topic)


# -- Faust's RocksDB store, by partition (`streams.worker.tables`) ----------------------


def is_rocksdb(store: Any) -> bool:
    return hasattr(store, "_db_for_partition")


def rocks_db(store: Any, partition: int) -> Any:
    """The database of one partition: the store picks it from `current_event()`, which a
    batch body does not have (its writes assert on it) or which names another record's
    partition."""
    return store._db_for_partition(partition)


def rocks_key(store: Any, key: str) -> bytes:
    """A key as the store writes it (and its changelog recovery does)."""
    encoded: bytes = store._encode_key(key)
    return encoded


def table_key(store: Any, stored: bytes) -> str:
    """A stored key as the table's key."""
    decoded: str = store._decode_key(stored)
    return decoded


# -- aiokafka's clients: the whole cluster's metadata ------------------------------------


async def all_topics_metadata(client_owner: Any) -> Any:
    """The cluster's metadata for every topic, fetched now, with the client of a started
    aiokafka consumer: its own metadata holds only the topics it was told of, and the
    public `topics()` fetches this and drops it."""
    return await client_owner._client.fetch_all_metadata()


def broker_ids(admin: Any) -> list[int]:
    """The node ids of the cluster's brokers, as an aiokafka admin client's metadata has
    them (it has no public call for them)."""
    return sorted(b.nodeId for b in admin._client.cluster.brokers())


# -- aiokafka's fetcher: the record batches' own records (`streams.backtest.from_topic`) --


def bare_value(value: bytes | None) -> bytes | None:
    """The value deserializer that marks a consumer as one that takes the record
    batches' own records (`bare_records`); values are left as they are."""
    return value


def bare_records() -> None:
    """aiokafka wraps every record it hands on in a `ConsumerRecord`
    (`PartitionRecords._consumer_record`: a Python call and an 11-field dataclass per
    record, a quarter of aiokafka's CPU per record of the backtest's findings), and has
    no way to skip it. A consumer created with `value_deserializer=bare_value` gets the
    record batch's own records instead: `offset`, `timestamp`, `key`, `value`, `headers`;
    no `topic` or `partition` (`getmany` hands them on by partition). Every other
    consumer gets its `ConsumerRecord`s as before. Idempotent."""
    from aiokafka.consumer import fetcher

    cls: Any = fetcher.PartitionRecords
    original = cls._consumer_record
    if getattr(original, "flapguard_bare", False):
        return

    @functools.wraps(original)
    def consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if self._value_deserializer is bare_value:
            return record
        return original(self, tp, record)

    consumer_record.flapguard_bare = True  # type: ignore[attr-defined]
    cls._consumer_record = consumer_record
