"""The Faust worker: a thin adapter around the pure core.

Two agents:
- `ingest` reads the findings topic (any keying), parses each message, dead-letters
  what cannot be decided, and forwards every finding to the keyed topic, keyed by its
  partition key and placed with murmur2 (as the backtest does).
- `decide` reads the keyed topic; per partition a `PartitionEngine` holds events for
  the hold, decides them in event-time order and the agent writes the outputs.

State lives in changelogged tables (findings, the tumbling archive buckets, the live
per-standard index, the reorder buffer, per-partition watermarks), all written from
the partition that owns the key. Every decision's outputs are acknowledged by the
broker before its state change is written, so a crash at any point re-decides the
event the same way (same `dedup_key`) rather than losing it.

Idle partitions: a timer sends a tick record to each assigned keyed partition; the
tick is processed in order with the findings, and releases the partition's holds when
it has seen no finding for `idle_flush` of wall-clock time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import faust
import orjson
from faust.types import TP

from streams import metrics
from streams.broker_wait import BrokerWatch, retry_while_unavailable
from streams.config import WorkerSettings
from streams.decide import Decision, Outcome, rejected_outcome
from streams.engine import PartitionEngine
from streams.findings import Finding, Rejected, parse_message
from streams.kafka_auth import PLAINTEXT, BrokerSecurity
from streams.keys import partition_for
from streams.records import (
    HEADER_INPUT,
    HEADER_LINE,
    alert_record,
    deadletter_headers,
    kafka_decision_record,
    suppressed_record,
)
from streams.state import Origin, Store, encode

log = logging.getLogger("flapguard.worker")

TICK_KEY = b"\x00flapguard-tick"


def now_ms() -> int:
    return int(time.time() * 1000)


def origin_of(message: Any, index: int) -> Origin:
    """Origin of a finding in a Kafka record; a replayed file names its file and line."""
    headers = dict(message.headers or ())
    source: str = message.topic
    line: int = message.offset
    if HEADER_INPUT in headers and HEADER_LINE in headers:
        try:
            source = bytes(headers[HEADER_INPUT]).decode()
            line = int(bytes(headers[HEADER_LINE]))
        except (ValueError, UnicodeDecodeError):
            pass
    return Origin(source, line, index, message.topic, message.partition, message.offset)


def encode_keyed(finding: Finding, origin: Origin) -> bytes:
    return encode({"finding": finding.to_json(), "origin": origin})


def decode_keyed(data: bytes) -> tuple[Finding, Origin]:
    raw = orjson.loads(data)
    return Finding.from_json(raw["finding"]), Origin(**raw["origin"])


class Worker:
    """Builds the Faust app, its topics, tables and agents from `WorkerSettings`."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        s = settings
        self.app = faust.App(
            s.app_id,
            broker=[f"kafka://{server.strip()}" for server in s.bootstrap_servers.split(",")],
            store=s.store,
            datadir=s.data_dir,
            topic_partitions=s.partitions,
            # No web server; were it ever turned on, loopback only.
            web_enabled=False,
            web_bind="127.0.0.1",
            broker_credentials=s.security.faust_credentials(),
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=s.heartbeat_interval_s,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            table_cleanup_interval=3600.0,
        )
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                               "key_serializer": "raw", "value_serializer": "raw"}
        self.source = self.app.topic(s.topics.findings, **raw)
        self.keyed = self.app.topic(f"{s.app_id}-keyed-findings", partitions=s.partitions,
                                    internal=True, **raw)
        self.alerts = self.app.topic(s.topics.alerts, partitions=s.partitions, **raw)
        self.suppressed = self.app.topic(s.topics.suppressed, partitions=s.partitions, **raw)
        self.deadletter = self.app.topic(s.topics.deadletter, partitions=s.partitions, **raw)
        self.decisions = (
            self.app.topic(s.topics.decisions, partitions=s.partitions, **raw)
            if s.topics.decisions else None
        )
        self.tables = {
            name: ChangelogMapping(self.app.Table(name, default=None, key_type=str, value_type=bytes,
                                                  partitions=s.partitions))
            for name in Store.NAMES
        }
        self.engines: dict[int, PartitionEngine] = {}
        self.staged: dict[int, Callable[[], None]] = {}
        self.last_arrival: dict[int, float] = {}
        self.source_guard = OffsetGuard(s.bootstrap_servers, self.app, s.security)
        self.keyed_guard = OffsetGuard(s.bootstrap_servers, self.app, s.security)
        self.app.agent(self.source, name="flapguard.ingest")(self.ingest)
        self.app.agent(self.keyed, name="flapguard.decide")(self.decide)
        self.app.timer(max(0.5, s.idle_flush_ms / 4000))(self.tick_idle_partitions)
        self.broker_watch = BrokerWatch(s.bootstrap_servers, self.probe_broker)
        self.app.timer(2.0)(self.broker_watch.check)
        # After every recovery (start, rebalance) the engines' heaps are rebuilt from
        # the tables on the next record of each partition.
        self.tables["buffer"].table.on_recover(self.on_recover)

    async def declare_topics(self) -> None:
        """Create the topics this worker reads and writes (those that exist are kept):
        brokers often forbid auto-creation, and Faust declares only what it consumes."""
        from streams.brokers import create_topics

        topics = [self.source, self.keyed, self.alerts, self.suppressed, self.deadletter,
                  self.decisions]
        names = [t.get_topic_name() for t in topics if t is not None]
        await create_topics(self.settings.bootstrap_servers,
                            dict.fromkeys(names, self.settings.partitions),
                            security=self.settings.security)

    # -- ingest ---------------------------------------------------------------------

    async def ingest(self, stream: Any) -> None:
        batch_wait = self.settings.batch_wait_ms / 1000
        async for events in stream.take_events(self.settings.batch_size, within=batch_wait):
            try:
                pending: list[Any] = []
                # Forwarding writes no state: records of a partition revoked since they
                # were taken are forwarded all the same (the new owner's copies are
                # duplicates the decisions ignore), never dropped.
                for message in [event.message for event in events]:
                    guard = self.source_guard
                    missing = await guard.missing(message, guard.expected(message))
                    if missing is None:
                        continue
                    for record in [*missing, message]:
                        pending.extend(await self.forward(record))
                        guard.done(record)
                # Faust acknowledges the batch only once the broker has everything
                # its records became.
                await asyncio.gather(*pending)
            except Exception:
                first = events[0].message
                fatal("cannot forward records from %s[%s]@%s", first.topic, first.partition,
                      first.offset)

    async def forward(self, message: Any) -> list[Any]:
        """Parse one findings record; send its findings to the keyed topic and what
        cannot be decided to the dead-letter topic. Returns the delivery futures."""
        started = time.perf_counter()
        policy = self.settings.policy
        parsed = parse_message(message.value or b"", policy=policy, now_ms=now_ms())
        pending = []
        for index, item in enumerate(parsed):
            metrics.consumed(item)
            origin = origin_of(message, index)
            if isinstance(item, Rejected):
                pending.extend(await self._dead_letter(item, origin))
                continue
            key = item.partition_key.encode()
            pending.append(await self.send(self.keyed,
                key=key, value=encode_keyed(item, origin),
                partition=partition_for(key, self.settings.partitions)))
        metrics.processed("ingest", started)
        return pending

    async def _dead_letter(self, item: Rejected, origin: Origin) -> list[Any]:
        metrics.dead_lettered(item.reason)
        futures = [await self.send(self.deadletter,
            key=None, value=item.raw, headers=deadletter_headers(item.reason, origin))]
        if self.decisions is not None:
            record = kafka_decision_record(rejected_outcome(item, origin))
            futures.append(await self.send(self.decisions, key=None, value=orjson.dumps(record)))
        return futures

    # -- decide ---------------------------------------------------------------------

    def engine(self, partition: int) -> PartitionEngine:
        engine = self.engines.get(partition)
        if engine is None:
            # Each partition stages its own writes: they go to its changelog partition
            # (and, with RocksDB, to its partition's database).
            views = {name: mapping.partition(partition) for name, mapping in self.tables.items()}
            store, apply = Store.over(views).staged()
            self.staged[partition] = apply
            # State on disk: no expiry index in RAM (sweeps scan the database instead).
            on_disk = any(isinstance(view, RocksPartition) for view in views.values())
            engine = PartitionEngine(store, self.settings.policy, partition, expiry_index=not on_disk)
            self.engines[partition] = engine
            self.last_arrival.setdefault(partition, time.monotonic())
            log.info("partition %s: engine loaded, %s held, watermark %s", partition,
                     engine.pending, engine.watermark)
        return engine

    async def decide(self, stream: Any) -> None:
        batch_wait = self.settings.batch_wait_ms / 1000
        async for events in stream.take_events(self.settings.batch_size, within=batch_wait):
            try:
                await self.decide_batch([event.message for event in events])
            except Exception:
                first = events[0].message
                fatal("cannot process keyed records from %s[%s]@%s", first.topic,
                      first.partition, first.offset)

    async def decide_batch(self, messages: list[Any]) -> None:
        """Hold and decide a batch of keyed records (findings or idle ticks), send every
        output and wait for the broker, then write the state changes and wait again.
        Faust acknowledges the batch only after that, so a crash anywhere re-decides
        the same records the same way (same `dedup_key`)."""
        outcomes: list[Outcome] = []
        touched: set[int] = set()
        for message in self.still_ours(messages):
            if message.partition not in self.engines:
                log.info("partition %s: first record after (re)start at offset %s",
                         message.partition, message.offset)
            engine = self.engine(message.partition)
            # Below `next_seq`: applied before a restart, its outputs sent.
            expected = engine.next_seq
            if expected is None:  # no state for this partition yet: its committed offset
                expected = self.keyed_guard.expected(message)
            missing = await self.keyed_guard.missing(message, expected)
            if missing is None:
                continue
            for record in [*missing, message]:
                outcomes.extend(await self.decide_record(engine, record))
            touched.add(message.partition)
        await self.emit(outcomes)
        await self.persist(touched)

    def still_ours(self, messages: list[Any]) -> list[Any]:
        """Records of partitions this worker still owns. A batch taken before a
        rebalance may hold records of partitions now owned by another worker; writing
        their state here would overwrite the new owner's changelog."""
        assigned = self.app.consumer.assignment()
        ours = [m for m in messages if m.tp in assigned]
        if len(ours) < len(messages):
            log.info("dropped %s records of partitions revoked since they were taken",
                     len(messages) - len(ours))
        return ours

    async def decide_record(self, engine: PartitionEngine, message: Any) -> list[Outcome]:
        """Hold or decide one keyed record; the state changes stay staged."""
        started = time.perf_counter()
        partition = message.partition
        if message.key == TICK_KEY:
            idle = time.monotonic() - self.last_arrival[partition] >= self.settings.idle_flush_ms / 1000
            outcomes = engine.flush() if idle else []
            engine.passed(message.offset)
            if outcomes:
                log.info("partition %s idle: released %s held findings", partition, len(outcomes))
        else:
            self.last_arrival[partition] = time.monotonic()
            try:
                finding, origin = decode_keyed(message.value)
            except (ValueError, KeyError, TypeError):
                # Only this worker writes the keyed topic; anything else there is kept
                # for inspection, not decided.
                rejected = Rejected("bad_keyed_record", message.value or b"")
                await asyncio.gather(*await self._dead_letter(rejected, origin_of(message, 0)))
                engine.passed(message.offset)
                outcomes = []
            else:
                outcomes = engine.accept(finding, origin, seq=message.offset)
        metrics.partition_done(engine, started, received=message.key != TICK_KEY)
        return outcomes

    async def persist(self, partitions: Iterable[int]) -> None:
        """Write the staged state changes of these partitions to the tables, each to
        its own changelog partition, and wait until the broker has them."""
        pending = []
        for partition in partitions:
            self.staged[partition]()
            for mapping in self.tables.values():
                pending.extend(await mapping.send(partition, self.app.producer))
        if pending:
            sent = await asyncio.gather(*pending)
            for mapping in self.tables.values():
                mapping.persisted(sent)

    async def emit(self, outcomes: Iterable[Outcome]) -> None:
        """Send every output of these decisions and wait until the broker has them."""
        pending = []
        emitted = now_ms()
        for outcome in outcomes:
            metrics.decided(outcome)
            if outcome.decision in (Decision.ALERT, Decision.RESOLVED):
                record = alert_record(outcome, emitted)
                pending.append(await self.send(self.alerts,
                    key=(outcome.dedup_key or "").encode(), value=orjson.dumps(record)))
            pairings = [outcome.pairing] if outcome.pairing else []
            for pairing in [*pairings, *outcome.late_pairs]:
                pending.append(await self.send(self.suppressed,
                    key=pairing.key.encode(), value=orjson.dumps(suppressed_record(pairing))))
            if self.decisions is not None:
                record = kafka_decision_record(outcome)
                key = outcome.key.encode() if outcome.key else None
                pending.append(await self.send(self.decisions, key=key, value=orjson.dumps(record)))
        if pending:
            await asyncio.gather(*pending)

    # -- idle partitions ------------------------------------------------------------

    async def tick_idle_partitions(self) -> None:
        idle_s = self.settings.idle_flush_ms / 1000
        now = time.monotonic()
        assigned = {tp.partition for tp in self.app.assignor.assigned_actives()
                    if tp.topic == self.keyed.get_topic_name()}
        for partition in assigned:
            engine = self.engines.get(partition)
            # A partition with no engine yet (after a restart or rebalance) gets one
            # tick so that its engine reloads what the buffer table holds.
            if engine is None or (engine.pending and now - self.last_arrival[partition] >= idle_s):
                await self.send(self.keyed, key=TICK_KEY, value=b"", partition=partition)

    async def send(self, topic: Any, *, key: bytes | None, value: bytes, partition: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> Any:
        """Hand one record to the producer; returns its delivery future. Faust's
        `Topic.send` does the same with more work per record than deciding it."""
        return await self.app.producer.send(topic.get_topic_name(), key, value, partition, None, headers)

    async def probe_broker(self) -> None:
        """Ask the broker for cluster metadata with the producer's own client (and so
        its security settings); raises when no broker answers."""
        producer = getattr(self.app.producer, "_producer", None)
        if producer is not None:
            await producer.client.fetch_all_metadata()

    async def on_recover(self) -> None:
        self.engines.clear()
        self.source_guard.reset()
        self.keyed_guard.reset()


class OffsetGuard:
    """Makes sure every record of a partition is processed once, in offset order.

    faust-streaming 0.15 can lose fetched records when it seeks to the committed
    offsets right after a recovery (a restart, a rebalance): the agent then sees the
    offsets jump. The guard reads the skipped records itself, with a plain consumer,
    so that the agent processes them before the record that revealed the jump, and
    then tells Faust they are done (Faust would otherwise hold its commits at the
    hole, or, where it noticed the jump itself, commit past records never processed).
    """

    def __init__(self, bootstrap_servers: str, app: Any,
                 security: BrokerSecurity = PLAINTEXT) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.app = app
        self.security = security
        self.next: dict[tuple[str, int], int] = {}
        self.starts: dict[tuple[str, int], int] = {}

    def expected(self, message: Any) -> int | None:
        """The offset due next: after the last one processed, else the committed one."""
        key = (message.topic, message.partition)
        if key in self.next:
            return self.next[key]
        committed = self.app.consumer._committed_offset.get(message.tp)
        return int(committed) if committed is not None else None

    def done(self, message: Any) -> None:
        self.next[(message.topic, message.partition)] = message.offset + 1

    async def missing(self, message: Any, expected: int | None) -> list[Any] | None:
        """The records to process before this one (usually none); None to skip this
        one, processed before (a redelivery after a restart). With no offset expected
        (nothing committed, no state), the partition's first offset is: the consumer
        starts there, and the same defect can drop its first records."""
        if expected is None:
            expected = await self.first_offset(message)
        if message.offset == expected:
            return []
        if message.offset < expected:
            return None
        log.warning("%s[%s]: the consumer skipped offsets %s to %s; reading them directly",
                    message.topic, message.partition, expected, message.offset - 1)
        records = await self._read(message.topic, message.partition, expected, message.offset)
        # Faust's own record of skipped offsets ("gaps") counts them as done: now they are.
        gaps = self.app.consumer._gap[message.tp]
        gaps.addi(expected, message.offset)
        gaps.merge_overlaps()
        return records

    async def first_offset(self, message: Any) -> int:
        key = (message.topic, message.partition)
        if key not in self.starts:
            earliest = await self.app.consumer.earliest_offsets(message.tp)
            self.starts[key] = int(earliest.get(message.tp, 0))
        return self.starts[key]

    async def _read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(topic, partition)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers,
                                    enable_auto_commit=False, isolation_level="read_committed",
                                    **self.security.aiokafka_kwargs())
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            records: list[Any] = []
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                records.extend(r for r in batch.get(tp, ()) if r.offset < end)
            return records
        finally:
            await consumer.stop()

    def reset(self) -> None:
        """After a rebalance, partitions start again from their committed offsets."""
        self.next.clear()
        self.starts.clear()


class ChangelogMapping(MutableMapping[str, bytes]):
    """A Faust table seen as a mapping of bytes whose writes go to the changelog
    partition of the key's owner, sent by the agent, which waits for the broker.

    Faust's own `table[k] = v` queues the changelog write in a buffer that an offset
    commit may overtake under back-pressure, and that does not drain while a
    rebalance waits for the agent: a batch awaiting it would never finish. These
    writes go straight to the producer instead.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._writes: list[tuple[str, bytes | None]] = []

    def partition(self, partition: int) -> MutableMapping[str, bytes]:
        """The view the engine of `partition` reads and writes through."""
        store = self.table.data
        if hasattr(store, "_db_for_partition"):
            return RocksPartition(self, partition)
        return self

    def persisted(self, sent: Iterable[Any]) -> None:
        """Tell a RocksDB store the changelog offsets its databases now reflect, so that
        a restart replays the changelog from there rather than from the last recovery
        (a memory store keeps nothing across a restart: a no-op)."""
        store = self.table.data
        if not hasattr(store, "_db_for_partition"):
            return
        name = self.table.changelog_topic.get_topic_name()
        last: dict[int, int] = {}
        for metadata in sent:
            if metadata.topic == name:
                last[metadata.partition] = max(metadata.offset, last.get(metadata.partition, -1))
        for partition, offset in last.items():
            store.set_persisted_offset(TP(name, partition), offset)

    def __getitem__(self, key: str) -> bytes:
        value: bytes = self.table.data[key]
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self.table.data.get(key, default)

    def __setitem__(self, key: str, value: bytes) -> None:
        self.table.data[key] = value
        self._writes.append((key, value))

    def __delitem__(self, key: str) -> None:
        del self.table.data[key]
        self._writes.append((key, None))

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.table.data.keys()))

    def __len__(self) -> int:
        return len(self.table.data)

    async def send(self, partition: int, producer: Any) -> list[Any]:
        """Send the writes made since the last call to changelog `partition`, through
        the app's producer (Faust's per-record topic machinery costs more than the
        decision); returns the delivery futures."""
        writes, self._writes = self._writes, []
        topic = self.table.changelog_topic
        name = topic.get_topic_name()
        futures = []
        for key, value in writes:
            key_bytes, _ = topic.prepare_key(key, self.table.key_serializer)
            futures.append(await producer.send(name, key_bytes, value, partition, None, None))
        return futures


class RocksPartition(MutableMapping[str, bytes]):
    """One partition of a table in Faust's RocksDB store, read and written in that
    partition's database. The store itself picks the database from `current_event()`,
    which a `take_events` batch body does not have (its writes assert on it) or which
    names another record's partition; keys and values are stored as the changelog
    carries them, as the store's recovery writes them."""

    def __init__(self, parent: ChangelogMapping, partition: int) -> None:
        self.parent = parent
        self.store = parent.table.data
        self.partition = partition

    @property
    def db(self) -> Any:
        return self.store._db_for_partition(self.partition)

    def __getitem__(self, key: str) -> bytes:
        value = self.db.get(self.store._encode_key(key))
        if value is None:
            raise KeyError(key)
        return bytes(value)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.db.get(self.store._encode_key(key))
        return default if value is None else value

    def __setitem__(self, key: str, value: bytes) -> None:
        self.db.put(self.store._encode_key(key), value)
        self.parent._writes.append((key, value))

    def __delitem__(self, key: str) -> None:
        self.db.delete(self.store._encode_key(key))
        self.parent._writes.append((key, None))

    def __iter__(self) -> Iterator[str]:
        offset_key = self.store.offset_key
        keys = [k for k in self.db.keys() if k != offset_key]  # noqa: SIM118 - not iterable
        return iter([self.store._decode_key(k) for k in keys])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def fatal(message: str, *args: Any) -> None:
    """Stop the process: Faust would ack a record whose processing raised, losing it.
    The record is re-read after the restart, from the last committed offset."""
    log.exception(message, *args)
    logging.shutdown()
    os._exit(70)


def run_worker(settings: WorkerSettings) -> None:
    """Run until SIGTERM/SIGINT."""
    from faust.worker import Worker as FaustWorker

    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(settings)
    metrics.start(worker)
    # A broker that is not up yet is waited for (with backoff), not a crash.
    asyncio.run(retry_while_unavailable(worker.declare_topics, servers=settings.bootstrap_servers,
                                        what="creating or checking the topics"))
    FaustWorker(worker.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()
