"""`flapguard backtest --from-topic`: the worker's decision code over the history a
findings topic already holds (docs/backtest.md, "From a topic").

The topic's partitions are assigned to a plain consumer (no group, no commits,
read_committed), each read from the offset of a moment to the offset the topic ended
at when the run began. Findings are placed as the worker places them: on the engine of
the keyed partition their partition key hashes to (murmur2), decided in place when the
findings topic is co-partitioned with the keyed one (as many partitions) and the finding
is on its own partition, else as if through the keyed topic. The worker reads several
findings partitions in no fixed order; the backtest merges them by record timestamp
(then partition, each partition in offset order), and counts the keyed hop as taking no
time. On a one-partition or co-partitioned topic that order makes no difference: each
engine gets its findings in offset order, as the file backtest of the same records does.
So a co-partitioned topic's partitions may also be read and decided by several processes
when only the report is asked for ("several processes", below).

Warm-up: the backtest's state starts empty, so it reads from `since - window -
first-sight age` (or the earliest record kept) and decides that stretch without
counting it, so that predecessors archived just before `since` are known.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any

from streams.backtest.run import (
    Arriving,
    LabelError,
    LabelScore,
    Progress,
    Report,
    SweepRow,
    Truth,
    _InOrder,
    _placed,
    batch_gc,
)
from streams.core.decide import Outcome, rejected_outcome
from streams.core.engine import DIRECT_SEQ, PartitionEngine
from streams.core.findings import Finding, Rejected, envelope_finding, parse_message
from streams.core.keys import Placements
from streams.core.policy import Policy
from streams.core.records import iso, record_source
from streams.core.state import Origin, Store
from streams.kafka.availability import start_client
from streams.kafka.security import PLAINTEXT, BrokerSecurity
from streams.kafka.workarounds import all_topics_metadata, bare_records, bare_value

# A partition this far ahead of the slowest one (records held for the merge) is paused.
AHEAD = 20_000
FETCH_RECORDS = 10_000
POSITION = DIRECT_SEQ - 1
CHUNK = 1000  # records decided between two turns of the event loop


class TopicError(Exception):
    """The topic cannot be read as asked (missing, an empty range): one line."""


@dataclass(frozen=True, slots=True)
class Span:
    """What is read of one partition: offsets from `start` (warm-up from there) and
    counted from `counted`, to `end` (excluded)."""

    start: int
    counted: int
    end: int


@dataclass(slots=True)
class Plan:
    """What a run reads: the span of offsets of each partition of the topic, and the
    moments they were found for."""

    topic: str
    spans: dict[int, Span]
    since_ms: int | None
    until_ms: int | None
    warm_from_ms: int | None  # the moment the warm-up was to start at (None: no warm-up)
    # With `since`: some partition keeps nothing as old as `warm_from_ms`, so its
    # warm-up starts at its earliest record.
    warm_short: bool = False

    @property
    def total(self) -> int:
        return sum(s.end - s.start for s in self.spans.values())

    @property
    def counted_from(self) -> dict[int, int]:
        return {p: s.counted for p, s in self.spans.items()}


@dataclass(slots=True)
class WarmUp:
    """How much history came before `since`, decided and not counted."""

    wanted_ms: int  # window + first-sight age
    since_ms: int | None
    short: bool = False  # the topic keeps less than that: read from its earliest record
    first_ms: int | None = None  # timestamp of the earliest warm-up record read
    findings: int = 0

    def absorb(self, other: WarmUp) -> None:
        """Add the warm-up of other partitions (`from_topic`'s processes)."""
        self.findings += other.findings
        if other.first_ms is not None and (self.first_ms is None or other.first_ms < self.first_ms):
            self.first_ms = other.first_ms

    @property
    def had_ms(self) -> int:
        if self.since_ms is None or self.first_ms is None:
            return 0
        return max(0, self.since_ms - self.first_ms)

    def to_json(self) -> dict[str, Any]:
        return {"findings": self.findings, "from": iso(self.first_ms), "seconds": self.had_ms / 1000,
                "wanted_seconds": self.wanted_ms / 1000 if self.since_ms is not None else 0,
                "complete": not self.short}


def warm_start(policy: Policy, since_ms: int) -> int:
    """Where the warm-up starts: a predecessor archived this long before `since` may
    still pair with a finding decided after it (docs/design.md §2)."""
    return max(0, since_ms - policy.widest_window_ms - policy.first_sight_age_ms)


class TopicProgress(Progress):
    """`Progress` over the records of a topic: records read of the total, findings per
    second, time left (`at(records, findings)`)."""

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        share = min(self.done / self.total, 1.0)
        rate = self.findings / elapsed
        left = elapsed * (1 - share) / share if share > 0 else 0.0
        sys.stderr.write(f"\r[{'#' * int(share * 30):<30}] {self.done:>12,} / {self.total:,} records "
                         f"{rate:>9,.0f} findings/s  {int(left) // 60:d}m{int(left) % 60:02d}s left ")
        sys.stderr.flush()


# -- reading the topic ----------------------------------------------------------------


def plain_consumer(bootstrap: str, security: BrokerSecurity, *, bare: bool = False) -> Any:
    """A consumer that reads what it is assigned: read_committed, large fetches.
    `bare`: its records are the record batches' own (`workarounds.bare_records`: no
    `topic` or `partition`), not aiokafka's `ConsumerRecord`s."""
    from aiokafka import AIOKafkaConsumer

    extra: dict[str, Any] = {}
    if bare:
        bare_records()
        extra["value_deserializer"] = bare_value
    # No group: nothing is committed, no production consumer group is touched.
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                            isolation_level="read_committed", max_partition_fetch_bytes=4 << 20,
                            fetch_max_bytes=64 << 20, **extra, **security.aiokafka_kwargs())


async def plan_read(consumer: Any, topic: str, *, policy: Policy, since_ms: int | None,
                    until_ms: int | None) -> Plan:
    """The spans of every partition of `topic`, found by timestamp (Kafka's time index:
    the first record at or after the moment). The end is where the topic ends now (its
    last stable offset), or the first record at or after `until`."""
    from aiokafka import TopicPartition

    cluster = await all_topics_metadata(consumer)
    partitions = sorted(cluster.partitions_for_topic(topic) or ())
    if not partitions:
        raise TopicError(f"topic not found: {topic}")
    tps = [TopicPartition(topic, p) for p in partitions]
    first = await consumer.beginning_offsets(tps)
    last = await consumer.end_offsets(tps)

    async def at(moment: int | None, default: dict[Any, int]) -> dict[Any, int]:
        if moment is None:
            return default
        found = await consumer.offsets_for_times(dict.fromkeys(tps, moment))
        return {tp: (last[tp] if found[tp] is None else max(first[tp], found[tp].offset)) for tp in tps}

    warm_from = warm_start(policy, since_ms) if since_ms is not None else None
    starts = await at(warm_from, first)
    counted = await at(since_ms, first)
    ends = await at(until_ms, last)
    spans = {tp.partition: Span(starts[tp], counted[tp], min(ends[tp], last[tp])) for tp in tps}
    # Nothing kept as old as the warm-up's start: it starts at the earliest record.
    short = since_ms is not None and any(starts[tp] == first[tp] < last[tp] for tp in tps)
    return Plan(topic, spans, since_ms, until_ms, warm_from, short)


# A partition's records, in offset order: the merge hands them on in runs like this, so
# that no record needs a partition of its own.
Segment = tuple[int, list[Any]]


async def merged_records(consumer: Any, plan: Plan) -> AsyncIterator[list[Segment]]:
    """The records of every span, in batches, merged across partitions by (timestamp,
    partition), each partition in offset order: a record is handed on only once every
    partition still being read has one waiting, so the order does not depend on which
    partition the broker answered for first. Only a record's `offset`, `timestamp`,
    `headers` and `value` are read (a `bare` consumer's records do)."""
    from aiokafka import TopicPartition

    topic = plan.topic
    live = {p: s for p, s in plan.spans.items() if s.end > s.start}
    tps = {p: TopicPartition(topic, p) for p in live}
    consumer.assign(list(tps.values()))
    for p, span in live.items():
        consumer.seek(tps[p], span.start)
    waiting: dict[int, deque[Any]] = {p: deque() for p in live}
    reading = set(live)
    paused: set[int] = set()
    while reading or any(waiting.values()):
        hungry = [tps[p] for p in reading if not waiting[p]]
        if hungry or not all(waiting[p] for p in reading):
            fetched = await consumer.getmany(*hungry, timeout_ms=500, max_records=FETCH_RECORDS)
            for tp, records in fetched.items():
                end = live[tp.partition].end
                if records[-1].offset >= end:
                    records = [r for r in records if r.offset < end]
                waiting[tp.partition].extend(records)
            for p in list(reading):
                if await consumer.position(tps[p]) >= live[p].end:
                    reading.discard(p)
                    consumer.pause(tps[p])
            for p in reading:  # hold back partitions far ahead of the others
                if len(waiting[p]) > AHEAD and p not in paused:
                    consumer.pause(tps[p])
                    paused.add(p)
                elif len(waiting[p]) <= AHEAD // 2 and p in paused:
                    consumer.resume(tps[p])
                    paused.discard(p)
        batch = _merge(waiting, reading)
        if batch:
            yield batch


def _merge(waiting: dict[int, deque[Any]], reading: set[int]) -> list[Segment]:
    """Take records in (timestamp, partition) order while every partition still being
    read has one waiting (a partition done reading needs none): the earliest head of
    the partitions' queues each time, in runs of one partition."""
    if any(not waiting[p] for p in reading):
        return []
    heads = [(q[0].timestamp, p) for p, q in waiting.items() if q]
    if len(heads) == 1:  # one partition: everything, in offset order
        p = heads[0][1]
        records = list(waiting[p])
        waiting[p].clear()
        return [(p, records)]
    heapify(heads)
    out: list[Segment] = []
    while heads:
        p = heads[0][1]
        queue = waiting[p]
        run: list[Any] = []
        # The head partition keeps its turn while its next record still comes before
        # every other partition's head: the lesser of the root's children.
        count = len(heads)
        if count == 1:
            run.extend(queue)
            queue.clear()
        else:
            rival_at, rival_p = heads[1] if count == 2 or heads[1] < heads[2] else heads[2]
            # (timestamp, p) > (rival_at, rival_p) without a tuple per record; p differs.
            ahead = p > rival_p
            while queue:
                at = queue[0].timestamp
                if at > rival_at or (ahead and at == rival_at):
                    break
                run.append(queue.popleft())
        out.append((p, run))
        if queue:
            heapreplace(heads, (queue[0].timestamp, p))
        elif p in reading:
            break
        else:
            heappop(heads)
    return out


def _chunks(segments: list[Segment], size: int) -> Iterator[tuple[list[Segment], int]]:
    """The segments again, in groups of at most `size` records (a long run split), and
    the records of each group."""
    group: list[Segment] = []
    count = 0
    for p, records in segments:
        start = 0
        while start < len(records):
            room = size - count
            take = records if not start and len(records) <= room else records[start:start + room]
            group.append((p, take))
            count += len(take)
            start += len(take)
            if count >= size:
                yield group, count
                group, count = [], 0
    if group:
        yield group, count


# -- deciding -------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One policy's engines and report over the topic (a sweep runs several at once)."""

    policy: Policy
    partitions: int
    counted_from: dict[int, int]
    warm: WarmUp
    on_decision: Callable[[Outcome], None] | None = None
    labels: Iterable[Truth] | None = None
    warming: bool = True  # some partition is read from before `since`
    # The counted decisions again, in the order they are decided (`--alerts-out`).
    on_decided: Callable[[list[Outcome]], None] | None = None
    report: Report = field(init=False)
    engines: list[PartitionEngine] = field(init=False)
    ordered: _InOrder = field(init=False)

    def __post_init__(self) -> None:
        self.report = Report(partitions=self.partitions, policy=self.policy)
        if self.labels is not None:
            self.report.labels = LabelScore()
            self.report.truths = iter(self.labels)
        self.engines = [PartitionEngine(Store.in_memory(), self.policy, p, durable=False)
                        for p in range(self.partitions)]
        # The usual run (no warm-up, no decisions file): straight into the report.
        plain = not self.warming and self.on_decision is None
        self.ordered = _InOrder(self.report.add if plain else self._sink)

    def put(self, outcomes: list[Outcome]) -> None:
        # Arrival numbers of findings decided in place carry the worker's flag (their
        # tie-break); the merged position, the order decisions are handed on in, is
        # below it.
        for outcome in outcomes:
            if outcome.seq >= DIRECT_SEQ:
                outcome.seq &= POSITION
        if self.on_decided is not None:
            counted = [o for o in outcomes if o.origin.offset >= self.counted_from[o.origin.partition]]
            if counted:
                self.on_decided(counted)
        self.ordered.put(outcomes)

    def _sink(self, outcome: Outcome) -> None:
        origin = outcome.origin
        if origin.offset < self.counted_from[origin.partition]:
            self.warm.findings += 1  # warm-up: state, not report
            return
        self.report.add(outcome)
        if self.on_decision is not None:
            self.on_decision(outcome)

    def finish(self) -> Report:
        for engine in self.engines:
            self.put(engine.flush())
        truths = self.report.truths
        if truths is not None and next(truths, None) is not None:
            raise LabelError("the labels file has more entries than the topic range has findings")
        return self.report


def decide_records(segments: list[Segment], runs: list[Run], *, topic: str, co_partitioned: bool,
                   now_ms: int, seq: int, warm: WarmUp, placements: Placements | None,
                   strict: bool = False) -> int:
    """Parse each record once and decide its findings in every run, placed (`placements`:
    the read's, each key's partition remembered; None with one keyed partition) and
    ordered as the worker places them (module docstring); the next arrival number.
    `strict`: a finding placed on another partition than its record's raises
    `NotCoPlaced` (a process's share, `split`)."""
    policy = runs[0].policy  # the input limits are the same in every run
    partitions = runs[0].partitions
    found = _occurrences(segments, runs[0].counted_from, warm, topic=topic, policy=policy,
                         now_ms=now_ms, seq=seq)
    direct = co_partitioned and partitions > 1
    # Bound once per chunk: this loop runs per finding.
    accepts = [[engine.accept for engine in run.engines] for run in runs]
    puts = [run.put for run in runs]
    pairs = list(zip(accepts, puts, strict=True))
    seq -= 1  # the loop leaves it at the last arrival number
    for block, place in _placed(found, placements):
        for seq, origin, parsed in block:
            if type(parsed) is not Finding:
                assert isinstance(parsed, Rejected)
                for run in runs:
                    run.ordered.put([rejected_outcome(parsed, origin, seq)])
                continue
            p = place() if place is not None else 0
            # Decided in place by the worker: its tie-break after keyed arrivals (none to
            # break with one partition).
            if direct and p == origin.partition:
                arrival = seq | DIRECT_SEQ
            elif strict:
                raise NotCoPlaced(f"{topic} partition {origin.partition} offset {origin.offset}")
            else:
                arrival = seq
            for accept, put in pairs:
                released = accept[p](parsed, origin, arrival)
                if released:
                    put(released)
    return seq + 1


def _occurrences(segments: list[Segment], counted: dict[int, int], warm: WarmUp, *, topic: str,
                 policy: Policy, now_ms: int, seq: int) -> Iterator[Arriving]:
    """The finding occurrences of the records, parsed, in order, numbered from `seq`; the
    warm-up's first record noted on the way."""
    for partition, records in segments:
        warm_until = counted[partition]
        for record in records:
            offset = record.offset
            if offset < warm_until and (warm.first_ms is None or record.timestamp < warm.first_ms):
                warm.first_ms = record.timestamp
            source, line = record_source(topic, offset, record.headers)
            data = record.value or b""
            fast = envelope_finding(data, policy, now_ms)
            if fast is not None:  # the usual record: one finding, no list of one
                yield seq, Origin(source, line, 0, topic, partition, offset), fast
                seq += 1
                continue
            for index, parsed in enumerate(parse_message(data, policy=policy, now_ms=now_ms)):
                yield seq, Origin(source, line, index, topic, partition, offset), parsed
                seq += 1


@dataclass(slots=True, repr=False)
class TopicBacktest:
    """What a run over a topic gives: the report, the sweep's rows and widest report,
    the warm-up and the range read."""

    report: Report
    rows: list[SweepRow]
    widest: Report | None
    warm: WarmUp
    plan: Plan
    processes: int = 1  # that read and decided the partitions (`split`)

    def source_json(self) -> dict[str, Any]:
        return {"topic": self.plan.topic, "since": iso(self.plan.since_ms),
                "until": iso(self.plan.until_ms), "records": self.plan.total,
                "processes": self.processes, "warm_up": self.warm.to_json()}

    def __repr__(self) -> str:
        # Short: `asyncio.run` formats its main task's result when it restores the SIGINT
        # handler (CPython 3.11's `signal`), and the reports' repr runs to megabytes.
        return (f"TopicBacktest(topic={self.plan.topic!r}, findings={self.report.findings}, "
                f"sweep={len(self.rows)})")


def backtest_topic(
    topic: str, *, bootstrap: str, security: BrokerSecurity = PLAINTEXT, policy: Policy,
    partitions: int | None = None, since_ms: int | None = None, until_ms: int | None = None,
    now_ms: int, on_decision: Callable[[Outcome], None] | None = None,
    labels: Callable[[], Iterable[Truth]] | None = None, sweep: list[int] | None = None,
    progress: bool | None = None, on_decided: Callable[[list[Outcome]], None] | None = None,
    jobs: int | None = None,
) -> TopicBacktest:
    """Backtest the records of `topic` from `since` to `until` (record timestamps), and
    each window of `sweep` in the same pass. `partitions` (keyed partitions of the
    worker reproduced) defaults to the topic's own count. `jobs`: processes that may read
    a co-partitioned topic's partitions side by side (`split`; default: one per CPU)."""
    ask = _Ask(topic, bootstrap, security, policy, partitions, now_ms, on_decision, labels,
               sweep or [], progress, on_decided)
    with batch_gc():
        done = asyncio.run(_backtest_topic(ask, since_ms=since_ms, until_ms=until_ms,
                                           jobs=available_cpus() if jobs is None else jobs))
        if isinstance(done, TopicBacktest):
            return done
        plan, shares = done
        # Forked here, with the event loop and its resolver threads gone: a thread would
        # be missing from the copies, with any lock it held.
        forked = _in_processes(ask, plan, shares) if threading.active_count() == 1 else None
        again = forked or asyncio.run(_backtest_topic(ask, plan=plan))
        assert isinstance(again, TopicBacktest)  # planned: read here
        return again


@dataclass(frozen=True, slots=True)
class _Ask:
    """What a topic backtest is asked for, but the range (`Plan`)."""

    topic: str
    bootstrap: str
    security: BrokerSecurity
    policy: Policy
    partitions: int | None
    now_ms: int
    on_decision: Callable[[Outcome], None] | None
    labels: Callable[[], Iterable[Truth]] | None
    sweep: list[int]
    progress: bool | None
    on_decided: Callable[[list[Outcome]], None] | None

    def keyed(self, plan: Plan) -> int:
        return self.partitions or len(plan.spans)

    def runs(self, plan: Plan, warm: WarmUp, keyed: int) -> list[Run]:
        """The main run and the sweep's (which count their warm-up apart: the same
        records, other windows), each with `keyed` engines."""
        counted = plan.counted_from
        warming = any(s.counted > s.start for s in plan.spans.values())
        labels = self.labels
        main = Run(self.policy, keyed, counted, warm, self.on_decision, labels() if labels else None,
                   warming, self.on_decided)
        others = [Run(replace(self.policy, window_ms=w), keyed, counted,
                      WarmUp(warm.wanted_ms, plan.since_ms, plan.warm_short), None,
                      labels() if labels else None, warming)
                  for w in self.sweep]
        return [main, *others]

    def warm_up(self, plan: Plan) -> WarmUp:
        policy = self.policy
        return WarmUp(policy.widest_window_ms + policy.first_sight_age_ms, plan.since_ms, plan.warm_short)


async def _backtest_topic(ask: _Ask, *, since_ms: int | None = None, until_ms: int | None = None,
                          jobs: int = 1, plan: Plan | None = None
                          ) -> TopicBacktest | tuple[Plan, list[list[int]]]:
    """The run in this process; or, planned here and split (`split`), the plan and the
    partitions of each process."""
    # Its records without a `ConsumerRecord` each: `merged_records` needs no more.
    consumer = plain_consumer(ask.bootstrap, ask.security, bare=True)
    await start_client(consumer, ask.bootstrap, ask.security)
    try:
        if plan is None:
            plan = await plan_read(consumer, ask.topic, policy=ask.policy, since_ms=since_ms,
                                   until_ms=until_ms)
            if not any(s.end > s.counted for s in plan.spans.values()):
                raise TopicError(f"{ask.topic} holds no record in the range asked for")
            shares = split(plan, ask, jobs)
            if len(shares) > 1:
                return plan, shares
        keyed = ask.keyed(plan)
        warm = ask.warm_up(plan)
        runs = ask.runs(plan, warm, keyed)
        bar = TopicProgress(plan.total, enabled=ask.progress)
        started = time.perf_counter()
        try:
            await _drive(merged_records(consumer, plan), runs, warm, topic=plan.topic,
                         co_partitioned=len(plan.spans) == keyed, now_ms=ask.now_ms, progress=bar)
        finally:
            bar.close()
        reports = [run.finish() for run in runs]
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    return _result(plan, reports, warm, seconds)


def _result(plan: Plan, reports: list[Report], warm: WarmUp, seconds: float, processes: int = 1
            ) -> TopicBacktest:
    for report in reports:
        report.seconds = seconds
    rows = [SweepRow.of(report) for report in reports[1:]]
    widest = max(reports[1:], key=lambda r: r.policy.window_ms) if len(reports) > 1 else None
    return TopicBacktest(reports[0], rows, widest, warm, plan, processes)


async def _drive(batches: AsyncIterator[list[Segment]], runs: list[Run], warm: WarmUp, *, topic: str,
                 co_partitioned: bool, now_ms: int, progress: Progress, strict: bool = False) -> None:
    seq = 0
    records = 0
    partitions = runs[0].partitions  # every run places alike
    placements = Placements(partitions) if partitions > 1 else None
    async for batch in batches:
        for chunk, count in _chunks(batch, CHUNK):
            seq = decide_records(chunk, runs, topic=topic, co_partitioned=co_partitioned, now_ms=now_ms,
                                 seq=seq, warm=warm, placements=placements, strict=strict)
            records += count
            progress.at(records, seq)
            # Let the consumer send its next fetch and take in the answer meanwhile.
            await asyncio.sleep(0)


# -- several processes ----------------------------------------------------------------
#
# On a co-partitioned topic each keyed partition's engine gets the findings of one
# topic partition, in offset order: partitions are independent, and processes may read
# and decide them side by side, each its share, and add up their reports. That holds
# only while every finding is on the partition its key hashes to: a process that meets
# one elsewhere stops (`NotCoPlaced`), and the run is made again in one process, as is a
# run whose processes saw one finding id in two shares (the naive notifier's first
# sights would count twice). A run asked for decisions, alerts or labels, which come in
# the merged order, stays in one process.


class NotCoPlaced(Exception):
    """A finding whose partition key hashes to another partition than its record's."""


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split(plan: Plan, ask: _Ask, jobs: int) -> list[list[int]]:
    """The partitions each process reads, most records first to the least loaded; one
    share where processes do not apply (the comment above)."""
    live = sorted((s.end - s.start, p) for p, s in plan.spans.items() if s.end > s.start)
    if (jobs < 2 or len(live) < 2 or ask.keyed(plan) != len(plan.spans)
            or ask.on_decision is not None or ask.on_decided is not None or ask.labels is not None
            # Forked, on Linux only: macOS's system libraries (numpy's Accelerate) are not
            # safe to fork, and Windows has no fork.
            or not sys.platform.startswith("linux")):
        return [[p for _, p in live]]
    shares: list[tuple[int, int, list[int]]] = [(0, i, []) for i in range(min(jobs, len(live)))]
    for records, p in reversed(live):
        load, i, share = heappop(shares)
        share.append(p)
        heappush(shares, (load + records, i, share))
    return [sorted(share) for _, _, share in sorted(shares, key=lambda s: s[1])]


def _in_processes(ask: _Ask, plan: Plan, shares: list[list[int]]) -> TopicBacktest | None:
    """Each share of the partitions read and decided by a forked process, the reports
    added up; None when the split does not hold (the run is then made in one process)."""
    context = multiprocessing.get_context("fork")
    # Records read and findings decided by each process, for the progress bar.
    counters = context.Array("q", 2 * len(shares), lock=False)
    bar = TopicProgress(plan.total, enabled=ask.progress)
    started = time.perf_counter()
    jobs: list[tuple[Any, Any]] = []
    try:
        for index, share in enumerate(shares):
            receive, send = context.Pipe(duplex=False)
            job = context.Process(target=_job, args=(send, ask, plan, share, counters, index),
                                  name=f"flapguard-backtest-{index}", daemon=True)
            job.start()
            send.close()
            jobs.append((job, receive))
        answers = _answers(jobs, counters, bar)
    finally:
        bar.close()
        for job, receive in jobs:
            receive.close()
            if job.is_alive():
                job.terminate()
            job.join()
    if any(answer is None for answer in answers):
        return None
    parts = [answer for answer in answers if answer is not None]
    (reports, warm), rest = parts[0], parts[1:]
    for other, other_warm in rest:
        if not reports[0].naive_seen.isdisjoint(other[0].naive_seen):
            return None
        for report, more in zip(reports, other, strict=True):
            report.absorb(more)
        warm.absorb(other_warm)
    return _result(plan, reports, warm, time.perf_counter() - started, len(parts))


_Answer = tuple[list[Report], WarmUp] | None


def _answers(jobs: list[tuple[Any, Any]], counters: Any, bar: TopicProgress) -> list[_Answer]:
    """Each process's reports and warm-up (None: `NotCoPlaced`); a process's error is
    raised here."""
    from multiprocessing.connection import wait

    answers: dict[int, _Answer] = {}
    pending: dict[Any, int] = {receive: index for index, (_, receive) in enumerate(jobs)}
    while pending:
        ready: list[Any] = wait(list(pending), timeout=0.5)
        for receive in ready:
            index = pending.pop(receive)
            kind: str
            value: Any
            try:
                kind, value = receive.recv()
            except EOFError:  # it closed its end by ending
                job = jobs[index][0]
                job.join(5)
                code = job.exitcode
                raise TopicError(f"a backtest process ended without its report (exit code {code})") from None
            if kind == "error":
                raise value
            answers[index] = value
        bar.at(sum(counters[0::2]), sum(counters[1::2]))
    return [answers[index] for index in range(len(jobs))]


def _job(send: Any, ask: _Ask, plan: Plan, share: list[int], counters: Any, index: int) -> None:
    """A forked process: its share of the plan read and decided; the answer sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it on Ctrl-C
    mine = replace(plan, spans={p: plan.spans[p] for p in share})
    progress = _Counted(counters, index, os.getppid())
    try:
        answer: Any = ("done", asyncio.run(_share(ask, mine, len(plan.spans), progress)))
    except NotCoPlaced:
        answer = ("done", None)
    except Exception as exc:  # raised in the parent
        answer = ("error", exc)
    try:
        send.send(answer)
    except OSError:  # the parent is gone
        pass
    except Exception:  # an exception that does not pickle
        send.send(("error", TopicError(f"{type(answer[1]).__name__}: {answer[1]}")))
    send.close()


async def _share(ask: _Ask, plan: Plan, keyed: int, progress: Progress) -> tuple[list[Report], WarmUp]:
    consumer = plain_consumer(ask.bootstrap, ask.security, bare=True)
    await start_client(consumer, ask.bootstrap, ask.security)
    try:
        warm = ask.warm_up(plan)
        runs = ask.runs(plan, warm, keyed)
        # Split only where co-partitioned: a finding off its record's partition stops it.
        await _drive(merged_records(consumer, plan), runs, warm, topic=plan.topic, co_partitioned=True,
                     now_ms=ask.now_ms, progress=progress, strict=True)
    finally:
        await consumer.stop()
    return [run.finish() for run in runs], warm


class _Counted(Progress):
    """A process's progress, written where the parent's bar reads it."""

    def __init__(self, counters: Any, index: int, parent: int) -> None:
        super().__init__(1, enabled=False)
        self.counters = counters
        self.index = index
        self.parent = parent

    def at(self, done: int, lines: int) -> None:
        if os.getppid() != self.parent:  # the parent was killed: nobody waits for the report
            os._exit(EXIT_ORPHANED)
        self.counters[2 * self.index] = done
        self.counters[2 * self.index + 1] = lines


EXIT_ORPHANED = 3
