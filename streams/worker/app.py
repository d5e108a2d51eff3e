"""The Faust worker: a thin adapter around the pure core.

One agent reads two topics, so that one task alone drives the engines:
- the findings topic (any keying; single findings, envelopes or pages): each message
  is parsed, what cannot be decided is dead-lettered, and each finding either goes to
  the `PartitionEngine` of the partition it arrived on, when its partition key hashes
  there (murmur2) and the findings topic is co-partitioned with the keyed topic, or to
  the keyed topic, keyed by its partition key and placed with murmur2 (as the backtest
  places it);
- the keyed topic: per partition the same `PartitionEngine` holds events for the hold
  and decides them in event-time order.

State lives in changelogged tables (findings, the tumbling archive buckets, the live
per-standard index, the reorder buffer, per-partition watermarks), all written from
the partition that owns the key. Every decision's outputs are acknowledged by the
broker before its state change is written, so a crash at any point re-decides the
event the same way (same `dedup_key`) rather than losing it.

Idle partitions: when a partition holds findings and has had none for `idle_flush` of
wall-clock time, a timer sends a tick record to its keyed partition naming what had
arrived then; processed in order with the findings, it releases those arrivals. The
decision to release is taken when the tick is sent and is written in it, so a replay
after a crash releases the same arrivals (docs/design.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

import faust
import msgspec
import orjson
from faust.types import TP

from streams.core.decide import Decision, Outcome, rejected_outcome
from streams.core.engine import DIRECT_SEQ, PartitionEngine, direct_seq
from streams.core.findings import Finding, Rejected, parse_message
from streams.core.keys import partitions_for
from streams.core.records import (
    HEADER_APP_ID,
    Headers,
    alert_records,
    deadletter_headers,
    fit_dead_letter,
    kafka_decision_record,
    record_origins,
    suppressed_record,
)
from streams.core.state import Origin, Store, encode
from streams.kafka.availability import BrokerWatch, retry_while_unavailable
from streams.kafka.workarounds import (
    aiokafka_producer,
    last_stable_offset,
    read_committed_consumer,
    started_producer,
)
from streams.worker import metrics
from streams.worker.batches import take_batches
from streams.worker.offsets import OffsetGuard
from streams.worker.outbox import Delivered, Outbox, refused_record
from streams.worker.settings import BATCH_QUIET_S, WorkerSettings
from streams.worker.tables import ChangelogMapping, RocksPartition

log = logging.getLogger("flapguard.worker")


TICK_KEY = b"\x00flapguard-tick"


# A findings partition with records the agent has not had for this long is checked for
# records the consumer fetched and never delivered (see `Worker.catch_up`).
STALL_S = 5.0


class Tick(NamedTuple):
    """What a tick record asks of its keyed partition (docs/design.md §2).

    `check`: a findings partition to check for records the agent never got (see
    `Worker.catch_up`). `release`: decide the held arrivals that had arrived when the
    tick was sent: keyed records below offset `keyed_before`, findings records decided
    in place below offset `source_before` (None: none of that kind). A tick asking
    nothing loads the partition's engine."""

    check: int | None = None
    release: bool = False
    keyed_before: int | None = None
    source_before: int | None = None

    def encode(self) -> bytes:
        if self.release:
            return orjson.dumps({"release": {"keyed": self.keyed_before, "source": self.source_before}})
        return b"" if self.check is None else str(self.check).encode()

    @staticmethod
    def decode(value: bytes | None) -> Tick:
        """Only this worker writes ticks; anything else asks nothing."""
        if value and value.startswith(b"{"):
            try:
                release = orjson.loads(value)["release"]
                keyed, source = release["keyed"], release["source"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return Tick()
            if all(v is None or type(v) is int for v in (keyed, source)):
                return Tick(release=True, keyed_before=keyed, source_before=source)
            return Tick()
        try:
            return Tick(check=int(value or b""))
        except ValueError:
            return Tick()

    def arrived(self) -> Callable[[int], bool]:
        """Whether an arrival number (a keyed offset or a `direct_seq`) is one this
        tick releases."""
        keyed = self.keyed_before if self.keyed_before is not None else 0
        source = DIRECT_SEQ
        if self.source_before is not None:
            source = direct_seq(self.source_before, 0) or 1 << 63
        return lambda seq: seq < source if seq >= DIRECT_SEQ else seq < keyed


def now_ms() -> int:
    return int(time.time() * 1000)


def origin_of(message: Any, index: int) -> Origin:
    """Origin of a finding in a Kafka record; a replayed file names its file and line."""
    return origins_of(message)(index)


def origins_of(message: Any) -> Callable[[int], Origin]:
    """`origin_of` for the findings of one record: its headers are read once."""
    return record_origins(message.topic, message.partition, message.offset, message.headers)


def encode_keyed(finding: Finding, origin: Origin) -> bytes:
    return encode({"finding": finding.to_json(), "origin": msgspec.structs.asdict(origin)})


def decode_keyed(data: bytes) -> tuple[Finding, Origin]:
    raw = orjson.loads(data)
    return Finding.from_json(raw["finding"]), Origin(**raw["origin"])


class Worker:
    """Builds the Faust app, its topics, tables and agents from `WorkerSettings`."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        s = settings
        read_committed_consumer()
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
            **s.producer.faust_settings(),
            # The agent hands the producer whole record batches (`Outbox`): fewer,
            # larger batches mean fewer round trips per partition.
            producer_max_batch_size=512 * 1024,
            # Per partition and fetch (Faust's default is 1 MiB, seven pages of 100
            # findings). Measured on the batched layout of `scripts/bench`: 4 MiB about
            # 14% faster than 2 MiB (fewer fetch round trips for the consumer thread,
            # which shares the interpreter with the agent); 8 MiB no faster, and with a
            # wider spread.
            consumer_max_fetch_size=4 * 1024 * 1024,
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
            name: ChangelogMapping(self.app.Table(
                name, default=None, key_type=str, value_type=bytes, partitions=s.partitions,
                extra_topic_configs=s.producer.replication.topic_config()))
            for name in Store.NAMES
        }
        # Every output record names the app id that wrote it.
        self.mark: Headers = [(HEADER_APP_ID, s.app_id.encode())]
        self.engines: dict[int, PartitionEngine] = {}
        self.staged: dict[int, Callable[[], None]] = {}
        self.last_arrival: dict[int, float] = {}
        # The last tick sent to an idle partition, and when, per keyed partition.
        self.idle_sent: dict[int, tuple[Tick, float]] = {}
        # Offsets of this worker's own ticks on each keyed partition, once written.
        self.own_ticks: dict[int, set[int]] = {}
        self.noting: set[asyncio.Future[None]] = set()
        self.last_source: dict[int, float] = {}  # findings record last taken, per partition
        # Whether the findings topic has as many partitions as the keyed topic (known
        # once the topics are declared): then Faust assigns findings partition p with
        # keyed partition p and the tables' partition p, and findings already on the
        # partition their key hashes to are decided where they are.
        self.direct = False
        self.source_guard = OffsetGuard(s.bootstrap_servers, self.app, s.security)
        self.keyed_guard = OffsetGuard(s.bootstrap_servers, self.app, s.security)
        # One agent reads both topics, so that one task alone changes the engines.
        inputs = self.app.topic(self.source.get_topic_name(), self.keyed.get_topic_name(), **raw)
        self.app.agent(inputs, name="flapguard.decide")(self.process)
        self.app.timer(max(0.5, s.idle_flush_ms / 4000))(self.tick_idle_partitions)
        self.broker_watch = BrokerWatch(s.bootstrap_servers, self.probe_broker)
        self.app.timer(2.0)(self.broker_watch.check)
        # After every recovery (start, rebalance) the engines' heaps are rebuilt from
        # the tables on the next record of each partition.
        self.tables["buffer"].table.on_recover(self.on_recover)

    async def declare_topics(self) -> None:
        """Create the topics this worker reads and writes (those that exist are kept):
        brokers often forbid auto-creation, and Faust declares only what it consumes."""
        from streams.kafka.topics import Replication, admin_client, create_topics, replication_factor

        s = self.settings
        async with admin_client(s.bootstrap_servers, s.security, timeout=30.0) as admin:
            factor = await replication_factor(admin, s.producer.replication)
        # Faust creates the changelog topics itself, with its own setting (default 1).
        self.app.conf.topic_replication_factor = factor
        topics = [self.source, self.keyed, self.alerts, self.suppressed, self.deadletter,
                  self.decisions]
        names = [t.get_topic_name() for t in topics if t is not None]
        counts = await create_topics(s.bootstrap_servers, dict.fromkeys(names, s.partitions),
                                     replication=Replication(factor, s.producer.replication.min_insync),
                                     security=s.security)
        # The changelogs too, before the worker joins its group: Faust creates them once
        # it runs, and a worker that joins while they are missing is assigned no
        # partition of them and restores nothing from them (it re-decides what their
        # state already holds, with part of that state missing).
        changelogs = [mapping.table.changelog_topic.get_topic_name() for mapping in self.tables.values()]
        await create_topics(s.bootstrap_servers, dict.fromkeys(changelogs, s.partitions),
                            {"cleanup.policy": "compact"},
                            replication=Replication(factor, s.producer.replication.min_insync),
                            security=s.security)
        found = counts.get(self.source.get_topic_name(), 0)
        self.direct = found == self.settings.partitions
        if self.direct:
            log.info("the findings topic has %s partitions, as the keyed topic: findings on the "
                     "partition their key hashes to are decided there", found)
        else:
            log.info("the findings topic has %s partitions, the keyed topic %s: every finding "
                     "goes through the keyed topic", found, self.settings.partitions)

    # -- the agent ------------------------------------------------------------------

    async def process(self, stream: Any) -> None:
        batch_wait = self.settings.batch_wait_ms / 1000
        async for events in take_batches(stream, self.settings.batch_size, batch_wait, BATCH_QUIET_S):
            try:
                await self.process_batch([event.message for event in events])
            except Exception:
                first = events[0].message
                fatal("cannot process records from %s[%s]@%s", first.topic, first.partition,
                      first.offset)

    async def process_batch(self, messages: list[Any]) -> None:
        """Parse the findings records, decide what is on its partition and forward the
        rest to the keyed topic; hold and decide the keyed records (findings, idle ticks).
        Partition by partition: its outputs go to the producer, and once the broker has
        them all its state changes are written, and waited for, while the next
        partition is decided. Faust acknowledges the batch only when every partition's
        state is written, so a crash anywhere re-decides the same records the same way
        (same `dedup_key`)."""
        assigned = self.app.consumer.assignment()
        groups: dict[int, list[Any]] = {}
        for message in self.still_ours(messages, assigned):
            groups.setdefault(message.partition, []).append(message)
        finishing = []
        for partition, group in groups.items():
            # The findings and keyed records of one partition number share its engine.
            out = Outbox(self.producer(), self.refused)
            outcomes, touched = await self.decide_partition(group, assigned, out)
            self.add_outputs(outcomes, out)
            delivered = await out.send()
            finishing.append(asyncio.ensure_future(
                self.persist_after(partition if touched else None, delivered)))
            # Handing batches to the producer need not suspend: let it send them (and
            # earlier partitions' writes follow their acknowledgements) meanwhile.
            await asyncio.sleep(0)
        await asyncio.gather(*finishing)

    async def decide_partition(self, messages: list[Any], assigned: set[TP], out: Outbox
                               ) -> tuple[list[Outcome], bool]:
        """Process the records of one partition number (findings and keyed), in order:
        the outcomes, and whether its engine took part (its state then changed)."""
        outcomes: list[Outcome] = []
        touched = False
        keyed = self.keyed.get_topic_name()
        read = self.read_findings(messages)
        for message in messages:
            engine: PartitionEngine | None
            if message.topic == keyed:
                engine = self.engine(message.partition)
                guard, expected = self.keyed_guard, engine.next_seq
            else:
                engine = self.source_engine(message.partition, assigned)
                guard = self.source_guard
                expected = engine.next_source if engine is not None else None
            if expected is None:  # no state for this partition yet: its committed offset
                expected = guard.expected(message)
            missing = await guard.missing(message, expected)
            if missing is None:  # below `expected`: done before a restart, outputs sent
                continue
            for record in [*missing, message]:
                if record.topic == keyed:
                    assert engine is not None
                    if record.key == TICK_KEY:
                        outcomes.extend(await self.catch_up(record, assigned, out))
                        outcomes.extend(await self.read_ahead(record, engine, assigned, out))
                    outcomes.extend(self.decide_keyed(engine, record, out))
                else:
                    ahead = read.get(record.offset) if record is message else None
                    outcomes.extend(self.ingest(record, engine, out, ahead))
                guard.done(record)
            touched = touched or engine is not None
        return outcomes, touched

    async def persist_after(self, partition: int | None, delivered: Awaitable[list[Delivered]]
                            ) -> None:
        """Once the broker has a partition's outputs, write its state changes."""
        await delivered
        if partition is not None:
            await self.persist([partition])

    def describe_assignment(self, seconds: float) -> str:
        """The partitions this worker decides and how long start-up and state recovery
        took, for the "ready" line."""
        actives = self.app.assignor.assigned_actives()
        keyed = sorted(tp.partition for tp in actives if tp.topic == self.keyed.get_topic_name())
        source = sorted(tp.partition for tp in actives if tp.topic == self.source.get_topic_name())
        return (f"keyed partitions {keyed or 'none'}, findings partitions {source or 'none'} of "
                f"{self.source.get_topic_name()}; started and state restored in {seconds:.1f} s")

    def still_ours(self, messages: list[Any], assigned: set[TP]) -> list[Any]:
        """Records of partitions this worker still owns (`assigned`). A batch taken
        before a rebalance may hold records of partitions now owned by another worker;
        writing their state here would overwrite the new owner's changelog."""
        ours = [m for m in messages if m.tp in assigned]
        if len(ours) < len(messages):
            log.info("dropped %s records of partitions revoked since they were taken",
                     len(messages) - len(ours))
        return ours

    def read_findings(self, messages: Iterable[Any]) -> dict[int, ReadRecord]:
        """Parse the findings records among `messages` and place their findings, by
        offset: one murmur2 pass over the keys of all of them (numpy, whose cost per
        call is about that of a hundred keys) is five times cheaper per key than one
        per page of a hundred."""
        started = time.perf_counter()
        source = self.source.get_topic_name()
        settings = self.settings
        now = now_ms()
        parsed = [(m.offset, parse_message(m.value or b"", policy=settings.policy, now_ms=now))
                  for m in messages if m.topic == source]
        keys = [item.partition_key.encode() for _, items in parsed for item in items
                if not isinstance(item, Rejected)]
        placed = iter(partitions_for(keys, settings.partitions))
        keys_in = iter(keys)
        read: dict[int, ReadRecord] = {}
        share = (time.perf_counter() - started) / max(1, len(parsed))
        for offset, items in parsed:
            findings = [(index, item, next(keys_in), next(placed)) for index, item in enumerate(items)
                        if not isinstance(item, Rejected)]
            read[offset] = ReadRecord(items, findings, share)
        return read

    def ingest(self, message: Any, engine: PartitionEngine | None, out: Outbox,
               read: ReadRecord | None = None) -> list[Outcome]:
        """Take one findings record (`read`: parsed and placed already, see
        `read_findings`). Its findings whose key hashes to its own partition are
        accepted by that partition's `engine` (None: the topics are not co-partitioned);
        the others go to the keyed topic, keyed by their partition key and placed with
        murmur2 (as the backtest does); what cannot be decided goes to the dead-letter
        topic."""
        if read is None:
            read = self.read_findings([message])[message.offset]
        started = time.perf_counter()
        self.last_source[message.partition] = time.monotonic()
        keyed = self.keyed.get_topic_name()
        origin_at = origins_of(message)
        metrics.consumed_all(read.items)
        for index, item in enumerate(read.items):
            if isinstance(item, Rejected):
                self._dead_letter(item, origin_at(index), out)
        outcomes: list[Outcome] = []
        for index, finding, key, partition in read.findings:
            origin = origin_at(index)
            seq = direct_seq(message.offset, index)
            if engine is not None and partition == message.partition and seq is not None:
                outcomes.extend(engine.accept(finding, origin, seq))
            else:
                out.add(keyed, partition, key, encode_keyed(finding, origin))
        if engine is not None:
            engine.passed_source(message.offset)
            self.last_arrival[engine.p] = time.monotonic()
            metrics.partition_state(engine, received=True)
        metrics.processed("ingest", started - read.seconds)
        return outcomes

    def _dead_letter(self, item: Rejected, origin: Origin, out: Outbox) -> None:
        metrics.dead_lettered(item.reason)
        value, headers = fit_dead_letter(item.raw, [*deadletter_headers(item.reason, origin), *self.mark],
                                         self.settings.producer.record_limit)
        out.add_unkeyed(self.deadletter.get_topic_name(), value, headers)
        if self.decisions is not None:
            record = kafka_decision_record(rejected_outcome(item, origin))
            out.add_unkeyed(self.decisions.get_topic_name(), orjson.dumps(record), self.mark)

    def engine(self, partition: int) -> PartitionEngine:
        engine = self.engines.get(partition)
        if engine is None:
            log.info("partition %s: first record after (re)start", partition)
            # Each partition stages its own writes: they go to its changelog partition
            # (and, with RocksDB, to its partition's database).
            views = {name: mapping.partition(partition) for name, mapping in self.tables.items()}
            store, apply = Store.over(views).staged()
            self.staged[partition] = apply
            # State on disk: no expiry index in RAM (sweeps scan the database instead).
            on_disk = any(isinstance(view, RocksPartition) for view in views.values())
            engine = PartitionEngine(store, self.settings.policy, partition, expiry_index=not on_disk)
            self.engines[partition] = engine
            self.last_arrival[partition] = time.monotonic()
            log.info("partition %s: engine loaded, %s held, watermark %s", partition,
                     engine.pending, engine.watermark)
        return engine

    def source_behind(self, partition: int) -> tuple[int | None, int] | None:
        """(expected, end) when findings partition `partition` is read here, has records
        from `expected` to `end` that the agent never got, and has given it none for
        `STALL_S`: faust-streaming can drop what it fetched right after a recovery, and
        with no later record on the partition nothing else reveals the hole. `expected`
        is None when nothing was committed or decided there: the partition's start."""
        tp = TP(self.source.get_topic_name(), partition)
        if time.monotonic() - self.last_source.get(partition, 0.0) < STALL_S:
            return None
        engine = self.engines.get(partition) if self.direct else None
        expected = engine.next_source if engine is not None else None
        if expected is None:
            expected = self.source_guard.expected_at(tp)
        end = self.readable_end(tp)
        if end is None or end <= (expected or 0):
            return None
        return expected, end

    def readable_end(self, tp: TP) -> int | None:
        """Where reading `tp` stops for now: its high watermark, or before it while a
        transaction is open (its last stable offset). Records past it are neither
        decided nor looked for."""
        highwater = self.app.consumer.highwater(tp)
        stable = last_stable_offset(self.app, tp)
        if highwater is None or stable is None:
            return None
        metrics.unstable_offsets(tp.partition, highwater - stable)
        return min(highwater, stable)

    def source_engine(self, partition: int, assigned: set[TP]) -> PartitionEngine | None:
        """The engine that decides findings of findings partition `partition` in place:
        the topics are co-partitioned and this worker owns the keyed partition (and so
        the tables' partition) of the same number. None: they take the keyed topic."""
        if self.direct and TP(self.keyed.get_topic_name(), partition) in assigned:
            return self.engine(partition)
        return None

    async def catch_up(self, tick: Any, assigned: set[TP], out: Outbox) -> list[Outcome]:
        """Process the findings records `source_behind` finds on the findings partition
        an idle tick names, read directly. A partition decided in place is named by the
        tick of the keyed partition of its number (whose engine decides them); any
        other by a tick of any keyed partition here (its findings are forwarded)."""
        partition = Tick.decode(tick.value).check
        if partition is None:
            return []
        tp = TP(self.source.get_topic_name(), partition)
        behind = self.source_behind(partition)
        if behind is None or tp not in assigned:
            return []
        engine = self.source_engine(partition, assigned)
        if engine is not None and tick.partition != partition:
            return []  # its engine's state is written with its own keyed partition's batch
        expected, end = behind
        if expected is None:
            expected = await self.source_guard.first_offset_at(tp)
            if expected >= end:
                return []
        return await self.read_source(tp, engine, expected, end, out)

    async def read_ahead(self, tick: Any, engine: PartitionEngine, assigned: set[TP],
                         out: Outbox) -> list[Outcome]:
        """Before a release tick is applied, the findings records it counts as arrived
        that its engine has not had yet, read directly: after a crash the agent may get
        the tick before them (two topics have no common order), and the tick must
        release what it released the first time."""
        until = Tick.decode(tick.value).source_before
        tp = TP(self.source.get_topic_name(), engine.p)
        if until is None or self.source_engine(engine.p, assigned) is not engine or tp not in assigned:
            return []
        expected = await self.next_in_place(engine, tp)
        if expected >= until:
            return []
        return await self.read_source(tp, engine, expected, until, out, lost=False)

    async def next_in_place(self, engine: PartitionEngine, tp: TP) -> int:
        """The findings offset of `tp` that `engine`, deciding it in place, is due next:
        after the last it had, else the committed one, else the partition's first."""
        expected = engine.next_source
        if expected is None:
            expected = self.source_guard.expected_at(tp)
        if expected is None:
            expected = await self.source_guard.first_offset_at(tp)
        return expected

    async def read_source(self, tp: TP, engine: PartitionEngine | None, expected: int, end: int,
                          out: Outbox, *, lost: bool = True) -> list[Outcome]:
        """Process the findings records from `expected` to `end` (excluded) of `tp`, read
        directly, as the agent would have; `lost`: the agent never got them (a warning)."""
        partition = tp.partition
        outcomes: list[Outcome] = []
        found = 0
        # A chunk of offsets at a time: the records in memory stay bounded however far
        # behind the partition is.
        for start in range(expected, end, self.settings.batch_size):
            records = await self.source_guard.take(tp, start, min(end, start + self.settings.batch_size))
            read = self.read_findings(records)
            for record in records:
                outcomes.extend(self.ingest(record, engine, out, read[record.offset]))
                self.source_guard.done(record)
            found += len(records)
        # Offsets with no record (commit markers, compaction) are passed too, or the
        # partition would look behind for ever.
        self.source_guard.passed(tp, end)
        if engine is not None:
            engine.passed_source(end - 1)
        if found and lost:
            log.warning("%s[%s]: %s records between offsets %s and %s never reached the agent; "
                        "read them directly", tp.topic, partition, found, expected, end - 1)
        elif found:
            log.info("%s[%s]: read %s records up to offset %s ahead of a replayed idle release",
                     tp.topic, partition, found, end - 1)
        return outcomes

    def decide_keyed(self, engine: PartitionEngine, message: Any, out: Outbox) -> list[Outcome]:
        """Hold or decide one keyed record; the state changes stay staged."""
        started = time.perf_counter()
        partition = message.partition
        outcomes: list[Outcome] = []
        if message.key == TICK_KEY:
            tick = Tick.decode(message.value)
            if tick.release:
                outcomes = engine.release_arrived(tick.arrived())
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
                self._dead_letter(rejected, origin_of(message, 0), out)
            else:
                outcomes = engine.accept(finding, origin, seq=message.offset)
        engine.passed(message.offset)
        metrics.partition_done(engine, started, received=message.key != TICK_KEY)
        return outcomes

    async def persist(self, partitions: Iterable[int]) -> None:
        """Write the staged state changes of these partitions to the tables, each to
        its own changelog partition, and wait until the broker has them."""
        out = Outbox(self.producer(), self.refused)
        for partition in partitions:
            self.staged[partition]()
            for mapping in self.tables.values():
                mapping.flush(partition, out)
        sent = await out.sent()
        for mapping in self.tables.values():
            mapping.persisted(sent)

    def add_outputs(self, outcomes: list[Outcome], out: Outbox) -> None:
        """Add every output of these decisions to `out` (which may already hold records
        forwarded and dead letters)."""
        emitted = now_ms()
        alerts, suppressed = self.alerts.get_topic_name(), self.suppressed.get_topic_name()
        decisions = self.decisions.get_topic_name() if self.decisions is not None else None
        mark = self.mark
        metrics.decided_all(outcomes)
        for outcome in outcomes:
            if outcome.closes or outcome.decision in (Decision.ALERT, Decision.RESOLVED):
                for record in alert_records(outcome, emitted):
                    out.add_keyed(alerts, record["dedup_key"].encode(), orjson.dumps(record), mark)
            pairings = [outcome.pairing] if outcome.pairing else []
            for pairing in [*pairings, *outcome.late_pairs]:
                out.add_keyed(suppressed, pairing.key.encode(), orjson.dumps(suppressed_record(pairing)),
                              mark)
            if decisions is not None:
                record = kafka_decision_record(outcome)
                key = record["key"]  # the partition key, or None for a dead letter
                if key:
                    out.add_keyed(decisions, key.encode(), orjson.dumps(record), mark)
                else:
                    out.add_unkeyed(decisions, orjson.dumps(record), mark)

    # -- idle partitions ------------------------------------------------------------

    async def tick_idle_partitions(self) -> None:
        idle_s = self.settings.idle_flush_ms / 1000
        now = time.monotonic()
        actives = self.app.assignor.assigned_actives()
        keyed = sorted(tp.partition for tp in actives if tp.topic == self.keyed.get_topic_name())
        for partition in keyed:
            engine = self.engines.get(partition)
            if engine is None:
                # No engine yet (after a restart or rebalance): a tick loads it, with
                # what the buffer table holds.
                await self.send_tick(partition, Tick())
            elif engine.pending and now - self.last_arrival[partition] >= idle_s:
                # With records still to come, a plain tick: a keyed record faust-streaming
                # dropped with nothing after it shows to the offset guard once one follows.
                tick = await self.release_tick(engine, actives) or Tick()
                # The same tick again only once the first has had time to be processed
                # (or was lost with a broker).
                last = self.idle_sent.get(partition)
                if last is None or last[0] != tick or now - last[1] >= idle_s:
                    self.idle_sent[partition] = (tick, now)
                    await self.send_tick(partition, tick)
        for tp in actives:
            if tp.topic != self.source.get_topic_name():
                continue
            self.last_source.setdefault(tp.partition, now)
            self.readable_end(tp)  # the open-transaction gauge, for active partitions too
            if keyed and self.source_behind(tp.partition) is not None:
                # Decided in place: its own keyed partition's tick; else any here.
                target = tp.partition if self.direct and tp.partition in keyed else keyed[0]
                await self.send_tick(target, Tick(check=tp.partition))

    async def release_tick(self, engine: PartitionEngine, assigned: set[TP]) -> Tick | None:
        """The tick that releases what an idle engine holds: everything that has arrived.
        None while its findings partition, decided in place, has records the engine has
        not had (a partition behind is not idle: a stall after a rebalance, a backlog)."""
        keyed = TP(self.keyed.get_topic_name(), engine.p)
        keyed_end = self.app.consumer.highwater(keyed)
        keyed_next = engine.next_seq
        if keyed_next is None:
            keyed_next = self.keyed_guard.expected_at(keyed) or 0
        own = self.own_ticks.setdefault(engine.p, set())
        own.difference_update([offset for offset in own if offset < keyed_next])  # processed
        if keyed_end is None or keyed_end - keyed_next > len(own):
            return None  # keyed records (not only ticks of this worker) are still to come
        source_before = None
        tp = TP(self.source.get_topic_name(), engine.p)
        if self.direct and tp in assigned:
            end = self.readable_end(tp)
            if end is None or end > await self.next_in_place(engine, tp):
                return None
            source_before = engine.next_source
        return Tick(release=True, keyed_before=engine.next_seq, source_before=source_before)

    async def send_tick(self, partition: int, tick: Tick) -> None:
        """A tick record on keyed partition `partition`; its offset is noted once written."""
        written = await self.app.producer.send(self.keyed.get_topic_name(), TICK_KEY, tick.encode(),
                                               partition, None, None)
        noting = asyncio.ensure_future(self._note_tick(partition, written))
        self.noting.add(noting)  # a task not referenced may be collected before it runs
        noting.add_done_callback(self.noting.discard)

    async def _note_tick(self, partition: int, written: Awaitable[Any]) -> None:
        with contextlib.suppress(Exception):  # a tick lost with a broker is no record
            self.own_ticks.setdefault(partition, set()).add((await written).offset)

    @staticmethod
    def refused(topic: str, headers: Headers, exc: BaseException) -> None:
        metrics.refused(topic)
        refused_record(topic, headers, exc)

    def producer(self) -> Any:
        """The app's aiokafka producer: records go to it as whole batches (Faust's
        `Topic.send` does more work per record than deciding it)."""
        return aiokafka_producer(self.app)

    async def probe_broker(self) -> None:
        """Ask the broker for cluster metadata with the producer's own client (and so
        its security settings); raises when no broker answers."""
        producer = started_producer(self.app)
        if producer is not None:
            await producer.client.fetch_all_metadata()

    async def on_recover(self) -> None:
        self.engines.clear()
        self.idle_sent.clear()
        self.own_ticks.clear()
        # A findings partition is waited on for `STALL_S` from its (re)assignment.
        self.last_source.clear()
        self.source_guard.reset()
        self.keyed_guard.reset()


class ReadRecord(NamedTuple):
    """A findings record parsed: every item, and its findings as (index in the record,
    finding, partition key, keyed partition)."""

    items: list[Finding | Rejected]
    findings: list[tuple[int, Finding, bytes, int]]
    seconds: float  # its share of the time the parsing and placing took


def fatal(message: str, *args: Any) -> None:
    """Stop the process: Faust would ack a record whose processing raised, losing it.
    The record is re-read after the restart, from the last committed offset."""
    log.exception(message, *args)
    logging.shutdown()
    os._exit(70)


def run_worker(settings: WorkerSettings) -> None:
    """Run until SIGTERM/SIGINT; say when it is ready and when it stopped."""
    from faust.worker import Worker as FaustWorker

    from streams import logs

    started = time.monotonic()
    logs.setup(settings.log_level, settings.log_format)
    worker = Worker(settings)
    metrics.start(worker)
    if not settings.allow_shared_outputs:
        from streams.worker.owners import check_outputs

        t = settings.topics
        outputs = [t.alerts, t.suppressed, t.deadletter, t.decisions]
        asyncio.run(retry_while_unavailable(
            lambda: check_outputs(settings.app_id, settings.bootstrap_servers, outputs, settings.security),
            servers=settings.bootstrap_servers, what="checking who writes the output topics"))
    # A broker that is not up yet is waited for (with backoff), not a crash.
    asyncio.run(retry_while_unavailable(worker.declare_topics, servers=settings.bootstrap_servers,
                                        what="creating or checking the topics"))

    class Announced(FaustWorker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Faust's progress spinner writes terminal escape codes to any stdout.
            self.spinner = None

        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            log.info("ready: %s", worker.describe_assignment(time.monotonic() - started))

    # Faust's own logging set-up (colours, a second format) is not used: one format.
    try:
        Announced(worker.app, loglevel=settings.log_level, quiet=True,
                  override_logging=False).execute_from_commandline()
    finally:
        log.info("stopped")
